"""Datasets: folder pairing, CSV annotations, image/mask decoding, paired augmentation."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import FG, odd_modes, requires_shared_data, scene, write_dataset
from PIL import Image
from scipy import ndimage

from segmenter.data import (
    DEFAULT_DATA_DIR,
    Pair,
    SegmentationDataset,
    build_transform,
    load_pair,
    load_pairs,
    pairs_from_csv,
    pairs_from_folders,
    to_binary_mask,
    to_rgb,
)


# ------------------------------------------------------------------ folder layout
@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """The Human Segmentation Dataset layout with three pairs and the usual junk beside them."""
    imgs, masks = tmp_path / "Training_Images", tmp_path / "Ground_Truth"
    imgs.mkdir()
    masks.mkdir()
    for i in (1, 2, 10):
        image, mask = scene(40, 30, seed=i)
        Image.fromarray(image).save(imgs / f"{i}.jpg")
        Image.fromarray(mask.astype(np.uint8) * 255).save(masks / f"{i}.png")
    for d in (imgs, masks):
        (d / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
        (d / "notes.txt").write_text("labelled by hand\n")
        (d / "._1.jpg").write_bytes(b"AppleDouble")
        (d / "subfolder").mkdir()
    return tmp_path


def test_folder_pairing_skips_junk_and_sorts_naturally(folder_dataset: Path) -> None:
    pairs = pairs_from_folders(folder_dataset)
    assert [(p.image.name, p.mask.name) for p in pairs] == [
        ("1.jpg", "1.png"),
        ("2.jpg", "2.png"),
        ("10.jpg", "10.png"),
    ]
    assert load_pairs(folder_dataset) == pairs  # no split.csv: folder pairing


def test_folder_pairing_names_the_image_without_mask(folder_dataset: Path) -> None:
    (folder_dataset / "Ground_Truth" / "2.png").unlink()
    with pytest.raises(ValueError, match=r"no mask for image .*Training_Images/2\.jpg"):
        pairs_from_folders(folder_dataset)


def test_folder_pairing_errors(tmp_path: Path, folder_dataset: Path) -> None:
    with pytest.raises(ValueError, match="dataset folder not found"):
        pairs_from_folders(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="split 'test' is undefined"):
        load_pairs(folder_dataset, "test")
    for p in (folder_dataset / "Training_Images").glob("*.jpg"):
        p.unlink()
    with pytest.raises(ValueError, match="no images found"):
        pairs_from_folders(folder_dataset)


# ------------------------------------------------------------------ CSV annotations
@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds", [(40, 30)] * 5, ["train", "train", "val", "test", "train"])


def test_csv_split_filtering(csv_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # paths in the CSV are relative to the CSV, not the working directory
    assert [p.image.name for p in pairs_from_csv(csv_dataset, "train")] == ["0.jpg", "1.jpg", "4.jpg"]
    assert [p.image.name for p in load_pairs(csv_dataset, "test")] == ["3.jpg"]
    everything = load_pairs(csv_dataset)
    assert [p.split for p in everything] == ["train", "train", "val", "test", "train"]
    assert all(p.image.is_file() and p.mask.is_file() for p in everything)
    # A dataset folder uses its split.csv.
    shutil.copy(csv_dataset, csv_dataset.parent / "split.csv")
    assert load_pairs(csv_dataset.parent, "val") == [
        Pair(csv_dataset.parent / "images/2.jpg", csv_dataset.parent / "masks/2.png", "val")
    ]


def test_csv_without_split_column(tmp_path: Path) -> None:
    csv_path = write_dataset(tmp_path, [(20, 20)] * 2, ["", ""])
    csv_path.write_text("images,masks\nimages/0.jpg,masks/0.png\nimages/1.jpg,masks/1.png\n")
    assert len(pairs_from_csv(csv_path)) == 2
    with pytest.raises(ValueError, match="no rows with split 'train'"):
        pairs_from_csv(csv_path, "train")


def test_csv_errors_name_the_problem(csv_dataset: Path) -> None:
    with pytest.raises(ValueError, match="annotation file not found"):
        pairs_from_csv(csv_dataset.with_name("missing.csv"))
    (csv_dataset.parent / "masks" / "3.png").unlink()
    with pytest.raises(ValueError, match=r"missing file .*masks/3\.png"):
        pairs_from_csv(csv_dataset)
    assert len(pairs_from_csv(csv_dataset, "train")) == 3  # other splits do not need the missing file
    csv_dataset.write_text("image,mask\na.jpg,a.png\n")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['images', 'masks'\]"):
        pairs_from_csv(csv_dataset)


@requires_shared_data
def test_shared_dataset_splits() -> None:
    splits = {s: load_pairs(DEFAULT_DATA_DIR, s) for s in ("train", "val", "test")}
    assert all(splits.values())
    images = [p.image for pairs in splits.values() for p in pairs]
    assert len(images) == len(set(images))  # no photo in two splits
    by_folder = pairs_from_folders(DEFAULT_DATA_DIR)
    assert {(p.image.resolve(), p.mask.resolve()) for p in by_folder} == {
        (p.image.resolve(), p.mask.resolve()) for pairs in splits.values() for p in pairs
    }


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize("mode", list(odd_modes()))
def test_to_rgb_gives_upright_8bit_rgb(mode: str) -> None:
    image, expected = odd_modes()[mode]
    out = to_rgb(image)
    assert out.mode == "RGB"
    assert np.array_equal(np.asarray(out), expected)


def test_to_binary_mask_formats() -> None:
    truth = np.zeros((4, 6), bool)
    truth[1:3, 2:5] = True
    grey = Image.fromarray(truth.astype(np.uint8) * 200, "L")
    deep = Image.fromarray(truth.astype(np.uint16) * 60000)
    alpha = np.zeros((4, 6, 4), np.uint8)
    alpha[..., 3] = truth * 255  # cut-out: the person is what is opaque
    opaque = np.full((4, 6, 4), 255, np.uint8)
    opaque[..., :3] = (truth * 255)[..., None]  # black/white mask saved with an opaque alpha channel
    for img in (grey, deep, Image.fromarray(alpha, "RGBA"), Image.fromarray(opaque, "RGBA"), Image.fromarray(truth)):
        out = to_binary_mask(img)
        assert out.mode == "L"
        assert np.array_equal(np.asarray(out), truth * 255), img.mode


def test_load_pair_matches_sizes_and_caps(tmp_path: Path) -> None:
    image, mask = scene(300, 200)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).resize((100, 150), Image.NEAREST).save(tmp_path / "a_mask.png")
    pair = Pair(tmp_path / "a.png", tmp_path / "a_mask.png")
    img, m = load_pair(pair)
    assert img.size == m.size == (200, 300)
    assert set(np.unique(np.asarray(m))) <= {0, 255}
    img, m = load_pair(pair, max_side=150)
    assert img.size == m.size == (100, 150)
    with pytest.raises(ValueError, match=r"missing file: .*nope\.png"):
        load_pair(Pair(tmp_path / "nope.png", tmp_path / "a_mask.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"unreadable image: .*broken\.png"):
        load_pair(Pair(tmp_path / "broken.png", tmp_path / "a_mask.png"))


# ------------------------------------------------------------------ augmentation
def _misaligned(image: torch.Tensor, mask: torch.Tensor, band: int = 3) -> int:
    """Pixels where the mask read back from the photo (bright = person) disagrees with the mask tensor,
    not counting a ``band``-pixel strip along the mask's edges where interpolation blurs the photo."""
    truth = mask[0].numpy() > 0
    if truth.all() or not truth.any():
        return 0
    lum = image.mean(0).numpy()
    threshold = (np.median(lum[truth]) + np.median(lum[~truth])) / 2
    edges = ndimage.binary_dilation(truth, iterations=band) & ~ndimage.binary_erosion(truth, iterations=band)
    return int(((lum > threshold) != truth)[~edges].sum())


@pytest.mark.parametrize(("aug", "composite_p"), [("pix2pix", 0.0), ("strong", 0.0), ("strong", 1.0)])
def test_augmentation_keeps_image_and_mask_aligned(tmp_path: Path, aug: str, composite_p: float) -> None:
    csv_path = write_dataset(tmp_path, [(300, 220), (180, 260), (520, 380)], ["train"] * 3)  # last one is cache-capped
    ds = SegmentationDataset(load_pairs(csv_path), train=True, size=128, aug=aug, composite_p=composite_p)
    random.seed(0)
    torch.manual_seed(0)
    checked = 0
    for k in range(40):
        image, mask = ds[k % len(ds)]
        assert image.shape == (3, 128, 128) and mask.shape == (1, 128, 128)
        assert image.min() >= -1 and image.max() <= 1
        assert set(mask.unique().tolist()) <= {-1.0, 1.0}
        assert _misaligned(image, mask) == 0, f"sample {k}"
        checked += bool((mask > 0).any() and (mask < 0).any())
        if k == 0:  # the check can fail: the scene is asymmetric, so a mirrored mask does not line up
            assert _misaligned(image, mask.flip(-1)) > 50
    assert checked > 25


def test_eval_transform_is_deterministic_and_aligned(tmp_path: Path) -> None:
    csv_path = write_dataset(tmp_path, [(100, 60)], ["val"])
    ds = SegmentationDataset(load_pairs(csv_path), train=False, size=64)
    (image, mask), (again, mask_again) = ds[0], ds[0]
    assert torch.equal(image, again) and torch.equal(mask, mask_again)
    assert _misaligned(image, mask) == 0
    _, truth = scene(100, 60, seed=0)
    assert abs((mask > 0).float().mean().item() - truth.mean()) < 0.02  # whole photo, squashed to 64x64
    assert abs(image.max().item() - (FG / 127.5 - 1)) < 0.05


def test_unknown_augmentation_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown augmentation 'heavy'"):
        build_transform(True, aug="heavy")
