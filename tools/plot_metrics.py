"""Draws the loss curve of a diffuse training run (RUN/metrics.jsonl) as a PNG, with Pillow only.
Usage: python tools/plot_metrics.py RUN_DIR OUT.png [title]   (e.g. with tools/fixtures/.venv/bin/python)"""
import json, math, sys
from PIL import Image, ImageDraw

run, out = sys.argv[1], sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else run
rows = [json.loads(l) for l in open(f"{run}/metrics.jsonl") if l.strip()]
pts = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None and not r.get("skipped")]
steps = [p[0] for p in pts]; losses = [p[1] for p in pts]
smooth, s = [], None
for l in losses:
    s = l if s is None else 0.97 * s + 0.03 * l
    smooth.append(s)
W, H, L, R, T, B = 800, 450, 70, 20, 40, 50
img = Image.new("RGB", (W, H), "white"); d = ImageDraw.Draw(img)
lo, hi = 0.0, max(losses[len(losses) // 20:] or losses) * 1.1
x = lambda st: L + (st - steps[0]) / max(1, steps[-1] - steps[0]) * (W - L - R)
y = lambda v: T + (1 - (min(v, hi) - lo) / (hi - lo)) * (H - T - B)
for i in range(6):
    v = lo + (hi - lo) * i / 5
    d.line([(L, y(v)), (W - R, y(v))], fill=(230, 230, 230)); d.text((8, y(v) - 6), f"{v:.3f}", fill="black")
for i in range(6):
    st = steps[0] + (steps[-1] - steps[0]) * i / 5
    d.text((x(st) - 10, H - B + 8), f"{int(st)}", fill="black")
d.line([(x(a), y(b)) for a, b in zip(steps, losses)], fill=(170, 190, 230), width=1)
d.line([(x(a), y(b)) for a, b in zip(steps, smooth)], fill=(20, 60, 160), width=2)
d.rectangle([L, T, W - R, H - B], outline="black")
d.text((L, 12), f"{title}: training loss (light: per step, dark: smoothed)", fill="black")
d.text((W // 2 - 20, H - 22), "step", fill="black")
img.save(out); print(f"wrote {out}: {len(pts)} steps, last smoothed loss {smooth[-1]:.4f}")
