#!/usr/bin/env bash
# The pictures of docs/editing.md, made with the CLI from a trained class-conditional MNIST
# pipeline (the quick start's: runs/mnist) and test digits.
# Usage: tools/eval/editing_figures.sh [MODEL=runs/mnist] [OUT=docs]   (needs Pillow)
set -euo pipefail
MODEL="${1:-runs/mnist}"; OUT="${2:-docs}"
BIN="${DIFFUSE:-target/release/diffuse}"
PY="${PYTHON:-tools/fixtures/.venv/bin/python}"
mkdir -p "$OUT"
T="$(mktemp -d)"; trap 'rm -rf "$T"' EXIT
# Test digits 0..4 of MNIST's test split (7, 2, 1, 0, 4) and a half mask.
"$PY" - "$T" <<'PY'
import gzip, sys
import numpy as np
from PIL import Image
t = sys.argv[1]
imgs = np.frombuffer(gzip.open("data/mnist/t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
for i in range(5):
    Image.fromarray(imgs[i]).save(f"{t}/digit{i}.png")
m = np.zeros((28, 28), np.uint8); m[14:, :] = 255; Image.fromarray(m).save(f"{t}/mask_bottom.png")
PY
common=(--model "$MODEL" --fit resize --quiet --seed 0)
# 1. Image-to-image: the 7 re-drawn as a 3 at strengths 0.3, 0.6, 0.9 (8 seeds each).
for s in 0.3 0.6 0.9; do
  "$BIN" sample "${common[@]}" --init-image "$T/digit0.png" --strength "$s" --class 3 \
    --num-images 8 --output "$T/redraw_${s/./}"
done
# 2. The top half of the 7 kept, the bottom half completed as each class 0..9, blend and RePaint.
for c in 0 1 2 3 4 5 6 7 8 9; do
  "$BIN" sample "${common[@]}" --init-image "$T/digit0.png" --mask "$T/mask_bottom.png" \
    --class "$c" --num-images 4 --output "$T/blend_$c"
  "$BIN" sample "${common[@]}" --init-image "$T/digit0.png" --mask "$T/mask_bottom.png" \
    --inpaint repaint --jump 5 --resample 4 --class "$c" --num-images 4 --output "$T/repaint_$c"
done
# 3. Interpolation: test digits 0 and 2 (inverted with class 0) and two seeds.
"$BIN" interpolate --model "$MODEL" --fit resize --from "$T/digit3.png" --to "$T/digit1.png" --class 0 \
  --frames 10 --guidance-scale 1 --output "$T/interp_images.png" --gif "$OUT/editing-interpolation.gif"
"$BIN" interpolate --model "$MODEL" --seeds 1,2 --class 8 --frames 10 --output "$T/interp_seeds.png"
# 4. Class embeddings: one seed, class 3 → 8 and 1 → 7 (guidance 2).
"$BIN" interpolate --model "$MODEL" --seeds 1,1 --class 3 --to-class 8 --frames 10 --guidance-scale 2 \
  --output "$T/interp_class_38.png"
"$BIN" interpolate --model "$MODEL" --seeds 5,5 --class 1 --to-class 7 --frames 10 --guidance-scale 2 \
  --output "$T/interp_class_17.png"
"$PY" - "$T" "$OUT" <<'PY'
import os, sys
from PIL import Image, ImageDraw
t, out = sys.argv[1], sys.argv[2]
def tiles(folder):
    return [Image.open(os.path.join(folder, f)).convert("RGB")
            for f in sorted(os.listdir(folder)) if f != "grid.png" and f.endswith(".png")]
def table(rows, path, scale=3, gap=4, lw=170):
    """rows: (label, [images or None for a gap])"""
    tw = max(i.width for _, r in rows for i in r if i) * scale
    w = lw + max(len(r) for _, r in rows) * (tw + gap)
    h = len(rows) * (tw + gap)
    c = Image.new("RGB", (w, h), "white"); d = ImageDraw.Draw(c)
    for k, (label, r) in enumerate(rows):
        y = k * (tw + gap)
        d.text((4, y + tw // 2 - 7), label, fill="black", font_size=13)
        for j, im in enumerate(r):
            if im:
                c.paste(im.resize((tw, tw), Image.NEAREST), (lw + j * (tw + gap), y))
    c.save(path)
src = Image.open(f"{t}/digit0.png").convert("RGB")
table([("input: a test 7", [src])] + [(f"as a 3, strength {s}", tiles(f"{t}/redraw_{s.replace('.', '')}")) for s in ("0.3", "0.6", "0.9")],
      f"{out}/editing-img2img.png")
table([("top half kept", [src, None, None, None, None, src])] +
      [(f"class {c}: blend | RePaint", tiles(f"{t}/blend_{c}") + [None] + tiles(f"{t}/repaint_{c}")) for c in range(10)],
      f"{out}/editing-inpaint.png")
def strip(path, n=10):
    g = Image.open(path).convert("RGB"); w = (g.width - 2 * (n - 1)) // n
    return [g.crop((k * (w + 2), 0, k * (w + 2) + w, g.height)) for k in range(n)]
table([("test 0 to test 2 (inverted)", strip(f"{t}/interp_images.png")),
       ("seed 1 to seed 2, class 8", strip(f"{t}/interp_seeds.png")),
       ("seed 1, class 3 to 8", strip(f"{t}/interp_class_38.png")),
       ("seed 5, class 1 to 7", strip(f"{t}/interp_class_17.png"))], f"{out}/editing-interpolation.png")
print("wrote", out + "/editing-{img2img,inpaint,interpolation}.png and editing-interpolation.gif")
PY
