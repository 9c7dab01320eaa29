"""Model configuration: saved as ``config.json`` beside ``model.safetensors`` so weights rebuild their model."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Arch = Literal["pix2pix_unet", "effnet_unet"]
Encoder = Literal["lite0", "lite2"]
Norm = Literal["batch", "instance"]
# Keys that only the pix2pix U-Net reads: an effnet_unet config.json leaves them out (an older one that has them,
# at any value, still loads; they are ignored).
PIX2PIX_KEYS = ("ngf", "num_downs", "norm", "dropout")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a generator and feed it.

    ``arch`` picks the generator: ``pix2pix_unet`` is the original U-Net-256 (``ngf`` and ``num_downs``
    apply), ``effnet_unet`` is the transfer-learning U-Net with an EfficientNet-Lite encoder (``encoder``: lite0, lite2).
    ``input_size`` is the side photos are resized to for inference (training used ``meta.train_config.size``; the
    generators are fully convolutional, and export may pick another size on val).
    Inputs are RGB scaled to [-1, 1]; the generator's tanh output maps to a probability as (y + 1) / 2.
    With ``presence_head`` the generator also returns a logit per photo: sigmoid(logit) is the probability
    that the photo shows a person at all; below ``presence_threshold`` the served mask is empty. ``scene_prior``
    adds a second opinion from frozen ImageNet features (``segmenter.scene``): the logit is the lower of the two.
    """

    arch: Arch = "pix2pix_unet"
    in_channels: int = 3
    out_channels: int = 1
    ngf: int = 64
    num_downs: int = 8
    norm: Norm = "batch"
    dropout: bool = True
    input_size: int = 256
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    threshold: float = 0.5
    tta_flip: bool = False  # also run the mirrored photo and average (chosen on val at export)
    decoder_channels: tuple[int, ...] = (128, 64, 48, 32, 16)
    encoder: Encoder = "lite0"  # effnet_unet: EfficientNet-Lite0 (shipped) or the wider Lite2
    presence_head: bool = False  # effnet_unet: a small head on the deepest features says "a person is in the photo"
    presence_threshold: float = 0.5  # presence probability below this: "no person", empty mask (chosen on val)
    scene_prior: bool = False  # effnet_unet: a frozen ImageNet Lite0 + linear probe can veto the head (segmenter.scene)
    # Provenance, filled in at export: sha256 of model.safetensors, val/test metrics, training run.
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every value checked, the offending key named: a bad config.json fails on load, not on the first photo."""
        for name, kind in (("arch", Arch), ("encoder", Encoder), ("norm", Norm)):
            allowed = get_args(kind)
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        ranges = {"in_channels": (3, 3), "out_channels": (1, 1), "ngf": (1, 1024), "num_downs": (5, 12)}
        for name, (lo, hi) in ranges.items():
            value = getattr(self, name)
            if not _is_int(value) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
        if not _is_int(self.input_size) or self.input_size < 32 or self.input_size % 32:
            raise ValueError(f"input_size must be a multiple of 32 (>= 32), got {self.input_size!r}")
        for name in ("threshold", "presence_threshold"):
            value = getattr(self, name)
            if not _is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name in ("dropout", "tta_flip", "presence_head", "scene_prior"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.scene_prior and not (self.arch == "effnet_unet" and self.presence_head):
            raise ValueError("scene_prior needs arch effnet_unet with presence_head: it vetoes the head's answer")
        for name, positive in (("mean", False), ("std", True)):
            value = getattr(self, name)
            if len(value) != 3 or not all(_is_number(v) and (v > 0 if positive else True) for v in value):
                raise ValueError(f"{name} must be 3 {'positive ' if positive else ''}numbers, got {value!r}")
        if len(self.decoder_channels) != 5 or not all(_is_int(c) and c > 0 for c in self.decoder_channels):
            raise ValueError(f"decoder_channels must be 5 positive integers, got {self.decoder_channels!r}")
        if not isinstance(self.meta, dict):
            raise ValueError(f"meta must be an object, got {self.meta!r}")

    def to_dict(self) -> dict[str, Any]:
        """The config as config.json holds it: the keys of its own architecture only."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if k not in PIX2PIX_KEYS} if self.arch != "pix2pix_unet" else d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a model config is a JSON object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("mean", "std", "decoder_channels"):
            if key in d:
                if not isinstance(d[key], list | tuple):
                    raise ValueError(f"{key} must be a list, got {d[key]!r}")
                d[key] = tuple(d[key])
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid model config: {e}") from e


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
