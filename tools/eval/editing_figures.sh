#!/usr/bin/env bash
# The pictures of docs/editing.md, made with the CLI from a trained class-conditional MNIST
# pipeline (the quick start's: runs/mnist) and test digits.
# Usage: tools/eval/editing_figures.sh [MODEL=runs/mnist] [OUT=docs] [COLOUR_MODEL]   (needs Pillow)
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
import sys
from PIL import Image
sys.path.insert(0, "tools/eval")
from figlib import strip, table, tiles
t, out = sys.argv[1], sys.argv[2]
src = Image.open(f"{t}/digit0.png").convert("RGB")
table([("input: a test 7", [src])] + [(f"as a 3, strength {s}", tiles(f"{t}/redraw_{s.replace('.', '')}")) for s in ("0.3", "0.6", "0.9")],
      f"{out}/editing-img2img.png")
table([("top half kept", [src, None, None, None, None, src])] +
      [(f"class {c}: blend | RePaint", tiles(f"{t}/blend_{c}") + [None] + tiles(f"{t}/repaint_{c}")) for c in range(10)],
      f"{out}/editing-inpaint.png")
table([("test 0 to test 2 (inverted)", strip(f"{t}/interp_images.png", 10)),
       ("seed 1 to seed 2, class 8", strip(f"{t}/interp_seeds.png", 10)),
       ("seed 1, class 3 to 8", strip(f"{t}/interp_class_38.png", 10)),
       ("seed 5, class 1 to 7", strip(f"{t}/interp_class_17.png", 10))], f"{out}/editing-interpolation.png")
print("wrote", out + "/editing-{img2img,inpaint,interpolation}.png and editing-interpolation.gif")
PY

# 5. Colour (optional 3rd argument: a class-conditional OpenMoji pipeline, e.g. runs/openmoji32):
# a red apple and a grinning face from data/openmoji's raster cache, re-drawn towards other
# groups, half inpainted, and a class interpolation.
COLOUR="${3:-}"
if [ -n "$COLOUR" ]; then
  S=$(sed -n 's/.*"sample_size": *\([0-9]*\).*/\1/p' "$COLOUR/unet/config.json" | head -1)
  "$PY" - "$T" "$S" <<'PY'
import csv, sys
import numpy as np
from PIL import Image
t, s = sys.argv[1], int(sys.argv[2])
groups = ["smileys-emotion", "people-body", "animals-nature", "food-drink", "travel-places", "activities",
          "objects", "symbols", "flags", "extras-openmoji", "extras-unicode"]
rows = [r for r in csv.DictReader(open("data/openmoji/data/openmoji.csv", encoding="utf-8"))
        if not r["skintone"] and r["group"] in groups]
raw = np.fromfile(f"data/openmoji/cache/rgba-{s}px-{len(rows)}.bin", np.uint8).reshape(len(rows), s, s, 4)
for name, hexcode in (("apple", "1F34E"), ("face", "1F600")):
    i = next(k for k, r in enumerate(rows) if r["hexcode"] == hexcode)
    rgba = raw[i].astype(np.float32) / 255
    rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # on white, as the training data
    Image.fromarray((rgb * 255).round().astype(np.uint8)).save(f"{t}/{name}.png")
m = np.zeros((s, s), np.uint8); m[:, s // 2:] = 255; Image.fromarray(m).save(f"{t}/mask_right.png")
PY
  c=(--model "$COLOUR" --quiet --seed 0 --num-images 4 --guidance-scale 3)
  for s in 0.5 0.8; do
    "$BIN" sample "${c[@]}" --init-image "$T/apple.png" --strength "$s" --class 2 --output "$T/apple_animal_${s/./}"
  done
  "$BIN" sample "${c[@]}" --init-image "$T/face.png" --mask "$T/mask_right.png" --class 0 --output "$T/face_blend"
  "$BIN" sample "${c[@]}" --init-image "$T/face.png" --mask "$T/mask_right.png" --class 0 \
    --inpaint repaint --jump 5 --resample 4 --output "$T/face_repaint"
  "$BIN" interpolate --model "$COLOUR" --seeds 3,3 --class 3 --to-class 2 --frames 8 --guidance-scale 3 \
    --output "$T/interp_colour.png"
  "$PY" - "$T" "$OUT" <<'PY'
import sys
from PIL import Image
sys.path.insert(0, "tools/eval")
from figlib import strip, table, tiles
t, out = sys.argv[1], sys.argv[2]
interp = strip(f"{t}/interp_colour.png", 8)
rows = [("apple as animals, strength 0.5", [Image.open(f"{t}/apple.png").convert("RGB")] + tiles(f"{t}/apple_animal_05")),
        ("apple as animals, strength 0.8", [None] + tiles(f"{t}/apple_animal_08")),
        ("face, right half: blend", [Image.open(f"{t}/face.png").convert("RGB")] + tiles(f"{t}/face_blend")),
        ("face, right half: RePaint 5x4", [None] + tiles(f"{t}/face_repaint")),
        ("seed 3, food to animals", interp)]
table(rows, f"{out}/editing-colour.png", lw=210)
print("wrote", out + "/editing-colour.png")
PY
fi
