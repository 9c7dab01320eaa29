"""train.py's options: ``TrainConfig`` (each field a command-line option, its help in the field's metadata, its
choices from its Literal type), the parser, the rules of ``--resume``, and the data sources and model a config names."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from segmenter.config import Arch, Encoder, ModelConfig
from segmenter.data import (
    DATA_ROOT,
    DEFAULT_DATA_DIR,
    DataSource,
    parse_sources,
)

from .presets import PRESETS


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
    arch: Arch = opt("pix2pix_unet", "generator")
    encoder: Encoder = opt(
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


def _parser(defaults: dict[str, Any], description: str | None = None) -> argparse.ArgumentParser:
    """An option per TrainConfig field, with ``defaults``; ``description`` heads --help (train.py's docstring)."""
    parser = argparse.ArgumentParser(prog="train.py", description=description, formatter_class=_HelpFormatter)
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


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """Command line -> TrainConfig. Every field is an option; a preset sets defaults that options override."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    known, _ = pre.parse_known_args(argv)
    parser = _parser(
        {**dataclasses.asdict(TrainConfig()), **PRESETS[known.preset], "preset": known.preset}, description
    )
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


def sources(cfg: TrainConfig) -> tuple[list[DataSource], list[DataSource]]:
    """The training mix and the validation sets: ``--datasets``/``--val-datasets``, or ``--data`` with its splits."""
    train = parse_sources(cfg.datasets, cfg.data_root) if cfg.datasets else [DataSource(cfg.data, cfg.train_split)]
    val = (
        parse_sources(cfg.val_datasets, cfg.data_root, split="val")
        if cfg.val_datasets
        else [DataSource(cfg.data, cfg.val_split)]
    )
    return train, val
