"""Datasets: the Human Segmentation Dataset layout and CSV annotation files, image loading, paired augmentation."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "Human-Segmentation-Dataset"


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    split: str = ""


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> upright 8-bit RGB: EXIF orientation applied; grey, 16-bit, palette, CMYK, LA/RGBA handled.

    Transparent pixels are composited on white. Animated images use their first frame.
    """
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def to_binary_mask(img: Image.Image) -> Image.Image:
    """A mask image -> mode "L" with values 0/255 (foreground where the grey level, or alpha, is above half).

    Alpha is the mask when it varies; a uniformly opaque alpha (black/white masks saved as RGBA) is ignored.
    """
    img = ImageOps.exif_transpose(img)
    alpha = None
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        alpha = img.convert("RGBA").getchannel("A")
    if alpha is not None and alpha.getextrema() != (255, 255):
        grey = alpha
    elif img.mode.startswith("I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        grey = Image.fromarray((arr / peak * 255.0).astype(np.uint8), "L")
    else:
        grey = img.convert("L")
    return grey.point(lambda v: 255 if v > 127 else 0)


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully, raising a ValueError that names the file when it is missing or unreadable."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy() if getattr(im, "n_frames", 1) == 1 else _first_frame(im)
    except FileNotFoundError as e:
        raise ValueError(f"missing file: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"unreadable image: {path} ({e})") from e
    except Image.DecompressionBombError as e:
        raise ValueError(f"image too large: {path} ({e})") from e


def _first_frame(im: Image.Image) -> Image.Image:
    im.seek(0)
    frame = im.copy()
    frame.info.update(im.info)
    return frame


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def pairs_from_folders(root: str | Path, images: str = "Training_Images", masks: str = "Ground_Truth") -> list[Pair]:
    """Pair ``root/images/N.*`` with ``root/masks/N.*`` by file stem, skipping non-image files (e.g. .DS_Store)."""
    root = Path(root)
    img_dir, mask_dir = root / images, root / masks
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise ValueError(f"dataset folder not found: {d}")
    mask_by_stem = {p.stem: p for p in sorted(mask_dir.iterdir()) if is_image_file(p)}
    pairs = []
    for p in sorted(img_dir.iterdir(), key=_natural_key):
        if not is_image_file(p):
            continue
        if p.stem not in mask_by_stem:
            raise ValueError(f"no mask for image {p} in {mask_dir}")
        pairs.append(Pair(p, mask_by_stem[p.stem]))
    if not pairs:
        raise ValueError(f"no images found in {img_dir}")
    return pairs


def pairs_from_csv(csv_path: str | Path, split: str | None = None) -> list[Pair]:
    """Read an annotation CSV with ``images,masks`` columns (paths relative to the CSV) and an optional ``split``."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise ValueError(f"annotation file not found: {csv_path}")
    with csv_path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"images", "masks"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {sorted(missing)}; expected images,masks[,split]")
        rows = list(reader)
    pairs = []
    for row in rows:
        pair = Pair(csv_path.parent / row["images"], csv_path.parent / row["masks"], (row.get("split") or "").strip())
        if split is not None and pair.split != split:
            continue
        for p in (pair.image, pair.mask):
            if not p.is_file():
                raise ValueError(f"{csv_path}: missing file {p}")
        pairs.append(pair)
    if split is not None and not pairs:
        raise ValueError(f"{csv_path}: no rows with split {split!r}")
    return pairs


def load_pairs(data: str | Path, split: str | None = None) -> list[Pair]:
    """Pairs from a dataset folder (its ``split.csv`` when present, else folder pairing) or a CSV file."""
    data = Path(data)
    if data.suffix.lower() == ".csv":
        return pairs_from_csv(data, split)
    if (data / "split.csv").is_file():
        return pairs_from_csv(data / "split.csv", split)
    if split is not None:
        raise ValueError(f"{data} has no split.csv, so split {split!r} is undefined")
    return pairs_from_folders(data)


def _natural_key(p: Path) -> tuple[int, str]:
    return (int(p.stem), "") if p.stem.isdigit() else (1 << 62, p.stem)


def load_pair(pair: Pair, max_side: int | None = None) -> tuple[Image.Image, Image.Image]:
    """Decode one pair -> (RGB image, binary "L" mask) of equal size; ``max_side`` caps the longer side."""
    image = to_rgb(open_image(pair.image))
    mask = to_binary_mask(open_image(pair.mask))
    if mask.size != image.size:
        mask = mask.resize(image.size, Image.NEAREST)
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR, reducing_gap=2.0)
        mask = mask.resize(size, Image.NEAREST)
    return image, mask


def build_transform(train: bool, size: int = 256, aug: str = "pix2pix") -> v2.Compose:
    """Paired transform for (tv_tensors.Image uint8, tv_tensors.Mask) -> float image in [-1,1], mask in {-1,1}.

    ``pix2pix``: resize to 286 (1.117 x size), random crop, horizontal flip. ``strong`` adds scale/aspect
    changes, rotation and colour jitter. Eval: a plain resize. Masks are always resized nearest-neighbour.
    """
    if not train:
        ops: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
    elif aug == "pix2pix":
        load = round(size * 286 / 256)
        ops = [v2.Resize((load, load), antialias=True), v2.RandomCrop(size), v2.RandomHorizontalFlip()]
    elif aug == "strong":
        ops = [
            v2.RandomApply([v2.RandomRotation(15)], p=0.3),
            v2.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=(0.6, 1.6), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(0.4, 0.4, 0.4, 0.05),
            v2.RandomGrayscale(0.05),
        ]
    else:
        raise ValueError(f"unknown augmentation {aug!r}")
    return v2.Compose([*ops, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize([0.5] * 3, [0.5] * 3)])  # fmt: skip


class SegmentationDataset(Dataset):
    """Decoded once into memory (longer side capped at ``cache_side``), augmented on the fly.

    Returns (image (3,S,S) float in [-1,1], mask (1,S,S) float in {-1,1}).
    ``composite_p``: chance of pasting the masked person onto another training image's background.
    """

    def __init__(self, pairs: list[Pair], train: bool, size: int = 256, aug: str = "pix2pix",
                 composite_p: float = 0.0, cache_side: int | None = 400) -> None:  # fmt: skip
        self.pairs = pairs
        self.train = train
        self.composite_p = composite_p if train else 0.0
        self.transform = build_transform(train, size, aug)
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        for pair in pairs:
            image, mask = load_pair(pair, cache_side)
            self.images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))  # (3,H,W) uint8
            self.masks.append(torch.from_numpy(np.asarray(mask).copy())[None])  # (1,H,W) uint8 0/255

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        if self.composite_p and len(self) > 1 and random.random() < self.composite_p:
            image, mask = self._composite(image, mask, random.randrange(len(self)))
        img_t, mask_t = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        mask_t = (mask_t.float() > 127).float() * 2 - 1
        return img_t.as_subclass(torch.Tensor), mask_t.as_subclass(torch.Tensor)

    def _composite(self, image: torch.Tensor, mask: torch.Tensor, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Paste the person of ``image`` onto image ``j`` (resized to fit), whose own visible person stays labelled."""
        size = list(image.shape[-2:])
        bg = v2.functional.resize(self.images[j], size, antialias=True)
        bg_mask = v2.functional.resize(tv_tensors.Mask(self.masks[j]), size).as_subclass(torch.Tensor)
        alpha = mask.float() / 255.0
        out = (alpha * image.float() + (1 - alpha) * bg.float()).round().to(torch.uint8)
        return out, torch.maximum(mask, bg_mask)
