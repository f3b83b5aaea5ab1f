"""The PyTorch + diffusers side of tools/eval/budget.sh (issue #24): the recipe of a diffuse
train config (`examples/mnist32.toml`), written the way a PyTorch user would, for the same
wall-clock minutes on the same threads. Same network (diffusers UNet2DModel from the config's
[model]), same objective (flow matching: x_t = (1 − σ) x₀ + σ ε, target ε − x₀, model time
1000 σ; σ uniform or logit-normal, shifted), same classifier-free-guidance label drop, AdamW
(diffuse's defaults: β 0.9/0.999, ε 1e-8, weight decay 0.01), gradient clipping at 1, warm-up
+ cosine LR ending where the time budget's plan ends (the same planner as diffuse's
`train.max_minutes`: plan after 2 + 20 steps, plan again at 25/50/75/90 % from the pace since
the last plan), diffusers' EMAModel with the same warm-up. Samples: diffusers'
FlowMatchEulerDiscreteScheduler with the config's sampling steps, guidance scale and interval
(σ/(1 − σ) in [lo, hi], as diffuse measures σ), 1000 images as DIR/<class>/N.png for
`diffuse eval --fake`.

Usage: budget_torch.py --config examples/mnist32.toml --minutes 15 --output DIR [--threads 2]
"""

import argparse
import gzip
import json
import math
import os
import time
import tomllib

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.training_utils import EMAModel
from PIL import Image

SKIP, TIMED, SAFETY, REPLAN_AT = 2, 20, 0.95, (0.25, 0.5, 0.75, 0.9)


def mnist(root, split, size):
    """[n, 1, size, size] in [-1, 1] (28 px digits padded with black), labels [n]."""
    stem = "train" if split == "train" else "t10k"
    with gzip.open(f"{root}/{stem}-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(f"{root}/{stem}-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
    p = (size - 28) // 2
    x = np.pad(x, ((0, 0), (p, size - 28 - p), (p, size - 28 - p)))
    x = torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0).unsqueeze(1)
    return x, torch.from_numpy(y)


class Budget:
    """diffuse's train.max_minutes planner (crates/diffuse-train/src/trainer/budget.rs)."""

    def __init__(self, minutes):
        self.budget_s, self.started = minutes * 60.0, time.perf_counter()
        self.steps, self.window, self.planned, self.replans = 0, None, None, 0

    def out_of_time(self):
        return time.perf_counter() - self.started >= self.budget_s

    def after_step(self, step, max_steps):
        self.steps += 1
        if self.steps == SKIP:
            self.window = (time.perf_counter(), SKIP)
        if self.window is None or self.steps - self.window[1] < TIMED:
            return None
        per_step = (time.perf_counter() - self.window[0]) / (self.steps - self.window[1])
        if self.planned is not None:
            passed = 0
            for f in REPLAN_AT[self.replans:]:
                if step < f * self.planned:
                    break
                passed += 1
            self.replans += passed
            if passed == 0:
                return None
        left = max(self.budget_s - (time.perf_counter() - self.started), 0.0)
        more = max(1, math.floor(left * SAFETY / per_step)) if per_step > 0 else max_steps
        n = min(step + more, max_steps)
        changed = n != self.planned
        self.planned = n
        self.window = (time.perf_counter(), self.steps)
        for f in REPLAN_AT[self.replans:]:
            if step < f * n:
                break
            self.replans += 1
        return n if changed else None


def lr_factor(step, warmup, total):
    """diffusers' get_cosine_schedule_with_warmup at `step` of `total`."""
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--mnist", default=os.environ.get("DIFFUSE_MNIST", "../shared/data/mnist"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = tomllib.load(open(a.config, "rb"))
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    sch = cfg.get("scheduler", {})
    assert t.get("prediction_type") == "flow", "budget_torch.py writes the flow-matching recipe"
    size, batch, classes = d["size"], d["batch_size"], 10
    torch.manual_seed(t.get("seed", 0))
    x_all, y_all = mnist(a.mnist, "train", size)

    unet = UNet2DModel(
        sample_size=size, in_channels=1, out_channels=1, num_class_embeds=classes + 1,
        block_out_channels=tuple(m["block_out_channels"]),
        layers_per_block=m["layers_per_block"],
        down_block_types=tuple(m["down_block_types"]), up_block_types=tuple(m["up_block_types"]),
        norm_num_groups=m["norm_num_groups"], attention_head_dim=m["attention_head_dim"],
    )
    lr, warmup = t["learning_rate"], t.get("lr_warmup_steps", 0)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=t.get("adam_weight_decay", 0.01))
    ema = EMAModel(unet.parameters(), decay=t.get("ema_decay", 0.9999), use_ema_warmup=True,
                   inv_gamma=1.0, power=t.get("ema_power", 0.75))
    shift, big_t = sch.get("shift", 1.0), sch.get("num_train_timesteps", 1000)
    drop, clip = t.get("cond_dropout", 0.1), t.get("max_grad_norm", 1.0)
    logit = t.get("flow_sigma_sampling", "uniform") == "logit_normal"
    mu, sd = t.get("flow_logit_mean", 0.0), t.get("flow_logit_std", 1.0)

    budget, total, step, losses = Budget(a.minutes), t["max_steps"], 0, []
    perm, pos = torch.randperm(len(x_all)), 0
    started = time.perf_counter()
    unet.train()
    while step < total and not budget.out_of_time():
        if pos + batch > len(perm):
            perm, pos = torch.randperm(len(x_all)), 0
        idx = perm[pos:pos + batch]
        pos += batch
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(batch) < drop] = classes
        s = torch.sigmoid(torch.randn(batch) * sd + mu) if logit else torch.rand(batch)
        s = shift * s / (1 + (shift - 1) * s)
        noise = torch.randn_like(x0)
        sv = s.view(-1, 1, 1, 1)
        x_t = (1 - sv) * x0 + sv * noise
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(step, warmup, total)
        pred = unet(x_t, s * big_t, class_labels=y).sample
        loss = torch.nn.functional.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), clip)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(loss.item())
        n = budget.after_step(step, t["max_steps"])
        if n is not None:
            total = n
            print(f"budget: {n} steps fit (planned at step {step})", flush=True)
    train_s = time.perf_counter() - started
    print(f"trained {step} steps in {train_s:.0f} s, last loss {np.mean(losses[-50:]):.4f}",
          flush=True)

    ema.copy_to(unet.parameters())
    unet.eval()
    unet.save_pretrained(f"{a.output}/unet_ema")
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=big_t, shift=shift)
    steps, scale = t.get("sample_steps", 20), t.get("sample_guidance", 1.0)
    lo, hi = t.get("sample_guidance_interval", (0.0, math.inf))
    gen = torch.Generator().manual_seed(0)
    started, done = time.perf_counter(), 0
    with torch.inference_mode():
        while done < a.samples:
            b = min(100, a.samples - done)
            labels = torch.arange(done, done + b) % classes
            x = torch.randn(b, 1, size, size, generator=gen)
            sched.set_timesteps(steps)
            for i, tt in enumerate(sched.timesteps):
                sig = float(sched.sigmas[i])
                edm = sig / (1 - sig) if sig < 1 else math.inf
                if scale != 1.0 and lo <= edm <= hi:
                    both = unet(torch.cat([x, x]), tt.expand(2 * b),
                                class_labels=torch.cat([labels, torch.full_like(labels, classes)])).sample
                    c, u = both.chunk(2)
                    v = u + scale * (c - u)
                else:
                    v = unet(x, tt.expand(b), class_labels=labels).sample
                x = sched.step(v, tt, x).prev_sample
            img = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
            for k in range(b):
                out = f"{a.output}/samples/{int(labels[k])}"
                os.makedirs(out, exist_ok=True)
                Image.fromarray(img[k, 0]).save(f"{out}/{done + k:05d}.png")
            done += b
    sample_s = time.perf_counter() - started
    json.dump({"steps": step, "planned": total, "train_s": round(train_s, 1),
               "sample_s": round(sample_s, 1), "threads": a.threads,
               "torch": torch.__version__, "diffusers": __import__("diffusers").__version__},
              open(f"{a.output}/torch_run.json", "w"), indent=1)


if __name__ == "__main__":
    main()
