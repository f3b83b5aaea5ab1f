"""A folder of N photo-sized JPEGs in 11 class subfolders, for measuring the loader (#23).

Each of OpenMoji's 2,456 emoji (the 64 px raster cache `diffuse data fetch openmoji` +
any openmoji training run leaves in data/openmoji/cache/) is composited onto a random
gradient, upscaled to SIZE x SIZE, given sensor-like noise (so JPEG does not compress it to
nothing) and saved at quality 90: photo-like decode cost. The N files are hard links to
those distinct JPEGs (about N / 2456 links each), so the folder costs ~200 MB, not N files'
worth; decoding cost per file is that of a real photo of that size.

Usage: python make_jpeg_folder.py OUT [N=100000] [SIZE=384]   (needs numpy and Pillow)
"""
import os
import sys

import numpy as np
from PIL import Image

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
size = int(sys.argv[3]) if len(sys.argv) > 3 else 384
root = os.path.join(os.path.dirname(__file__), "../../data/openmoji/cache/rgba-64px-2456.bin")
rgba = np.fromfile(root, dtype=np.uint8).reshape(-1, 64, 64, 4)
rng = np.random.default_rng(0)
classes = [f"class{c:02d}" for c in range(11)]
unique = os.path.join(out, ".unique")
os.makedirs(unique, exist_ok=True)
for c in classes:
    os.makedirs(os.path.join(out, c), exist_ok=True)
paths = []
for i, em in enumerate(rgba):
    p = os.path.join(unique, f"{i:05d}.jpg")
    paths.append(p)
    if os.path.exists(p):
        continue
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, 64)[:, None, None]
    bg = (a * (1 - t) + b * t)[:, :, :].repeat(64, axis=1)
    alpha = em[:, :, 3:4] / 255.0
    img = em[:, :, :3] * alpha + bg * (1 - alpha)
    big = Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.BICUBIC)
    noisy = np.asarray(big, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(p, quality=90)
for k in range(n):
    dst = os.path.join(out, classes[k % 11], f"{k:06d}.jpg")
    if not os.path.exists(dst):
        os.link(paths[k % len(paths)], dst)
total = sum(os.path.getsize(p) for p in paths)
print(f"{n} JPEGs ({size}x{size}) in {out}: {len(paths)} distinct files, {total / 1e6:.0f} MB")
