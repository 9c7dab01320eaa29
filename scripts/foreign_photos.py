"""Photos from outside every training and validation set, with and without a person: what the Space answers.

The photos ship inside scikit-image (``skimage.data``; a test and development dependency, public-domain or CC0
photos, see its README), so anyone can rerun this offline. No masks exist for them: the table shows the presence
score, the share of pixels marked person and whether the Space reports "No person found". Only the coffee cup is
also an example of the Space. Nothing here trains or chooses a model.

    .venv/bin/python scripts/foreign_photos.py                     # weights/
    .venv/bin/python scripts/foreign_photos.py runs/RUN/export weights/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from segmenter.inference import Segmenter

# name -> (whether it shows a person, its pixels from skimage.data)
PHOTOS = {
    "coffee": (False, data.coffee),  # a cup of coffee on a saucer, close-up (also examples/no_person_coffee.jpg)
    "chelsea": (False, data.chelsea),  # a cat
    "rocket": (False, data.rocket),  # a rocket on its launch pad
    "motorcycle": (False, lambda: data.stereo_motorcycle()[0]),  # a motorbike in a workshop
    "hubble_deep_field": (False, data.hubble_deep_field),  # galaxies
    "astronaut": (True, data.astronaut),  # Eileen Collins, a portrait
    "camera": (True, data.camera),  # the cameraman (grayscale)
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
