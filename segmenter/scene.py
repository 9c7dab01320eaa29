"""The scene prior: a linear probe on frozen ImageNet features that can veto the presence head.

The presence head learned "person" from 455 training photos; every photo without a person it ever saw is a wide DAVIS
scene, so a close-up of a cat, a cheetah or a cup came back as a person. ImageNet's EfficientNet-Lite0 has seen
1.28 million photos of 1000 things, most of them close up: its pooled features say "this is a cat's face" whatever
our data lacks. The probe is fitted here on those frozen features, from the training rows only:

- with a person: the training photos with people, and people pasted onto the photos without (copy-paste);
- without: the photos without people, close-ups of their middle (where footage keeps its animal or car) and
  person-free close-ups cut from the other photos' backgrounds.

Its weight decay is the one whose probe best ranks the val photos (ROC AUC, person vs none) and its threshold is
half the lowest score of a val photo with a person: a veto must not fire on people. The generator then reports
the lower of the head's and the probe's logit, each crossing the presence threshold at its own threshold.

    python -m segmenter.scene weights/ --out weights/   # add (or refit) the prior of exported weights
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import ModelConfig
from .data import DATA_ROOT, DataSource, Pair, load_pair, load_pairs, parse_sources, paste_person, subject_crop
from .data import background_crop as find_background
from .images import model_input
from .model import ScenePrior

WEIGHT_DECAYS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
MAX_SIDE = 640  # photos are decoded at most this large: the prior sees them at 224 px
VETO_MARGIN = 0.5  # the probe's threshold is this times the lowest val score of a photo with a person
MIN_PASTED_SHARE = 0.02  # a pasted person must keep this share of the frame to count as a person in it


def _decoded(pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair decoded at most MAX_SIDE px -> ((3,H,W) uint8 photo, (1,H,W) uint8 0/255 mask)."""
    image, mask = load_pair(pair, MAX_SIDE)
    photo = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
    return photo, torch.from_numpy((np.asarray(mask) > 127).astype(np.uint8) * 255)[None]


def training_samples(pairs: Iterable[Pair], seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training pairs -> (photos with a person, photos without), (3,H,W) uint8 each; drawn with ``seed``."""
    rng = random.Random(seed)
    people, empty = [], []
    for pair in pairs:
        t, m = _decoded(pair)
        (people if m.any() else empty).append((t, m))
    pos, neg = [t for t, _ in people], [t for t, _ in empty]
    for t, m in people:  # a person-free close-up of the background, where the photo leaves room for one
        box = find_background(m, rng.random)
        if box is not None:
            top, left, h, w = box
            neg.append(t[:, top : top + h, left : left + w])
    for _ in range(2):
        for t, m in empty:
            top, left, h, w = subject_crop(tuple(t.shape[-2:]), rng.random)
            neg.append(t[:, top : top + h, left : left + w])
            if people:
                donor, donor_mask = people[rng.randrange(len(people))]
                pasted, pasted_mask = paste_person(t, m, donor, donor_mask, rng.random)
                if (pasted_mask > 127).float().mean() >= MIN_PASTED_SHARE:  # a person made it into the frame
                    pos.append(pasted)
    return pos, neg


@torch.no_grad()
def features(prior: ScenePrior, cfg: ModelConfig, images: Iterable[torch.Tensor | Image.Image]) -> torch.Tensor:
    """Photos -> (N,1280) features of the model input the Segmenter builds (``model_input``: its size, its
    normalisation, its flip averaging). Callers decode photos at most ``MAX_SIDE`` px: the Segmenter resizes the full
    photo, a small difference that the veto's margin (``VETO_MARGIN``) covers."""
    out = []
    for image in images:
        pil = image if isinstance(image, Image.Image) else Image.fromarray(image.permute(1, 2, 0).numpy())
        x = model_input([pil.convert("RGB")], cfg.input_size, cfg.mean, cfg.std)  # (1,3,S,S)
        f = prior.features(torch.cat([x, x.flip(-1)]) if cfg.tta_flip else x)  # (1 or 2, 1280)
        out.append(f.mean(0))
    return torch.stack(out)


def fit_probe(X: torch.Tensor, y: torch.Tensor, weight_decay: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression on standardised features, classes weighted equally -> (weight (1,1280), bias (1,)) on
    the raw features (the standardisation folded in)."""
    mu, sd = X.mean(0), X.std(0) + 1e-6
    Z = (X - mu) / sd
    w = torch.zeros(1, X.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    balance = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (Z @ w.T)[:, 0] + b
        loss = F.binary_cross_entropy_with_logits(logits, y, weight=balance) + weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()
    return w / sd, b - (w / sd) @ mu


def roc_auc(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """Chance that a random photo with a person scores above a random one without (ties count half)."""
    diff = pos[:, None] - neg[None]
    return float((diff > 0).float().mean() + 0.5 * (diff == 0).float().mean())


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def attach(
    model: torch.nn.Module, cfg: ModelConfig, train_pairs: list[Pair], val_person: list[Pair], val_empty: list[Pair]
) -> dict[str, Any]:
    """Fit a scene prior on ``train_pairs`` (weight decay and threshold on val), set it on ``model`` (an effnet_unet
    with a presence head) and ``cfg``; returns the record for ``cfg.meta["scene_prior"]``."""
    if not (val_person and val_empty):
        raise ValueError("the scene prior is chosen on val photos with and without people: need both")
    prior = ScenePrior.from_imagenet()
    pos, neg = training_samples(train_pairs)
    X = features(prior, cfg, [*pos, *neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    vp = features(prior, cfg, (load_pair(p, MAX_SIDE)[0] for p in val_person))
    vn = features(prior, cfg, (load_pair(p, MAX_SIDE)[0] for p in val_empty))
    probes = {wd: fit_probe(X, y, wd) for wd in WEIGHT_DECAYS}
    aucs = {wd: roc_auc((vp @ w.T)[:, 0], (vn @ w.T)[:, 0]) for wd, (w, _) in probes.items()}
    best = max(aucs.values())
    wd = max(d for d, a in aucs.items() if a == best)  # ties: the stronger regularisation
    w, b = probes[wd]
    prior.probe.weight.copy_(w)
    prior.probe.bias.copy_(b)
    lowest = float(torch.sigmoid((vp @ w.T)[:, 0] + b).min())
    highest = float(torch.sigmoid((vn @ w.T)[:, 0] + b).max())
    threshold = VETO_MARGIN * lowest
    prior.shift.fill_(_logit(threshold) - _logit(cfg.presence_threshold))
    model.scene = prior.to(next(model.parameters()).device)
    cfg.scene_prior = True
    train_scores = torch.sigmoid((X[: len(pos)] @ w.T)[:, 0] + b)
    pasted = features(prior, cfg, [photo for photo, _ in pasted_val(val_person, val_empty)])  # beside a dog, a car
    pasted_scores = torch.sigmoid((pasted @ w.T)[:, 0] + b)
    record = {
        "weight_decay": wd,
        "val_auc": {f"{d:g}": round(a, 4) for d, a in aucs.items()},
        "threshold": round(threshold, 4),
        "lowest_with_person": round(lowest, 4),
        "highest_without_person": round(highest, 4),
        "train_samples": {"person": len(pos), "no_person": len(neg)},
        "train_person_vetoed": round(float((train_scores < threshold).float().mean()), 4),
        "val_pasted_vetoed": round(float((pasted_scores < threshold).float().mean()), 4),
        "val_pasted": len(pasted),
        "val_photos": len(val_person) + len(val_empty),
    }
    print(
        f"scene prior: weight decay {wd:g} (val AUC {best:.4f}); threshold {threshold:.4f} = {VETO_MARGIN} x the "
        f"lowest val score with a person {lowest:.4f} (highest without {highest:.4f}); "
        f"vetoed: {record['train_person_vetoed']:.1%} of the training samples with a person, "
        f"{record['val_pasted_vetoed']:.1%} of {len(pasted)} val people pasted onto the val photos without"
    )
    return record


def pasted_val(val_person: list[Pair], val_empty: list[Pair], seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each val person pasted onto a val photo without people: people beside a dog or a car, which no val photo shows.
    A val check (it chose the presence head's loss weight, README Ablations); nothing is fitted on it.
    -> [((3,H,W) uint8 photo, (1,H,W) uint8 0/255 mask of the pasted people)]."""
    rng = random.Random(seed)
    out = []
    for pair in val_person:
        donor, donor_mask = _decoded(pair)
        image, mask = _decoded(rng.choice(val_empty))
        pasted, pasted_mask = paste_person(image, mask, donor, donor_mask, rng.random)
        if (pasted_mask > 127).float().mean() >= MIN_PASTED_SHARE:
            out.append((pasted, pasted_mask))
    return out


def split_pairs(sources: list[DataSource]) -> tuple[list[Pair], list[Pair]]:
    """Val sources -> (photos with a person, photos without), by their masks."""
    from .data import all_empty

    person, empty = [], []
    for src in sources:
        pairs = load_pairs(src.path, src.split)
        (empty if all_empty(pairs) else person).extend(pairs)
    return person, empty


def _recorded_sources(cfg: ModelConfig, key: str, root: Path, split: str) -> list[DataSource]:
    """The training run's sources (config.json's meta.data), found under ``root`` by their folder names."""
    recorded = (cfg.meta.get("data") or {}).get(key) or []
    if not recorded:
        raise ValueError(f"config.json records no meta.data.{key}: pass --train and --val")
    spec = ",".join(f"{Path(s['path']).name}:{s['split']}" for s in recorded)
    return parse_sources(spec, root, split=split)


def main(argv: list[str] | None = None) -> None:
    from .inference import Segmenter
    from .weights import CONFIG_NAME, save_pretrained

    p = argparse.ArgumentParser(
        prog="python -m segmenter.scene", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("weights", help="exported weights (an effnet_unet with a presence head)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (may be the same)")
    p.add_argument("--data-root", type=Path, default=DATA_ROOT, help="datasets (default: %(default)s)")
    p.add_argument("--train", default="", help="NAME:SPLIT,... (default: the run's training sources)")
    p.add_argument("--val", default="", help="NAME:SPLIT,... (default: the run's val sources)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seg = Segmenter.from_pretrained(args.weights, device="cpu", engine="torch")
    cfg = seg.cfg
    if cfg.arch != "effnet_unet" or not cfg.presence_head:
        raise SystemExit(f"{args.weights}: the scene prior vetoes a presence head; this {cfg.arch} has none")
    if args.train:
        train = parse_sources(args.train, args.data_root)
    else:
        train = _recorded_sources(cfg, "sources", args.data_root, "train")
    if args.val:
        val = parse_sources(args.val, args.data_root, "val")
    else:
        val = _recorded_sources(cfg, "val_sources", args.data_root, "val")
    train_pairs = [pair for src in train for pair in load_pairs(src.path, src.split)]
    val_person, val_empty = split_pairs(val)
    # attach fits a new prior from ImageNet: an earlier probe is replaced, never refined
    cfg.meta["scene_prior"] = attach(seg.model, cfg, train_pairs, val_person, val_empty)
    cfg.meta.pop("metrics", None)  # measured without the prior: python -m segmenter.evaluate --card records them
    command = "python -m segmenter.scene " + " ".join(argv if argv is not None else sys.argv[1:])
    cfg.meta["commands"] = [*cfg.meta.get("commands", []), command]
    save_pretrained(seg.model, cfg, args.out)
    print(f"wrote {args.out}/ ({CONFIG_NAME}, model.safetensors, model.onnx); now record its figures with")
    print(f"  python -m segmenter.evaluate {args.out} --all --card")


if __name__ == "__main__":
    main()
