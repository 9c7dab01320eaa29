"""Datasets: the Human Segmentation Dataset layout and CSV annotation files, image loading, paired augmentation."""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .images import IMAGE_SUFFIXES, is_image_file, open_image, to_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "DataSource",
    "Pair",
    "SegmentationDataset",
    "is_image_file",
    "load_pair",
    "load_pairs",
    "open_image",
    "parse_sources",
    "paste_person",
    "to_binary_mask",
    "to_rgb",
]

DATA_ROOT = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
DEFAULT_DATA_DIR = DATA_ROOT / "Human-Segmentation-Dataset"


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path
    split: str = ""


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


@dataclass(frozen=True)
class DataSource:
    """One dataset of a training mix: a folder with ``split.csv`` (or a CSV), the split to read, a sampling weight.

    ``weight`` is the source's share of the samples drawn per epoch, relative to the other sources' weights
    (not per image: a source of 100 photos with weight 1 is drawn as often as one of 300 with weight 1).
    """

    path: str
    split: str = "train"
    weight: float = 1.0

    @property
    def name(self) -> str:
        return Path(self.path).name if Path(self.path).suffix.lower() != ".csv" else Path(self.path).parent.name


def parse_sources(spec: str, root: str | Path = DATA_ROOT, split: str = "train") -> list[DataSource]:
    """``"NAME[:SPLIT[:WEIGHT]],..."`` -> sources. NAME is a folder under ``root`` or any path; SPLIT defaults to ``split``.

    >>> [s.weight for s in parse_sources("Human-Segmentation-Dataset:train:2,PennFudanPed", root="/data")]
    [2.0, 1.0]
    """
    sources = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, rest = item.partition(":")
        split_name, _, weight = rest.partition(":")
        path = Path(name) if Path(name).is_absolute() or Path(name).exists() else Path(root) / name
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"data source {item!r}: weight {weight!r} is not a number") from None
        if w <= 0:
            raise ValueError(f"data source {item!r}: weight must be > 0")
        if (split_name or split) == "test":
            raise ValueError(f"data source {item!r}: the test split is never used for training or choosing a model")
        sources.append(DataSource(str(path), split_name or split, w))
    if not sources:
        raise ValueError(f"no data sources in {spec!r}")
    return sources


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
    elif aug == "robust":  # geometry that cuts people at the frame edge, then the camera's ways of spoiling a photo
        ops = [
            v2.RandomApply([v2.RandomRotation(20)], p=0.3),
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), ratio=(0.6, 1.6), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
            v2.RandomGrayscale(0.05),
            v2.RandomApply([v2.JPEG((25, 95))], p=0.3),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 2.0))], p=0.2),
            v2.RandomApply([v2.GaussianNoise(sigma=0.04)], p=0.2),
        ]
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
    return v2.Compose(
        [
            *ops,
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )


class SegmentationDataset(Dataset):
    """Decoded once into memory (longer side capped at ``cache_side``), augmented on the fly.

    Returns (image (3,S,S) float in [-1,1], mask (1,S,S) float in {-1,1}).
    ``composite_p``: chance of pasting the sample's person onto another training image's background (whole frame).
    ``paste_p``: chance of copy-paste compositing: one or two people, cut out by their ground-truth masks from other
    training photos, pasted at a random scale (``paste_min_height``-100% of the frame's height) and position (partly
    out of the frame too) onto this sample, whatever it shows (a portrait, a street, a frame without people); the
    masks are merged.
    ``crop_negative_p``: chance that the sample becomes a close-up of its own photo's background instead (a crop that
    holds no person pixel, see :func:`background_crop`): walls, cars, furniture and street at object scale, so that
    the model learns that a close-up without a person is not one.
    ``subject_crop_p``: chance that a sample whose mask is empty (a ``Negatives`` frame) becomes a close-up of the
    middle of its frame (:func:`subject_crop`), where such footage keeps its subject: an animal or a car filling the
    frame, as in a close-up photo of a pet, which the model otherwise calls a person.
    """

    def __init__(
        self,
        pairs: list[Pair],
        train: bool,
        size: int = 256,
        aug: str = "pix2pix",
        composite_p: float = 0.0,
        cache_side: int | None = 400,
        paste_p: float = 0.0,
        crop_negative_p: float = 0.0,
        subject_crop_p: float = 0.0,
        paste_min_height: float = 0.25,
    ) -> None:
        self.pairs = pairs
        self.subject_crop_p = subject_crop_p if train else 0.0
        self.crop_negative_p = crop_negative_p if train else 0.0
        self.train = train
        self.composite_p = composite_p if train else 0.0
        self.paste_p = paste_p if train else 0.0
        self.paste_min_height = paste_min_height
        self.transform = build_transform(train, size, aug)
        self.images: list[torch.Tensor] = []
        self.masks: list[torch.Tensor] = []
        for pair in pairs:
            image, mask = load_pair(pair, cache_side)
            self.images.append(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))  # (3,H,W) uint8
            self.masks.append(torch.from_numpy(np.asarray(mask).copy())[None])  # (1,H,W) uint8 0/255
        # Donors for copy-paste and compositing: samples with a person covering at least 1% of the frame.
        self.donors = [i for i, m in enumerate(self.masks) if (m > 127).float().mean() >= 0.01]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[i], self.masks[i]
        box = None
        if self.subject_crop_p and random.random() < self.subject_crop_p and not bool((mask > 127).any()):
            box = subject_crop(tuple(mask.shape[-2:]), random.random)
        elif self.crop_negative_p and random.random() < self.crop_negative_p:
            box = background_crop(mask, random.random)
        if box is not None:
            top, left, h, w = box
            image, mask = image[:, top : top + h, left : left + w], mask[:, top : top + h, left : left + w]
            img_t, mask_t = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
            return img_t.as_subclass(torch.Tensor), torch.full(mask_t.shape, -1.0)
        if self.composite_p and len(self) > 1 and random.random() < self.composite_p:
            image, mask = self._composite(image, mask, random.randrange(len(self)))
        if self.paste_p and self.donors and random.random() < self.paste_p:
            for j in random.sample(self.donors, min(len(self.donors), 1 if random.random() < 0.7 else 2)):
                image, mask = paste_person(
                    image, mask, self.images[j], self.masks[j], random.random, self.paste_min_height
                )
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


def background_crop(
    mask: torch.Tensor, rand: Callable[[], float], tries: int = 20, margin: float = 0.1
) -> tuple[int, int, int, int] | None:
    """A random box (top, left, h, w) of the (1,H,W) uint8 mask with no person pixel in it, nor within ``margin``
    of its size around it (ground-truth edges miss hair and fingers); None when ``tries`` random boxes all hit one.

    Boxes are 25-70% of the shorter side high, with an aspect ratio of 0.6-1.6: close-ups of a part of the scene.
    """
    person = (mask[0] > 127).to(torch.int32)
    H, W = person.shape
    integral = torch.zeros(H + 1, W + 1, dtype=torch.int32)
    integral[1:, 1:] = person.cumsum(0).cumsum(1)
    for _ in range(tries):
        h = max(8, round((0.25 + 0.45 * rand()) * min(H, W)))
        w = min(W, max(8, round(h * (0.6 + rand()))))
        h = min(h, H)
        top, left = int(rand() * (H - h + 1)), int(rand() * (W - w + 1))
        my, mx = round(margin * h), round(margin * w)
        y0, y1, x0, x1 = max(0, top - my), min(H, top + h + my), max(0, left - mx), min(W, left + w + mx)
        if int(integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]) == 0:
            return top, left, h, w
    return None


def subject_crop(size: tuple[int, int], rand: Callable[[], float]) -> tuple[int, int, int, int]:
    """A box (top, left, h, w) around the middle of an (H, W) frame: 35-75% of the shorter side high, aspect ratio
    0.7-1.3, its centre within the middle 40% of each side. Footage of one subject keeps it there, so the box is a
    close-up of it (the caller only crops frames known to hold no person)."""
    H, W = size
    h = min(H, max(8, round((0.35 + 0.4 * rand()) * min(H, W))))
    w = min(W, max(8, round(h * (0.7 + 0.6 * rand()))))
    cy, cx = H * (0.3 + 0.4 * rand()), W * (0.3 + 0.4 * rand())
    top = min(max(0, round(cy - h / 2)), H - h)
    left = min(max(0, round(cx - w / 2)), W - w)
    return top, left, h, w


def paste_person(
    image: torch.Tensor,
    mask: torch.Tensor,
    donor: torch.Tensor,
    donor_mask: torch.Tensor,
    rand: Callable[[], float],
    min_height: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy-paste: the person of ``donor`` (cut out by ``donor_mask``) onto ``image`` -> (image, merged mask).

    Images are (3,H,W) uint8, masks (1,H,W) uint8 0/255. The person is scaled to ``min_height``-100% of the frame's
    height (uniformly) and placed anywhere, up to a third of it outside the frame (people cut at the edge); ``rand()``
    draws in [0, 1).
    """
    ys, xs = torch.nonzero(donor_mask[0] > 127, as_tuple=True)
    if len(ys) == 0:
        return image, mask
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    person, alpha = donor[:, y0:y1, x0:x1], donor_mask[:, y0:y1, x0:x1]
    H, W = image.shape[-2:]
    scale = (min_height + (1 - min_height) * rand()) * H / person.shape[1]
    scale = min(scale, 1.2 * W / person.shape[2])
    h, w = max(1, round(person.shape[1] * scale)), max(1, round(person.shape[2] * scale))
    person = v2.functional.resize(person, [h, w], antialias=True)
    alpha = v2.functional.resize(alpha, [h, w], antialias=True).float() / 255.0  # soft edge
    top = round(-h / 3 + rand() * (H - h / 3))  # top in [-h/3, H - 2h/3): at least 2/3 of the height can show
    left = round(-w / 3 + rand() * (W - w / 3))
    # The part of the pasted box that lies inside the frame
    fy0, fy1, fx0, fx1 = max(top, 0), min(top + h, H), max(left, 0), min(left + w, W)
    if fy1 <= fy0 or fx1 <= fx0:
        return image, mask
    py0, px0 = fy0 - top, fx0 - left
    a = alpha[:, py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0]
    p = person[:, py0 : py0 + fy1 - fy0, px0 : px0 + fx1 - fx0].float()
    image, mask = image.clone(), mask.clone()
    region = image[:, fy0:fy1, fx0:fx1].float()
    image[:, fy0:fy1, fx0:fx1] = (a * p + (1 - a) * region).round().clamp(0, 255).to(torch.uint8)
    mask[:, fy0:fy1, fx0:fx1] = torch.maximum(mask[:, fy0:fy1, fx0:fx1], ((a > 0.5) * 255).to(torch.uint8))
    return image, mask


def has_split(data: str | Path) -> bool:
    """Whether ``data`` (a dataset folder or CSV, as ``load_pairs`` takes it) has a split column: a .csv, or a folder
    with split.csv. Without one, every row is a training row."""
    p = Path(data)
    return p.suffix.lower() == ".csv" or (p / "split.csv").is_file()


def all_empty(pairs: list[Pair]) -> bool:
    """Whether every mask of ``pairs`` is empty (a set of photos without people)."""
    return all(not (np.asarray(load_pair(p, 64)[1]) > 127).any() for p in pairs)


def portable_path(path: str | Path, root: str | Path = DATA_ROOT) -> str:
    """``path`` as a config.json records it, free of the training machine's folders: relative to the data ``root``
    when under it (a dataset's name, e.g. ``PennFudanPed``), else its dataset folder's name (with the file, for a
    CSV)."""
    p, base = Path(path).resolve(), Path(root).resolve()
    if p == base or p.is_relative_to(base):
        return p.relative_to(base).as_posix()
    return f"{p.parent.name}/{p.name}" if p.suffix.lower() == ".csv" else p.name
