"""The one path from a photo to its mask, shared by the package, the CLI, evaluation, the Space and its APIs.

``Segmenter.segment`` runs the model and calls :func:`upsample` then :func:`finish`; the Space re-runs
:func:`finish` alone when a slider moves. Every mask anyone sees or scores is made here:

1. probabilities at the model's size -> the photo's size (``guided``: edge-aware, or ``bilinear``), stored as uint8;
2. the one threshold rule (:func:`binarize`), and the presence gate: an empty mask when the presence score says
   "no person" *and* the map holds no confident region the size of a person far away (:func:`confident_share`);
   when it does, the mask is kept and flagged "low confidence" instead: a gate never erases a person it can see;
3. clean-up: keep the largest region, fill holes, feather the edge into an alpha matte;
4. outputs: mask, cutout, overlay, composites, person share, presence score.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, TypeVar, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageColor, ImageOps
from scipy import ndimage

from . import blend, refine

ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)
Upsample = Literal["guided", "bilinear"]
BackgroundMode = Literal["transparent", "color", "blur", "image"]
MIN_SHARE = 0.0002  # a mask covering less of the photo than this counts as "no person found" (the far-people val
# people at 8% of the frame's height cover 0.05-0.49% of it: python -m segmenter.far_people; docs/presence-gate.md)
CONFIDENT = 0.9  # probability of a "confident" pixel
KEEP_SHARE = 0.01  # the presence gate keeps a mask whose largest confident region covers this share of the frame
MAX_KEEP_SHARE = 0.1  # ... and no larger: a person the score misses is small in the frame; a cat's face is not
GATE_SIDE = 512  # confident regions are measured on the map scaled to at most this many pixels a side
NO_PERSON = "No person found"
LOW_CONFIDENCE = "Person found, low confidence"


def confident_share(probability: np.ndarray) -> float:
    """(H, W) uint8 probability map -> share of the frame covered by its largest connected region of pixels at
    >= CONFIDENT probability (measured at most GATE_SIDE px a side): the evidence the presence gate weighs."""
    step = max(1, math.ceil(max(probability.shape) / GATE_SIDE))
    small = probability[::step, ::step] >= math.ceil(CONFIDENT * 255)
    if not small.any():
        return 0.0
    labels, _ = ndimage.label(small)
    return float(np.bincount(labels.ravel())[1:].max() / small.size)


def threshold_level(threshold: float) -> int:
    """The uint8 probability level (0-255) a pixel needs to count as person: ceil(255 x threshold)."""
    if not 0.0 <= threshold <= 1.0 or math.isnan(threshold):
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    return min(255, math.ceil(threshold * 255.0 - 1e-6))


def check_threshold(threshold: object) -> float:
    """The one range check of a user's threshold, that every entry point calls: a number strictly between 0 and 1
    (0 would mark every pixel as person, 1 none) -> that float; ValueError with the one message otherwise."""
    try:
        value = float(threshold)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"threshold must be a number between 0 and 1 (exclusive), got {threshold!r}") from None
    if not 0.0 < value < 1.0:  # also refuses NaN
        raise ValueError(f"threshold must be a number between 0 and 1 (exclusive), got {threshold!r}")
    return value


def binarize(prob: ArrayT, threshold: float) -> ArrayT:
    """Probabilities -> boolean mask by the one threshold rule: the uint8 probability >= threshold_level(threshold).

    uint8 maps (0-255) compare directly; float maps in [0, 1] compare as if quantised to uint8 first (round half up).
    """
    level = threshold_level(threshold)
    if prob.dtype in (np.uint8, torch.uint8):
        return prob >= level
    return prob >= (level - 0.5) / 255.0


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 0-255 (round half up): the stored form of every probability map."""
    return (np.clip(prob, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class Options:
    """How a photo becomes a mask. ``None`` fields take the model's own setting (from its config.json).

    ``input_size`` and ``flip`` set the model step (the side photos are resized to; also run the mirror image and
    average): the live webcam trades a little accuracy for speed with them. The rest turns probabilities into a mask.
    """

    threshold: float | None = None
    keep_largest: bool = False
    fill_holes: bool = True
    feather_px: float = 2.0
    upsample: Upsample = "guided"
    presence_gate: bool = True  # an empty mask when the presence score says "no person" and no confident region
    input_size: int | None = None
    flip: bool | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_threshold(self.threshold)
        if not 0 <= self.feather_px <= 100 or math.isnan(self.feather_px):
            raise ValueError(f"feather_px must be in [0, 100], got {self.feather_px}")
        if self.upsample not in get_args(Upsample):
            raise ValueError(f"upsample must be one of {', '.join(get_args(Upsample))}, got {self.upsample!r}")
        if self.input_size is not None and (self.input_size < 32 or self.input_size % 32):
            raise ValueError(f"input_size must be a multiple of 32 (>= 32), got {self.input_size}")


@dataclass(frozen=True)
class Background:
    """What ``Segmentation.composite`` puts behind the person."""

    mode: BackgroundMode = "transparent"
    color: tuple[int, int, int] = (0, 177, 64)
    blur_percent: float = 2.0  # blur radius as a percentage of the photo's longer side
    image: Image.Image | None = field(default=None, compare=False)

    @staticmethod
    def parse_color(value: str) -> tuple[int, int, int]:
        """'#rrggbb', a colour name, 'rgb(r, g, b)' or 'rgba(r, g, b, a)' -> (r, g, b); ValueError otherwise."""
        try:
            return ImageColor.getrgb(value)[:3]
        except ValueError:
            parts = value.strip().removeprefix("rgba").removeprefix("rgb").strip("()").split(",")
            try:
                rgb = tuple(round(float(p)) for p in parts[:3])
            except ValueError:
                rgb = ()
            if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"not a colour: {value!r}") from None
            return rgb  # type: ignore[return-value]


@dataclass
class Segmentation:
    """One photo's result at its full size. ``probability`` is kept so that other options need no model run."""

    image: Image.Image  # the upright RGB photo
    probability: np.ndarray  # (H, W) uint8 person probability x 255, before presence gating
    presence: float | None  # probability that the photo shows a person (None: the model has no presence head)
    presence_threshold: float  # the model's
    options: Options
    threshold: float  # the threshold used (options.threshold or the model's)
    mask: Image.Image  # binary "L" 0/255
    overruled: bool = False  # the presence score said nobody, but a confident region kept the mask (low confidence)
    _alpha: Image.Image | None = field(default=None, repr=False)  # made on first use: a mask alone never needs it

    @property
    def alpha(self) -> Image.Image:
        """ "L" opacity for cutouts and composites: the mask, feathered by ``options.feather_px``."""
        if self._alpha is None:
            mask = np.asarray(self.mask) > 127
            if self.options.feather_px > 0:
                self._alpha = Image.fromarray(to_uint8(refine.feather(mask, self.options.feather_px)), "L")
            else:
                self._alpha = self.mask
        return self._alpha

    @property
    def person_present(self) -> bool:
        """False when the gate erased the mask (the presence score says "no person" and the map holds no confident
        region), else True."""
        return (
            self.presence is None
            or not self.options.presence_gate
            or self.presence >= self.presence_threshold
            or self.overruled
        )

    @property
    def share(self) -> float:
        """Fraction of the photo's pixels in the mask."""
        return float(np.asarray(self.mask).mean() / 255.0)

    @property
    def no_person(self) -> bool:
        """What the app reports as "No person found": the presence head says so, or the mask is (almost) empty."""
        return not self.person_present or self.share < MIN_SHARE

    @property
    def warning(self) -> str | None:
        if not self.person_present:
            return f"{NO_PERSON}: the model says this photo shows nobody (presence {self.presence:.2f})."
        if self.share < MIN_SHARE:
            return f"{NO_PERSON}: the mask is (almost) empty. Try a lower threshold or another photo."
        if self.overruled:
            return (
                f"{LOW_CONFIDENCE}: the presence score says nobody (presence {self.presence:.2f}), but the mask holds "
                "a confident region, kept so that no person is erased. Check it."
            )
        return None

    def cutout(self) -> Image.Image:
        """The person on a transparent background (RGBA)."""
        return blend.cutout(self.image, self.alpha)

    def overlay(self) -> Image.Image:
        """The photo with the person tinted and outlined."""
        return blend.overlay(self.image, self.mask)

    def composite(self, background: Background) -> Image.Image:
        """The person on ``background``: RGBA for transparent, RGB otherwise."""
        if background.mode == "color":
            return blend.solid_background(self.image, self.alpha, background.color)
        if background.mode == "blur":
            return blend.blur_background(self.image, self.alpha, background.blur_percent / 100 * max(self.image.size))
        if background.mode == "image":
            if background.image is None:
                raise ValueError("background mode 'image' needs a background image")
            return blend.replace_background(
                self.image, self.alpha, ImageOps.fit(background.image.convert("RGB"), self.image.size)
            )
        return self.cutout()

    def render(self, output: str, background: Background | None = None) -> Image.Image:
        """One named output: ``mask``, ``cutout``, ``overlay`` or ``composite`` (on ``background``)."""
        if output == "mask":
            return self.mask
        if output == "cutout":
            return self.cutout()
        if output == "overlay":
            return self.overlay()
        if output == "composite":
            return self.composite(background or Background())
        raise ValueError(f"output must be mask, cutout, overlay or composite, got {output!r}")

    def resized(self, max_side: int) -> Segmentation:
        """A copy whose photo, maps and masks fit in ``max_side`` pixels (itself when they already do): screen
        previews of the overlay and composites cost a fraction of full-size ones (the blur scales with the photo)."""
        w, h = self.image.size
        scale = max_side / max(w, h)
        if scale >= 1.0:
            return self
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        prob = Image.fromarray(self.probability).resize(size, Image.BILINEAR, reducing_gap=2.0)
        return dataclasses.replace(
            self,
            image=self.image.resize(size, Image.BILINEAR, reducing_gap=2.0),
            probability=np.asarray(prob),
            mask=self.mask.resize(size, Image.NEAREST),
            _alpha=self.alpha.resize(size, Image.BILINEAR, reducing_gap=2.0),
        )

    def with_options(self, options: Options, default_threshold: float | None = None) -> Segmentation:
        """The same prediction finished with other options (no model run); ``upsample`` cannot change here."""
        return finish(
            self.image,
            self.probability,
            self.presence,
            options,
            self.threshold if default_threshold is None else default_threshold,
            self.presence_threshold,
        )


def upsample(low: np.ndarray, image: Image.Image, how: Upsample) -> np.ndarray:
    """(S, S) float probabilities at the model's size -> (H, W) uint8 at the photo's size."""
    if how == "guided":
        return refine.guided_upsample(low, image, as_uint8=True)
    x = torch.from_numpy(np.ascontiguousarray(low, dtype=np.float32))[None, None]
    up = F.interpolate(x, size=(image.height, image.width), mode="bilinear", align_corners=False)[0, 0]
    return to_uint8(up.numpy())


def finish(
    image: Image.Image,
    probability: np.ndarray,
    presence: float | None,
    options: Options,
    default_threshold: float,
    presence_threshold: float,
) -> Segmentation:
    """A full-size uint8 probability map -> Segmentation: threshold, presence gate, clean-up (the feathered alpha
    is made when a cutout or composite first needs it)."""
    threshold = default_threshold if options.threshold is None else options.threshold
    doubted = options.presence_gate and presence is not None and presence < presence_threshold
    overruled = doubted and KEEP_SHARE <= confident_share(probability) <= MAX_KEEP_SHARE
    mask = np.zeros(probability.shape, bool) if doubted and not overruled else binarize(probability, threshold)
    if options.keep_largest:
        mask = refine.keep_largest_component(mask)
    if options.fill_holes:
        mask = refine.fill_holes(mask)
    return Segmentation(
        image=image,
        probability=probability,
        presence=presence,
        presence_threshold=presence_threshold,
        options=options,
        threshold=threshold,
        mask=Image.fromarray(mask.view(np.uint8) * 255, "L"),
        overruled=overruled,
    )
