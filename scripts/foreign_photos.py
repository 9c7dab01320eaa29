"""Photos from outside every training and validation set, with and without a person: what the Space answers.

The photos ship inside installed packages, so anyone can rerun this offline: scikit-image (``skimage.data``,
public-domain or CC0 photos, see its README), Gradio (its demo and test photos: animals close up, a tower, a CGI
character) and matplotlib (its sample photo of Grace Hopper). They are read from the packages, never copied into
this repository. No masks exist for them: the table shows the presence score, the share of pixels marked person and
whether the Space reports "No person found". Only the coffee cup is also an example of the Space. Nothing here
trains or chooses a model.

    .venv/bin/python scripts/foreign_photos.py                     # weights/
    .venv/bin/python scripts/foreign_photos.py runs/RUN/export weights/
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

from segmenter.inference import Segmenter

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
    args = p.parse_args(argv)
    photos = {name: Image.fromarray(pixels()).convert("RGB") for name, (_, pixels) in PHOTOS.items()}
    header = ["photo", "person in it", *(f"{w}: presence / person share / reported" for w in args.weights)]
    rows = [[name, "yes" if person else "no"] for name, (person, _) in PHOTOS.items()]
    for weights in args.weights:
        seg = Segmenter.from_pretrained(weights, device="cpu")
        for row, photo in zip(rows, photos.values(), strict=True):
            r = seg.segment(photo)
            presence = "n/a" if r.presence is None else f"{r.presence:.2f}"
            row.append(f"{presence} / {r.share:.1%} / {'no person' if r.no_person else 'person'}")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    for col, weights in enumerate(args.weights, start=2):
        right = sum(row[col].endswith("/ person") == (row[1] == "yes") for row in rows)
        print(f"{weights}: {right} of {len(rows)} photos answered right (person / no person)")


if __name__ == "__main__":
    main()
