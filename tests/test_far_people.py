"""segmenter.far_people: the fixed recipe that pastes val people small into scenes without people."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from helpers import write_dataset
from PIL import Image

from segmenter import far_people
from segmenter.data import load_pair, load_pairs


def _data_root(root: Path) -> Path:
    """A data root with the recipe's three val sources (small synthetic scenes, one person each)."""
    for name, split in (*far_people.DONORS, far_people.SCENES):
        folder = root / name
        write_dataset(folder, [(200, 240), (220, 200)], [split, split]).rename(folder / "split.csv")
    for mask in (root / far_people.SCENES[0] / "masks").iterdir():  # scenes without people
        Image.new("L", Image.open(mask).size).save(mask)
    return root


def test_far_people_pastes_each_val_person_at_each_scale(tmp_path: Path) -> None:
    out = far_people.build(tmp_path / "far", _data_root(tmp_path / "data"))
    rows = list(csv.DictReader((out / "split.csv").open()))
    donors = 4  # two photos in each donor source
    assert {s: sum(r["split"] == s for r in rows) for s in far_people.splits()} == dict.fromkeys(
        far_people.splits(), donors
    )
    for split, share in far_people.SCALES.items():
        for pair in load_pairs(out, split):
            image, mask = load_pair(pair)
            m = np.asarray(mask) > 127
            assert m.any(), pair.image  # every photo holds a person ...
            ys = np.nonzero(m.any(axis=1))[0]
            assert ys.max() - ys.min() + 1 <= round(share * image.height) + 1  # ... no taller than its scale
    # scenes are the Negatives val frames, so every pasted pixel is the person's
    scene = Image.open(next((tmp_path / "data" / "Negatives" / "images").iterdir()))
    assert Image.open(out / "images" / "far-30-000.jpg").size == scene.size


def test_far_people_is_the_same_every_build(tmp_path: Path) -> None:
    root = _data_root(tmp_path / "data")
    a, b = far_people.build(tmp_path / "a", root), far_people.build(tmp_path / "b", root)

    def digest(folder: Path) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.png"))]

    assert digest(a) == digest(b) and (a / "split.csv").read_text() == (b / "split.csv").read_text()
    assert far_people.ensure(a, root) == a  # built: not rebuilt
    (a / "VERSION").write_text("0\n")  # another recipe's folder is rebuilt
    far_people.ensure(a, root)
    assert (a / "VERSION").read_text().strip() == far_people.RECIPE_VERSION
