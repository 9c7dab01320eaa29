"""Compositing a photo with its person mask: cutouts, new backgrounds, blurred backgrounds, overlays.

Pure functions on PIL images (no model, no I/O). ``image`` is always an RGB photo and ``mask`` an "L" image of
the same size whose grey level is the person's opacity (0 = background, 255 = person; soft edges allowed).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

Color = tuple[int, int, int]


def _check(image: Image.Image, mask: Image.Image, background: Image.Image | None = None) -> None:
    """Raise a ValueError unless image is RGB, mask is L and all sizes agree."""
    if image.mode != "RGB":
        raise ValueError(f"image must be mode RGB, got {image.mode} (use segmenter.data.to_rgb)")
    if mask.mode != "L":
        raise ValueError(f"mask must be mode L, got {mask.mode} (use mask.convert('L'))")
    if mask.size != image.size:
        raise ValueError(f"mask size {mask.size} does not match image size {image.size}")
    if background is not None:
        if background.mode != "RGB":
            raise ValueError(f"background must be mode RGB, got {background.mode}")
        if background.size != image.size:
            raise ValueError(
                f"background size {background.size} does not match image size {image.size} "
                "(resize it first, e.g. PIL.ImageOps.fit(background, image.size))"
            )


def cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """The person on a transparent background: RGBA with ``mask`` as the alpha channel.

    Fully transparent pixels are black: dropping the alpha channel of a shared cutout must not bring back the
    background the user cut away (it also makes the PNG smaller and quicker to encode).
    """
    _check(image, mask)
    out = Image.composite(image, Image.new("RGB", image.size), mask.point([0] + [255] * 255))
    out.putalpha(mask)
    return out


def replace_background(image: Image.Image, mask: Image.Image, background: Image.Image) -> Image.Image:
    """The person pasted onto ``background`` (RGB, same size), blended by the mask's opacity."""
    _check(image, mask, background)
    return Image.composite(image, background, mask)


def solid_background(image: Image.Image, mask: Image.Image, color: Color) -> Image.Image:
    """The person on a single-colour background."""
    _check(image, mask)
    return replace_background(image, mask, Image.new("RGB", image.size, tuple(color)))


def blur_background(image: Image.Image, mask: Image.Image, radius: float) -> Image.Image:
    """The person in front of a Gaussian-blurred copy of the photo (``radius`` in pixels; a portrait-mode look).

    The background is blurred with the person cut out (normalised convolution), so the person's colours do not
    bleed into a halo around them. Large radii are blurred on a shrunk copy (same look, a fraction of the cost).
    """
    _check(image, mask)
    if radius < 0:
        raise ValueError(f"blur radius must be >= 0, got {radius}")
    if radius == 0:
        return image.copy()
    factor = max(1.0, radius / 4.0)
    small = (max(1, round(image.width / factor)), max(1, round(image.height / factor)))
    blur = ImageFilter.GaussianBlur(radius / factor)
    img_s = image.resize(small, Image.BILINEAR, reducing_gap=2.0)
    weight = mask.point(lambda v: 255 - v).resize(small, Image.BILINEAR, reducing_gap=2.0)  # background opacity
    num = np.asarray(Image.composite(img_s, Image.new("RGB", small), weight).filter(blur), dtype=np.float32)
    den = np.asarray(weight.filter(blur), dtype=np.float32)[..., None]
    # Deep inside the person (almost no background nearby) the ratio is noise; the person hides it anyway.
    bg = np.where(den >= 8, num * 255.0 / np.maximum(den, 1.0), np.asarray(img_s, dtype=np.float32))
    background = Image.fromarray(np.clip(bg + 0.5, 0, 255).astype(np.uint8), "RGB").resize(image.size, Image.BILINEAR)
    return replace_background(image, mask, background)


def overlay(image: Image.Image, mask: Image.Image, color: Color = (255, 0, 80), alpha: float = 0.5) -> Image.Image:
    """The photo with the person tinted in ``color`` (``alpha`` = tint strength) and outlined in the same colour.

    The outline is about 0.4% of the longer side wide (at least 2 px), so it stays visible on large photos.
    """
    _check(image, mask)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    solid = Image.new("RGB", image.size, tuple(color))
    out = Image.composite(Image.blend(image, solid, alpha), image, mask)  # image * (1 - alpha m) + color * alpha m
    binary = mask.point(lambda v: 255 if v > 127 else 0)
    spread = binary.filter(ImageFilter.BoxBlur(max(1, round(max(image.size) / 500))))
    edge = spread.point(lambda v: 255 if 0 < v < 255 else 0)  # a band on both sides of the boundary
    return Image.composite(solid, out, edge)
