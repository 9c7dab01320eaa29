"""Decoding photos: any PIL mode, array or tensor to upright 8-bit RGB, and capped decoding of uploaded files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Image.Image | np.ndarray | torch.Tensor
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".avif", ".tif", ".tiff", ".gif"}
READABLE = "JPEG, PNG, WebP, AVIF, BMP, TIFF or GIF"
# The one allowlist of PIL decoders every entry point opens files with (JPEG includes phones' MPO files). Anything
# else (EPS, which PIL renders through Ghostscript, PSD, ICO, ...) is refused before it is decoded.
FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "BMP", "TIFF", "GIF")
Image.init()  # register every decoder PIL has, so that Image.open(..., formats=FORMATS) finds the ones it names


class ImageError(ValueError):
    """A photo that cannot be used: ``status`` is the HTTP status a server answers with (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image -> upright 8-bit RGB: EXIF orientation applied; grey, 16-bit, palette, CMYK, LA/RGBA handled.

    Transparent pixels are composited on white. Animated images use their first frame.
    """
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img, dtype=np.float64), img.mode), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit, 32-bit integer or float greyscale image -> uint8 by its scale: float 0-1, 8-bit or 16-bit values."""
    if not np.isfinite(arr).all():
        raise ValueError("the image holds NaN or infinite values")
    top = float(arr.max()) if arr.size else 0.0
    if float(arr.min(initial=0.0)) < 0 or top > 65535:
        raise ValueError(f"{mode} image values outside 0-65535 (min {arr.min():g}, max {top:g}): no known scale")
    peak = 1.0 if mode == "F" and top <= 1.0 else 255.0 if top <= 255 else 65535.0
    return np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)


def open_image(path: str | Path) -> Image.Image:
    """Open an image file fully, raising a ValueError that names the file when it is missing or unreadable.

    PIL's own ValueErrors (a PNG text chunk that would inflate past ``MAX_TEXT_CHUNK``, ...) count as unreadable.
    """
    path = Path(path)
    try:
        with Image.open(path, formats=FORMATS) as im:
            im.load()
            return im.copy() if getattr(im, "n_frames", 1) == 1 else _first_frame(im)
    except FileNotFoundError as e:
        raise ValueError(f"missing file: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
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


def as_pil(image: ImageLike) -> Image.Image:
    """PIL (EXIF orientation applied), HxWx3 / HxW uint8 array or 3xHxW tensor (uint8, or float in [0,1]) -> RGB PIL."""
    if isinstance(image, Image.Image):
        name = getattr(image, "filename", "") or "(opened from memory)"
        if image.format is not None and image.format not in FORMATS:  # opened from a file we do not decode
            raise ValueError(f"unreadable image: {name} ({image.format} files are not accepted; send {READABLE})")
        try:
            return to_rgb(image)
        except (OSError, SyntaxError) as e:  # a lazily opened file that fails to decode: truncated, corrupt
            raise ValueError(f"unreadable image: {name} ({e})") from e
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3):
            raise ValueError(f"expected a 3xHxW (or 1xHxW) tensor, got shape {tuple(t.shape)}")
        if t.is_floating_point():
            if not torch.isfinite(t).all():
                raise ValueError("the image tensor holds NaN or infinite values")
            if t.numel() and (t.min() < 0 or t.max() > 1):
                raise ValueError(
                    f"float image tensors must be in [0, 1], got values from {t.min():g} to {t.max():g} "
                    "(divide a 0-255 tensor by 255, or pass it as uint8)"
                )
            t = (t * 255).round()
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


def load_image(source: str | Path | bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """An uploaded file (path or bytes) -> upright RGB, refusing files over ``max_bytes`` or ``max_pixels``.

    Every problem is an ImageError whose message a user can act on (naming the limit), with an HTTP status.
    """
    nbytes = len(source) if isinstance(source, bytes) else Path(source).stat().st_size
    if nbytes == 0:
        raise ImageError("The file is empty.")
    if nbytes > max_bytes:
        raise ImageError(f"The file has {nbytes / 2**20:.1f} MB; the limit is {max_bytes / 2**20:g} MB.", 413)
    too_big = f"Images may have at most {max_pixels / 1e6:g} megapixels; please send a smaller one."
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source, formats=FORMATS) as im:
            if im.width * im.height > max_pixels:
                raise ImageError(f"The image has {im.width}x{im.height} pixels. {too_big}", 413)
            im.load()
            try:
                return to_rgb(im)
            except ValueError as e:  # float pixels with NaN, or without a known scale
                raise ImageError(f"The image cannot be used: {e}.", 415) from e
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(too_big, 413) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"The file is not a readable image ({READABLE}).", 415) from e


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes, fast zlib level (12-megapixel cutouts would take seconds at the default level)."""
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def model_input(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """RGB photos -> the (B,3,size,size) float32 batch a model step is fed: resized (bilinear), normalised per
    channel."""
    arrs = [np.asarray(im.resize((size, size), Image.BILINEAR, reducing_gap=3.0)) for im in images]
    x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).float().div_(255.0)  # (B,3,S,S) in [0,1]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
