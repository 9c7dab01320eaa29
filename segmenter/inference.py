"""Inference session: load a generator once from safetensors (local folder, file or Hub repo) and predict masks."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .config import ModelConfig
from .data import to_rgb
from .model import build_generator

ImageLike = Image.Image | np.ndarray | torch.Tensor
WEIGHTS_NAME, CONFIG_NAME = "model.safetensors", "config.json"


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_pil(image: ImageLike) -> Image.Image:
    """PIL (EXIF orientation applied), HxWx3 / HxW uint8 array or 3xHxW tensor (uint8, or float in [0,1]) -> RGB PIL."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a 3xHxW (or 1xHxW) tensor, got shape {tuple(t.shape)}")
        if t.is_floating_point():
            t = (t.clamp(0, 1) * 255).round()
        image = t.to(torch.uint8).permute(1, 2, 0).numpy()
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
            raise ValueError(f"expected an HxWx3 array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 array, got {arr.dtype}")
        if arr.shape[0] == 0 or arr.shape[1] == 0:
            raise ValueError(f"empty image of shape {arr.shape}")
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr)))
    raise TypeError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")


def save_pretrained(model: nn.Module, cfg: ModelConfig, folder: str | Path, half: bool = False) -> Path:
    """Write ``model.safetensors`` (+ ``config.json`` recording its sha256) into ``folder``; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}  # fmt: skip
    weights = folder / WEIGHTS_NAME
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "arch": cfg.arch})
    tmp.replace(weights)
    cfg.meta = {**cfg.meta, "sha256": sha256_file(weights), "dtype": "float16" if half else "float32"}
    cfg.save(folder / CONFIG_NAME)
    return folder


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
        self.threshold = cfg.threshold

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, device: str | torch.device | None = None,
                        revision: str | None = None) -> Segmenter:  # fmt: skip
        """Load from a folder with config.json + model.safetensors, a .safetensors file, or a Hub repo id.

        When config.json records a sha256, the weights file must match it.
        """
        weights, config = _resolve(path_or_repo_id, revision)
        cfg = ModelConfig.load(config) if config is not None else ModelConfig()
        expected = cfg.meta.get("sha256")
        if expected and sha256_file(weights) != expected:
            raise ValueError(f"{weights}: sha256 does not match the one recorded in {config}; "
                             "the file is corrupt, truncated or was replaced")  # fmt: skip
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

    def _batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        s = self.cfg.input_size
        arrs = [np.asarray(im.resize((s, s), Image.BILINEAR, reducing_gap=3.0)) for im in images]
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,S,S) in [0,1]
        mean = torch.tensor(self.cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std).view(1, 3, 1, 1)
        return ((x - mean) / std).to(self.device)

    @torch.inference_mode()
    def predict_low_res(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """Images -> (B, S, S) float32 probabilities on the CPU at the model's input size."""
        pils = [as_pil(im) for im in images]
        y = self.model(self._batch(pils))  # (B,1,S,S) in [-1,1]
        return ((y[:, 0].float() + 1) / 2).clamp_(0, 1).cpu()

    @torch.inference_mode()
    def predict_probas(self, images: Sequence[ImageLike], batch_size: int = 8) -> list[np.ndarray]:
        """Images -> list of HxW float32 probability maps in [0, 1], each at its image's size."""
        pils = [as_pil(im) for im in images]
        out: list[np.ndarray] = []
        for start in range(0, len(pils), batch_size):
            chunk = pils[start : start + batch_size]
            low = self.predict_low_res(chunk)
            for im, p in zip(chunk, low, strict=True):
                up = F.interpolate(p[None, None], size=(im.height, im.width), mode="bilinear", align_corners=False)
                out.append(up[0, 0].numpy().astype(np.float32, copy=False))
        return out

    def predict_proba(self, image: ImageLike) -> np.ndarray:
        """One image -> HxW float32 probability map in [0, 1] at the image's size."""
        return self.predict_probas([image])[0]

    def get_masks(self, images: Sequence[ImageLike], batch_size: int = 8, threshold: float | None = None) -> list[Image.Image]:
        """Images -> binary masks (PIL "L", 0/255) at each image's size."""
        thr = self.threshold if threshold is None else threshold
        return [Image.fromarray(((p >= thr) * 255).astype(np.uint8), "L") for p in self.predict_probas(images, batch_size)]

    def get_mask(self, image: ImageLike, threshold: float | None = None) -> Image.Image:
        """One image -> binary mask (PIL "L", values 0/255) at the image's size."""
        return self.get_masks([image], threshold=threshold)[0]

    def info(self) -> dict:
        """Provenance for display: arch, sha256, metrics recorded at export."""
        return json.loads(json.dumps({"arch": self.cfg.arch, **self.cfg.meta}))
