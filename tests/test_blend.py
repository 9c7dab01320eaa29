"""segmenter.blend (compositing) and segmenter.refine (guided upsampling, mask clean-up) on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter
from scipy import ndimage

from segmenter import blend, refine
from segmenter.pipeline import to_uint8

RED, BLUE = (220, 30, 30), (30, 60, 220)


def disk(h: int, w: int, r: float, cy: float | None = None, cx: float | None = None) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return (yy - (h / 2 if cy is None else cy)) ** 2 + (xx - (w / 2 if cx is None else cx)) ** 2 < r**2


@pytest.fixture
def scene() -> tuple[Image.Image, Image.Image]:
    """A red 'person' disk on a blue background (RGB) and its exact mask (L, 0/255), 96x64."""
    person = disk(64, 96, 20)
    rgb = np.where(person[..., None], RED, BLUE).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), Image.fromarray(person.astype(np.uint8) * 255, "L")


# ---------------------------------------------------------------- blend


def test_cutout_puts_the_mask_in_alpha(scene):
    image, mask = scene
    out = blend.cutout(image, mask)
    assert out.mode == "RGBA" and out.size == image.size
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(mask))
    person = np.asarray(mask) > 0
    assert np.array_equal(np.asarray(out)[person, :3], np.asarray(image)[person])
    assert not np.asarray(out)[~person, :3].any()  # the cut-away background is gone, not just transparent
    soft = blend.cutout(image, Image.fromarray(np.full((64, 96), 1, np.uint8), "L"))  # alpha 1/255 keeps colour
    assert np.array_equal(np.asarray(soft)[..., :3], np.asarray(image))
    assert image.mode == "RGB"  # input untouched


def test_replace_background_blends_by_opacity(scene):
    image, mask = scene
    background = Image.new("RGB", image.size, (0, 200, 0))
    soft = mask.point(lambda v: 128 if v else 0)
    out = np.asarray(blend.replace_background(image, soft, background), dtype=int)
    assert out[0, 0].tolist() == [0, 200, 0]
    assert np.abs(out[32, 48] - (np.array(RED) * 128 + np.array([0, 200, 0]) * 127) / 255).max() <= 1


def test_solid_background(scene):
    image, mask = scene
    out = np.asarray(blend.solid_background(image, mask, (255, 255, 255)))
    assert out[0, 0].tolist() == [255, 255, 255] and out[32, 48].tolist() == list(RED)


@pytest.mark.parametrize("radius", [2, 12, 40])
def test_blur_background_keeps_the_person_and_has_no_halo(radius):
    person = disk(120, 160, 30)
    noise = np.random.default_rng(0).integers(0, 60, (120, 160, 3))
    rgb = np.where(person[..., None], RED, np.clip(np.array(BLUE) + noise - 30, 0, 255)).astype(np.uint8)
    image, mask = Image.fromarray(rgb), Image.fromarray(person.astype(np.uint8) * 255)
    out = np.asarray(blend.blur_background(image, mask, radius), dtype=int)
    assert np.array_equal(out[person], rgb[person])
    ring = ndimage.binary_dilation(person, iterations=4) & ~person  # background right next to the person
    assert out[ring][:, 0].mean() < 80  # no red bleeding into the blurred background
    assert out[~person].std() < rgb[~person].astype(int).std()  # background is smoother
    assert np.array_equal(np.asarray(blend.blur_background(image, mask, 0)), rgb)


def test_overlay_tints_the_person_and_outlines_it(scene):
    image, mask = scene
    out = np.asarray(blend.overlay(image, mask, color=(255, 0, 80), alpha=0.5), dtype=int)
    assert out.shape == (64, 96, 3)
    assert out[0, 0].tolist() == list(BLUE)  # far background unchanged
    inside = (np.array(RED) + np.array((255, 0, 80))) / 2
    assert np.abs(out[32, 48] - inside).max() <= 1
    edge = np.asarray(mask) > 0
    edge = edge & ~ndimage.binary_erosion(edge)
    assert (out[edge] == (255, 0, 80)).all(axis=1).mean() > 0.9  # outline in the full colour


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda im, m: blend.cutout(im, m.resize((10, 10))), "size"),
        (lambda im, m: blend.cutout(im.convert("RGBA"), m), "RGB"),
        (lambda im, m: blend.cutout(im, m.convert("RGB")), "mode L"),
        (lambda im, m: blend.replace_background(im, m, Image.new("RGB", (5, 5))), "background size"),
        (lambda im, m: blend.blur_background(im, m, -1), "radius"),
        (lambda im, m: blend.overlay(im, m, alpha=2.0), "alpha"),
    ],
)
def test_bad_arguments_raise_clear_value_errors(scene, call, message):
    with pytest.raises(ValueError, match=message):
        call(*scene)


# ---------------------------------------------------------------- refine


def test_guided_upsample_moves_a_misplaced_edge_onto_the_photo_edge():
    h, w = 600, 800
    yy, xx = np.mgrid[:h, :w]
    person = (xx - 400) ** 2 / 250**2 + (yy - 300) ** 2 / 200**2 < 1
    guide = Image.fromarray(np.where(person[..., None], RED, BLUE).astype(np.uint8))
    smaller = (xx - 400) ** 2 / 244**2 + (yy - 300) ** 2 / 194**2 < 1  # the model's edge is 6 px off
    low = Image.fromarray(smaller.astype(np.uint8) * 255).resize((256, 256), Image.BILINEAR, reducing_gap=2.0)
    low = np.asarray(low.filter(ImageFilter.GaussianBlur(1.5)), dtype=np.float32) / 255.0  # and blurry
    bilinear = np.asarray(Image.fromarray(low, "F").resize((w, h), Image.BILINEAR))

    def iou(p: np.ndarray) -> float:
        return ((p >= 0.5) & person).sum() / ((p >= 0.5) | person).sum()

    out = refine.guided_upsample(low, guide)
    assert out.shape == (h, w) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert iou(out) > iou(bilinear) + 0.005
    assert iou(refine.guided_upsample(low, guide, radius=8)) > 0.99 > iou(bilinear) + 0.02
    as_uint8 = refine.guided_upsample(low, guide, as_uint8=True)  # what the pipeline stores, without a float copy
    assert as_uint8.dtype == np.uint8
    assert np.abs(as_uint8.astype(int) - to_uint8(out)).max() <= 1  # float rounding of the last bit at most
    assert (as_uint8 == to_uint8(out)).mean() > 0.9999


def test_guided_upsample_keeps_constant_maps_and_any_shape():
    guide = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    out = refine.guided_upsample(np.full((20, 30), 0.3, np.float32), guide, radius=2, eps=1e-2)
    assert out.shape == (50, 70)
    assert np.allclose(out, 0.3, atol=1e-3)


def test_guided_upsample_rejects_bad_input():
    guide = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="2-D"):
        refine.guided_upsample(np.zeros((4, 4, 1)), guide)
    with pytest.raises(ValueError, match="RGB"):
        refine.guided_upsample(np.zeros((4, 4)), guide.convert("L"))


@pytest.mark.slow
def test_symmetric_3x3_solve_matches_numpy():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(5, 7, 3, 3)).astype(np.float32)
    sym = m @ np.swapaxes(m, -1, -2) + 0.1 * np.eye(3, dtype=np.float32)  # symmetric positive definite
    rhs = rng.normal(size=(5, 7, 3)).astype(np.float32)
    upper = {(c, d): sym[..., c, d] for c in range(3) for d in range(c, 3)}
    expected = np.linalg.solve(sym.astype(np.float64), rhs[..., None].astype(np.float64))[..., 0]
    np.testing.assert_allclose(refine._solve_sym3(upper, rhs), expected, rtol=1e-3, atol=1e-3)


def test_keep_largest_component():
    mask = disk(50, 80, 15, cx=20) | disk(50, 80, 8, cx=65)
    out = refine.keep_largest_component(mask)
    assert out.dtype == bool
    assert np.array_equal(out, disk(50, 80, 15, cx=20))
    assert not refine.keep_largest_component(np.zeros((5, 5), bool)).any()


def test_fill_holes_fills_enclosed_background_only():
    ring = disk(60, 60, 25) & ~disk(60, 60, 10)
    assert np.array_equal(refine.fill_holes(ring), disk(60, 60, 25))
    notch = ring.copy()
    notch[30, 30:] = False  # a channel from the hole to the border: not a hole any more
    notch[29:32, 30:] = False
    assert not refine.fill_holes(notch)[30, 30]
    rng = np.random.default_rng(0)
    for _ in range(5):  # same answer as scipy's (slower) binary_fill_holes
        random = ndimage.binary_opening(rng.random((40, 50)) > 0.45)
        assert np.array_equal(refine.fill_holes(random), ndimage.binary_fill_holes(random))


def test_feather():
    mask = np.zeros((40, 40), bool)
    mask[:, 20:] = True
    assert np.array_equal(refine.feather(mask, 0), mask.astype(np.float32))
    alpha = refine.feather(mask, 8)
    assert alpha.dtype == np.float32 and alpha.min() >= 0 and alpha.max() <= 1
    row = alpha[20]
    assert row[0] == pytest.approx(0, abs=1e-4) and row[-1] == pytest.approx(1, abs=1e-4)
    assert 0.3 < row[19] < 0.7 and 0.3 < row[20] < 0.7
    assert (np.diff(row) >= 0).all()  # a monotonic ramp
    assert ((row > 0.02) & (row < 0.98)).sum() <= 10  # about px wide
    assert refine.feather(mask.astype(np.float32) * 0.5, 2).max() <= 0.5 + 1e-6
    with pytest.raises(ValueError, match="2-D"):
        refine.feather(np.zeros((2, 2, 2)), 1)
