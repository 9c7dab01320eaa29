"""train.py's validation figures for exported weights: the "epoch 0" row a fine-tune's log is read against.

train.py logs ``val_iou`` and ``val_iou/<set>`` per epoch at the training size, each mask gated at the default
presence threshold (``segmenter.training.lib.validate``); the evaluate command's figures (served size, flip, tuned
thresholds) are not comparable with them. This prints the same figures for any weights, with the val sets and size
of the train.py options given after the weights:

    python scripts/train_val.py weights/ --preset cpu-robust-crops --size 320 \\
        --val-datasets "Human-Segmentation-Dataset,PennFudanPed,PicsArt-Selfies,DAVIS-People,Negatives"

Validation runs in fp32 on the CPU, as train.py's does (--amp autocasts its train steps only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train
from segmenter.data import load_pairs
from segmenter.inference import Segmenter
from segmenter.training import lib
from segmenter.training.config import sources


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python scripts/train_val.py WEIGHTS [train.py options: --val-datasets, --size, --preset]")
    weights, options = argv[0], argv[1:]
    cfg = train.parse_args(options)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _, val_sources = sources(cfg)
    val_sets = lib.val_datasets(cfg, val_sources, [load_pairs(src.path, src.split) for src in val_sources])
    G = Segmenter.from_pretrained(weights, device="cpu", engine="torch").model
    G.scene = None  # train.py validates the generator alone: the scene prior is fitted at export
    loaders = [(name, DataLoader(ds, batch_size=16)) for name, ds in val_sets]  # as train.py
    figures = lib.validate_all(G, loaders, torch.device("cpu"))
    print(f"{weights} at {cfg.size} px, fp32, masks gated at the default presence threshold:")
    for key, value in figures.items():
        print(f"  {key}: {value:.6f}")


if __name__ == "__main__":
    main()
