"""Small builders shared by the tests: tiny weights, synthetic photos with known masks, tiny datasets."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from segmenter.config import ModelConfig
from segmenter.data import DEFAULT_DATA_DIR
from segmenter.inference import save_pretrained
from segmenter.model import build_generator

REPO_ROOT = Path(__file__).resolve().parent.parent
requires_shared_data = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "split.csv").is_file(), reason=f"shared dataset not found at {DEFAULT_DATA_DIR}"
)

FG, BG = 210, 40  # grey levels of the "person" and the background in synthetic scenes


def tiny_config() -> ModelConfig:
    return ModelConfig(arch="pix2pix_unet", ngf=8)


def export_tiny(folder: Path, cfg: ModelConfig, edit: Callable[[nn.Module], None] | None = None, seed: int = 0) -> Path:
    """The one tiny-weights builder: build ``cfg``'s generator (seeded), let ``edit`` set weights, export to ``folder``."""
    torch.manual_seed(seed)
    net = build_generator(cfg)
    if edit is not None:
        with torch.no_grad():
            edit(net)
    return save_pretrained(net, cfg, folder)


def make_tiny_weights(folder: Path, seed: int = 0, constant: float | None = None, meta: dict | None = None) -> Path:
    """Export a randomly initialised ngf=8 pix2pix U-Net to ``folder`` (config.json + model.safetensors).

    ``constant``: zero the last layer's weight and set its bias, so the network outputs tanh(constant)
    everywhere (e.g. +5 -> mask of all ones, -5 -> all zeros) whatever the input.
    """

    def set_constant(net: nn.Module) -> None:
        last = [m for m in net.modules() if isinstance(m, nn.ConvTranspose2d)][-1]
        last.weight.zero_()
        last.bias.fill_(constant)

    cfg = ModelConfig(arch="pix2pix_unet", ngf=8, meta=meta or {})
    return export_tiny(folder, cfg, set_constant if constant is not None else None, seed)


def scene(height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A grey photo (H,W,3 uint8) and its mask (H,W bool): a light, asymmetric "person" on a dark background.

    The mask can be read back from the pixels (brighter than mid-grey), whatever flips, crops, rotations
    or colour jitter are applied to both.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.3, 0.6) * height, rng.uniform(0.25, 0.45) * width
    head = (yy - cy * 0.5) ** 2 / (0.12 * height) ** 2 + (xx - cx) ** 2 / (0.08 * width) ** 2 <= 1
    body = (yy > cy * 0.6) & (yy < cy + 0.35 * height) & (np.abs(xx - cx) < 0.12 * width)
    arm = (np.abs(yy - cy) < 0.04 * height) & (xx > cx) & (xx < cx + 0.35 * width)  # points right only
    mask = head | body | arm
    image = np.where(mask, FG, BG).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=2), mask


def write_dataset(root: Path, sizes: list[tuple[int, int]], splits: list[str]) -> Path:
    """Write images/i.jpg + masks/i.png scenes and an ``images,masks,split`` CSV under ``root``; returns the CSV."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    csv_path = root / "annotations.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["images", "masks", "split"])
        for i, ((h, w), split) in enumerate(zip(sizes, splits, strict=True)):
            image, mask = scene(h, w, seed=i)
            Image.fromarray(image).save(root / "images" / f"{i}.jpg", quality=95)
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{i}.png")
            writer.writerow([f"images/{i}.jpg", f"masks/{i}.png", split])
    return csv_path


def noise_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random colours (H,W,3 uint8): content every network responds to, different under any flip."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def exif_rotated_jpeg(upright: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """Store ``upright`` the way a phone does: pixels rotated, EXIF orientation 6 ("rotate 90 CW to view").

    Returns (the opened JPEG, the upright pixels as decoded), so JPEG loss does not enter comparisons.
    """
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(np.rot90(upright, k=1).copy()).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    raw = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))  # stored pixels, EXIF ignored
    return Image.open(io.BytesIO(buf.getvalue())), np.rot90(raw, k=-1).copy()


def odd_modes() -> dict[str, tuple[Image.Image, np.ndarray]]:
    """Images in awkward modes -> (image, expected upright 8-bit RGB pixels after to_rgb)."""
    h, w = 6, 10
    grey = np.arange(h * w, dtype=np.uint8).reshape(h, w) * 4
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, : w // 2, 3] = 255  # left half opaque red, right half transparent -> white
    expected_rgba = np.full((h, w, 3), 255, np.uint8)
    expected_rgba[:, : w // 2] = (255, 0, 0)
    deep = np.zeros((h, w), np.uint16)
    deep[:, 3:] = 65535
    deep[:, 6:] = 32768
    expected_deep = np.zeros((h, w), np.uint8)
    expected_deep[:, 3:] = 255
    expected_deep[:, 6:] = 128
    palette = Image.new("P", (w, h), 0)
    palette.putpalette([0, 0, 0, 0, 128, 255] + [0] * 762)
    palette.paste(1, (0, 0, w, h // 2))
    expected_palette = np.zeros((h, w, 3), np.uint8)
    expected_palette[: h // 2] = (0, 128, 255)
    cmyk = Image.new("CMYK", (w, h), (0, 255, 255, 0))  # no cyan, full magenta + yellow = red
    cmyk.paste((0, 0, 0, 0), (0, 0, w // 2, h))  # no ink = white
    expected_cmyk = np.zeros((h, w, 3), np.uint8)
    expected_cmyk[..., 0] = 255
    expected_cmyk[:, : w // 2] = 255
    exif_image, exif_upright = exif_rotated_jpeg(noise_photo(24, 40))
    return {
        "L": (Image.fromarray(grey, "L"), np.repeat(grey[..., None], 3, 2)),
        "RGBA": (Image.fromarray(rgba, "RGBA"), expected_rgba),
        "I;16": (Image.fromarray(deep), np.repeat(expected_deep[..., None], 3, 2)),
        "P": (palette, expected_palette),
        "CMYK": (cmyk, expected_cmyk),
        "EXIF-6": (exif_image, exif_upright),
    }


def make_presence_weights(
    folder: Path, mask_bias: float = 1.0, presence_bias: float = 0.0, presence_threshold: float = 0.5
) -> Path:
    """Export an untrained effnet_unet with a presence head; the mask is tanh(``mask_bias``) everywhere and the
    presence score sigmoid(``presence_bias``) for every photo (last layers zeroed, biases set). The default map,
    probability 0.88 everywhere, is a person below the gate's CONFIDENT level: the presence score alone decides; a
    ``mask_bias`` of 2 or more makes it confident, which the gate keeps whatever the score says."""

    def set_biases(net: nn.Module) -> None:
        net.head.weight.zero_()
        net.head.bias.fill_(mask_bias)
        net.presence.mlp[-1].weight.zero_()
        net.presence.mlp[-1].bias.fill_(presence_bias)

    cfg = ModelConfig(arch="effnet_unet", input_size=64, presence_head=True, presence_threshold=presence_threshold)
    return export_tiny(folder, cfg, set_biases)
