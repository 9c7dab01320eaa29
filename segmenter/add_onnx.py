"""Add ``model.onnx`` (the ONNX Runtime engine) to weights exported before export wrote it.

    python -m segmenter.add_onnx weights/

The weights are checked against their sha256 first; the graph's sha256 is recorded in ``config.json``.
Needs the ``onnx`` package (``pip install ".[train]"``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .export import add_onnx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path, help="folder with config.json + model.safetensors")
    written = add_onnx(parser.parse_args(argv).weights)
    if written is None:
        raise SystemExit("error: nothing written: install the onnx package")
    print(f"wrote {written} (sha256 in config.json)")


if __name__ == "__main__":
    main()
