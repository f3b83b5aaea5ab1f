#!/usr/bin/env python3
"""Sample grids side by side, each under its label, scaled 2x (nearest): the few-step grids of
README. Usage: grid_row.py OUT.png "LABEL=GRID.png" ... (needs Pillow: tools/fixtures/setup.sh)."""
import sys

from PIL import Image, ImageDraw

out, items = sys.argv[1], [a.split("=", 1) for a in sys.argv[2:]]
grids = [(label, Image.open(path).convert("L")) for label, path in items]
scale, pad, head = 2, 24, 22
tiles = [(label, g.resize((g.width * scale, g.height * scale), Image.NEAREST)) for label, g in grids]
width = sum(g.width for _, g in tiles) + pad * (len(tiles) - 1)
height = head + max(g.height for _, g in tiles)
canvas = Image.new("L", (width, height), 255)
draw = ImageDraw.Draw(canvas)
x = 0
for label, g in tiles:
    draw.text((x, 4), label, fill=0, font_size=16)
    canvas.paste(g, (x, head))
    x += g.width + pad
canvas.save(out)
