"""train.py's parts that are not the loop: checkpoints and RNG state, validation and the run's pictures and logs,
the losses, the data and its sampler, --init-from, and the precision --amp picks."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, WeightedRandomSampler

from segmenter.config import ModelConfig
from segmenter.data import (
    DataSource,
    Pair,
    SegmentationDataset,
    has_split,
    load_pairs,
    portable_path,
)
from segmenter.export import copy_export, export_run, write_card
from segmenter.hardware import cpu_has_bf16
from segmenter.model import build_generator
from segmenter.pipeline import binarize

from .config import PATHS, TrainConfig, model_config, sources


# ------------------------------------------------------------------ checkpoints
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, then rename: a kill mid-save never leaves a corrupt ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def find_checkpoint(resume: str) -> Path:
    p = Path(resume)
    if p.is_file():
        return p
    if (p / "last.pt").is_file():
        return p / "last.pt"
    raise SystemExit(f"--resume {resume}: no checkpoint found (expected {p / 'last.pt'})")


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": loader_gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def all_rng_states(loader_gen: torch.Generator, world: int) -> list[dict[str, Any]]:
    """Every rank's RNG states, so that a resumed DDP run continues them all (a collective under DDP)."""
    states = [rng_state(loader_gen)] * world
    if world > 1:
        dist.all_gather_object(states, states[0])
    return states


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    loader_gen.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ evaluation and pictures
@torch.no_grad()
def validate(G: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float, float]:
    """Mean per-image IoU and Dice at the model's resolution, and the mean L1, over ``loader``.

    Masks are what the package serves at this resolution: probability >= the default threshold, emptied when the
    presence head (if any) says "no person" at the default presence threshold.
    """
    G.eval()
    ious, dices, l1s = [], [], []
    mcfg = ModelConfig()
    has_presence = getattr(G, "presence", None) is not None
    for img, mask in loader:
        if has_presence:
            fake, logit = G(img.to(device), with_presence=True)
            present = torch.sigmoid(logit.float()) >= mcfg.presence_threshold
        else:
            fake, present = G(img.to(device)), torch.ones(len(img), dtype=torch.bool, device=device)
        fake = fake.float()
        target = mask.to(device) > 0
        pred = binarize(((fake + 1) / 2)[:, 0], mcfg.threshold)[:, None] & present[:, None, None, None]
        inter = (pred & target).flatten(1).sum(1).float()
        union = (pred | target).flatten(1).sum(1).float()
        total = pred.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
        ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
        dices += torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).tolist()
        l1s += (fake - mask.to(device)).abs().flatten(1).mean(1).tolist()
    G.train()
    return float(np.mean(ious)), float(np.mean(dices)), float(np.mean(l1s))


def validate_all(G: nn.Module, val_sets: list[tuple[str, DataLoader]], device: torch.device) -> dict[str, float]:
    """validate() on every val set: val_iou/val_dice/val_l1 are the means over the sets (one set: its own figures),
    plus ``val_iou/<name>`` per set when there are several."""
    per_set = {name: validate(G, loader, device) for name, loader in val_sets}
    out = {
        key: float(np.mean([m[k] for m in per_set.values()])) for k, key in enumerate(("val_iou", "val_dice", "val_l1"))
    }
    if len(per_set) > 1:
        out |= {f"val_iou/{name}": m[0] for name, m in per_set.items()}
    return out


@torch.no_grad()
def save_samples(G: nn.Module, images: torch.Tensor, masks: torch.Tensor, path: Path, device: torch.device) -> None:
    """A grid: one row per val image -- photo | predicted mask | true mask."""
    from torchvision.utils import save_image

    G.eval()
    fake = G(images.to(device)).float().cpu()
    G.train()
    rows = [
        torch.stack([(im + 1) / 2, ((f + 1) / 2).expand(3, -1, -1), ((m + 1) / 2).expand(3, -1, -1)])
        for im, f, m in zip(images, fake, masks, strict=True)
    ]
    save_image(torch.cat(rows), path, nrow=3, padding=2, pad_value=1.0)


def plot_curves(log: list[dict[str, Any]], path: Path, size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in log]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.plot(epochs, [r["loss_g_l1"] for r in log], label="G L1")
    a.plot(epochs, [r["loss_g_gan"] for r in log], label="G GAN")
    a.plot(epochs, [r["loss_d"] for r in log], label="D")
    a.set_xlabel("epoch"), a.set_title("training losses"), a.legend()
    b.plot(epochs, [r["val_iou"] for r in log], label="val IoU")
    b.plot(epochs, [r["val_dice"] for r in log], label="val Dice")
    b.set_xlabel("epoch"), b.set_title(f"validation ({size}x{size})"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_logs(run_dir: Path, log: list[dict[str, Any]], append: bool) -> None:
    """log.jsonl (one record per epoch; ``append``: only the last) and metrics.csv (all of them)."""
    with open(run_dir / "log.jsonl", "a" if append else "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in (log[-1:] if append else log))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log[0]) if log else [])
        w.writeheader()
        w.writerows(log)


# ------------------------------------------------------------------ main
LOSS_KEYS = ("loss_d", "loss_g_gan", "loss_g_l1", "loss_g_dice", "loss_presence")


def soft_dice_loss(fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - soft Dice between the probability (fake + 1) / 2 and the target (mask + 1) / 2, averaged over the batch.

    A photo without a person (empty target) scores 1 only with an empty prediction (+1 smoothing).
    """
    p, t = ((fake.float() + 1) / 2).flatten(1), ((mask + 1) / 2).flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def presence_target(mask: torch.Tensor) -> torch.Tensor:
    """(B,1,S,S) masks in {-1,1} -> (B,) 1.0 where at least 0.1% of the frame is person."""
    return ((mask > 0).flatten(1).float().mean(1) >= 1e-3).float()


def load_data(cfg: TrainConfig) -> tuple[SegmentationDataset, list[float], list[tuple[str, SegmentationDataset]]]:
    """(train dataset, per-photo sampling weights, [(name, val dataset)]), decoded once.

    A missing or unreadable file raises ValueError naming it. Without a split, the last eighth of ``--data`` is
    held out for validation. A photo's sampling weight is its source's weight over the source's size.
    """
    train_sources, val_sources = sources(cfg)
    if not cfg.datasets and not has_split(cfg.data):
        pairs = load_pairs(cfg.data)
        if len(pairs) < 2:
            raise ValueError(f"{cfg.data}: need at least 2 image pairs to hold one out for validation")
        k = max(1, len(pairs) // 8)
        train_parts, val_parts = [pairs[:-k]], [pairs[-k:]]
    else:
        train_parts = [load_pairs(src.path, src.split) for src in train_sources]
        val_parts = [load_pairs(src.path, src.split) for src in val_sources]
    if cfg.limit:
        train_parts, val_parts = [p[: cfg.limit] for p in train_parts], [p[: cfg.limit] for p in val_parts]
    weights = [src.weight / len(part) for src, part in zip(train_sources, train_parts, strict=True) for _ in part]
    train_pairs = [pair for part in train_parts for pair in part]
    train_ds = SegmentationDataset(
        train_pairs,
        train=True,
        size=cfg.size,
        aug=cfg.aug,
        composite_p=cfg.composite_p,
        paste_p=cfg.paste_p,
        paste_min_height=cfg.paste_min_height,
        crop_negative_p=cfg.crop_negative_p,
        subject_crop_p=cfg.subject_crop_p,
    )
    return train_ds, weights, val_datasets(cfg, val_sources, val_parts)


def val_datasets(
    cfg: TrainConfig, val_sources: list[DataSource], val_parts: list[list[Pair]]
) -> list[tuple[str, SegmentationDataset]]:
    """[(name, val dataset)] at the training size, named by folder (a folder read for several splits: name:split,
    so that each is logged apart); ``val_parts``: each source's pairs (without a split: the held-out eighth of --data)."""
    names = [src.name for src in val_sources]
    names = [f"{src.name}:{src.split}" if names.count(src.name) > 1 else src.name for src in val_sources]
    return [
        (name, SegmentationDataset(part, train=False, size=cfg.size))
        for name, part in zip(names, val_parts, strict=True)
    ]


def make_sampler(
    cfg: TrainConfig,
    train_ds: SegmentationDataset,
    weights: list[float],
    gen: torch.Generator,
    ddp: bool,
    world: int,
    rank: int,
) -> Sampler | None:
    """DDP: a DistributedSampler; a --datasets mix: draws by the sources' weights; else None (plain shuffling)."""
    if ddp:
        if cfg.datasets:
            raise SystemExit("--datasets draws by sampling weights, which needs a single process (no torchrun)")
        return DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed)
    if not cfg.datasets:
        return None
    return WeightedRandomSampler(weights, cfg.epoch_samples or len(train_ds), replacement=True, generator=gen)


def init_generator(G: nn.Module, weights: str) -> None:
    """Load exported generator weights into ``G``; only a presence head the export lacks may be left as initialised."""
    from segmenter.inference import Segmenter

    state = Segmenter.from_pretrained(weights, device="cpu").model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("scene.")}  # refitted at export, never trained
    missing, unexpected = G.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("presence.") for k in missing):
        raise SystemExit(
            f"--init-from {weights}: does not fit this generator (missing {missing}, unexpected {unexpected})"
        )
    print(f"initialised G from {weights}" + (f" (new: {len(missing)} presence-head tensors)" if missing else ""))


@torch.no_grad()
def save_augmented(ds: SegmentationDataset, path: Path, seed: int, n: int = 16) -> None:
    """A picture of ``n`` augmented training samples (photo, then mask tinted red), drawn without disturbing any RNG."""
    from torchvision.utils import save_image

    states = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    random.seed(seed), torch.manual_seed(seed)
    tiles = []
    for i in random.sample(range(len(ds)), min(n, len(ds))):
        img, mask = ds[i]
        img, m = (img + 1) / 2, (mask + 1) / 2
        tiles.append(img * (1 - 0.5 * m) + 0.5 * m * torch.tensor([1.0, 0.0, 0.2]).view(3, 1, 1))
    torch.set_rng_state(states[0]), np.random.set_state(states[1]), random.setstate(states[2])
    save_image(torch.stack(tiles), path, nrow=8, padding=2, pad_value=1.0)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype --amp uses on ``device``: bf16 (CUDA when supported, CPUs with native bf16), fp16 on
    older CUDA cards, None (fp32) on a CPU without bf16. Weights and optimiser state stay fp32 either way."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def amp_note(device: torch.device, amp: bool, dtype: torch.dtype | None) -> str:
    """The log line that says which precision the train steps run in."""
    if not amp:
        return f"precision: fp32 on {device.type} (--no-amp)"
    if dtype is None:
        return f"precision: fp32 on {device.type}: this CPU has no native bf16 (AVX-512 bf16 / AMX), --amp falls back"
    return (
        f"precision: {str(dtype).removeprefix('torch.')} autocast on {device.type} (--amp), fp32 weights and optimiser"
    )


def recorded_source(src: DataSource, root: str) -> dict[str, Any]:
    """A data source as config.json records it: its path relative to the data root (segmenter.data.portable_path)."""
    return dataclasses.asdict(src) | {"path": portable_path(src.path, root)}


# ------------------------------------------------------------------ export
def export(
    cfg: TrainConfig, run_dir: Path, G_state: dict[str, torch.Tensor], best: dict[str, Any], provenance: dict[str, Any]
) -> Path:
    """Best generator -> run_dir/export/{model.safetensors, config.json, README.md}, with val (and test) metrics;
    then ``--export-to`` (swapped in whole) and the model card. ``provenance`` goes into config.json's ``meta``."""
    mcfg = model_config(cfg)
    G = build_generator(mcfg)
    G.load_state_dict(G_state)
    out = run_dir / "export"
    mcfg.meta = {
        "run_id": cfg.run_id,
        "preset": cfg.preset,
        "best_epoch": best["epoch"],
        **provenance,
        "train_config": dataclasses.asdict(cfg) | {k: portable_path(getattr(cfg, k), cfg.data_root) for k in PATHS},
    }
    train_sources, val_sources = sources(cfg)

    def pairs(src: DataSource, split: str) -> list[Pair]:  # --limit holds at export too
        found = load_pairs(src.path, split)
        return found[: cfg.limit] if cfg.limit else found

    val_sets, test_sets = [], []
    for src in val_sources:  # (a --data without split.csv has no named splits to record)
        with contextlib.suppress(ValueError):
            val_sets.append((f"{src.name}/{src.split}", pairs(src, src.split)))
        if cfg.eval_test:  # recorded for the card, never used to choose
            with contextlib.suppress(ValueError):
                test_sets.append((f"{src.name}/test", pairs(src, "test")))
    tune = cfg.tune_inference and _has_split_sources(cfg)
    scene_train = [p for src in train_sources for p in pairs(src, src.split)] if cfg.scene_prior else None
    mcfg = export_run(
        G,
        mcfg,
        out,
        val_sets,
        test_sets,
        tune=tune,
        half=cfg.half,
        max_size=cfg.tune_max_size or None,
        scene_train=scene_train,
    )
    write_card(out, dataclasses.asdict(cfg), mcfg)
    if cfg.export_to:
        copy_export(out, Path(cfg.export_to))
    return out


def _has_split_sources(cfg: TrainConfig) -> bool:
    return bool(cfg.val_datasets) or has_split(cfg.data)
