"""The far-people val set: val people, small in a street scene, the photos where a presence gate erases people.

A fixed recipe over val rows only (never train, never test), so it can choose models without leaking:

- donors: every ``Human-Segmentation-Dataset`` val and ``PennFudanPed`` val photo, its people cut out by the bounding
  box of its mask (a street photo's several pedestrians stay together, as they stood);
- scenes: the ``Negatives`` val frames (854x480, no person), donor ``i`` onto frame ``i mod 18``;
- ``far-30``, ``far-15``, ``far-08``: the donor scaled to 30%, 15% and 8% of the frame's height (a few metres, a
  street's width, across a square), placed wholly inside the frame at a seeded random place, its mask as alpha;
- ``group``: three donors side by side at 15% of the height, overlapping by a tenth of their width (people close
  together), one scene per donor.

Each split is written once as a dataset folder (``split.csv``, ``images/``, ``masks/``) that every loader reads:

    python -m segmenter.far_people --out .cache/far-people   # build (or rebuild) it
    python -m segmenter.evaluate weights/ --all                # builds it when missing and scores it
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .data import DATA_ROOT, load_pair, load_pairs

NAME = "FarPeople"
SCALES = {"far-30": 0.30, "far-15": 0.15, "far-08": 0.08}
GROUP_SCALE = 0.15
GROUP_SIZE = 3
DONORS = (("Human-Segmentation-Dataset", "val"), ("PennFudanPed", "val"))
SCENES = ("Negatives", "val")
DEFAULT_DIR = Path(__file__).resolve().parent.parent / ".cache" / "far-people"
RECIPE_VERSION = "1"  # bump when the recipe changes: a folder of another version is rebuilt


def cut_out(image: Image.Image, mask: Image.Image) -> tuple[Image.Image, Image.Image]:
    """A photo and its mask -> (RGB, L) crops to the mask's bounding box."""
    box = mask.point(lambda v: 255 if v > 127 else 0).getbbox()
    if box is None:
        raise ValueError("a donor without a person")
    return image.crop(box), mask.crop(box)


def scaled(person: Image.Image, alpha: Image.Image, height: int, max_width: int) -> tuple[Image.Image, Image.Image]:
    """The cut-out at ``height`` px (or narrower than ``max_width``), photo and alpha resized alike."""
    scale = min(height / person.height, max_width / person.width)
    size = (max(1, round(person.width * scale)), max(1, round(person.height * scale)))
    return person.resize(size, Image.LANCZOS), alpha.resize(size, Image.BILINEAR)


def paste(scene: Image.Image, truth: np.ndarray, person: Image.Image, alpha: Image.Image, xy: tuple[int, int]) -> None:
    """Paste ``person`` onto ``scene`` at ``xy`` with ``alpha``, and mark its pixels (alpha > 0.5) in ``truth``."""
    scene.paste(person, xy, alpha)
    x, y = xy
    a = np.asarray(alpha) > 127
    truth[y : y + a.shape[0], x : x + a.shape[1]] |= a


def compose(
    scene: Image.Image, people: Sequence[tuple[Image.Image, Image.Image]], share: float, rng: random.Random
) -> tuple[Image.Image, Image.Image]:
    """``people`` side by side at ``share`` of the scene's height, overlapping by a tenth of their width, the row
    placed wholly inside the frame at a random place -> (photo, binary L mask)."""
    W, H = scene.size
    height = max(8, round(share * H))
    cut = [scaled(p, a, height, int(0.9 * W / len(people))) for p, a in people]
    widths = [p.width for p, _ in cut]
    overlap = [round(0.1 * w) for w in widths]
    row_w = sum(widths) - sum(overlap[1:])
    row_h = max(p.height for p, _ in cut)
    x = rng.randint(0, max(0, W - row_w))
    y = rng.randint(0, max(0, H - row_h))
    photo, truth = scene.copy(), np.zeros((H, W), bool)
    for i, (p, a) in enumerate(cut):
        paste(photo, truth, p, a, (x, y + row_h - p.height))  # feet on one line
        x += p.width - (overlap[i + 1] if i + 1 < len(cut) else 0)
    return photo, Image.fromarray(truth.astype(np.uint8) * 255, "L")


def build(out: Path = DEFAULT_DIR, data_root: Path = DATA_ROOT, seed: int = 0) -> Path:
    """Write every split of the recipe under ``out`` (``split.csv`` last, so a killed build is rebuilt) -> ``out``."""
    donors = [cut_out(*load_pair(p)) for name, split in DONORS for p in load_pairs(data_root / name, split)]
    scenes = [load_pair(p)[0] for p in load_pairs(data_root / SCENES[0], SCENES[1])]
    if not donors or not scenes:
        raise ValueError(f"{data_root}: the far-people recipe needs the val rows of {DONORS} and {SCENES}")
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(split, share, [i]) for split, share in SCALES.items() for i in range(len(donors))]
    jobs += [("group", GROUP_SCALE, [(i + k) % len(donors) for k in range(GROUP_SIZE)]) for i in range(len(donors))]
    for split, share, picks in jobs:
        rng = random.Random(f"{seed}-{split}-{picks[0]}")
        photo, mask = compose(scenes[picks[0] % len(scenes)], [donors[i] for i in picks], share, rng)
        stem = f"{split}-{picks[0]:03d}"
        photo.save(out / "images" / f"{stem}.jpg", quality=95)
        mask.save(out / "masks" / f"{stem}.png")
        rows.append({"images": f"images/{stem}.jpg", "masks": f"masks/{stem}.png", "split": split})
    (out / "VERSION").write_text(RECIPE_VERSION + "\n")
    with (out / "split.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["images", "masks", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return out


def ensure(out: Path = DEFAULT_DIR, data_root: Path = DATA_ROOT) -> Path:
    """The far-people folder, built when missing, half-built or of another recipe version."""
    version = out / "VERSION"
    if (out / "split.csv").is_file() and version.is_file() and version.read_text().strip() == RECIPE_VERSION:
        return out
    return build(out, data_root)


def splits() -> list[str]:
    return [*SCALES, "group"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segmenter.far_people", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="folder to write (default: %(default)s)")
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="datasets (default: %(default)s)")
    args = parser.parse_args(argv)
    out = build(args.out, args.data_root)
    print(f"{out}:")
    for split in splits():
        shares = [float((np.asarray(load_pair(p)[1]) > 127).mean()) for p in load_pairs(out, split)]
        print(
            f"  {split}: {len(shares)} photos, people cover {min(shares):.2%} / {np.median(shares):.2%} / "
            f"{max(shares):.2%} of the frame (min / median / max)"
        )


if __name__ == "__main__":
    main()
