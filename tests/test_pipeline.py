"""The one pipeline (segmenter.pipeline + Segmenter.segment): threshold rule, presence gate, clean-up, outputs;
and the training-data pieces it is trained with (sources, copy-paste)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_presence_weights, make_tiny_weights, noise_photo, scene, write_dataset
from PIL import Image

from segmenter import Segmenter, mask
from segmenter.data import (
    SegmentationDataset,
    background_crop,
    load_pairs,
    parse_sources,
    paste_person,
    subject_crop,
)
from segmenter.pipeline import Background, Options, binarize, finish, threshold_level


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.5 + 1e-9, 0.73, 1.0])
def test_one_threshold_rule_for_uint8_and_float_maps(threshold: float) -> None:
    levels = np.arange(256, dtype=np.uint8)
    as_float = levels.astype(np.float64) / 255.0
    assert np.array_equal(binarize(levels, threshold), levels >= threshold_level(threshold))
    assert np.array_equal(binarize(as_float, threshold), binarize(levels, threshold))
    assert torch.equal(binarize(torch.from_numpy(levels), threshold), torch.from_numpy(binarize(levels, threshold)))


@pytest.mark.parametrize(
    "bad",
    [
        dict(threshold=-0.1),
        dict(threshold=1.5),
        dict(threshold=float("nan")),
        dict(feather_px=-1),
        dict(upsample="nearest"),
    ],
)
def test_options_refuse_bad_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        Options(**bad)


def test_finish_cleans_up_and_keeps_the_probability(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 30), (10, 20, 30))
    prob = np.zeros((30, 40), np.uint8)
    prob[5:25, 5:20] = 240  # a big region with a hole
    prob[10:15, 10:14] = 10
    prob[2:4, 30:33] = 240  # a speck
    out = finish(image, prob, None, Options(keep_largest=True, fill_holes=True, feather_px=0), 0.5, 0.5)
    m = np.asarray(out.mask) > 0
    assert m[12, 12] and not m[3, 31] and m.sum() == 20 * 15
    assert out.share == pytest.approx(300 / 1200) and out.person_present and not out.no_person
    plain = out.with_options(Options(fill_holes=False, feather_px=0))
    assert not (np.asarray(plain.mask) > 0)[12, 12] and (np.asarray(plain.mask) > 0)[3, 31]
    soft = out.with_options(Options(feather_px=6))
    assert set(np.unique(np.asarray(soft.alpha))) - {0, 255}  # a feathered edge
    assert out.cutout().mode == "RGBA" and out.overlay().size == (40, 30)
    green = out.composite(Background("color", (0, 255, 0)))
    assert green.getpixel((35, 28)) == (0, 255, 0) and green.getpixel((12, 8)) == (10, 20, 30)
    with pytest.raises(ValueError, match="output must be"):
        out.render("thumbnail")


def test_presence_head_gates_the_mask(tmp_path: Path) -> None:
    photo = noise_photo(48, 80)
    nobody = Segmenter.from_pretrained(make_presence_weights(tmp_path / "no", presence_bias=-6.0), device="cpu")
    somebody = Segmenter.from_pretrained(make_presence_weights(tmp_path / "yes", presence_bias=6.0), device="cpu")
    gated = nobody.segment(photo)
    assert gated.presence == pytest.approx(1 / (1 + np.exp(6.0)), rel=1e-3)
    assert not gated.person_present and gated.no_person and gated.share == 0.0
    assert gated.warning.startswith("No person found")
    assert np.asarray(gated.probability).min() > 200  # the model's map is kept; only the mask is emptied
    ungated = nobody.segment(photo, Options(presence_gate=False))
    assert ungated.share == 1.0
    found = somebody.segment(photo)
    assert found.person_present and found.share == 1.0 and found.warning is None
    assert nobody.info()["presence_head"] and nobody.get_mask(photo).getextrema() == (0, 0)


def test_every_shortcut_is_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = make_tiny_weights(tmp_path / "w", seed=3)
    seg = Segmenter.from_pretrained(weights, device="cpu")
    photo = Image.fromarray(noise_photo(50, 70, seed=2))
    reference = seg.segment(photo)
    assert np.array_equal(np.asarray(seg.get_mask(photo)), np.asarray(reference.mask))
    assert np.array_equal(seg.predict_proba(photo), reference.probability.astype(np.float32) / 255)
    monkeypatch.setattr(mask, "modelPath", weights)
    monkeypatch.setattr(mask, "device", "cpu")
    assert np.array_equal(mask.getMask(photo)[0].numpy() > 0, np.asarray(reference.mask) > 0)


def test_parse_sources() -> None:
    sources = parse_sources("A:train:2,/abs/B,C::0.5", root="/data")
    assert [(s.path, s.split, s.weight) for s in sources] == [
        ("/data/A", "train", 2.0),
        ("/abs/B", "train", 1.0),
        ("/data/C", "train", 0.5),
    ]
    assert parse_sources("A", root="/data", split="val")[0].split == "val"
    for bad, message in [
        ("A:test", "never used"),
        ("A:train:x", "not a number"),
        ("A:train:0", "> 0"),
        ("", "no data"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_sources(bad, root="/data")


def test_copy_paste_puts_the_donor_person_in_and_merges_masks() -> None:
    photo, person = scene(80, 60, seed=1)
    donor = torch.from_numpy(photo).permute(2, 0, 1).contiguous()
    donor_mask = torch.from_numpy(person.astype(np.uint8) * 255)[None]
    background = torch.zeros(3, 100, 120, dtype=torch.uint8)
    bg_mask = torch.zeros(1, 100, 120, dtype=torch.uint8)
    bg_mask[0, :10, :10] = 255  # a person already there stays labelled
    draws = iter([0.5, 0.3, 0.4])
    image, merged = paste_person(background, bg_mask, donor, donor_mask, lambda: next(draws))
    assert merged[0, :10, :10].eq(255).all()
    pasted = merged[0] > 127
    assert pasted.sum() > 10 + 100  # the person went in
    bright = image[0] > 127  # the donor's person is light on a dark background: pixels and label agree
    assert (bright == pasted)[10:, 10:].float().mean() > 0.97
    assert set(merged.unique().tolist()) <= {0, 255}


@pytest.mark.parametrize("min_height", [0.1, 0.25])
def test_copy_paste_scales_people_down_to_min_height(min_height: float) -> None:
    donor = torch.full((3, 50, 20), 255, dtype=torch.uint8)
    donor_mask = torch.full((1, 50, 20), 255, dtype=torch.uint8)  # the person fills the donor: 50 px tall
    frame, empty = torch.zeros(3, 200, 300, dtype=torch.uint8), torch.zeros(1, 200, 300, dtype=torch.uint8)
    draws = iter([0.0, 0.5, 0.5])  # the smallest scale, placed in the middle
    _, merged = paste_person(frame, empty, donor, donor_mask, lambda: next(draws), min_height)
    rows = (merged[0] > 127).any(1).nonzero()
    assert len(rows) == round(200 * min_height)  # the pasted person is min_height of the frame's height


def test_background_crops_hold_no_person_and_keep_their_distance() -> None:
    mask = torch.zeros(1, 200, 300, dtype=torch.uint8)
    mask[0, 40:200, 100:180] = 255  # a person in the middle, cut by the bottom edge
    rng = random.Random(0)
    boxes = [background_crop(mask, rng.random) for _ in range(200)]
    found = [b for b in boxes if b is not None]
    assert len(found) > 100
    for top, left, h, w in found:
        assert h >= 8 and w >= 8 and top + h <= 200 and left + w <= 300
        assert (
            mask[0, max(0, top - h // 10) : top + h + h // 10, max(0, left - w // 10) : left + w + w // 10].eq(0).all()
        )
    lefts = {left + w <= 100 for _, left, _, w in found}
    assert lefts == {True, False}  # from both sides of the person
    full = torch.full((1, 50, 50), 255, dtype=torch.uint8)
    assert background_crop(full, rng.random) is None  # nothing but person: no crop


def test_subject_crops_are_close_ups_of_the_middle_of_the_frame() -> None:
    rng = random.Random(0)
    boxes = [subject_crop((225, 400), rng.random) for _ in range(300)]
    for top, left, h, w in boxes:
        assert top >= 0 and top + h <= 225 and left >= 0 and left + w <= 400
        assert 0.3 * 225 <= h <= 0.8 * 225 and 0.6 * h <= w <= 1.4 * h
        assert 225 * 0.2 <= top + h / 2 <= 225 * 0.8 and 400 * 0.25 <= left + w / 2 <= 400 * 0.75
    assert all(box[2] <= 20 and box[3] <= 20 for box in (subject_crop((20, 20), rng.random) for _ in range(20)))


def test_only_frames_without_people_become_subject_close_ups(tmp_path: Path) -> None:
    csv_path = write_dataset(tmp_path, [(300, 220), (180, 260)], ["train"] * 2)
    ds = SegmentationDataset(load_pairs(csv_path), train=True, size=64, aug="pix2pix", subject_crop_p=1.0)
    plain = SegmentationDataset(load_pairs(csv_path), train=True, size=64, aug="pix2pix")
    random.seed(0)
    torch.manual_seed(0)
    assert not any(ds[k % 2][1].eq(-1).all() for k in range(10))  # these photos show a person: left as they are
    for d in (ds, plain):  # now a frame without people: a bright subject in the middle of a dark frame
        d.masks[0] = torch.zeros_like(d.masks[0])
        d.images[0] = torch.zeros_like(d.images[0])
        h, w = d.images[0].shape[-2:]
        d.images[0][:, h * 2 // 5 : h * 3 // 5, w * 2 // 5 : w * 3 // 5] = 255  # 4% of the frame

    def subject_share(d: SegmentationDataset) -> float:
        return sum(float(d[0][0].gt(0).float().mean()) for _ in range(30)) / 30

    assert all(ds[0][1].eq(-1).all() for _ in range(10))
    assert subject_share(ds) > 2 * subject_share(plain) > 0.02  # the subject fills far more of a close-up


def test_crop_negatives_are_labelled_empty(tmp_path: Path) -> None:
    csv_path = write_dataset(tmp_path, [(300, 220), (180, 260)], ["train"] * 2)
    ds = SegmentationDataset(load_pairs(csv_path), train=True, size=64, aug="strong", crop_negative_p=1.0)
    plain = SegmentationDataset(load_pairs(csv_path), train=True, size=64, aug="strong")
    random.seed(0)
    torch.manual_seed(0)
    empty = sum(bool(ds[k % 2][1].eq(-1).all()) for k in range(20))
    assert empty >= 10  # a photo whose background leaves no room for a crop is used as it is
    assert not any(plain[k % 2][1].eq(-1).all() for k in range(20))  # the same photos do show a person


def test_the_alpha_matte_is_made_only_for_outputs_that_need_it() -> None:
    image = Image.fromarray(noise_photo(60, 80))
    prob = np.zeros((60, 80), np.uint8)
    prob[10:50, 20:60] = 230
    result = finish(image, prob, None, Options(feather_px=8), 0.5, 0.5)
    assert result.mask.getbbox() == (20, 10, 60, 50) and result._alpha is None  # a mask alone: no feathering
    alpha = np.asarray(result.cutout())[..., 3]
    assert result._alpha is not None and np.array_equal(alpha, np.asarray(result.alpha))
    assert 0 < alpha[30, 20] < 255 and alpha[30, 40] == 255 and alpha[30, 2] == 0  # soft edge, solid middle
    hard = finish(image, prob, None, Options(feather_px=0), 0.5, 0.5)
    assert np.array_equal(np.asarray(hard.alpha), np.asarray(hard.mask))


def test_resized_shrinks_every_map_and_keeps_what_it_shows(tmp_path: Path) -> None:
    image = Image.fromarray(noise_photo(200, 300))  # 300 x 200 px
    prob = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (200, 1))
    full = finish(image, prob, 0.9, Options(feather_px=3), 0.5, 0.5)
    small = full.resized(150)
    assert small.image.size == small.mask.size == small.alpha.size == (150, 100)
    assert small.probability.shape == (100, 150) and small.probability.dtype == np.uint8
    assert set(np.unique(np.asarray(small.mask))) <= {0, 255}  # still a binary mask
    assert small.share == pytest.approx(full.share, abs=0.01)
    assert (small.presence, small.threshold, small.options) == (full.presence, full.threshold, full.options)
    assert full.resized(300) is full and full.resized(1000) is full  # already fits: no copy
    blurred = small.composite(Background("blur", blur_percent=5))
    assert blurred.size == (150, 100)


def _block_map(value: int, h: int, w: int, size: tuple[int, int] = (100, 100)) -> np.ndarray:
    prob = np.zeros(size, np.uint8)
    prob[10 : 10 + h, 40 : 40 + w] = value
    return prob


@pytest.mark.parametrize(
    ("prob", "kept"),
    [
        (_block_map(250, 20, 8), True),  # a confident region of 1.6% of the frame: a person far away
        (_block_map(250, 3, 3), False),  # 0.09%: a speck, erased as the score says
        (_block_map(200, 40, 40), False),  # a large region, but not confident (0.78): erased
    ],
)
def test_the_gate_never_erases_a_confident_region(prob: np.ndarray, kept: bool) -> None:
    """The presence score says nobody: the mask is kept, and flagged, only when the map holds a confident region."""
    from segmenter.pipeline import KEEP_SHARE, LOW_CONFIDENCE, NO_PERSON, confident_share

    image = Image.new("RGB", prob.shape[::-1])
    out = finish(image, prob, 0.1, Options(feather_px=0), 0.5, 0.5)
    assert (KEEP_SHARE <= confident_share(prob) <= 0.1) is kept
    assert out.overruled is kept and out.person_present is kept and out.no_person is not kept
    assert bool((np.asarray(out.mask) > 0).any()) is kept
    assert out.warning.startswith(LOW_CONFIDENCE if kept else NO_PERSON)
    sure = finish(image, prob, 0.9, Options(feather_px=0), 0.5, 0.5)  # the score says somebody: never gated
    assert not sure.overruled and (np.asarray(sure.mask) > 0).sum() == (prob >= 128).sum()


def test_confident_share_measures_the_largest_region() -> None:
    from segmenter.pipeline import confident_share

    prob = _block_map(255, 10, 10)
    prob[60:65, 60:65] = 255  # a second, smaller region
    assert confident_share(prob) == pytest.approx(100 / 10_000)
    assert confident_share(np.zeros((30, 30), np.uint8)) == 0.0
    big = np.zeros((2048, 1024), np.uint8)
    big[:512, :256] = 240  # measured on a reduced map: the share survives the reduction
    assert confident_share(big) == pytest.approx(1 / 16, rel=0.02)
