"""Train a Pix2Pix person segmenter: a U-Net generator against a 70x70 PatchGAN, GAN + L1 loss.

Top to bottom: config -> data -> models -> (resume) -> epochs -> export -> Hub. The defaults are the
original run (``--preset seed``); ``--preset cpu-robust-crops`` is the run that produced the shipped weights
(the presets and their history: train_presets.py).

    python train.py --preset cpu-robust-crops --export-to weights/
    python train.py --epochs 3 --run-id smoke
    python train.py --resume runs/<id> [--epochs 50]   # continue a run (optionally for longer)
    torchrun --nproc_per_node=2 train.py ...          # DDP (gloo on CPU, nccl on CUDA)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import random
import shlex
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Sampler, WeightedRandomSampler
from tqdm.auto import tqdm

from segmenter.config import ModelConfig
from segmenter.data import (
    DATA_ROOT,
    DEFAULT_DATA_DIR,
    DataSource,
    Pair,
    SegmentationDataset,
    all_empty,
    has_split,
    load_pairs,
    parse_sources,
    portable_path,
)
from segmenter.export import copy_export, export_run, push_to_hub, write_card
from segmenter.hardware import cpu_has_bf16
from segmenter.model import build_discriminator, build_generator, load_lite_imagenet
from segmenter.pipeline import binarize
from segmenter.weights import EXPORT_FILES  # noqa: F401 (train.EXPORT_FILES)
from train_presets import PRESETS


def opt(default: Any, help: str) -> Any:
    """A TrainConfig field: its default and its --help text."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Defaults are the original 100-epoch pix2pix run (``--preset seed``). Each field is a command-line option
    (``--name-with-dashes``): its help is the field's metadata, its choices those of its Literal type."""

    run_id: str = opt("", "run folder name under --out-dir; empty: generated from the time")
    out_dir: str = opt("runs", "where run folders go")
    data: str = opt(
        str(DEFAULT_DATA_DIR),
        "dataset folder (with split.csv, or Training_Images/ + Ground_Truth/) or an images,masks[,split] CSV",
    )
    train_split: str = opt("train", "split column value of the training rows")
    val_split: str = opt("val", "split column value of the validation rows (choose the best epoch)")
    datasets: str = opt(
        "",
        "train on a mix instead of --data: NAME[:SPLIT[:WEIGHT]],... (NAME under --data-root or a path; WEIGHT: the source's share of each epoch's samples)",
    )
    val_datasets: str = opt(
        "", "validation sets NAME[:SPLIT],... (default split val); the best epoch has the highest mean of their IoUs"
    )
    data_root: str = opt(str(DATA_ROOT), "folder that --datasets and --val-datasets names are relative to")
    epoch_samples: int = opt(
        0, "samples drawn per epoch from a --datasets mix (with replacement, by weight); 0: all photos"
    )
    arch: Literal["pix2pix_unet", "effnet_unet"] = opt("pix2pix_unet", "generator")
    encoder: Literal["lite0", "lite2"] = opt(
        "lite0", "effnet_unet: the ImageNet-pretrained encoder, EfficientNet-Lite0 or the wider Lite2"
    )
    ngf: int = opt(64, "pix2pix_unet: width of the first generator layer")
    ndf: int = opt(64, "PatchGAN discriminator: width of the first layer")
    pretrained: bool = opt(True, "effnet_unet: start the encoder from ImageNet weights")
    epochs: int = opt(100, "total epochs (on --resume: may be raised to train longer)")
    batch_size: int = opt(10, "images per step (per process under DDP)")
    lr: float = opt(2e-4, "Adam learning rate of G and D")
    beta1: float = opt(0.5, "Adam beta1")
    beta2: float = opt(0.999, "Adam beta2")
    lr_decay_every: int = opt(2, "epochs between learning-rate decays")
    lr_decay_g: float = opt(0.999, "G's learning-rate factor at each decay")
    lr_decay_d: float = opt(0.99, "D's learning-rate factor at each decay")
    l1_lambda: float = opt(100.0, "weight of G's L1 loss")
    gan_weight: float = opt(1.0, "weight of G's adversarial loss; 0: L1 only (no discriminator)")
    real_label: float = opt(1.0, "D's target for real pairs; <1: one-sided label smoothing")
    size: int = opt(256, "training resolution (pix2pix_unet: a power of two >= 32; effnet_unet: a multiple of 32)")
    aug: Literal["pix2pix", "strong", "robust"] = opt(
        "pix2pix",
        "pix2pix: resize 286, crop, flip; strong: + scale, aspect, rotation, colour; robust: strong with crops that cut people at the edge, JPEG, blur and noise",
    )
    composite_p: float = opt(0.0, "chance of pasting the person onto another training photo")
    paste_p: float = opt(
        0.0, "chance of copy-paste: 1-2 people cut out by their masks pasted at random scale and place"
    )
    paste_min_height: float = opt(
        0.25, "smallest height of a pasted person, as a share of the frame's height (uniform up to 1)"
    )
    crop_negative_p: float = opt(
        0.0, "chance that a sample is a person-free close-up cropped from its photo's background"
    )
    subject_crop_p: float = opt(
        0.0, "chance that a frame without people (Negatives) becomes a close-up of its middle (its subject)"
    )
    dice_weight: float = opt(0.0, "weight of G's soft Dice loss (on the probability (y + 1) / 2); 0: none")
    presence_weight: float = opt(0.0, "effnet_unet: > 0 adds a person-presence head trained with this BCE weight")
    scene_prior: bool = opt(
        False,
        "at export, fit a linear probe on frozen ImageNet Lite0 features (segmenter.scene) that can veto the presence head: close-ups of animals and objects the training data lacks",
    )
    init_from: str = opt(
        "", "start G from these exported weights (folder or .safetensors); a missing presence head is new"
    )
    seed: int = opt(0, "random seed (rank r of a DDP run uses seed + r)")
    device: Literal["auto", "cpu", "cuda"] = opt("auto", "auto: cuda when available")
    amp: bool = opt(
        True,
        "autocast: bf16 on CPUs with native bf16 (AVX-512 bf16/AMX) and CUDA (fp16 on older cards); fp32 elsewhere",
    )
    workers: int = opt(0, "DataLoader worker processes")
    threads: int = opt(0, "torch CPU threads; 0: torch's default")
    samples: int = opt(6, "val images in the per-epoch sample grid")
    limit: int = opt(0, "use only the first N train/val pairs (smoke tests); 0: all")
    eval_test: bool = opt(True, "record test metrics of the best-by-val model in the export (never used to choose)")
    half: bool = opt(False, "export fp16 weights")
    tune_inference: bool = opt(
        False, "at export, pick the inference size (1x-2x the training size) and flip averaging by val mIoU"
    )
    tune_max_size: int = opt(
        0, "cap on the inference size --tune-inference may pick (a latency budget); 0: 2x the training size"
    )
    export_to: str = opt("", "also copy the exported model here (e.g. weights/)")
    push_to_hub: str = opt(
        "", "Hub repo id (user/name) to upload the export to; token from HF_TOKEN or the cached login"
    )
    resume: str = opt("", "a run folder (or its last.pt) to continue in place")
    preset: str = opt("seed", "starting defaults, which other options override")


# On --resume the saved run's config wins, except for these, which always come from this command line
# (this machine, and where the result goes) ...
RESUME_CURRENT = ("resume", "device", "workers", "threads", "export_to", "push_to_hub")
# ... and these, which may be given to change them: they leave the epochs already trained as they were.
RESUME_CHANGEABLE = ("epochs", "samples", "eval_test", "half", "tune_inference", "tune_max_size")
# Paths of the training machine: config.json records them relative to the data root.
PATHS = ("data", "data_root")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """An option per TrainConfig field, with ``defaults``."""
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=_HelpFormatter)
    types = get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": defaults[f.name], "help": f.metadata["help"]}
        if f.name == "preset":
            parser.add_argument(flag, choices=sorted(PRESETS), **kw)
        elif types[f.name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif get_args(types[f.name]):  # a Literal: its values are the choices
            parser.add_argument(flag, type=str, choices=list(get_args(types[f.name])), **kw)
        else:
            parser.add_argument(flag, type=types[f.name], **kw)
    return parser


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> TrainConfig. Every field is an option; a preset sets defaults that options override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    parser = _parser({**dataclasses.asdict(TrainConfig()), **PRESETS[known.preset], "preset": known.preset})
    cfg = TrainConfig(**vars(parser.parse_args(argv)))
    if cfg.arch == "pix2pix_unet" and (cfg.size < 32 or cfg.size & (cfg.size - 1)):
        parser.error(f"--size {cfg.size}: pix2pix_unet needs a power of two >= 32")
    if cfg.arch == "effnet_unet" and (cfg.size < 32 or cfg.size % 32):
        parser.error(f"--size {cfg.size}: effnet_unet needs a multiple of 32")
    if not 0 < cfg.paste_min_height <= 1:
        parser.error(f"--paste-min-height {cfg.paste_min_height}: a share of the frame's height, in (0, 1]")
    if cfg.scene_prior and not (cfg.arch == "effnet_unet" and cfg.presence_weight > 0):
        parser.error("--scene-prior vetoes the presence head: it needs --arch effnet_unet and --presence-weight > 0")
    try:
        sources(cfg)
    except ValueError as e:
        parser.error(str(e))
    return cfg


def given_options(argv: list[str]) -> dict[str, Any]:
    """The options ``argv`` sets itself (not through defaults or a preset), parsed."""
    return vars(_parser({f.name: argparse.SUPPRESS for f in dataclasses.fields(TrainConfig)}).parse_args(argv))


def resume_config(saved: dict[str, Any], cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: ``saved`` (from the checkpoint), with RESUME_CURRENT from ``cfg`` and
    RESUME_CHANGEABLE from the options ``given``. Any other option given with a different value is an error."""
    conflicts = [
        f"--{k.replace('_', '-')} {v} (the run has {saved.get(k)})"
        for k, v in given.items()
        if k not in RESUME_CURRENT + RESUME_CHANGEABLE and saved.get(k) != v
    ]
    if conflicts:
        raise SystemExit(f"--resume continues a run with its own config; cannot change: {', '.join(conflicts)}")
    changed = {k: v for k, v in given.items() if k in RESUME_CHANGEABLE}
    return TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in RESUME_CURRENT}, **changed})


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The generator's config. The pix2pix U-Net halves down to 1x1: log2(size) levels (8 at 256); ``ngf`` and
    ``num_downs`` are its own (an effnet_unet keeps the defaults, which config.json leaves out)."""
    unet = {"ngf": cfg.ngf, "num_downs": cfg.size.bit_length() - 1} if cfg.arch == "pix2pix_unet" else {}
    return ModelConfig(
        arch=cfg.arch,
        encoder=cfg.encoder,
        input_size=cfg.size,
        presence_head=cfg.arch == "effnet_unet" and cfg.presence_weight > 0,
        **unet,
    )


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


def train_step(
    G: nn.Module,
    D_train: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    img: torch.Tensor,
    mask: torch.Tensor,
    cfg: TrainConfig,
    autocast: Any = None,
    scaler: Any = None,
) -> dict[str, torch.Tensor]:
    """One Pix2Pix step: D on (image, real mask) vs (image, generated mask .detach()), then G on
    GAN + lambda x L1 (+ Dice, + the presence head's BCE when those weights are > 0).

    ``G``/``D_train`` may be DDP-wrapped; ``D`` is the bare discriminator, used (frozen) for G's adversarial term.
    Returns the LOSS_KEYS tensors; with ``cfg.gan_weight == 0`` no discriminator trains.
    """
    autocast = contextlib.nullcontext() if autocast is None else autocast
    scaler = torch.amp.GradScaler(enabled=False) if scaler is None else scaler
    zero = torch.zeros((), device=img.device)
    losses = dict.fromkeys(LOSS_KEYS, zero)
    with autocast:
        if cfg.presence_weight > 0:
            fake, logit = G(img, with_presence=True)  # (B,1,S,S) in [-1,1], (B,)
        else:
            fake, logit = G(img), None
    if cfg.gan_weight > 0:
        # D: real pairs -> real_label, generated pairs (detached) -> 0
        with autocast:
            pred_real = D_train(torch.cat([img, mask], 1))
            pred_fake = D_train(torch.cat([img, fake.detach()], 1))
            loss_d = 0.5 * (
                F.binary_cross_entropy_with_logits(pred_real, torch.full_like(pred_real, cfg.real_label))
                + F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake))
            )
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        # G's adversarial term: through the bare D, whose parameters are frozen for this pass
        D.requires_grad_(False)
        with autocast:
            pred = D(torch.cat([img, fake], 1))
            losses["loss_g_gan"] = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
        D.requires_grad_(True)
        losses["loss_d"] = loss_d
    losses["loss_g_l1"] = F.l1_loss(fake.float(), mask)
    loss_g = cfg.gan_weight * losses["loss_g_gan"] + cfg.l1_lambda * losses["loss_g_l1"]
    if cfg.dice_weight > 0:
        losses["loss_g_dice"] = soft_dice_loss(fake, mask)
        loss_g = loss_g + cfg.dice_weight * losses["loss_g_dice"]
    if logit is not None:
        losses["loss_presence"] = F.binary_cross_entropy_with_logits(logit.float(), presence_target(mask))
        loss_g = loss_g + cfg.presence_weight * losses["loss_presence"]
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return losses


def sources(cfg: TrainConfig) -> tuple[list[DataSource], list[DataSource]]:
    """The training mix and the validation sets: ``--datasets``/``--val-datasets``, or ``--data`` with its splits."""
    train = parse_sources(cfg.datasets, cfg.data_root) if cfg.datasets else [DataSource(cfg.data, cfg.train_split)]
    val = (
        parse_sources(cfg.val_datasets, cfg.data_root, split="val")
        if cfg.val_datasets
        else [DataSource(cfg.data, cfg.val_split)]
    )
    return train, val


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
    val_sets = [
        (src.name, SegmentationDataset(part, train=False, size=cfg.size))
        for src, part in zip(val_sources, val_parts, strict=True)
    ]
    return train_ds, weights, val_sets


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


def main(argv: list[str] | None = None) -> int:
    """Train, export, push; returns the exit code (130 after Ctrl-C). Leaves the SIGINT handler as it found it."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Run:
    """Everything one training process holds: its config, place, data, models, optimisers and progress."""

    cfg: TrainConfig
    commands: list[str]
    run_dir: Path
    device: torch.device
    rank: int
    world: int
    train_ds: SegmentationDataset
    val_sets: list[tuple[str, SegmentationDataset]]
    loader: DataLoader
    val_loaders: list[tuple[str, DataLoader]]
    loader_gen: torch.Generator
    samples: tuple[torch.Tensor, torch.Tensor]
    G: nn.Module = None  # type: ignore[assignment]
    D: nn.Module = None  # type: ignore[assignment]
    G_train: nn.Module = None  # type: ignore[assignment]  # G, DDP-wrapped under torchrun
    D_train: nn.Module = None  # type: ignore[assignment]
    opt_g: torch.optim.Optimizer = None  # type: ignore[assignment]
    opt_d: torch.optim.Optimizer = None  # type: ignore[assignment]
    sched_g: Any = None
    sched_d: Any = None
    autocast: Any = None
    scaler: Any = None
    start_epoch: int = 0
    best: dict[str, Any] = dataclasses.field(default_factory=lambda: {"val_iou": -1.0, "epoch": -1})
    best_state: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    log: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup_process(cfg: TrainConfig) -> tuple[torch.device, int, int]:
    """DDP process group (under torchrun), device and CPU threads -> (device, rank, world size)."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    device = torch.device(
        f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cfg.device == "cuda" and ddp else cfg.device
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return device, rank, world


def setup(argv: list[str]) -> tuple[Run, dict[str, Any] | None]:
    """Config (or the checkpoint's, on --resume), data decoded once, run folder, seeds, loaders -> (Run, checkpoint)."""
    cfg = parse_args(argv)
    command = shlex.join(["python", "train.py", *argv])
    device, rank, world = setup_process(cfg)
    ckpt, commands, run_dir = None, [command], Path()
    if cfg.resume:  # the checkpoint's config, continued in the checkpoint's folder
        ckpt_path = find_checkpoint(cfg.resume)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = resume_config(ckpt["config"], cfg, given_options(argv))
        cfg.out_dir, run_dir = str(ckpt_path.parent.parent), ckpt_path.parent
        commands = [*ckpt.get("commands", []), command]
    try:  # a missing or unreadable file stops here, naming it, before the run folder exists
        train_ds, sample_weights, val_sets = load_data(cfg)
        if cfg.scene_prior and not any(all_empty(load_pairs(s.path, s.split)) for s in sources(cfg)[1]):
            raise SystemExit(
                "--scene-prior chooses its threshold on val photos with and without people: give --val-datasets "
                "a set without people (e.g. Negatives), or --no-scene-prior"
            )
    except ValueError as e:
        raise SystemExit(f"data error: {e}") from None
    if ckpt is None:
        if not cfg.run_id:
            cfg.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            if world > 1:  # every rank must agree on the ID
                ids = [cfg.run_id]
                dist.broadcast_object_list(ids, src=0)
                cfg.run_id = ids[0]
        run_dir = Path(cfg.out_dir) / cfg.run_id
        if (run_dir / "last.pt").exists():
            raise SystemExit(f"{run_dir} already holds a run: --resume {run_dir}, or choose another --run-id")
    if rank == 0:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    sampler = make_sampler(cfg, train_ds, sample_weights, loader_gen, ddp, world, rank)
    per_rank = len(sampler) if sampler is not None else len(train_ds)
    loader = DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=loader_gen,
        num_workers=cfg.workers,
        drop_last=per_rank > cfg.batch_size,
        persistent_workers=cfg.workers > 0,
    )
    first_val = val_sets[0][1]
    picks = range(min(cfg.samples, len(first_val)))
    samples = (torch.stack([first_val[i][0] for i in picks]), torch.stack([first_val[i][1] for i in picks]))
    if rank == 0 and ckpt is None:
        save_augmented(train_ds, run_dir / "augmented.png", cfg.seed)
    run = Run(
        cfg,
        commands,
        run_dir,
        device,
        rank,
        world,
        train_ds,
        val_sets,
        loader,
        [(name, DataLoader(ds, batch_size=16)) for name, ds in val_sets],
        loader_gen,
        samples,
    )
    return run, ckpt


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


def build_models(run: Run, ckpt: dict[str, Any] | None) -> None:
    """G and D with their optimisers and schedulers, fresh (ImageNet encoder or --init-from) or from the checkpoint."""
    cfg, device = run.cfg, run.device
    run.G = G = build_generator(model_config(cfg)).to(device)
    if cfg.init_from and ckpt is None:
        init_generator(G, cfg.init_from)
    elif cfg.arch == "effnet_unet" and cfg.pretrained and ckpt is None:
        load_lite_imagenet(G.encoder)
    run.D = D = build_discriminator(in_channels=4, ndf=cfg.ndf).to(device)
    run.opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    run.opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    run.sched_g = torch.optim.lr_scheduler.StepLR(run.opt_g, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay_g)
    run.sched_d = torch.optim.lr_scheduler.StepLR(run.opt_d, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay_d)
    run.best_state = {k: v.detach().clone() for k, v in G.state_dict().items()}
    if ckpt is not None:
        for name in ("G", "D", "opt_g", "opt_d", "sched_g", "sched_d"):
            getattr(run, name).load_state_dict(ckpt[name])
        run.start_epoch, run.best, run.best_state, run.log = (
            ckpt["epoch"] + 1,
            ckpt["best"],
            ckpt["best_G"],
            ckpt["log"],
        )
        states = ckpt.get("rng_ranks") or [ckpt["rng"]]  # per rank (DDP), or rank 0's alone (older checkpoints)
        set_rng_state(states[run.rank % len(states)], run.loader_gen)
        if run.master:
            for stale in run.run_dir.glob(".*.tmp"):  # from a save that was killed
                stale.unlink()
            write_logs(run.run_dir, run.log, append=False)  # drop records of an epoch whose checkpoint never landed
            print(f"resumed {run.run_dir} after epoch {run.start_epoch} of {cfg.epochs}")
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    run.G_train = nn.parallel.DistributedDataParallel(G) if ddp else G
    run.D_train = nn.parallel.DistributedDataParallel(D) if ddp and cfg.gan_weight > 0 else D
    dtype = amp_dtype(device) if cfg.amp else None
    run.autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
    run.scaler = torch.amp.GradScaler(enabled=dtype == torch.float16)
    if run.master:
        n_g = sum(p.numel() for p in G.parameters())
        n_d = sum(p.numel() for p in D.parameters()) if cfg.gan_weight > 0 else 0
        print(
            f"run {cfg.run_id}: {cfg.arch} G {n_g:,} params, D {n_d:,} params, {len(run.train_ds)} train / "
            f"{sum(len(ds) for _, ds in run.val_sets)} val images, {device}, {run.world} process(es) -> {run.run_dir}"
        )
        print(amp_note(device, cfg.amp, dtype), flush=True)


def train_epoch(run: Run, epoch: int, stop: Callable[[], bool]) -> dict[str, float] | None:
    """One pass over the loader -> mean losses (+ data-loading seconds), or None when ``stop()`` ended it early."""
    if isinstance(run.loader.sampler, DistributedSampler):
        run.loader.sampler.set_epoch(epoch)
    t_data, sums, n = 0.0, dict.fromkeys(LOSS_KEYS, 0.0), 0
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{run.cfg.epochs}", leave=False, disable=not run.master)
    t_fetch = time.time()
    for img, mask in bar:
        t_data += time.time() - t_fetch
        img, mask = img.to(run.device, non_blocking=True), mask.to(run.device, non_blocking=True)
        losses = train_step(
            run.G_train, run.D_train, run.D, run.opt_g, run.opt_d, img, mask, run.cfg, run.autocast, run.scaler
        )
        for key, value in losses.items():
            sums[key] += value.item()
        n += 1
        bar.set_postfix(
            D=f"{sums['loss_d'] / n:.3f}", G_gan=f"{sums['loss_g_gan'] / n:.3f}", L1=f"{sums['loss_g_l1'] / n:.3f}"
        )
        if stop():
            break
        t_fetch = time.time()
    bar.close()
    if stop():  # mid-epoch: this epoch is dropped, the previous checkpoint stays
        return None
    return {**{k: v / max(n, 1) for k, v in sums.items()}, "data_seconds": t_data}


def end_of_epoch(run: Run, epoch: int, losses: dict[str, float], t0: float) -> None:
    """Schedulers step; rank 0 validates, keeps the best G, writes logs, samples, curves and the checkpoint."""
    cfg = run.cfg
    lr_g = run.opt_g.param_groups[0]["lr"]
    run.sched_g.step()
    if cfg.gan_weight > 0:  # (D never steps without a GAN loss)
        run.sched_d.step()
    if not run.master:
        all_rng_states(run.loader_gen, run.world)  # join rank 0's gather for its checkpoint
        return
    val = validate_all(run.G, run.val_loaders, run.device)
    record = {
        "epoch": epoch + 1,
        **{k: v for k, v in losses.items() if k != "data_seconds"},
        "lr_g": lr_g,
        "lr_d": run.opt_d.param_groups[0]["lr"],
        **val,
        "seconds": time.time() - t0,
        "data_seconds": losses["data_seconds"],
    }
    run.log.append(record)
    if val["val_iou"] > run.best["val_iou"]:
        run.best = {"val_iou": val["val_iou"], "val_dice": val["val_dice"], "epoch": epoch + 1}
        run.best_state = {k: v.detach().cpu().clone() for k, v in run.G.state_dict().items()}
    write_logs(run.run_dir, run.log, append=True)
    save_samples(run.G, *run.samples, run.run_dir / "samples" / f"epoch_{epoch + 1:03d}.png", run.device)
    plot_curves(run.log, run.run_dir / "curves.png", cfg.size)
    rngs = all_rng_states(run.loader_gen, run.world)  # after every random draw of this epoch (validate draws one)
    atomic_save(
        {
            "G": run.G.state_dict(),
            "D": run.D.state_dict(),
            "opt_g": run.opt_g.state_dict(),
            "opt_d": run.opt_d.state_dict(),
            "sched_g": run.sched_g.state_dict(),
            "sched_d": run.sched_d.state_dict(),
            "epoch": epoch,
            "rng": rngs[0],
            "rng_ranks": rngs,
            "best": run.best,
            "best_G": run.best_state,
            "log": run.log,
            "config": dataclasses.asdict(cfg),
            "commands": run.commands,
        },
        run.run_dir / "last.pt",
    )
    best = run.best
    print(
        f"epoch {epoch + 1}/{cfg.epochs}  D {record['loss_d']:.3f}  G_gan {record['loss_g_gan']:.3f}  "
        f"L1 {record['loss_g_l1']:.4f}  val IoU {val['val_iou']:.4f}  Dice {val['val_dice']:.4f}  lr {lr_g:.2e}  "
        f"{record['seconds']:.0f}s (data {record['data_seconds']:.1f}s)  best {best['val_iou']:.4f}@{best['epoch']}",
        flush=True,
    )


def recorded_source(src: DataSource, root: str) -> dict[str, Any]:
    """A data source as config.json records it: its path relative to the data root (segmenter.data.portable_path)."""
    return dataclasses.asdict(src) | {"path": portable_path(src.path, root)}


def finish(run: Run) -> int:
    """Rank 0 exports the best epoch (and pushes it to the Hub); returns the exit code."""
    cfg = run.cfg
    train_sources, val_sources = sources(cfg)
    data = {
        "train_images": len(run.train_ds),
        "val_images": sum(len(ds) for _, ds in run.val_sets),
        "sources": [recorded_source(s, cfg.data_root) for s in train_sources],
        "val_sources": [recorded_source(s, cfg.data_root) for s in val_sources],
    }
    out = export(cfg, run.run_dir, run.best_state, run.best, {"commands": run.commands, "data": data})
    print(f"exported best epoch {run.best['epoch']} (val IoU {run.best['val_iou']:.4f}) -> {out}")
    if cfg.push_to_hub:
        try:
            print(f"pushed to the Hub: {push_to_hub(out, cfg.push_to_hub)}")
        except Exception as e:  # network, auth, ...: the run itself is complete
            print(
                f"push to {cfg.push_to_hub} failed ({type(e).__name__}: {e}); the export is in {out}; retry with: "
                f"python train.py --resume {run.run_dir} --push-to-hub {cfg.push_to_hub}",
                file=sys.stderr,
            )
            return 1
    return 0


def run(argv: list[str]) -> int:
    """The training run ``argv`` describes (see main): set up, train epoch by epoch, export."""
    run, ckpt = setup(argv)
    build_models(run, ckpt)
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        if run.master:
            print(
                "\nCtrl-C: stopping after this step; the last end-of-epoch checkpoint is kept (Ctrl-C again to abort)",
                file=sys.stderr,
            )

    signal.signal(signal.SIGINT, on_sigint)
    done = run.start_epoch  # epochs in the checkpoint
    for epoch in range(run.start_epoch, run.cfg.epochs):
        t0 = time.time()
        losses = train_epoch(run, epoch, lambda: interrupted)
        if losses is None:
            break
        end_of_epoch(run, epoch, losses, t0)
        done = epoch + 1
        if interrupted:  # Ctrl-C while validating or saving: this epoch made it into the checkpoint
            break
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        if run.master and done:
            print(
                f"interrupted: {run.run_dir / 'last.pt'} holds epoch {done}/{run.cfg.epochs}; continue with: "
                f"python train.py --resume {run.run_dir}",
                file=sys.stderr,
            )
        elif run.master:
            print("interrupted in the first epoch, before any checkpoint: nothing to resume", file=sys.stderr)
        return 130
    return finish(run) if run.master else 0


if __name__ == "__main__":
    sys.exit(main())
