"""Render the README's picture: photos of a split with their predicted masks and cutouts.

python scripts/figures.py weights/ --split test --count 6 --out docs/test_grid.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter import Segmenter
from segmenter.data import DEFAULT_DATA_DIR, load_pair, load_pairs
from segmenter.metrics import iou


def checkerboard(size: tuple[int, int], cell: int = 12) -> Image.Image:
    """A grey checkerboard, the usual backdrop that shows transparency."""
    board = Image.new("RGB", size, (235, 235, 235))
    draw = ImageDraw.Draw(board)
    for y in range(0, size[1], cell):
        for x in range((y // cell) % 2 * cell, size[0], 2 * cell):
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(200, 200, 200))
    return board


def tile(image: Image.Image, height: int) -> Image.Image:
    return image.resize((round(image.width * height / image.height), height), Image.LANCZOS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights")
    parser.add_argument("--data", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--split", default="test")
    parser.add_argument("--count", type=int, default=6)
    parser.add_argument("--height", type=int, default=180)
    parser.add_argument("--out", default="docs/test_grid.png")
    args = parser.parse_args()

    seg = Segmenter.from_pretrained(args.weights)
    pairs = load_pairs(args.data, args.split)
    step = max(1, len(pairs) // args.count)
    rows = []
    for pair in pairs[::step][: args.count]:
        photo, truth = load_pair(pair, max_side=800)
        result = seg.segment(photo)  # the Space's pipeline and default options
        mask, cut = result.mask, result.cutout()
        board = checkerboard(photo.size)
        board.paste(cut, (0, 0), cut)
        score = iou(mask.point(lambda v: v > 127), truth.point(lambda v: v > 127))
        cells = [tile(im, args.height) for im in (photo, mask.convert("RGB"), board)]
        row = Image.new("RGB", (sum(c.width for c in cells) + 8 * len(cells), args.height + 8), "white")
        x = 0
        for c in cells:
            row.paste(c, (x, 4))
            x += c.width + 8
        ImageDraw.Draw(row).text((6, 8), f"IoU {score:.3f}", fill=(255, 255, 0))
        rows.append(row)
    width = max(r.width for r in rows)
    grid = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        grid.paste(r, (0, y))
        y += r.height
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(rows)} photos of split {args.split!r})")


if __name__ == "__main__":
    main()
