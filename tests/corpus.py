"""Awkward and hostile inputs for the app and the Python API, generated in memory (no committed binaries).

``corpus(max_pixels)`` gives one :class:`Case` per kind of file a user might send: broken files, odd image
modes (16-bit, float, NaN), extreme shapes, decompression bombs (pixels, and a PNG text chunk), EXIF rotation,
animation, formats PIL knows but we refuse (EPS, PSD), non-images (text, SVG) and content under the wrong suffix.
Accepted cases carry the mask that a
"brightness model" must produce (``brightness_weights``: a real pix2pix U-Net export whose mask is the pixels
brighter than mid-grey), so orientation, frame choice and mode conversion are checked pixel by pixel.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from helpers import BG, FG, export_tiny, scene
from PIL import Image

from segmenter.config import ModelConfig

Outcome = Literal["ok", "empty", "unreadable", "too_big", "unusable"]
# What the app answers for each refusal: HTTP status and a fragment of the message (also the gr.Error text).
REFUSALS: dict[str, tuple[int, str]] = {
    "empty": (400, "The file is empty"),
    "unreadable": (415, "not a readable image"),
    "too_big": (413, "megapixels"),
    "unusable": (415, "cannot be used"),
}
H, W = 96, 64  # the photos' upright size (portrait)


@dataclass(frozen=True)
class Case:
    """One file to send. ``size`` is the upright (W, H) of the result; ``expected`` the brightness model's mask."""

    name: str  # also the upload's file name (its suffix is what a browser would send)
    data: bytes
    outcome: Outcome = "ok"
    size: tuple[int, int] | None = None  # None: not decodable at all (the app's pixel cap is not the library's)
    expected: np.ndarray | None = None  # (H, W) bool, when the content is known

    def write(self, folder: Path) -> Path:
        path = folder / self.name
        path.write_bytes(self.data)
        return path


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int = 50_000, height: int = 50_000) -> bytes:
    """A few hundred bytes whose header declares ``width`` x ``height`` 1-bit pixels (2.5 gigapixels by default)."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    data = zlib.compress(row * 16, 9)  # a few rows; the decoder would have to allocate the whole image
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data) + png_chunk(b"IEND", b"")


def text_bomb(side: int = 4000, inflated: int = 16 * 2**20) -> bytes:
    """A flat ``side`` x ``side`` grey PNG (16 megapixels, a few KB) whose zTXt chunk, before the pixels (IDAT),
    inflates to ``inflated`` bytes of zeros: far past PIL's ``PngImagePlugin.MAX_TEXT_CHUNK`` (1 MB)."""
    png = encode(Image.new("L", (side, side), 30), "PNG")
    packer, zeros = zlib.compressobj(9), b"\0" * 2**20
    text = b"".join(packer.compress(zeros) for _ in range(inflated // len(zeros))) + packer.flush()
    after_header = 8 + 12 + 13  # signature, IHDR chunk; IDAT comes next
    assert png[after_header + 4 : after_header + 8] == b"IDAT"
    return png[:after_header] + png_chunk(b"zTXt", b"Comment\0\0" + text) + png[after_header:]


def psd(grey: np.ndarray) -> bytes:
    """A minimal valid Photoshop file (8-bit greyscale, one channel, raw pixels): PIL decodes it, we must not."""
    height, width = grey.shape
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, height, width, 8, 1)  # version 1, 1 channel, 8 bit, grey
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, image resources, layers: all empty
    return header + sections + struct.pack(">H", 0) + grey.astype(np.uint8).tobytes()  # compression 0: raw


def person(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) grey photo (uint8, a light "person" on a dark background) and its mask (bool)."""
    rgb, mask = scene(H, W, seed)
    return rgb[..., 0], mask


def exif_rotated(upright: np.ndarray) -> bytes:
    """A JPEG stored as phones do: pixels rotated 90 degrees, EXIF orientation 6 ("rotate 90 CW to view")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(np.rot90(upright, k=1).copy()), "JPEG", quality=95, exif=exif.tobytes())


def corpus(max_pixels: int) -> list[Case]:
    """Every case, for a server that refuses images over ``max_pixels``."""
    grey, mask = person()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    hole = np.zeros((H, W), bool)
    hole[: H // 4, W // 2 :] = True  # a transparent corner: composited on white, so "bright" for the model
    alpha = np.where(hole, 0, 255).astype(np.uint8)
    jpeg = encode(Image.fromarray(rgb), "JPEG", quality=90)
    png = encode(Image.fromarray(rgb), "PNG")
    palette = Image.frombytes("P", (W, H), np.where(hole, 2, mask).astype(np.uint8).tobytes())
    palette.putpalette([BG, BG, BG, FG, FG, FG, 0, 0, 0] + [0] * 759)
    frames = [Image.fromarray(grey), Image.fromarray(255 - grey)]  # the second frame is the negative
    big_rgb, big_mask = scene(768, 512, seed=3)  # big enough for Segmenter's reduced-size JPEG decoding
    side = int(max_pixels**0.5) + 1
    ok = {"size": (W, H)}
    nobody = np.zeros((H, W), bool)
    return [
        Case("empty.jpg", b"", "empty"),
        Case("truncated.jpg", jpeg[: len(jpeg) // 2], "unreadable"),
        Case("truncated.png", png[: len(png) // 2], "unreadable"),
        Case("text.png", b"Just some notes, not a picture.\n" * 20, "unreadable"),
        Case("bomb.png", png_bomb(), "too_big"),
        Case("over_cap.png", encode(Image.new("L", (side, side), 30), "PNG"), "too_big", size=(side, side)),
        Case("one_pixel.png", encode(Image.new("RGB", (1, 1), (200, 200, 200)), "PNG"), size=(1, 1)),
        Case("thin.png", encode(Image.new("RGB", (1, 4000), (200, 200, 200)), "PNG"), size=(1, 4000)),
        Case("flat.png", encode(Image.new("RGB", (4000, 1), (20, 20, 20)), "PNG"), size=(4000, 1)),
        Case("grey.png", encode(Image.fromarray(grey), "PNG"), **ok, expected=mask),
        Case("deep.png", encode(Image.fromarray(grey.astype(np.uint16) * 257), "PNG"), **ok, expected=mask),
        Case("cmyk.jpg", encode(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), **ok, expected=mask),
        Case("palette.png", encode(palette, "PNG", transparency=2), **ok, expected=mask | hole),
        Case("la.png", encode(Image.fromarray(np.dstack([grey, alpha])), "PNG"), **ok, expected=mask | hole),
        Case("rgba.png", encode(Image.fromarray(np.dstack([rgb, alpha])), "PNG"), **ok, expected=mask | hole),
        Case("animated.gif", encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), **ok, expected=mask),
        Case("rotated.jpg", exif_rotated(big_rgb), size=(512, 768), expected=big_mask),
        Case("photo.webp", encode(Image.fromarray(rgb), "WEBP", lossless=True), **ok, expected=mask),
        Case("no_person.jpg", encode(Image.new("RGB", (W, H), (BG, BG, BG)), "JPEG"), **ok, expected=nobody),
        Case("float.tif", encode(Image.fromarray(grey.astype(np.float32) / 255, "F"), "TIFF"), **ok, expected=mask),
        Case("nan.tif", encode(Image.fromarray(with_nan(grey), "F"), "TIFF"), "unusable", size=(W, H)),
        Case("vector.eps", EPS, "unreadable"),  # PIL would render it through Ghostscript: never decoded
        # 16 MP (the app's default cap) whose text chunk PIL refuses to inflate while reading the header:
        # unreadable wherever it is opened, before any pixel cap is checked.
        Case("text_bomb.png", TEXT_BOMB, "unreadable"),
        Case("layers.psd", psd(grey), "unreadable"),  # PIL decodes PSD; it is not in our allowlist
        Case("drawing.svg", SVG, "unreadable"),
        Case("misnamed.png", jpeg, **ok, expected=mask),  # JPEG bytes: the content decides, not the suffix
        Case("deep.tif", encode(Image.fromarray(grey.astype(np.uint16) * 257), "TIFF"), **ok, expected=mask),
    ]


# A minimal EPS file: PIL recognises the format (and would call Ghostscript to draw it).
EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 96\n0 0 moveto 64 96 lineto stroke\nshowpage\n%%EOF\n"


SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="96">'
    b'<rect width="64" height="96" fill="#333"/><circle cx="32" cy="40" r="20" fill="#ddd"/></svg>\n'
)
TEXT_BOMB = text_bomb()  # made once: about 0.1 s


def with_nan(grey: np.ndarray) -> np.ndarray:
    """A float 0-1 greyscale copy with one NaN pixel."""
    values = grey.astype(np.float32) / 255
    values[0, 0] = np.nan
    return values


def valid_photo() -> bytes:
    """A small, ordinary photo: the request that must work after any bad one."""
    return encode(Image.fromarray(person(1)[0]).convert("RGB"), "JPEG", quality=90)


def brightness_weights(folder: Path) -> Path:
    """Export a pix2pix U-Net (ngf=8) whose mask is the pixels brighter than mid-grey; returns the folder.

    Only two layers are set: the first conv puts the mean of each 4x4 patch (in [-1, 1]) in channel 0, which
    reaches the last transposed conv through the outermost skip; that conv reads only that channel (everything
    the inner blocks compute is multiplied by zero). Output: tanh(8 * relu(brightness) - 1) -> probability.
    """

    def read_brightness(net: torch.nn.Module) -> None:
        down, up = net.model.model[0], net.model.model[3]
        down.weight.zero_()
        down.weight[0] = 1.0 / down.weight[0].numel()
        up.weight.zero_()
        up.weight[0, 0] = 8.0
        up.bias.fill_(-1.0)

    return export_tiny(
        folder, ModelConfig(arch="pix2pix_unet", ngf=8, meta={"run_id": "brightness-stand-in"}), read_brightness
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def check_result(case: Case, mask: Image.Image, cutout: Image.Image | None = None) -> None:
    """Assert a segmentation of ``case`` is right: binary "L" mask and RGBA cutout at the upright size, content."""
    assert mask.mode == "L" and mask.size == case.size, (case.name, mask.mode, mask.size)
    values = np.asarray(mask)
    assert set(np.unique(values).tolist()) <= {0, 255}, case.name
    if cutout is not None:
        assert cutout.mode == "RGBA" and cutout.size == case.size, (case.name, cutout.mode, cutout.size)
    if case.expected is not None:
        assert iou(values > 0, case.expected) >= 0.9, (case.name, iou(values > 0, case.expected))
