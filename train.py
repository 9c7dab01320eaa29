"""Train a Pix2Pix person segmenter: a U-Net generator against a 70x70 PatchGAN, GAN + L1 loss.

Top to bottom: config -> data -> models -> (resume) -> epochs -> export -> Hub. The defaults are the
original run (``--preset seed``); ``--preset cpu`` is the run that produced the shipped weights.

    python train.py --preset cpu --export-to weights/
    python train.py --epochs 3 --run-id smoke
    python train.py --resume runs/<id>
    torchrun --nproc_per_node=2 train.py ...          # DDP (gloo on CPU, nccl on CUDA)
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import os
import random
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
    """Defaults are the original 100-epoch pix2pix run."""

    run_id: str = ""  # empty: generated from the time
    out_dir: str = "runs"
    data: str = str(DEFAULT_DATA_DIR)  # dataset folder (with split.csv) or an images,masks[,split] CSV
    train_split: str = "train"
    val_split: str = "val"
    arch: str = "pix2pix_unet"  # pix2pix_unet | effnet_unet
    ngf: int = 64
    ndf: int = 64
    pretrained: bool = True  # effnet_unet: start the encoder from ImageNet weights
    epochs: int = 100
    batch_size: int = 10
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    lr_decay_every: int = 2
    lr_decay_g: float = 0.999
    lr_decay_d: float = 0.99
    l1_lambda: float = 100.0
    gan_weight: float = 1.0  # 0: L1 only (no discriminator)
    real_label: float = 1.0  # <1: one-sided label smoothing
    size: int = 256
    aug: str = "pix2pix"  # pix2pix (resize 286, crop, flip) | strong (+scale, aspect, rotation, colour)
    composite_p: float = 0.0  # chance of pasting the person onto another training photo
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # bf16/fp16 autocast on CUDA; always fp32 on CPU
    workers: int = 0
    threads: int = 0  # torch CPU threads; 0 = torch's default
    samples: int = 6  # val images in the per-epoch sample grid
    limit: int = 0  # use only the first N train/val pairs (smoke tests); 0 = all
    eval_test: bool = True  # record test metrics of the best-by-val model in the export (never used to choose)
    half: bool = False  # export fp16 weights
    export_to: str = ""  # also copy the exported model here (e.g. weights/)
    push_to_hub: str = ""  # Hub repo id to upload the export to
    resume: str = ""  # a run folder (or checkpoint file) to continue
    preset: str = "seed"


PRESETS: dict[str, dict[str, Any]] = {
    "seed": {},
    # The shipped weights: transfer-learning U-Net, strong augmentation, 2-core CPU in well under 2.5 h.
    "cpu": {"arch": "effnet_unet", "epochs": 35, "ndf": 32, "aug": "strong", "composite_p": 0.3,
            "real_label": 0.9, "lr_decay_every": 1, "lr_decay_g": 0.95, "lr_decay_d": 0.95, "batch_size": 8},
    # The from-scratch pix2pix U-Net at a width a CPU can train.
    "cpu-pix2pix": {"ngf": 32, "ndf": 32, "epochs": 20, "aug": "strong", "composite_p": 0.3, "real_label": 0.9},
}  # fmt: skip


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> TrainConfig. Every field is an option; a preset sets defaults that options override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    defaults = {**dataclasses.asdict(TrainConfig()), **PRESETS[known.preset], "preset": known.preset}
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = defaults[f.name]
        if f.name == "preset":
            parser.add_argument(flag, default=default, choices=sorted(PRESETS), help="starting defaults")
        elif f.type == "bool":
            parser.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=" ")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, default=default, type=kind, help=" ")
    args = parser.parse_args(argv)
    cfg = TrainConfig(**vars(args))
    if cfg.arch not in ("pix2pix_unet", "effnet_unet"):
        parser.error(f"--arch must be pix2pix_unet or effnet_unet, not {cfg.arch!r}")
    if cfg.aug not in ("pix2pix", "strong"):
        parser.error(f"--aug must be pix2pix or strong, not {cfg.aug!r}")
    return cfg


def model_config(cfg: TrainConfig) -> ModelConfig:
    return ModelConfig(arch=cfg.arch, ngf=cfg.ngf, input_size=cfg.size)  # type: ignore[arg-type]


# ------------------------------------------------------------------ checkpoints
def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temp file, fsync, then rename: a kill mid-save never leaves a corrupt ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def plot_curves(log: list[dict[str, Any]], path: Path) -> None:
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
    b.set_xlabel("epoch"), b.set_title("validation (256x256)"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


MODEL_CARD = """---
license: mit
library_name: pytorch
tags: [image-segmentation, person-segmentation, pix2pix, gan]
datasets: [Human-Segmentation-Dataset]
pipeline_tag: image-segmentation
---
# Person segmentation: {arch} trained as a Pix2Pix generator

Binary person masks from RGB photos. Input: an RGB photo resized to {size}x{size}, scaled to [-1, 1];
output: a tanh map, probability = (y + 1) / 2, person where it is >= {threshold}.
Load it with `Segmenter.from_pretrained(<this folder or repo id>)` from this project's `segmenter` package.

## Results (masks compared at each photo's original size, threshold {threshold}, mean per-image)
| split | images | mIoU | Dice | pixel accuracy | boundary F |
|---|---|---|---|---|---|
{rows}

Weights: `model.safetensors` ({dtype}), sha256 `{sha256}`.

## Training
Training ID `{run_id}`, preset `{preset}`: `{command}`.
Generator `{arch}`, 70x70 PatchGAN discriminator (ndf {ndf}), GAN weight {gan_weight} + L1 x {l1_lambda},
Adam lr {lr} betas ({beta1}, {beta2}), {epochs} epochs, batch {batch_size}, augmentation `{aug}`
(compositing p={composite_p}). The model kept is the best epoch by validation IoU (epoch {best_epoch}).
The test split was never used for training or for choosing the model.

## Data
The Human Segmentation Dataset (290 photos of people with masks; split 230 train / 30 val / 30 test by
`split.csv`). Its masks were themselves produced by a background-removal service, so they carry that
service's errors; the dataset ships no licence file, so check its terms before commercial use.

## Intended use and limitations
A demo-grade person/background segmenter for photos and webcam snapshots. Trained on 230 photos, mostly
single, centred people; expect weaker masks on crowds, tiny or partial people, unusual poses, and fine
structures such as hair. Not for surveillance, identification or any decision about a person.
"""


def write_card(folder: Path, cfg: TrainConfig, mcfg: ModelConfig) -> None:
    metrics = mcfg.meta.get("metrics", {})
    rows = "\n".join(
        f"| {split} | {m['images']} | {m['iou']:.4f} | {m['dice']:.4f} | {m['accuracy']:.4f} | {m['boundary_f']:.4f} |"
        for split, m in metrics.items()
    )
    text = MODEL_CARD.format(**dataclasses.asdict(cfg) | {"threshold": mcfg.threshold, "rows": rows,
                             "dtype": mcfg.meta["dtype"], "sha256": mcfg.meta["sha256"],
                             "command": mcfg.meta["command"], "best_epoch": mcfg.meta["best_epoch"]})  # fmt: skip
    (folder / "README.md").write_text(text)


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; the token comes from HF_TOKEN or the cached login."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                             commit_message="Upload person-segmentation generator")  # fmt: skip
    return str(getattr(info, "commit_url", info))


def export(cfg: TrainConfig, run_dir: Path, G_state: dict[str, torch.Tensor], best: dict[str, Any]) -> Path:
    """Best generator -> run_dir/export/{model.safetensors, config.json, README.md}, with val (and test) metrics."""
    from segmenter.inference import Segmenter, save_pretrained
    from segmenter.metrics import evaluate

    mcfg = model_config(cfg)
    G = build_generator(mcfg)
    G.load_state_dict(G_state)
    out = run_dir / "export"
    mcfg.meta = {"run_id": cfg.run_id, "preset": cfg.preset, "best_epoch": best["epoch"],
                 "command": " ".join(["python", "train.py", *sys.argv[1:]]), "train_config": dataclasses.asdict(cfg)}  # fmt: skip
    save_pretrained(G, mcfg, out, half=cfg.half)
    seg = Segmenter.from_pretrained(out, device="cpu")
    splits = [cfg.val_split] + (["test"] if cfg.eval_test else [])
    metrics = {}
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
        for name in ("model.safetensors", "config.json", "README.md"):
            shutil.copy2(out / name, dest / name)
    return out


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
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

    # Resume: the checkpoint's config wins, except for where to export/push.
    ckpt = None
    if cfg.resume:
        ckpt_path = find_checkpoint(cfg.resume)
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        keep = {k: getattr(cfg, k) for k in ("resume", "export_to", "push_to_hub", "device", "workers", "threads")}
        cfg = TrainConfig(**{**ckpt["config"], **keep})
    if not cfg.run_id:
        cfg.run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        if ddp:  # every rank must agree on the ID
            ids = [cfg.run_id]
            dist.broadcast_object_list(ids, src=0)
            cfg.run_id = ids[0]
    run_dir = Path(cfg.out_dir) / cfg.run_id
    if master:
        (run_dir / "samples").mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")

    torch.manual_seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    random.seed(cfg.seed + rank)

    # Data (decoded once; a missing or unreadable file stops here, naming it)
    train_pairs = load_pairs(cfg.data, cfg.train_split if _has_split(cfg.data) else None)
    val_pairs = load_pairs(cfg.data, cfg.val_split) if _has_split(cfg.data) else train_pairs[-max(1, len(train_pairs) // 8):]
    if cfg.limit:
        train_pairs, val_pairs = train_pairs[: cfg.limit], val_pairs[: cfg.limit]
    train_ds = SegmentationDataset(train_pairs, train=True, size=cfg.size, aug=cfg.aug, composite_p=cfg.composite_p)
    val_ds = SegmentationDataset(val_pairs, train=False, size=cfg.size)
    loader_gen = torch.Generator().manual_seed(cfg.seed)
    sampler = DistributedSampler(train_ds, num_replicas=world, rank=rank, seed=cfg.seed) if ddp else None
    train_loader = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              generator=loader_gen, num_workers=cfg.workers, drop_last=len(train_ds) > cfg.batch_size,
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
        set_rng_state(ckpt["rng"], loader_gen)
        if master:
            print(f"resumed {run_dir} at epoch {start_epoch + 1}/{cfg.epochs}")
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
            print("\nCtrl-C: finishing this step, saving, then exiting (Ctrl-C again to abort)", file=sys.stderr)

    signal.signal(signal.SIGINT, on_sigint)
    epoch = start_epoch
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        t0, t_data, sums, n = time.time(), 0.0, {"loss_d": 0.0, "loss_g_gan": 0.0, "loss_g_l1": 0.0}, 0
        bar = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not master)
        t_fetch = time.time()
        for img, mask in bar:
            t_data += time.time() - t_fetch
            img, mask = img.to(device, non_blocking=True), mask.to(device, non_blocking=True)
            with autocast:
                fake = G_train(img)  # (B,1,S,S) in [-1,1]
            loss_d = loss_g_gan = torch.zeros((), device=device)
            if use_gan:
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
            sums["loss_d"] += loss_d.item()
            sums["loss_g_gan"] += loss_g_gan.item()
            sums["loss_g_l1"] += loss_g_l1.item()
            n += 1
            bar.set_postfix(D=f"{sums['loss_d'] / n:.3f}", G_gan=f"{sums['loss_g_gan'] / n:.3f}", L1=f"{sums['loss_g_l1'] / n:.3f}")
            if interrupted:
                break
            t_fetch = time.time()
        bar.close()
        if interrupted:
            if master:
                print(f"interrupted in epoch {epoch + 1}; checkpoint of epoch {epoch} kept: "
                      f"python train.py --resume {run_dir}", file=sys.stderr)  # fmt: skip
            break
        lr_g = opt_g.param_groups[0]["lr"]
        sched_g.step()
        sched_d.step()
        if not master:
            continue
        val_iou, val_dice, val_l1 = validate(G, val_loader, device)
        record = {"epoch": epoch + 1, **{k: v / max(n, 1) for k, v in sums.items()}, "lr_g": lr_g,
                  "lr_d": opt_d.param_groups[0]["lr"], "val_iou": val_iou, "val_dice": val_dice, "val_l1": val_l1,
                  "seconds": time.time() - t0, "data_seconds": t_data}  # fmt: skip
        log.append(record)
        if val_iou > best["val_iou"]:
            best = {"val_iou": val_iou, "val_dice": val_dice, "epoch": epoch + 1}
            best_state = {k: v.detach().cpu().clone() for k, v in G.state_dict().items()}
        with open(run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(run_dir / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(record))
            w.writeheader()
            w.writerows(log)
        save_samples(G, sample_imgs, sample_masks, run_dir / "samples" / f"epoch_{epoch + 1:03d}.png", device)
        plot_curves(log, run_dir / "curves.png")
        atomic_save({"G": G.state_dict(), "D": D.state_dict(), "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                     "sched_g": sched_g.state_dict(), "sched_d": sched_d.state_dict(), "epoch": epoch,
                     "rng": rng_state(loader_gen), "best": best, "best_G": best_state, "log": log,
                     "config": dataclasses.asdict(cfg)}, run_dir / "last.pt")  # fmt: skip
        print(f"epoch {epoch + 1}/{cfg.epochs}  D {record['loss_d']:.3f}  G_gan {record['loss_g_gan']:.3f}  "
              f"L1 {record['loss_g_l1']:.4f}  val IoU {val_iou:.4f}  Dice {val_dice:.4f}  lr {lr_g:.2e}  "
              f"{record['seconds']:.0f}s (data {t_data:.1f}s)  best {best['val_iou']:.4f}@{best['epoch']}", flush=True)  # fmt: skip

    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    if interrupted:
        return 130
    if master:
        out = export(cfg, run_dir, best_state, best)
        print(f"exported best epoch {best['epoch']} (val IoU {best['val_iou']:.4f}) -> {out}")
        if cfg.push_to_hub:
            print(f"pushed to the Hub: {push_to_hub(out, cfg.push_to_hub)}")
    return 0


def _has_split(data: str) -> bool:
    p = Path(data)
    return p.suffix.lower() == ".csv" or (p / "split.csv").is_file()


if __name__ == "__main__":
    sys.exit(main())
