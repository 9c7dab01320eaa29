"""Train a Pix2Pix person segmenter: a U-Net generator against a 70x70 PatchGAN, GAN + L1 loss.

Top to bottom: config -> data -> models -> (resume) -> epochs -> export -> Hub. The defaults are the
original run (``--preset seed``); ``--preset cpu`` is the run that produced the shipped weights.

    python train.py --preset cpu --export-to weights/
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
import shutil
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from segmenter.config import ModelConfig
from segmenter.data import DEFAULT_DATA_DIR, SegmentationDataset, load_pairs
from segmenter.model import build_discriminator, build_generator, load_lite0_imagenet


@dataclass
class TrainConfig:
    """Defaults are the original 100-epoch pix2pix run. Each field is a command-line option; see HELP."""

    run_id: str = ""
    out_dir: str = "runs"
    data: str = str(DEFAULT_DATA_DIR)
    train_split: str = "train"
    val_split: str = "val"
    arch: str = "pix2pix_unet"
    ngf: int = 64
    ndf: int = 64
    pretrained: bool = True
    epochs: int = 100
    batch_size: int = 10
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_every: int = 2
    lr_decay_g: float = 0.999
    lr_decay_d: float = 0.99
    l1_lambda: float = 100.0
    gan_weight: float = 1.0
    real_label: float = 1.0
    size: int = 256
    aug: str = "pix2pix"
    composite_p: float = 0.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    threads: int = 0
    samples: int = 6
    limit: int = 0
    eval_test: bool = True
    half: bool = False
    tune_inference: bool = False  # at export, choose the inference size and flip TTA on val
    export_to: str = ""
    push_to_hub: str = ""
    resume: str = ""
    preset: str = "seed"


HELP: dict[str, str] = {
    "run_id": "run folder name under --out-dir; empty: generated from the time",
    "out_dir": "where run folders go",
    "data": "dataset folder (with split.csv, or Training_Images/ + Ground_Truth/) or an images,masks[,split] CSV",
    "train_split": "split column value of the training rows",
    "val_split": "split column value of the validation rows (choose the best epoch)",
    "arch": "generator",
    "ngf": "pix2pix_unet: width of the first generator layer",
    "ndf": "PatchGAN discriminator: width of the first layer",
    "pretrained": "effnet_unet: start the encoder from ImageNet weights",
    "epochs": "total epochs (on --resume: may be raised to train longer)",
    "batch_size": "images per step (per process under DDP)",
    "lr": "Adam learning rate of G and D",
    "beta1": "Adam beta1",
    "beta2": "Adam beta2",
    "lr_decay_every": "epochs between learning-rate decays",
    "lr_decay_g": "G's learning-rate factor at each decay",
    "lr_decay_d": "D's learning-rate factor at each decay",
    "l1_lambda": "weight of G's L1 loss",
    "gan_weight": "weight of G's adversarial loss; 0: L1 only (no discriminator)",
    "real_label": "D's target for real pairs; <1: one-sided label smoothing",
    "size": "training resolution (pix2pix_unet: a power of two >= 32; effnet_unet: a multiple of 32)",
    "aug": "pix2pix: resize 286, crop, flip; strong: + scale, aspect, rotation, colour",
    "composite_p": "chance of pasting the person onto another training photo",
    "seed": "random seed (rank r of a DDP run uses seed + r)",
    "device": "auto: cuda when available",
    "amp": "bf16/fp16 autocast on CUDA; always fp32 on CPU",
    "workers": "DataLoader worker processes",
    "threads": "torch CPU threads; 0: torch's default",
    "samples": "val images in the per-epoch sample grid",
    "limit": "use only the first N train/val pairs (smoke tests); 0: all",
    "eval_test": "record test metrics of the best-by-val model in the export (never used to choose)",
    "half": "export fp16 weights",
    "tune_inference": "at export, pick the inference size (1x-2x the training size) and flip averaging by val mIoU",
    "export_to": "also copy the exported model here (e.g. weights/)",
    "push_to_hub": "Hub repo id (user/name) to upload the export to; token from HF_TOKEN or the cached login",
    "resume": "a run folder (or its last.pt) to continue in place",
    "preset": "starting defaults, which other options override",
}
CHOICES: dict[str, list[str]] = {"arch": ["pix2pix_unet", "effnet_unet"], "aug": ["pix2pix", "strong"],
                                 "device": ["auto", "cpu", "cuda"]}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # The shipped weights: transfer-learning U-Net, strong augmentation, 2-core CPU in well under 2.5 h.
    "cpu": {"arch": "effnet_unet", "epochs": 35, "ndf": 32, "aug": "strong", "composite_p": 0.3,
            "real_label": 0.9, "lr_decay_every": 1, "lr_decay_g": 0.95, "lr_decay_d": 0.95, "batch_size": 8,
            "tune_inference": True},
    # The from-scratch pix2pix U-Net at a width a CPU can train.
    "cpu-pix2pix": {"ngf": 32, "ndf": 32, "epochs": 20, "aug": "strong", "composite_p": 0.3, "real_label": 0.9},
}  # fmt: skip


# On --resume the saved run's config wins, except for these, which always come from this command line
# (this machine, and where the result goes) ...
RESUME_CURRENT = ("resume", "device", "workers", "threads", "export_to", "push_to_hub")
# ... and these, which may be given to change them: they leave the epochs already trained as they were.
RESUME_CHANGEABLE = ("epochs", "samples", "eval_test", "half", "tune_inference")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    """An option per TrainConfig field, with ``defaults``."""
    parser = argparse.ArgumentParser(prog="train.py", description=__doc__, formatter_class=_HelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": defaults[f.name], "help": HELP[f.name]}
        if f.name == "preset":
            parser.add_argument(flag, choices=sorted(PRESETS), **kw)
        elif f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, type=kind, choices=CHOICES.get(f.name), **kw)
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
    return cfg


def given_options(argv: list[str]) -> dict[str, Any]:
    """The options ``argv`` sets itself (not through defaults or a preset), parsed."""
    return vars(_parser({f.name: argparse.SUPPRESS for f in dataclasses.fields(TrainConfig)}).parse_args(argv))


def resume_config(saved: dict[str, Any], cfg: TrainConfig, given: dict[str, Any]) -> TrainConfig:
    """The config of a resumed run: ``saved`` (from the checkpoint), with RESUME_CURRENT from ``cfg`` and
    RESUME_CHANGEABLE from the options ``given``. Any other option given with a different value is an error."""
    conflicts = [f"--{k.replace('_', '-')} {v} (the run has {saved.get(k)})" for k, v in given.items()
                 if k not in RESUME_CURRENT + RESUME_CHANGEABLE and saved.get(k) != v]  # fmt: skip
    if conflicts:
        raise SystemExit(f"--resume continues a run with its own config; cannot change: {', '.join(conflicts)}")
    changed = {k: v for k, v in given.items() if k in RESUME_CHANGEABLE}
    return TrainConfig(**{**saved, **{k: getattr(cfg, k) for k in RESUME_CURRENT}, **changed})


def model_config(cfg: TrainConfig) -> ModelConfig:
    """The generator's config. The pix2pix U-Net halves down to 1x1: log2(size) levels (8 at 256)."""
    num_downs = cfg.size.bit_length() - 1 if cfg.arch == "pix2pix_unet" else ModelConfig.num_downs
    return ModelConfig(arch=cfg.arch, ngf=cfg.ngf, num_downs=num_downs, input_size=cfg.size)  # type: ignore[arg-type]


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
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "loader": loader_gen.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}  # fmt: skip


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
    """Mean per-image IoU and Dice at the model's resolution, and the mean L1, over ``loader``."""
    G.eval()
    ious, dices, l1s = [], [], []
    for img, mask in loader:
        fake = G(img.to(device)).float()
        target = mask.to(device) > 0
        pred = fake > 0  # tanh > 0  <=>  probability > 0.5
        inter = (pred & target).flatten(1).sum(1).float()
        union = (pred | target).flatten(1).sum(1).float()
        total = pred.flatten(1).sum(1).float() + target.flatten(1).sum(1).float()
        ious += torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union)).tolist()
        dices += torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total)).tolist()
        l1s += (fake - mask.to(device)).abs().flatten(1).mean(1).tolist()
    G.train()
    return float(np.mean(ious)), float(np.mean(dices)), float(np.mean(l1s))


@torch.no_grad()
def save_samples(G: nn.Module, images: torch.Tensor, masks: torch.Tensor, path: Path, device: torch.device) -> None:
    """A grid: one row per val image -- photo | predicted mask | true mask."""
    from torchvision.utils import save_image

    G.eval()
    fake = G(images.to(device)).float().cpu()
    G.train()
    rows = [torch.stack([(im + 1) / 2, ((f + 1) / 2).expand(3, -1, -1), ((m + 1) / 2).expand(3, -1, -1)])
            for im, f, m in zip(images, fake, masks, strict=True)]  # fmt: skip
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


MODEL_CARD = """---
license: mit
library_name: pytorch
tags: [image-segmentation, person-segmentation, pix2pix, gan]
{datasets_yaml}pipeline_tag: image-segmentation
---
# Person segmentation: {arch} trained as a Pix2Pix generator

Binary person masks from RGB photos. Input: an RGB photo resized to {input_size}x{input_size} (trained at
{size}x{size}; {inference_note}), scaled to [-1, 1]; output: a tanh map, probability = (y + 1) / 2, person where
it is >= {threshold}.
Load it with `Segmenter.from_pretrained(<this folder or repo id>)` from this project's `segmenter` package.

## Results (masks compared at each photo's original size, threshold {threshold}, mean per-image)
| split | images | mIoU | Dice | pixel accuracy | boundary F |
|---|---|---|---|---|---|
{rows}

Weights: `model.safetensors` ({dtype}), sha256 `{sha256}`.

## Training
Training ID `{run_id}`, preset `{preset}`: `{command}`{resumed}.
Generator `{arch}`, {objective},
Adam lr {lr} betas ({beta1}, {beta2}), {epochs} epochs, batch {batch_size}, augmentation `{aug}`
(compositing p={composite_p}). The model kept is the best epoch by validation IoU (epoch {best_epoch}).
The test split was never used for training or for choosing the model.

## Data
{data_section}

## Intended use and limitations
A demo-grade person/background segmenter for photos and webcam snapshots. Trained on {train_images} photos, mostly
single, centred people; expect weaker masks on crowds, tiny or partial people, unusual poses, and fine
structures such as hair. Not for surveillance, identification or any decision about a person.
"""
HSD_SECTION = """The Human Segmentation Dataset (290 photos of people with masks; split 230 train / 30 val / 30 test by
`split.csv`). Its masks were themselves produced by a background-removal service, so they carry that
service's errors; the dataset ships no licence file, so check its terms before commercial use."""


def write_logs(run_dir: Path, log: list[dict[str, Any]], append: bool) -> None:
    """log.jsonl (one record per epoch; ``append``: only the last) and metrics.csv (all of them)."""
    with open(run_dir / "log.jsonl", "a" if append else "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in (log[-1:] if append else log))
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(log[0]) if log else [])
        w.writeheader()
        w.writerows(log)


def _inference_note(mcfg: ModelConfig) -> str:
    tuning = mcfg.meta.get("inference_tuning")
    flip = "averaged with the mirrored photo" if mcfg.tta_flip else "no test-time augmentation"
    if not tuning:
        return flip
    tried = ", ".join(f"{k} {v:.4f}" for k, v in tuning["val_miou"].items())
    return f"{flip}; size and flip chosen by val mIoU among {tried}"


def write_card(folder: Path, cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """README.md: the model card, from the export's config (metrics, sha256, provenance) and the run's config."""
    meta = mcfg.meta
    rows = [
        f"| {split} | {m['images']} | {m['iou']:.4f} | {m['dice']:.4f} | {m['accuracy']:.4f} | {m['boundary_f']:.4f} |"
        for split, m in meta.get("metrics", {}).items()
    ]
    data, counts = Path(cfg.data), meta["data"]
    hsd = data.name == DEFAULT_DATA_DIR.name
    data_section = HSD_SECTION if hsd else (f"`{data.parent.name}/{data.name}`: {counts['train_images']} training "
                                            f"and {counts['val_images']} validation photos with person masks.")  # fmt: skip
    objective = (f"70x70 PatchGAN discriminator (ndf {cfg.ndf}), GAN weight {cfg.gan_weight} + L1 x {cfg.l1_lambda}"
                 if cfg.gan_weight > 0 else f"L1 loss only (x {cfg.l1_lambda}, no discriminator)")  # fmt: skip
    text = MODEL_CARD.format(**dataclasses.asdict(cfg) | {
        "input_size": mcfg.input_size, "inference_note": _inference_note(mcfg), "threshold": mcfg.threshold, "rows": "\n".join(rows) or "| (none) | 0 | | | | |", "dtype": meta["dtype"],
        "sha256": meta["sha256"], "command": meta["commands"][0],
        "resumed": "".join(f", resumed with `{c}`" for c in meta["commands"][1:]), "best_epoch": meta["best_epoch"],
        "objective": objective, "train_images": counts["train_images"], "data_section": data_section,
        "datasets_yaml": f"datasets: [{DEFAULT_DATA_DIR.name}]\n" if hsd else "",
    })  # fmt: skip
    (folder / "README.md").write_text(text)


EXPORT_FILES = ("model.safetensors", "config.json", "README.md")


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; the token comes from HF_TOKEN or the cached login."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", allow_patterns=list(EXPORT_FILES),
                             commit_message="Upload person-segmentation generator")  # fmt: skip
    return str(getattr(info, "commit_url", info))


def tune_inference(seg: Any, val_pairs: list[Any]) -> dict[str, Any]:
    """Pick the inference size and flip averaging that maximise val mIoU (never test); sets them on ``seg.cfg``.

    Sizes run from the training size to twice it in steps of 64 (effnet_unet; the pix2pix U-Net needs multiples of
    2**num_downs, so it keeps its size). Returns the val mIoU of every candidate.
    """
    from segmenter.metrics import evaluate

    if not val_pairs:
        return {}
    base = seg.cfg.input_size
    sizes = range(base, 2 * base + 1, 64) if seg.cfg.arch == "effnet_unet" else [base]
    scores: dict[tuple[int, bool], float] = {}
    for setting in [(size, flip) for size in sizes for flip in (False, True)]:
        seg.cfg.input_size, seg.cfg.tta_flip = setting
        scores[setting] = evaluate(seg, val_pairs, progress=False)[0]["iou"]
    seg.cfg.input_size, seg.cfg.tta_flip = best_setting = max(scores, key=scores.__getitem__)
    name = {setting: f"{setting[0]}{'+flip' if setting[1] else ''}" for setting in scores}
    table, best = {name[k]: v for k, v in scores.items()}, name[best_setting]
    print("inference settings by val mIoU: " + ", ".join(f"{k} {v:.4f}" for k, v in table.items()) + f" -> {best}")
    return {"val_miou": {k: round(v, 4) for k, v in table.items()}, "chosen": best}


def export(cfg: TrainConfig, run_dir: Path, G_state: dict[str, torch.Tensor], best: dict[str, Any],
           provenance: dict[str, Any]) -> Path:  # fmt: skip
    """Best generator -> run_dir/export/{model.safetensors, config.json, README.md}, with val (and test) metrics.

    ``provenance`` (the commands that ran, image counts) goes into config.json's ``meta``.
    """
    from segmenter.inference import Segmenter, save_pretrained
    from segmenter.metrics import evaluate

    mcfg = model_config(cfg)
    G = build_generator(mcfg)
    G.load_state_dict(G_state)
    out = run_dir / "export"
    mcfg.meta = {"run_id": cfg.run_id, "preset": cfg.preset, "best_epoch": best["epoch"], **provenance,
                 "train_config": dataclasses.asdict(cfg)}  # fmt: skip
    save_pretrained(G, mcfg, out, half=cfg.half)
    seg = Segmenter.from_pretrained(out, device="cpu")
    metrics = {}
    if cfg.tune_inference and _has_split(cfg.data):
        seg.cfg.meta["inference_tuning"] = tune_inference(seg, load_pairs(cfg.data, cfg.val_split))
    splits = [cfg.val_split] + (["test"] if cfg.eval_test else [])
    for split in splits:
        try:
            pairs = load_pairs(cfg.data, split)
        except ValueError:
            continue
        means, _ = evaluate(seg, pairs, progress=False)
        metrics[split] = {"images": len(pairs), **{k: round(v, 4) for k, v in means.items()}}
    mcfg = seg.cfg
    mcfg.meta["metrics"] = metrics
    mcfg.save(out / "config.json")
    write_card(out, cfg, mcfg)
    if cfg.export_to:
        dest = Path(cfg.export_to)
        dest.mkdir(parents=True, exist_ok=True)
        for name in EXPORT_FILES:
            shutil.copy2(out / name, dest / name)
    return out


# ------------------------------------------------------------------ main
def train_step(G: nn.Module, D_train: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer,
               opt_d: torch.optim.Optimizer, img: torch.Tensor, mask: torch.Tensor, cfg: TrainConfig,
               autocast: Any = None, scaler: Any = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """One Pix2Pix step: D on (image, real mask) vs (image, generated mask .detach()), then G on GAN + lambda x L1.

    ``G``/``D_train`` may be DDP-wrapped; ``D`` is the bare discriminator, used (frozen) for G's adversarial term.
    Returns the (loss_d, loss_g_gan, loss_g_l1) tensors; with ``cfg.gan_weight == 0`` only L1 trains G.
    """
    autocast = contextlib.nullcontext() if autocast is None else autocast
    scaler = torch.amp.GradScaler(enabled=False) if scaler is None else scaler
    with autocast:
        fake = G(img)  # (B,1,S,S) in [-1,1]
    loss_d = loss_g_gan = torch.zeros((), device=img.device)
    if cfg.gan_weight > 0:
        # D: real pairs -> real_label, generated pairs (detached) -> 0
        with autocast:
            pred_real = D_train(torch.cat([img, mask], 1))
            pred_fake = D_train(torch.cat([img, fake.detach()], 1))
            loss_d = 0.5 * (F.binary_cross_entropy_with_logits(pred_real, torch.full_like(pred_real, cfg.real_label))
                            + F.binary_cross_entropy_with_logits(pred_fake, torch.zeros_like(pred_fake)))  # fmt: skip
        opt_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        scaler.step(opt_d)
        # G's adversarial term: through the bare D, whose parameters are frozen for this pass
        D.requires_grad_(False)
        with autocast:
            pred = D(torch.cat([img, fake], 1))
            loss_g_gan = F.binary_cross_entropy_with_logits(pred, torch.ones_like(pred))
        D.requires_grad_(True)
    loss_g_l1 = F.l1_loss(fake.float(), mask)
    loss_g = cfg.gan_weight * loss_g_gan + cfg.l1_lambda * loss_g_l1
    opt_g.zero_grad(set_to_none=True)
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return loss_d, loss_g_gan, loss_g_l1



def load_data(cfg: TrainConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """Train and val datasets, decoded once: a missing or unreadable file raises ValueError naming it.

    Without a split, the last eighth of the pairs is held out for validation.
    """
    if _has_split(cfg.data):
        train_pairs, val_pairs = load_pairs(cfg.data, cfg.train_split), load_pairs(cfg.data, cfg.val_split)
    else:
        pairs = load_pairs(cfg.data)
        if len(pairs) < 2:
            raise ValueError(f"{cfg.data}: need at least 2 image pairs to hold one out for validation")
        k = max(1, len(pairs) // 8)
        train_pairs, val_pairs = pairs[:-k], pairs[-k:]
    if cfg.limit:
        train_pairs, val_pairs = train_pairs[: cfg.limit], val_pairs[: cfg.limit]
    train_ds = SegmentationDataset(train_pairs, train=True, size=cfg.size, aug=cfg.aug, composite_p=cfg.composite_p)
    val_ds = SegmentationDataset(val_pairs, train=False, size=cfg.size)
    return train_ds, val_ds


def main(argv: list[str] | None = None) -> int:
    """Train, export, push; returns the exit code (130 after Ctrl-C). Leaves the SIGINT handler as it found it."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        return run(sys.argv[1:] if argv is None else list(argv))
    finally:
        signal.signal(signal.SIGINT, previous)


def run(argv: list[str]) -> int:
    """The training run ``argv`` describes (see main)."""
    cfg = parse_args(argv)
    command = shlex.join(["python", "train.py", *argv])
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if cfg.device == "auto":
        cfg.device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        dist.init_process_group("nccl" if cfg.device == "cuda" else "gloo")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cfg.device == "cuda" and ddp else cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    master = rank == 0

    # Resume: the checkpoint's config, continued in the checkpoint's folder
    ckpt, commands = None, [command]
    if cfg.resume:
        ckpt_path = find_checkpoint(cfg.resume)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = resume_config(ckpt["config"], cfg, given_options(argv))
        cfg.out_dir = str(ckpt_path.parent.parent)
        run_dir = ckpt_path.parent
        commands = [*ckpt.get("commands", []), command]

    # Data (decoded once; a missing or unreadable file stops here, naming it, before the run folder exists)
    try:
        train_ds, val_ds = load_data(cfg)
    except ValueError as e:
        raise SystemExit(f"data error: {e}") from None

    if ckpt is None:
        if not cfg.run_id:
            cfg.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
            if ddp:  # every rank must agree on the ID
                ids = [cfg.run_id]
                dist.broadcast_object_list(ids, src=0)
                cfg.run_id = ids[0]
        run_dir = Path(cfg.out_dir) / cfg.run_id
        if (run_dir / "last.pt").exists():
            raise SystemExit(f"{run_dir} already holds a run: --resume {run_dir}, or choose another --run-id")
    if master:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    loader_gen = torch.Generator().manual_seed(cfg.seed)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed) if ddp else None
    per_rank = len(sampler) if sampler is not None else len(train_ds)
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=loader_gen, num_workers=cfg.workers, drop_last=per_rank > cfg.batch_size,
                              persistent_workers=cfg.workers > 0)  # fmt: skip
    val_loader = DataLoader(val_ds, batch_size=16)
    n_samples = min(cfg.samples, len(val_ds))
    sample_imgs = torch.stack([val_ds[i][0] for i in range(n_samples)])
    sample_masks = torch.stack([val_ds[i][1] for i in range(n_samples)])

    # Models, optimisers, schedulers
    mcfg = model_config(cfg)
    G = build_generator(mcfg).to(device)
    if cfg.arch == "effnet_unet" and cfg.pretrained and ckpt is None:
        load_lite0_imagenet(G.encoder)
    use_gan = cfg.gan_weight > 0
    D = build_discriminator(in_channels=4, ndf=cfg.ndf).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    sched_g = torch.optim.lr_scheduler.StepLR(opt_g, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay_g)
    sched_d = torch.optim.lr_scheduler.StepLR(opt_d, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay_d)
    start_epoch, best = 0, {"val_iou": -1.0, "epoch": -1}
    best_state = {k: v.detach().clone() for k, v in G.state_dict().items()}
    log: list[dict[str, Any]] = []
    if ckpt is not None:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        sched_g.load_state_dict(ckpt["sched_g"])
        sched_d.load_state_dict(ckpt["sched_d"])
        start_epoch, best, best_state, log = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_G"], ckpt["log"]
        states = ckpt.get("rng_ranks") or [ckpt["rng"]]  # per rank (DDP), or rank 0's alone (older checkpoints)
        set_rng_state(states[rank % len(states)], loader_gen)
        if master:
            for stale in run_dir.glob(".*.tmp"):  # from a save that was killed
                stale.unlink()
            write_logs(run_dir, log, append=False)  # drop records of an epoch whose checkpoint never landed
            print(f"resumed {run_dir} after epoch {start_epoch} of {cfg.epochs}")
    G_train = nn.parallel.DistributedDataParallel(G) if ddp else G
    D_train = nn.parallel.DistributedDataParallel(D) if ddp and use_gan else D
    amp_dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float16
    autocast = torch.autocast(device.type, dtype=amp_dtype, enabled=cfg.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler(enabled=cfg.amp and device.type == "cuda" and amp_dtype == torch.float16)

    if master:
        n_g = sum(p.numel() for p in G.parameters())
        n_d = sum(p.numel() for p in D.parameters()) if use_gan else 0
        print(f"run {cfg.run_id}: {cfg.arch} G {n_g:,} params, D {n_d:,} params, {len(train_ds)} train / "
              f"{len(val_ds)} val images, {device}, {world} process(es) -> {run_dir}")  # fmt: skip

    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        nonlocal interrupted
        if interrupted:
            raise KeyboardInterrupt
        interrupted = True
        if master:
            print("\nCtrl-C: stopping after this step; the last end-of-epoch checkpoint is kept (Ctrl-C again to abort)",
                  file=sys.stderr)  # fmt: skip

    signal.signal(signal.SIGINT, on_sigint)
    done = start_epoch  # epochs in the checkpoint
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0, t_data, sums, n = time.time(), 0.0, {"loss_d": 0.0, "loss_g_gan": 0.0, "loss_g_l1": 0.0}, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not master)
        t_fetch = time.time()
        for img, mask in bar:
            t_data += time.time() - t_fetch
            img, mask = img.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            loss_d, loss_g_gan, loss_g_l1 = train_step(G_train, D_train, D, opt_g, opt_d, img, mask, cfg, autocast, scaler)
            sums["loss_d"] += loss_d.item()
            sums["loss_g_gan"] += loss_g_gan.item()
            sums["loss_g_l1"] += loss_g_l1.item()
            n += 1
            bar.set_postfix(D=f"{sums['loss_d'] / n:.3f}", G_gan=f"{sums['loss_g_gan'] / n:.3f}", L1=f"{sums['loss_g_l1'] / n:.3f}")
            if interrupted:
                break
            t_fetch = time.time()
        bar.close()
        if interrupted:  # mid-epoch: this epoch is dropped, the previous checkpoint stays
            break
        lr_g = opt_g.param_groups[0]["lr"]
        sched_g.step()
        if use_gan:  # (D never steps without a GAN loss)
            sched_d.step()
        if not master:
            all_rng_states(loader_gen, world)  # join rank 0's gather for its checkpoint
            continue
        val_iou, val_dice, val_l1 = validate(G, val_loader, device)
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}, "lr_g": lr_g,
                  "lr_d": opt_d.param_groups[0]["lr"], "val_iou": val_iou, "val_dice": val_dice, "val_l1": val_l1,
                  "seconds": time.time() - t0, "data_seconds": t_data}  # fmt: skip
        log.append(record)
        if val_iou > best["val_iou"]:
            best = {"val_iou": val_iou, "val_dice": val_dice, "epoch": epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in G.state_dict().items()}
        write_logs(run_dir, log, append=True)
        save_samples(G, sample_imgs, sample_masks, run_dir / "samples" / f"epoch_{epoch + 1:03d}.png", device)
        plot_curves(log, run_dir / "curves.png", cfg.size)
        rngs = all_rng_states(loader_gen, world)  # after every random draw of this epoch (validate draws one)
        atomic_save({"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(), "epoch": epoch,
                     "rng": rngs[0], "rng_ranks": rngs, "best": best, "best_G": best_state, "log": log,
                     "config": dataclasses.asdict(cfg), "commands": commands}, run_dir / "last.pt")  # fmt: skip
        done = epoch + 1
        print(f"epoch {epoch + 1}/{cfg.epochs}  D {record['loss_d']:.3f}  G_gan {record['loss_g_gan']:.3f}  "
              f"L1 {record['loss_g_l1']:.4f}  val IoU {val_iou:.4f}  Dice {val_dice:.4f}  lr {lr_g:.2e}  "
              f"{record['seconds']:.0f}s (data {t_data:.1f}s)  best {best['val_iou']:.4f}@{best['epoch']}", flush=True)  # fmt: skip
        if interrupted:  # Ctrl-C while validating or saving: this epoch made it into the checkpoint
            break

    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        if master and done:
            print(f"interrupted: {run_dir / 'last.pt'} holds epoch {done}/{cfg.epochs}; continue with: "
                  f"python train.py --resume {run_dir}", file=sys.stderr)  # fmt: skip
        elif master:
            print("interrupted in the first epoch, before any checkpoint: nothing to resume", file=sys.stderr)
        return 130
    if not master:
        return 0
    out = export(cfg, run_dir, best_state, best,
                 {"commands": commands, "data": {"train_images": len(train_ds), "val_images": len(val_ds)}})  # fmt: skip
    print(f"exported best epoch {best['epoch']} (val IoU {best['val_iou']:.4f}) -> {out}")
    if cfg.push_to_hub:
        try:
            print(f"pushed to the Hub: {push_to_hub(out, cfg.push_to_hub)}")
        except Exception as e:  # network, auth, ...: the run itself is complete
            print(f"push to {cfg.push_to_hub} failed ({type(e).__name__}: {e}); the export is in {out}; retry with: "
                  f"python train.py --resume {run_dir} --push-to-hub {cfg.push_to_hub}", file=sys.stderr)  # fmt: skip
            return 1
    return 0


def _has_split(data: str) -> bool:
    p = Path(data)
    return p.suffix.lower() == ".csv" or (p / "split.csv").is_file()


if __name__ == "__main__":
    sys.exit(main())
