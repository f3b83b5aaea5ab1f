"""ONNX Runtime side of bench/run: the inference measurements of `diffuse bench` on the same
model, exported by `diffuse export onnx` (one .onnx file, dynamic batch).

Times, after warm-up, over N runs (median, min, max), with `intra_op_num_threads` = --threads,
one inter-op thread and every graph optimisation on (ORT_ENABLE_ALL):
  forward   InferenceSession.run at each batch size;
  sample    DDIM 50 steps of K images, driven from Python: diffusers' DDIMScheduler (the folder's
            scheduler config, eta 0) around InferenceSession.run, as a user of ONNX Runtime would.
Peak RSS per case is VmHWM, reset through /proc/self/clear_refs before the case's warm-up (the
method of diffuse and torch_bench.py). With --check (`diffuse bench --save-check`) it compares
the forward on diffuse's inputs and a short DDIM run from diffuse's x_T. Output: one JSON object
shaped like torch_bench.py's (--json). onnxruntime comes from tools/fixtures/.onnx-site
(setup_onnx.sh), on top of the pinned venv.
"""
import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", required=True, help="the UNet as `diffuse export onnx` wrote it")
    p.add_argument("--pipeline", required=True, help="folder with scheduler/ (diffuse wrote it)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sample-runs", type=int, default=None)
    p.add_argument("--sample-warmup", type=int, default=1)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--sample-images", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--only", default="forward,sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", help="safetensors file of `diffuse bench --save-check`")
    p.add_argument("--json", help="write the report here")
    return p.parse_args()


args = parse_args()

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402  (the scheduler's arithmetic only)

torch.set_num_threads(1)
import diffusers.utils.import_utils as _iu  # noqa: E402

_iu._transformers_available = False
_iu._peft_available = False
from diffusers import DDIMScheduler  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402
from bench_util import peak_rss_bytes, reset_peak_rss, summary  # noqa: E402  (this folder)


def measure(runs, warmup, fn):
    reset_peak_rss()
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times, peak_rss_bytes()


def errors(a, b):
    d = float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
    return {"max_abs": d, "max_rel": d / max(float(np.abs(b).max()), 1e-30)}


def main():
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(args.onnx, so, providers=["CPUExecutionProvider"])
    shape = sess.get_inputs()[0].shape  # [batch, c, height, width]
    c = shape[1]
    sched_dir = os.path.join(args.pipeline, "scheduler")
    h = w = json.load(open(os.path.join(args.pipeline, "unet", "config.json")))["sample_size"]
    if isinstance(h, list):
        h, w = h
    check = load_file(args.check) if args.check else {}
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    rng = np.random.default_rng(args.seed)

    def unet(x, t):
        t = np.broadcast_to(np.asarray(t, dtype=np.float32), (x.shape[0],)).copy()
        return sess.run(["out_sample"], {"sample": np.ascontiguousarray(x, dtype=np.float32), "timestep": t})[0]

    out = {
        "side": "onnxruntime",
        "versions": {"onnxruntime": ort.__version__, "python": platform.python_version()},
        "device": "cpu",
        "threads": args.threads,
        "measurements": [],
        "checks": {},
    }
    log = lambda m: print(  # noqa: E731
        f"{m['name']:<12} median {m['median_s']:9.4f} s  (min {m['min_s']:.4f}, max {m['max_s']:.4f}, "
        f"{m['runs']} runs)  {m['images_per_s']:8.2f} images/s", file=sys.stderr, flush=True)

    if "check_output" in check:
        y = unet(check["check_sample"], check["check_timesteps"])
        out["checks"]["forward"] = errors(y, check["check_output"])
        print(f"forward check vs diffuse: {out['checks']['forward']}", file=sys.stderr)
    if "forward" in only:
        for b in [int(x) for x in args.batches.split(",") if x]:
            x = rng.standard_normal((b, c, h, w), dtype=np.float32)
            t = np.array([(i * 997 + 500) % 1000 for i in range(b)], dtype=np.float32)
            times, rss = measure(args.runs, args.warmup, lambda: unet(x, t))
            m = summary(f"forward_b{b}", "forward", b, None, args.warmup, times, rss)
            out["measurements"].append(m)
            log(m)
    if "sample" in only:
        sched = DDIMScheduler.from_pretrained(sched_dir)
        noise = check["sample_noise"] if "sample_noise" in check else \
            rng.standard_normal((args.sample_images, c, h, w), dtype=np.float32)
        k = noise.shape[0]

        def ddim(steps):
            sched.set_timesteps(steps)
            x = torch.from_numpy(noise) * sched.init_noise_sigma
            for t in sched.timesteps:
                eps = torch.from_numpy(unet(x.numpy(), float(t)))
                x = sched.step(eps, t, x, eta=0.0).prev_sample
            return x.numpy()

        runs = args.sample_runs if args.sample_runs is not None else args.runs
        times, rss = measure(runs, args.sample_warmup, lambda: ddim(args.sample_steps))
        m = summary(f"ddim{len(sched.timesteps)}_{k}", "sample", k, len(sched.timesteps),
                    args.sample_warmup, times, rss)
        out["measurements"].append(m)
        log(m)
        for key in [k for k in check if k.startswith("sample") and k.endswith("_images") and k != "sample_images"]:
            n = int(key[len("sample"):-len("_images")])
            out["checks"][f"sample_ddim{n}"] = errors(ddim(n), check[key])
        print(f"sampling checks vs diffuse: {out['checks']}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
