"""Train a Pix2Pix person segmenter: a U-Net generator against a 70x70 PatchGAN, GAN + L1 loss.

Top to bottom: config -> data -> models -> (resume) -> epochs -> export -> Hub. The defaults are the
original run (``--preset seed``); ``--preset cpu-robust-crops`` is the run that produced the shipped weights
(the presets and their history: segmenter/training/presets.py).

    python train.py --preset cpu-robust-crops --export-to weights/
    python train.py --epochs 3 --run-id smoke
    python train.py --resume runs/<id> [--epochs 50]   # continue a run (optionally for longer)
    torchrun --nproc_per_node=2 train.py ...          # DDP (gloo on CPU, nccl on CUDA)
"""

from __future__ import annotations

import contextlib
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

from segmenter.data import (
    SegmentationDataset,
    all_empty,
    load_pairs,
)
from segmenter.export import push_to_hub
from segmenter.model import build_discriminator, build_generator, load_lite_imagenet
from segmenter.training import config as train_config
from segmenter.training.config import (
    TrainConfig,
    given_options,
    model_config,
    resume_config,
    sources,
)
from segmenter.training.lib import (
    LOSS_KEYS,
    all_rng_states,
    amp_dtype,
    amp_note,
    atomic_save,
    export,
    find_checkpoint,
    init_generator,
    load_data,
    make_sampler,
    plot_curves,
    presence_target,
    recorded_source,
    save_augmented,
    save_samples,
    set_rng_state,
    soft_dice_loss,
    validate,  # noqa: F401 (bench/training.py: train.validate)
    validate_all,
    write_logs,
)
from segmenter.training.presets import PRESETS  # noqa: F401 (train.PRESETS: tests, bench/training.py)
from segmenter.weights import EXPORT_FILES  # noqa: F401 (train.EXPORT_FILES)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line -> TrainConfig (train_config.parse_args, with this file's docstring heading --help)."""
    return train_config.parse_args(argv, __doc__)


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
    if cfg.gan_weight > 0:  # D: real pairs -> real_label, generated pairs (detached) -> 0
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
        D.requires_grad_(False)  # G's adversarial term: through the bare D, frozen for this pass
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


def seeded_loader(
    cfg: TrainConfig, train_ds: SegmentationDataset, sample_weights: list[float], rank: int, world: int
) -> tuple[DataLoader, torch.Generator]:
    """Seeds every RNG (rank r: seed + r), then the training loader and the generator its shuffling draws from."""
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
    return loader, loader_gen


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
    loader, loader_gen = seeded_loader(cfg, train_ds, sample_weights, rank, world)
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
