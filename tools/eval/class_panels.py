#!/usr/bin/env python3
"""Per-class sample panels, one per guidance scale, side by side: each row is one class (its
name on the left), the same seeds in every panel. Runs `diffuse sample` per class and scale.
Usage: class_panels.py MODEL OUT.png [--guidance 1,3,7.5] [--per-class 8] [--steps 20]
       [--names a,b,...] [--scale 1]     (needs Pillow: tools/fixtures/setup.sh)"""
import argparse
import os
import subprocess
import tempfile

from PIL import Image, ImageDraw

OPENMOJI = ("smileys-emotion,people-body,animals-nature,food-drink,travel-places,activities,"
            "objects,symbols,flags,extras-openmoji,extras-unicode")
p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("out")
p.add_argument("--guidance", default="1,3,7.5")
p.add_argument("--per-class", type=int, default=8)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--names", default=OPENMOJI)
p.add_argument("--scale", type=int, default=1)
p.add_argument("--bin", default=os.environ.get("DIFFUSE", "target/release/diffuse"))
a = p.parse_args()
names, scales = a.names.split(","), a.guidance.split(",")
with tempfile.TemporaryDirectory() as tmp:
    panels = []
    for g in scales:
        rows = []
        for c, _ in enumerate(names):
            d = os.path.join(tmp, f"g{scales.index(g)}-c{c}")
            subprocess.run([a.bin, "sample", "--model", a.model, "--class", str(c),
                            "--guidance-scale", g, "--steps", str(a.steps), "--num-images",
                            str(a.per_class), "--batch-size", str(a.per_class), "--seed", "0",
                            "--output", d, "--quiet"], check=True)
            files = sorted(f for f in os.listdir(d) if f != "grid.png" and f.endswith(".png"))
            rows.append([Image.open(os.path.join(d, f)).convert("RGB") for f in files])
        panels.append((f"guidance {g}", rows))
    w, h = panels[0][1][0][0].size
    w, h = w * a.scale, h * a.scale
    label_w, head, gap, pad = 120, 22, 2, 16
    panel_w = a.per_class * (w + gap)
    canvas = Image.new("RGB", (label_w + len(panels) * (panel_w + pad),
                               head + len(names) * (h + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        draw.text((4, head + r * (h + gap) + h // 2 - 6), name, fill="black", font_size=12)
    for k, (title, rows) in enumerate(panels):
        x0 = label_w + k * (panel_w + pad)
        draw.text((x0, 3), title, fill="black", font_size=15)
        for r, row in enumerate(rows):
            for i, img in enumerate(row):
                canvas.paste(img.resize((w, h), Image.NEAREST),
                             (x0 + i * (w + gap), head + r * (h + gap)))
    canvas.save(a.out)
    print(f"wrote {a.out}: {len(names)} classes x {len(scales)} guidance scales")
