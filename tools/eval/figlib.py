"""Picture helpers of the figure scripts: tiles of a sample folder, a strip cut into frames, and
a labelled table of image rows."""
import os
from PIL import Image, ImageDraw


def tiles(folder):
    """The PNGs of a `diffuse sample` output folder, grid.png left out, in name order."""
    return [Image.open(os.path.join(folder, f)).convert("RGB")
            for f in sorted(os.listdir(folder)) if f != "grid.png" and f.endswith(".png")]


def strip(path, n):
    """The n frames of a strip with 2-pixel gaps (`diffuse interpolate`)."""
    g = Image.open(path).convert("RGB"); w = (g.width - 2 * (n - 1)) // n
    return [g.crop((k * (w + 2), 0, k * (w + 2) + w, g.height)) for k in range(n)]


def table(rows, path, scale=3, gap=4, lw=170):
    """rows: (label, [images or None for a gap]), each image scaled `scale` times."""
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
