"""PyTorch side of bench/run: the measurements of `diffuse bench` on the same model.

Loads the diffusers pipeline folder that `diffuse bench --save-weights` wrote (same config,
same weights) and times, after warm-up, over N runs (median, min, max):
  forward   UNet2DModel forward at each batch size, under torch.inference_mode();
  train     one step: forward, MSE vs a fixed target, backward, clip_grad_norm_(1.0),
            torch.optim.AdamW(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01);
  sample    DDIMScheduler (the folder's scheduler config) 50 steps, eta 0, K images at once.
Peak RSS per case is VmHWM, reset through /proc/self/clear_refs before the case's warm-up (the
same method as diffuse); bench/run runs each kind in its own process, as on the diffuse side.
With --check (the file `diffuse bench --save-check` wrote) it recomputes diffuse's forward on
the same inputs, samples from the same x_T and trains on the same batch, and reports the
differences. Output: one JSON object shaped like diffuse's report (--json). --device cuda runs
the same on a GPU (times synchronized; RSS is still host memory).
"""

import argparse
import contextlib
import json
import os
import platform
import sys
import time

# Quiet, offline: everything needed is on disk.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pipeline", required=True, help="folder with unet/ and scheduler/ (diffuse wrote it)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sample-runs", type=int, default=None)
    p.add_argument("--sample-warmup", type=int, default=1)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--sample-images", type=int, default=16)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--only", default="forward,sample,train")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--check", help="safetensors file of `diffuse bench --save-check`")
    p.add_argument("--json", help="write the report here")
    p.add_argument("--tf32", action="store_true",
                   help="on CUDA, let cuDNN/cuBLAS use TF32 (PyTorch's conv default); off: true fp32 like diffuse")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"],
                   help="bf16: every UNet call under torch.autocast(bfloat16) (f32 weights, AdamW and loss)")
    return p.parse_args()


args = parse_args()

import torch  # noqa: E402  (after the environment is set)

# Threads first, before any parallel work.
torch.set_num_threads(args.threads)
torch.set_num_interop_threads(args.threads)

if args.device.startswith("cuda"):
    # PyTorch runs cuDNN convolutions in TF32 by default; diffuse computes in fp32.
    torch.backends.cudnn.allow_tf32 = args.tf32
    torch.backends.cuda.matmul.allow_tf32 = args.tf32

import diffusers  # noqa: E402
import diffusers.utils.import_utils as _iu  # noqa: E402

# A UNet2DModel needs neither transformers nor peft; a machine whose transformers wants another
# huggingface_hub than diffusers 0.42.1 (the GPU machines) would otherwise fail the import.
_iu._transformers_available = False
_iu._peft_available = False
from diffusers import DDIMScheduler, UNet2DModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from bench_util import peak_rss_bytes, reset_peak_rss, summary  # noqa: E402  (this folder)


def sync():
    if args.device == "cuda":
        torch.cuda.synchronize()


def measure(runs, warmup, fn):
    reset_peak_rss()
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(max(runs, 1)):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return times, peak_rss_bytes()


def autocast():
    """The UNet calls' precision context: torch.autocast(bfloat16) for --dtype bf16."""
    if args.dtype == "bf16":
        return torch.autocast(device_type="cuda" if args.device.startswith("cuda") else "cpu",
                              dtype=torch.bfloat16)
    return contextlib.nullcontext()


def errors(a, b):
    a, b = a.detach().cpu(), b.detach().cpu()
    d = (a.double() - b.double()).abs().max().item()
    return {"max_abs": d, "max_rel": d / max(b.double().abs().max().item(), 1e-30)}


def main():
    gen = torch.Generator().manual_seed(args.seed)
    dev = torch.device(args.device)
    unet = UNet2DModel.from_pretrained(os.path.join(args.pipeline, "unet"), torch_dtype=torch.float32)
    unet.to(dev).eval()
    cfg = unet.config
    c = cfg.in_channels
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    check = {k: v.to(dev) for k, v in load_file(args.check).items()} if args.check else {}
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    out = {
        "side": "pytorch",
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "python": platform.python_version()},
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "model": {"params": sum(p.numel() for p in unet.parameters()), "sample_size": [h, w],
                  "in_channels": c},
        "peak_rss_method": "VmHWM per measurement (reset through /proc/self/clear_refs before its warm-up)",
        "measurements": [],
        "checks": {},
    }
    log = lambda m: print(  # noqa: E731
        f"{m['name']:<12} median {m['median_s']:9.4f} s  (min {m['min_s']:.4f}, max {m['max_s']:.4f}, "
        f"{m['runs']} runs)  {m['images_per_s']:8.2f} images/s", file=sys.stderr, flush=True)

    # FLOPs as torch's own counter sees them (conv, mm, sdpa), to check diffuse's analytic count.
    try:
        from torch.utils.flop_counter import FlopCounterMode
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            unet(torch.zeros(1, c, h, w, device=dev), torch.tensor([500], device=dev)).sample
        out["flops_forward_per_image_torch_counter"] = fc.get_total_flops()
    except Exception as e:  # the counter is a cross-check only
        out["flops_forward_per_image_torch_counter"] = None
        print(f"FlopCounterMode failed: {e}", file=sys.stderr)

    if "check_output" in check:
        with torch.inference_mode(), autocast():
            y = unet(check["check_sample"], check["check_timesteps"]).sample.float()
        out["checks"]["forward"] = errors(y, check["check_output"])
        print(f"forward check vs diffuse: {out['checks']['forward']}", file=sys.stderr)

    if "forward" in only:
        for b in [int(x) for x in args.batches.split(",") if x]:
            x = torch.randn(b, c, h, w, generator=gen).to(dev)
            t = torch.tensor([(i * 997 + 500) % 1000 for i in range(b)], device=dev)

            def fwd():
                with torch.inference_mode(), autocast():
                    unet(x, t).sample
            times, rss = measure(args.runs, args.warmup, fwd)
            m = summary(f"forward_b{b}", "forward", b, None, args.warmup, times, rss)
            out["measurements"].append(m)
            log(m)

    if "sample" in only:
        k = args.sample_images
        sched = DDIMScheduler.from_pretrained(os.path.join(args.pipeline, "scheduler"))
        noise = check["sample_noise"] if "sample_noise" in check else torch.randn(k, c, h, w, generator=gen).to(dev)
        k = noise.shape[0]
        result = {}

        def sample():
            sched.set_timesteps(args.sample_steps)
            x = noise * sched.init_noise_sigma
            with torch.inference_mode():
                for t in sched.timesteps:
                    with autocast():
                        eps = unet(x, t).sample
                    x = sched.step(eps.float(), t, x, eta=0.0).prev_sample
            result.setdefault("first", x)
        warm = args.sample_warmup
        runs = args.sample_runs if args.sample_runs is not None else args.runs
        times, rss = measure(runs, warm, sample)
        steps = len(sched.timesteps)
        m = summary(f"ddim{steps}_{k}", "sample", k, steps, warm, times, rss)
        out["measurements"].append(m)
        log(m)
        if "sample_images" in check:
            # Random weights make 50 DDIM steps chaotic: the short run is the real check.
            out["checks"]["sample"] = errors(result["first"], check["sample_images"])
            out["checks"]["sample"]["informational"] = True
            short = [k for k in check if k.startswith("sample") and k.endswith("_images") and k != "sample_images"]
            for key in short:
                n = int(key[len("sample"):-len("_images")])
                sched.set_timesteps(n)
                x = noise * sched.init_noise_sigma
                with torch.inference_mode():
                    for t in sched.timesteps:
                        with autocast():
                            eps = unet(x, t).sample
                        x = sched.step(eps.float(), t, x, eta=0.0).prev_sample
                out["checks"][f"sample_ddim{n}"] = errors(x, check[key])
            print(f"sampling checks vs diffuse: {out['checks']}", file=sys.stderr)

    if "train" in only:
        b = args.train_batch
        if "train_x" in check:
            x, t, target = check["train_x"], check["train_timesteps"], check["train_target"]
        else:
            x = torch.randn(b, c, h, w, generator=gen).to(dev)
            t = torch.tensor([float((i * 997 + 500) % 1000) for i in range(b)], device=dev)
            target = torch.randn(b, c, h, w, generator=gen).to(dev)
        b = x.shape[0]
        unet.train()
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        losses = []

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                out = unet(x, t).sample
            loss = torch.nn.functional.mse_loss(out.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            losses.append(loss.item())
        times, rss = measure(args.runs, args.warmup, step)
        m = summary(f"train_b{b}", "train", b, None, args.warmup, times, rss, first_loss=losses[0])
        out["measurements"].append(m)
        log(m)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
