"""Photos from outside every training and validation set, with and without a person: what the Space answers.

The photos ship inside installed packages, so anyone can rerun this offline: scikit-image (``skimage.data``,
public-domain or CC0 photos, see its README), Gradio (its demo and test photos: animals close up, a tower, a CGI
character) and matplotlib (its sample photo of Grace Hopper). They are read from the packages, never copied into
this repository. No masks exist for them: the table shows the presence score, the share of pixels marked person and
whether the Space reports "No person found". Only the coffee cup is also an example of the Space. Nothing here
trains a model; ``--pasted-val`` (val rows) chose the presence head's loss weight; ``--pasted-test`` (the Human
Segmentation Dataset's test people on the same val frames) is held out and chooses nothing.

    .venv/bin/python scripts/foreign_photos.py                     # weights/
    .venv/bin/python scripts/foreign_photos.py runs/RUN/export weights/
    .venv/bin/python scripts/foreign_photos.py weights/ --without-scene-prior --pasted-val   # needs ../shared/data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import gradio
import matplotlib
import numpy as np
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter.config import ModelConfig
from segmenter.inference import Segmenter
from segmenter.pipeline import MIN_SHARE, Options

GRADIO = Path(gradio.__file__).resolve().parent


def package_photo(path: Path) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(Image.open(path).convert("RGB"))


# name -> (whether it shows a person, a function returning its pixels)
PHOTOS: dict[str, tuple[bool, Callable[[], np.ndarray]]] = {
    "coffee": (False, data.coffee),  # a cup of coffee on a saucer, close-up (also examples/no_person_coffee.jpg)
    "chelsea": (False, data.chelsea),  # a cat
    "rocket": (False, data.rocket),  # a rocket on its launch pad
    "motorcycle": (False, lambda: data.stereo_motorcycle()[0]),  # a motorbike in a workshop
    "hubble_deep_field": (False, data.hubble_deep_field),  # galaxies
    "astronaut": (True, data.astronaut),  # Eileen Collins, a portrait
    "camera": (True, data.camera),  # the cameraman (grayscale)
    "cheetah": (False, package_photo(GRADIO / "media_assets" / "images" / "cheetah.jpg")),  # running, small
    "cheetah1": (False, package_photo(GRADIO / "media_assets" / "images" / "cheetah1.jpg")),  # a face, close-up
    "cheetah2": (False, package_photo(GRADIO / "test_data" / "cheetah2.jpg")),  # a cub's face, close-up
    "lion": (False, package_photo(GRADIO / "media_assets" / "images" / "lion.jpg")),  # lying on a rock
    "tower": (False, package_photo(GRADIO / "media_assets" / "images" / "tower.jpg")),  # the Eiffel tower
    "groot": (False, package_photo(GRADIO / "media_assets" / "images" / "groot.jpeg")),  # a CGI tree-creature's face
    "grace_hopper": (True, package_photo(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="*", default=["weights/"], help="weights folders (default: weights/)")
    p.add_argument(
        "--without-scene-prior",
        action="store_true",
        help="also a column for each weights folder with a scene prior, with the prior taken out (torch engine)",
    )
    p.add_argument(
        "--pasted-val",
        action="store_true",
        help="also count how many val people pasted onto the val frames without people each column misses",
    )
    p.add_argument(
        "--pasted-test",
        action="store_true",
        help="also count how many Human Segmentation test people pasted onto the val frames without people each "
        "column misses (held out: reported, never chosen on)",
    )
    args = p.parse_args(argv)
    pasted = pasted_photos() if args.pasted_val else []
    pasted_test = pasted_photos(test=True) if args.pasted_test else []
    missed, missed_test = [], []
    photos = {name: Image.fromarray(pixels()).convert("RGB") for name, (_, pixels) in PHOTOS.items()}
    columns = [(w, False) for w in args.weights]
    if args.without_scene_prior:
        columns += [(w, True) for w in args.weights if ModelConfig.load(Path(w) / "config.json").scene_prior]
    names = [f"{w} without its scene prior" if ablate else w for w, ablate in columns]
    header = ["photo", "person in it", *(f"{n}: presence / person share / reported" for n in names)]
    rows = [[name, "yes" if person else "no"] for name, (person, _) in PHOTOS.items()]
    for weights, ablate in columns:
        seg = Segmenter.from_pretrained(weights, device="cpu", engine="torch" if ablate else "auto")
        if ablate:  # the presence head alone decides (the ONNX graph holds the prior, so eager torch runs)
            seg.model.scene = None
        for row, photo in zip(rows, photos.values(), strict=True):
            r = seg.segment(photo)
            presence = "n/a" if r.presence is None else f"{r.presence:.2f}"
            row.append(f"{presence} / {r.share:.1%} / {'no person' if r.no_person else 'person'}")
        missed.append(missed_people(seg, pasted))
        missed_test.append(missed_people(seg, pasted_test))
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for col, name in enumerate(names, start=2):
        right = sum(row[col].endswith("/ person") == (row[1] == "yes") for row in rows)
        print(f"{name}: {right} of {len(rows)} photos answered right (person / no person)")
    for name, (n, size) in zip(names, missed, strict=True) if pasted else ():
        print(f"{name}: {n} of {len(pasted)} val people pasted onto val frames without people reported no person{size}")
    for name, (n, size) in zip(names, missed_test, strict=True) if pasted_test else ():
        print(
            f"{name}: {n} of {len(pasted_test)} test people pasted onto val frames without people reported no person"
            + size
        )


def missed_people(seg: Segmenter, composites: list[tuple[Image.Image, float]]) -> tuple[int, str]:
    """How many (photo, share of the frame its pasted people cover) composites ``seg`` reports as "no person", for
    which reason (a presence score under the threshold, or a mask under ``MIN_SHARE`` of the frame), and how large
    the people it missed are against those it found (median share of the frame, from the pasted masks)."""
    if not composites:
        return 0, ""
    photos, truth = [photo for photo, _ in composites], [share for _, share in composites]
    results = list(seg.segment_many(photos, Options(presence_gate=False)))  # the gate's verdict, from the score
    by_score = [r.presence is not None and r.presence < r.presence_threshold for r in results]
    tiny = [not s and r.share < MIN_SHARE for s, r in zip(by_score, results, strict=True)]
    missed = [s or t for s, t in zip(by_score, tiny, strict=True)]
    if not any(missed):
        return 0, ""
    size = {m: [share for share, miss in zip(truth, missed, strict=True) if miss == m] for m in (True, False)}
    found = f", those found {float(np.median(size[False])):.1%}" if size[False] else ""
    return sum(missed), (
        f" ({sum(by_score)} by the presence score, {sum(tiny)} with a mask under {MIN_SHARE:.1%} of the frame; the "
        f"people missed cover a median {float(np.median(size[True])):.1%} of the frame{found})"
    )


def pasted_photos(test: bool = False) -> list[tuple[Image.Image, float]]:
    """Each val person of the shared datasets pasted onto a val frame without people (segmenter.scene.pasted_val):
    people beside a dog or a car, which no val photo shows. Val rows only: it chose the presence head's loss weight
    (README, Ablations), and nothing is fitted on it. ``test``: the Human Segmentation Dataset's test people instead,
    onto the same frames: held out, the figure to quote (nothing is chosen on it). -> [(photo, share of the frame its
    pasted people cover)]."""
    from segmenter.data import DATA_ROOT, DEFAULT_DATA_DIR, load_pairs, parse_sources
    from segmenter.scene import pasted_val, split_pairs

    spec = "Negatives:val" if test else "Human-Segmentation-Dataset:val,PennFudanPed:val,Negatives:val"
    person, empty = split_pairs(parse_sources(spec, DATA_ROOT, "val"))
    if test:
        person = load_pairs(DEFAULT_DATA_DIR, "test")
    return [
        (Image.fromarray(photo.permute(1, 2, 0).numpy()), float((mask > 127).float().mean()))
        for photo, mask in pasted_val(person, empty)
    ]


if __name__ == "__main__":
    main()
