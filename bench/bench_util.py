"""What bench/torch_bench.py and bench/ort_bench.py share: peak RSS per case (VmHWM, reset through
/proc/self/clear_refs, the method of diffuse's side) and one measurement's summary."""


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def summary(name, kind, batch, steps, warmup, times, rss, first_loss=None):
    s = sorted(times)
    n = len(s)
    med = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return {
        "name": name, "kind": kind, "batch": batch, "steps": steps, "runs": n, "warmup": warmup,
        "median_s": med, "min_s": s[0], "max_s": s[-1], "times_s": times,
        "images_per_s": batch / med, "peak_rss_bytes": rss, "first_loss": first_loss,
    }
