"""Seconds per training epoch for the ``seed`` and ``cpu`` presets, and the data pipeline's share of it.

For each preset (its TrainConfig from train.py's own parser, its datasets from train.py's ``load_data``):
* data alone: one full pass of the training DataLoader (SegmentationDataset with the preset's augmentation and
  compositing, the preset's batch size and workers): no model (``--limit N``: over N photos, scaled up);
* steps: N GAN steps (D step, then G step: GAN + L1) fed by that DataLoader, the fetch timed apart, interleaved
  with N steps on one fixed batch (the model step alone); extrapolated to an epoch of the 230 training photos
  (= the DataLoader's number of batches), so an "epoch" here is an epoch-equivalent, not a measured epoch;
* validation: train.py's ``validate`` over the val split, once (train.py runs it after every epoch).

The step is train.py's own ``train_step``, called without autocast (CPU, fp32; train.py itself autocasts with
--amp: bf16 on CUDA and on CPUs with native bf16).

    .venv/bin/python bench/training.py                # seed and cpu presets, 2 steps each (~2-3 min on a shared 2-core CPU)
    .venv/bin/python bench/training.py --quick        # cpu preset, 2 steps, first 48 photos
    .venv/bin/python bench/training.py --steps 10 --threads 2
    .venv/bin/python bench/training.py --precision --presets seed cpu-robust-crops --steps 3 --threads 2
                                                      # fp32 against --amp's bf16 autocast, one step interleaved
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import torch
from common import ROOT, Timing, markdown_table, print_machine, time_interleaved
from torch import nn
from torch.utils.data import DataLoader

import train as trainpy  # ROOT is on sys.path (common)
from segmenter.hardware import cpu_has_bf16
from segmenter.model import build_discriminator, build_generator

EPOCH_IMAGES = 230  # the train split of split.csv


@dataclass
class GanStep:
    """One GAN training step of train.py (D on real/fake pairs, then G on GAN + L1), on the CPU in fp32."""

    G: nn.Module
    D: nn.Module
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    cfg: Any  # train.TrainConfig

    @classmethod
    def build(cls, cfg: Any) -> GanStep:
        G = build_generator(trainpy.model_config(cfg)).train()
        D = build_discriminator(in_channels=4, ndf=cfg.ndf).train()
        betas = (cfg.beta1, cfg.beta2)
        return cls(
            G,
            D,
            torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=betas),
            torch.optim.Adam(D.parameters(), lr=cfg.lr, betas=betas),
            cfg,
        )

    def __call__(self, img: torch.Tensor, mask: torch.Tensor, autocast: Any = None) -> float:
        losses = trainpy.train_step(self.G, self.D, self.D, self.opt_g, self.opt_d, img, mask, self.cfg, autocast)
        loss_g_gan, loss_g_l1 = losses["loss_g_gan"], losses["loss_g_l1"]
        return float(self.cfg.gan_weight * loss_g_gan + self.cfg.l1_lambda * loss_g_l1)


def train_loader(cfg: Any, train_ds: Any) -> DataLoader:
    """The training DataLoader as train.py builds it (single process)."""
    return DataLoader(
        train_ds,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=cfg.workers,
        drop_last=len(train_ds) > cfg.batch_size,
        persistent_workers=cfg.workers > 0,
    )


@dataclass
class PresetResult:
    preset: str
    arch: str
    batch: int
    workers: int
    steps_per_epoch: int
    data_epoch_s: float  # one full DataLoader pass, no model
    fetch: Timing  # in-loop fetch of one batch
    fed_step: Timing  # step on a freshly fetched batch (fetch excluded)
    fixed_step: Timing  # step on one fixed batch
    val_s: float

    @property
    def epoch_s(self) -> float:
        """Epoch-equivalent: steps_per_epoch x (fetch + step), from the medians."""
        return self.steps_per_epoch * (self.fetch.p50 + self.fed_step.p50)

    @property
    def model_epoch_s(self) -> float:
        return self.steps_per_epoch * self.fixed_step.p50


def measure(preset: str, steps: int, workers: int | None, limit: int) -> PresetResult:
    cfg = trainpy.parse_args(["--preset", preset])
    cfg.limit = limit
    if workers is not None:
        cfg.workers = workers
    torch.manual_seed(cfg.seed)
    train_ds, _, val_sets = trainpy.load_data(cfg)  # (the presets timed here have one val set)
    val_ds = val_sets[0][1]
    loader = train_loader(cfg, train_ds)
    t0 = time.perf_counter()
    for _ in loader:
        pass
    data_epoch = (time.perf_counter() - t0) * EPOCH_IMAGES / len(train_ds)  # = the pass itself unless --limit
    step = GanStep.build(cfg)
    fixed_img, fixed_mask = next(iter(loader))
    batches = iter(loader)
    fetch: list[float] = []
    current: dict[str, torch.Tensor] = {}

    def fed() -> None:  # the fetch is timed apart and subtracted
        t = time.perf_counter()
        current["img"], current["mask"] = next(batches)
        fetch.append(time.perf_counter() - t)
        step(current["img"], current["mask"])

    timings = time_interleaved({"fed": fed, "fixed": lambda: step(fixed_img, fixed_mask)}, steps, warmup=1)
    fetch = fetch[1:]  # the warm-up call's fetch
    fed_step = Timing([s - f for s, f in zip(timings["fed"].samples, fetch, strict=True)])
    t0 = time.perf_counter()
    trainpy.validate(step.G, DataLoader(val_ds, batch_size=16), torch.device("cpu"))
    val_s = time.perf_counter() - t0
    steps_per_epoch = EPOCH_IMAGES // cfg.batch_size  # train.py drops the last partial batch
    return PresetResult(
        preset,
        cfg.arch,
        cfg.batch_size,
        cfg.workers,
        steps_per_epoch,
        data_epoch,
        Timing(fetch),
        fed_step,
        timings["fixed"],
        val_s,
    )


def report(results: list[PresetResult], steps: int, limit: int) -> str:
    rows = []
    for r in results:
        share_loop = r.steps_per_epoch * r.fetch.p50 / r.epoch_s
        share_alone = r.data_epoch_s / (r.data_epoch_s + r.model_epoch_s)
        rows.append(
            [
                r.preset,
                r.arch,
                str(r.batch),
                str(r.workers),
                str(r.steps_per_epoch),
                f"{r.fixed_step.p50:.2f}",
                f"{r.fed_step.p50:.2f}",
                f"{r.fetch.p50 * 1e3:.0f}",
                f"{r.epoch_s:.0f}",
                f"{r.model_epoch_s:.0f}",
                f"{r.data_epoch_s:.1f}",
                f"{r.val_s:.1f}",
                f"{share_alone * 100:.1f}%",
                f"{share_loop * 100:.1f}%",
                "met" if max(share_alone, share_loop) <= 0.05 else "NOT met",
            ]
        )
    headers = [
        "preset",
        "generator",
        "batch",
        "workers",
        "steps / epoch",
        "step alone s (fixed batch)",
        "step s (loader-fed)",
        "fetch ms / batch",
        "epoch-equivalent s",
        "model-only epoch s",
        "DataLoader pass alone s",
        "val pass s",
        "data share (alone)",
        "data share (in loop)",
        "data <= 5%",
    ]
    note = (
        f"Epoch-equivalent = steps/epoch x p50 (fetch + step), from {steps} loader-fed steps per preset "
        f"(extrapolated to the {EPOCH_IMAGES}-photo train split; the val pass, which train.py also runs each "
        "epoch, is shown apart). The DataLoader pass is "
        + (f"timed over the first {limit} photos and scaled up." if limit else "timed over the whole split.")
        + " Data share alone = DataLoader pass / (pass + model-only epoch); in loop = fetch time / epoch-equivalent."
    )
    return "### Training: seconds per epoch-equivalent\n\n" + markdown_table(headers, rows) + "\n\n" + note


def time_precisions(step: GanStep, img: torch.Tensor, mask: torch.Tensor, steps: int) -> dict:
    """{"fp32": Timing, "bf16": Timing} of ``step`` on one batch, the two interleaved after one warm-up each."""
    return time_interleaved(
        {
            "fp32": lambda: step(img, mask, contextlib.nullcontext()),
            "bf16": lambda: step(img, mask, torch.autocast("cpu", dtype=torch.bfloat16)),
        },
        steps,
        warmup=1,
    )


def precision_table(presets: list[str], steps: int, size: int = 0, batch_size: int = 0) -> str:
    """fp32 against bf16 autocast (train.py --amp: fp32 weights and optimiser) on one fixed batch of each preset at
    its own size and batch, the two interleaved in one process so that the machine's load hits both alike."""
    native = cpu_has_bf16()  # bf16 is timed either way: without native bf16 oneDNN emulates it (--amp: fp32)
    rows = []
    for preset in presets:
        overrides = [
            *(["--size", str(size)] if size else []),
            *(["--batch-size", str(batch_size)] if batch_size else []),
        ]
        cfg = trainpy.parse_args(["--preset", preset, *overrides])
        torch.manual_seed(cfg.seed)
        step = GanStep.build(cfg)
        img = torch.rand(cfg.batch_size, 3, cfg.size, cfg.size) * 2 - 1
        mask = (torch.rand(cfg.batch_size, 1, cfg.size, cfg.size) > 0.5).float() * 2 - 1
        timings = time_precisions(step, img, mask, steps)
        fp32, half = timings["fp32"].p50, timings["bf16"].p50
        objective = "GAN + L1" if cfg.gan_weight > 0 else "L1 + Dice (no D)"
        side = f"{cfg.size}x{cfg.size}"
        rows.append(
            [
                preset,
                cfg.arch,
                objective,
                str(cfg.batch_size),
                side,
                f"{fp32:.2f}",
                f"{half:.2f}",
                f"{fp32 / half:.2f}x",
            ]
        )
    headers = ["preset", "generator", "objective", "batch", "size", "fp32 s/step", "bf16 s/step", "speed-up"]
    note = f"Median of {steps} steps of each, interleaved after one warm-up each, on one fixed random batch. " + (
        "This CPU runs bf16 natively (AVX512-BF16 or AMX): --amp trains in bf16 here."
        if native
        else "This CPU has no native bf16 (no AVX512-BF16, no AMX; oneDNN emulates it): --amp trains in fp32 here."
    )
    return "### Training step: fp32 against bf16 autocast (--amp)\n\n" + markdown_table(headers, rows) + "\n\n" + note


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="cpu preset only, 2 steps, first 48 photos")
    p.add_argument(
        "--limit",
        type=int,
        default=0,
        help="load only the first N train/val photos (0: all); "
        "the DataLoader pass is then scaled up to the 230-photo split",
    )
    p.add_argument("--presets", nargs="+", default=["seed", "cpu"], choices=sorted(trainpy.PRESETS))
    p.add_argument("--steps", type=int, default=2, help="timed steps of each kind per preset")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default, as train.py)")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: the preset's)")
    p.add_argument("--precision", action="store_true", help="only the step in fp32 against bf16 autocast (--amp)")
    p.add_argument("--size", type=int, default=0, help="--precision: train at this size (0: the preset's)")
    p.add_argument("--batch-size", type=int, default=0, help="--precision: this batch (0: the preset's)")
    args = p.parse_args(argv)
    if args.quick:
        args.presets, args.steps, args.limit = ["cpu"], 2, 48
    if args.threads:
        torch.set_num_threads(args.threads)
    print_machine("Training throughput")
    print(f"train.py: {ROOT / 'train.py'}\n")
    if args.precision:
        print(precision_table(args.presets, args.steps, args.size, args.batch_size))
        return
    results = [measure(preset, args.steps, args.workers, args.limit) for preset in args.presets]
    print(report(results, args.steps, args.limit))


if __name__ == "__main__":
    main()
