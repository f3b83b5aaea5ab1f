"""Merge the per-case JSON files of bench/run into bench/results/latest.json and latest.md.

Reads WORK/<model>/{diffuse,torch}_{forward,sample,train}.json (what `diffuse bench --json`
and bench/torch_bench.py --json wrote), puts both sides' raw figures side by side with the
ratio diffuse/PyTorch per row, GFLOP/s and the fraction of the machine's peak for each side
(FLOPs counted analytically by diffuse from the config: the same model on both sides),
the output checks, and the headline speedups (PyTorch time / diffuse time, same run).
Exits 1 when a check (forward; short DDIM run) exceeds the tolerance. Standard library only.
"""

import argparse
import datetime
import json
import os
import sys

KINDS = ["forward", "sample", "train"]


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def mb(b):
    return "-" if b is None else f"{b / 1e6:.0f}"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--work", required=True)
    p.add_argument("--models", required=True)
    p.add_argument("--meta", required=True, help="JSON with date, lscpu model, versions, commands")
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-md", required=True)
    p.add_argument("--tolerance", type=float, default=1e-3)
    p.add_argument("--primary", default="mnist32", help="the model of the headline speedups")
    a = p.parse_args()
    meta = json.load(open(a.meta))

    models, failures = [], []
    peak = None
    for name in a.models.split(","):
        d = os.path.join(a.work, name)
        rows, checks = [], {}
        flops = None
        info = {"name": name}
        for kind in KINDS:
            ours, theirs = load(f"{d}/diffuse_{kind}.json"), load(f"{d}/torch_{kind}.json")
            if ours is None or theirs is None:
                continue
            onnx = load(f"{d}/ort_{kind}.json")
            ort_by_name = {m["name"]: m for m in onnx["measurements"]} if onnx else {}
            if onnx:
                info["onnxruntime_version"] = onnx["versions"]["onnxruntime"]
                for key, val in onnx.get("checks", {}).items():
                    checks[f"onnxruntime_{key}"] = val
            peak = peak or ours["machine_peak"]
            flops = ours["flops_forward_per_image"]
            info.update({
                "params_diffuse": ours["model"]["params"], "params_pytorch": theirs["model"]["params"],
                "config": ours["model"]["config"], "sample_size": ours["model"]["sample_size"],
                "in_channels": ours["model"]["in_channels"],
                "flops_forward_per_image": flops,
                "flops_forward_per_image_torch_counter": theirs.get("flops_forward_per_image_torch_counter"),
                "threads_diffuse": ours["threads"], "threads_pytorch": theirs["threads"],
            })
            for key, val in theirs.get("checks", {}).items():
                checks[key] = val
            by_name = {m["name"]: m for m in theirs["measurements"]}
            for m in ours["measurements"]:
                t = by_name.get(m["name"])
                if t is None:
                    continue
                t = dict(t)
                t["flops"] = m["flops"]  # same model, same work
                t["gflops_per_s"] = m["flops"] / t["median_s"] / 1e9
                # The CPU's peak means nothing for a GPU run.
                cpu = ours.get("device", "cpu") == "cpu"
                t["peak_fraction"] = t["gflops_per_s"] / peak["gflops"] if cpu and peak["gflops"] else None
                row = {
                    "case": m["name"], "kind": m["kind"], "batch": m["batch"],
                    "diffuse": m, "pytorch": t,
                    "ratio_diffuse_over_pytorch": m["median_s"] / t["median_s"],
                    "speedup_pytorch_time_over_diffuse_time": t["median_s"] / m["median_s"],
                }
                o = ort_by_name.get(m["name"])
                if o is not None:
                    row["onnxruntime"] = o
                    row["speedup_onnxruntime_time_over_diffuse_time"] = o["median_s"] / m["median_s"]
                rows.append(row)
                if m["kind"] == "train":
                    dl, tl = m.get("first_loss"), t.get("first_loss")
                    if dl is not None and tl is not None:
                        checks["train_first_loss"] = {"diffuse": dl, "pytorch": tl,
                                                      "rel": abs(dl - tl) / max(abs(tl), 1e-30)}
        if "forward" not in checks:
            failures.append(f"{name}: no forward check (the PyTorch side did not compare outputs)")
        for key, v in checks.items():
            if key == "train_first_loss" or v.get("informational"):
                continue
            if not v["max_rel"] <= a.tolerance:
                failures.append(f"{name}: {key} outputs differ: max rel error {v['max_rel']:.3e} > {a.tolerance}")
        info["checks"] = checks
        info["rows"] = rows
        models.append(info)

    def speedup(model, kind, case=None, key="speedup_pytorch_time_over_diffuse_time"):
        for m in models:
            if m["name"] == model:
                for r in m["rows"]:
                    if r["kind"] == kind and (case is None or r["case"] == case):
                        return r.get(key)
        return None

    ort_key = "speedup_onnxruntime_time_over_diffuse_time"

    result = dict(meta)
    result.update({
        "machine_peak": peak,
        "tolerance_forward_rel": a.tolerance,
        "speedup_model": a.primary,
        "train_step_speedup": speedup(a.primary, "train"),
        "sampling_speedup": speedup(a.primary, "sample"),
        "onnxruntime_forward_b1_speedup": speedup(a.primary, "forward", "forward_b1", ort_key),
        "onnxruntime_sampling_speedup": speedup(a.primary, "sample", key=ort_key),
        "speedups_by_model": {m["name"]: {"train_step_speedup": speedup(m["name"], "train"),
                                          "sampling_speedup": speedup(m["name"], "sample")}
                              for m in models},
        "models": models,
        "failures": failures,
    })
    os.makedirs(os.path.dirname(os.path.abspath(a.out_json)), exist_ok=True)
    with open(a.out_json, "w") as f:
        json.dump(result, f, indent=1)

    md = []
    md.append(f"# diffuse vs PyTorch eager, {meta['date']} ({meta.get('mode', 'full')})\n")
    md.append(f"CPU: {meta['cpu_model']}, {meta['threads']} threads on both sides. "
              f"diffuse {meta['versions'].get('diffuse')} (candle {meta['versions'].get('candle')}, "
              f"{meta['versions'].get('rustc')}); torch {meta['versions'].get('torch')}, "
              f"diffusers {meta['versions'].get('diffusers')}.\n")
    if meta.get("gpu"):
        md.append(f"GPU: {meta['gpu']} (diffuse --device cuda, PyTorch on cuda; the CPU peak does not apply).\n")
    if peak and meta.get("device", "cpu") == "cpu":
        md.append(f"Peak: {peak['how']}.\n")
    if meta.get("note"):
        md.append(f"Note: {meta['note']}.\n")
    md.append(f"Load average (1/5/15 min) at the start: {meta.get('loadavg_at_start', '?').strip()}; "
              f"at the end: {meta.get('loadavg_at_end', '?').strip()}.\n")
    md.append("Times are medians (s); ratio = diffuse / PyTorch (< 1: diffuse faster); GFLOP/s from the "
              "analytic FLOP count (train step = 3× forward); RSS = peak resident MB of the case.\n")
    md.append("ONNX Runtime (ORT): the same UNet exported by `diffuse export onnx`, same threads; "
              "ORT ratio = diffuse / ORT.\n")
    md.append("| model | case | diffuse s | PyTorch s | ratio | ORT s | ORT ratio | diffuse img/s | PyTorch img/s "
              "| diffuse GFLOP/s (% peak) | PyTorch GFLOP/s (% peak) | RSS diffuse | RSS PyTorch | RSS ORT |")
    md.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for m in models:
        for r in m["rows"]:
            d, t = r["diffuse"], r["pytorch"]
            pf = lambda x: "" if x.get("peak_fraction") is None else f" ({100 * x['peak_fraction']:.1f} %)"  # noqa: E731
            o = r.get("onnxruntime")
            ort_s = f"{o['median_s']:.4f} | {d['median_s'] / o['median_s']:.2f}" if o else " | "
            md.append(f"| {m['name']} | {r['case']} | {d['median_s']:.4f} | {t['median_s']:.4f} "
                      f"| {r['ratio_diffuse_over_pytorch']:.2f} | {ort_s} | {d['images_per_s']:.2f} | {t['images_per_s']:.2f} "
                      f"| {d['gflops_per_s']:.1f}{pf(d)} | {t['gflops_per_s']:.1f}{pf(t)} "
                      f"| {mb(d.get('peak_rss_bytes'))} | {mb(t.get('peak_rss_bytes'))} "
                      f"| {mb(o.get('peak_rss_bytes')) if o else ''} |")
    md.append("")
    fmt = lambda x: "n/a" if x is None else f"{x:.2f}"  # noqa: E731
    md.append(f"**train_step_speedup** (PyTorch / diffuse, {a.primary}, batch 32): "
              f"{fmt(result['train_step_speedup'])}; **sampling_speedup** (DDIM): {fmt(result['sampling_speedup'])}; "
              f"**onnxruntime_forward_b1_speedup** (ORT / diffuse): {fmt(result['onnxruntime_forward_b1_speedup'])}; "
              f"**onnxruntime_sampling_speedup**: {fmt(result['onnxruntime_sampling_speedup'])}\n")
    for m in models:
        f = m.get("flops_forward_per_image") or {}
        tc = m.get("flops_forward_per_image_torch_counter")
        tot = sum(f.get(k, 0) for k in ("conv", "linear", "attention"))
        md.append(f"- {m['name']}: {m.get('params_diffuse')} parameters (PyTorch counts {m.get('params_pytorch')}), "
                  f"sample {m.get('in_channels')}×{'×'.join(str(x) for x in m.get('sample_size') or [])}, block_out_channels "
                  f"{m.get('config', {}).get('block_out_channels')}; forward {tot / 1e9:.3f} GFLOP/image "
                  f"(torch FlopCounterMode: {'n/a' if tc is None else f'{tc / 1e9:.3f}'})")
        for k, v in m["checks"].items():
            if k == "train_first_loss":
                md.append(f"  - check {k}: diffuse {v['diffuse']:.6f}, PyTorch {v['pytorch']:.6f} (rel {v['rel']:.1e})")
            else:
                note = (" (informational: 50 DDIM steps of random weights amplify float rounding)"
                        if v.get("informational") else f" (limit {a.tolerance:g})")
                md.append(f"  - check {k}: max abs {v['max_abs']:.2e}, max rel {v['max_rel']:.2e}{note}")
    if failures:
        md.append("\n**FAILED**: " + "; ".join(failures))
    md.append(f"\nCommand: `{meta.get('command')}`")
    text = "\n".join(md) + "\n"
    with open(a.out_md, "w") as f:
        f.write(text)
    print(text)
    if failures:
        for x in failures:
            print(f"bench/run: {x}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
