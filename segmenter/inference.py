"""Inference session: a generator loaded once from safetensors (local folder, file or Hub repo) that segments photos.

Every mask goes through :meth:`Segmenter.segment` (see ``segmenter.pipeline`` for the steps after the model).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .config import ModelConfig
from .export import CONFIG_NAME, WEIGHTS_NAME, save_pretrained, sha256_file
from .images import ImageLike, as_pil
from .model import build_generator
from .pipeline import Options, Segmentation, finish, upsample

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "ImageLike", "Segmenter", "as_pil", "save_pretrained", "sha256_file"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> tuple[Path, Path | None]:
    """-> (weights file, config file or None). Hub repo ids go through the huggingface_hub cache (offline-capable)."""
    p = Path(path_or_repo_id)
    if p.is_dir():
        if not (p / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {p}")
        return p / WEIGHTS_NAME, (p / CONFIG_NAME if (p / CONFIG_NAME).is_file() else None)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
        cfg = p.with_name(CONFIG_NAME)
        return p, (cfg if cfg.is_file() else None)
    if p.exists() or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(f"{path_or_repo_id}: not a weights folder, .safetensors file or Hub repo id")
    from huggingface_hub import hf_hub_download

    repo = str(path_or_repo_id)
    weights = Path(hf_hub_download(repo, WEIGHTS_NAME, revision=revision))
    config = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision))
    return weights, config


class Segmenter:
    """A generator loaded once, in eval mode, that maps photos to person masks at the photo's own size."""

    def __init__(self, model: nn.Module, cfg: ModelConfig, device: str | torch.device | None = None) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.cfg = cfg
        self.model = model.to(self.device).eval()
        if getattr(self.model, "presence", None) is None:
            self.model.presence = None  # the pix2pix U-Net has none: every photo counts as showing a person

    @property
    def threshold(self) -> float:
        return self.cfg.threshold

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | Path, device: str | torch.device | None = None, revision: str | None = None
    ) -> Segmenter:
        """Load from a folder with config.json + model.safetensors, a .safetensors file, or a Hub repo id.

        When config.json records a sha256, the weights file must match it.
        """
        weights, config = _resolve(path_or_repo_id, revision)
        cfg = ModelConfig.load(config) if config is not None else ModelConfig()
        expected = cfg.meta.get("sha256")
        if expected and sha256_file(weights) != expected:
            raise ValueError(
                f"{weights}: sha256 does not match the one recorded in {config}; "
                "the file is corrupt, truncated or was replaced"
            )
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights}: not a readable safetensors file ({e})") from e
        model = build_generator(cfg)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights}: weights do not fit a {cfg.arch} generator: {e}") from e
        return cls(model, cfg, device)

    # ------------------------------------------------------------ the model step
    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """RGB photos -> (B,3,S,S) normalised batch on the device."""
        s = self.cfg.input_size
        arrs = [np.asarray(im.resize((s, s), Image.BILINEAR, reducing_gap=3.0)) for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,S,S) in [0,1]
        mean = torch.tensor(self.cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,3,S,S) preprocessed batch -> ((B,1,S,S) tanh map, (B,) presence logits or None): the model alone."""
        if self.model.presence is not None:
            return self.model(x, with_presence=True)
        return self.model(x), None

    def predict_low_res(self, images: Sequence[ImageLike]) -> tuple[np.ndarray, np.ndarray | None]:
        """Photos -> ((B, S, S) float32 probabilities at the model's input size, (B,) presence scores or None)."""
        return self._low_res([as_pil(im) for im in images])

    @torch.inference_mode()
    def _low_res(self, photos: Sequence[Image.Image]) -> tuple[np.ndarray, np.ndarray | None]:
        """predict_low_res on photos already converted to upright RGB (each full-size photo is converted once)."""
        x = self.preprocess(photos)
        if self.cfg.tta_flip:  # the photo and its mirror image in one batch, averaged
            y, logit = self.forward(torch.cat([x, x.flip(-1)]))
            y = (y[: len(x)] + y[len(x) :].flip(-1)) / 2  # (B,1,S,S) in [-1,1]
            logit = None if logit is None else (logit[: len(x)] + logit[len(x) :]) / 2
        else:
            y, logit = self.forward(x)
        prob = ((y[:, 0].float() + 1) / 2).clamp_(0, 1).cpu().numpy()
        return prob, None if logit is None else torch.sigmoid(logit.float()).cpu().numpy()

    # ------------------------------------------------------------ the one pipeline
    def segment(self, image: ImageLike, options: Options | None = None) -> Segmentation:
        """One photo -> Segmentation at its full size (mask, alpha, outputs, presence), by ``options``."""
        return self.segment_batch([image], options)[0]

    def segment_batch(self, images: Sequence[ImageLike], options: Options | None = None) -> list[Segmentation]:
        """Photos -> Segmentations, the model run once on the whole batch."""
        options = options or Options()
        pils = [as_pil(im) for im in images]
        if not pils:
            return []
        low, presence = self._low_res(pils)
        return [
            finish(
                pil,
                upsample(p, pil, options.upsample),
                None if presence is None else float(presence[i]),
                options,
                self.threshold,
                self.cfg.presence_threshold,
            )
            for i, (pil, p) in enumerate(zip(pils, low, strict=True))
        ]

    def segment_many(
        self, images: Iterable[ImageLike], options: Options | None = None, batch_size: int = 8
    ) -> Iterator[Segmentation]:
        """Lazily segment an iterable of photos, ``batch_size`` per model call."""
        chunk: list[ImageLike] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == batch_size:
                yield from self.segment_batch(chunk, options)
                chunk = []
        yield from self.segment_batch(chunk, options)

    # ------------------------------------------------------------ shortcuts onto segment()
    def predict_proba(self, image: ImageLike, options: Options | None = None) -> np.ndarray:
        """One photo -> (H, W) float32 person probabilities in [0, 1] at its size (the pipeline's stored map / 255)."""
        return self.segment(image, options).probability.astype(np.float32) / 255.0

    def predict_probas(self, images: Sequence[ImageLike], batch_size: int = 8) -> list[np.ndarray]:
        return [s.probability.astype(np.float32) / 255.0 for s in self.segment_many(images, batch_size=batch_size)]

    def get_mask(self, image: ImageLike, threshold: float | None = None) -> Image.Image:
        """One photo -> binary mask (PIL "L", 0/255) at its size: exactly the Space's default mask."""
        return self.segment(image, Options(threshold=threshold)).mask

    def get_masks(
        self, images: Sequence[ImageLike], batch_size: int = 8, threshold: float | None = None
    ) -> list[Image.Image]:
        return [s.mask for s in self.segment_many(images, Options(threshold=threshold), batch_size)]

    def info(self) -> dict:
        """Provenance for display: arch, input size, presence head, sha256, metrics recorded at export."""
        return json.loads(
            json.dumps(
                {
                    "arch": self.cfg.arch,
                    "input_size": self.cfg.input_size,
                    "tta_flip": self.cfg.tta_flip,
                    "presence_head": self.model.presence is not None,
                    "device": str(self.device),
                    **self.cfg.meta,
                }
            )
        )
