"""The original API: mask.device, mask.modelPath, mask.getMask, mask.addMask."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, make_tiny_weights, noise_photo
from PIL import Image

from segmenter import Segmenter, mask
from segmenter.inference import WEIGHTS_NAME


@pytest.fixture(scope="module")
def all_on(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights whose mask is everything, whatever the photo."""
    return make_tiny_weights(tmp_path_factory.mktemp("on"), constant=5.0) / WEIGHTS_NAME


@pytest.fixture(scope="module")
def all_off(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights whose mask is nothing, whatever the photo."""
    return make_tiny_weights(tmp_path_factory.mktemp("off"), constant=-5.0) / WEIGHTS_NAME


@pytest.fixture(autouse=True)
def restore_settings() -> Iterator[None]:
    """Each test starts from, and leaves, the module's own settings."""
    saved = (mask.device, mask.modelPath)
    yield
    mask.device, mask.modelPath = saved
    mask._loaded.clear()


def test_defaults() -> None:
    assert mask.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert Path(mask.modelPath) == REPO_ROOT / "weights" / "model.safetensors"


def test_get_mask_shape_and_values(all_on: Path, all_off: Path) -> None:
    mask.device, mask.modelPath = "cpu", all_on
    photo = noise_photo(33, 47)
    for image in (Image.fromarray(photo), photo, torch.from_numpy(photo).permute(2, 0, 1)):
        m = mask.getMask(image)
        assert isinstance(m, torch.Tensor) and m.dtype == torch.float32
        assert m.shape == (1, 33, 47)
        assert torch.equal(m, torch.ones_like(m))
    mask.modelPath = str(all_off)  # strings work as well as paths
    assert torch.equal(mask.getMask(photo), torch.zeros(1, 33, 47))


def test_changing_model_path_between_calls_takes_effect(all_on: Path, all_off: Path, tmp_path: Path) -> None:
    photo = noise_photo(20, 30)
    mask.device = "cpu"
    mask.modelPath = all_on
    assert mask.getMask(photo).mean() == 1.0
    mask.modelPath = all_off
    assert mask.getMask(photo).mean() == 0.0
    mask.modelPath = all_on
    assert mask.getMask(photo).mean() == 1.0
    # Two ordinary (random) tiny models disagree somewhere, and each call uses the one set at the time.
    a, b = make_tiny_weights(tmp_path / "a", seed=1), make_tiny_weights(tmp_path / "b", seed=2)
    mask.modelPath = a
    from_a = mask.getMask(photo)
    mask.modelPath = b
    from_b = mask.getMask(photo)
    assert not np.array_equal(
        Segmenter.from_pretrained(a).predict_low_res([photo])[0],
        Segmenter.from_pretrained(b).predict_low_res([photo])[0],
    )
    assert torch.equal(
        from_a, torch.from_numpy(np.asarray(Segmenter.from_pretrained(a, "cpu").get_mask(photo)) > 0).float()[None]
    )
    assert torch.equal(
        from_b, torch.from_numpy(np.asarray(Segmenter.from_pretrained(b, "cpu").get_mask(photo)) > 0).float()[None]
    )


def test_model_is_loaded_once_per_setting(all_on: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[tuple[str, str]] = []
    real = Segmenter.from_pretrained.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Segmenter], path: str | Path, device: str | None = None) -> Segmenter:
        loads.append((str(path), str(device)))
        return real(cls, path, device="cpu")  # the test machine may have no GPU: always load on the CPU

    monkeypatch.setattr(Segmenter, "from_pretrained", classmethod(counting))
    mask.device, mask.modelPath = "cpu", all_on
    photo = noise_photo(10, 10)
    mask.getMask(photo)
    mask.getMask(photo)
    assert loads == [(str(all_on), "cpu")]
    mask.device = "cpu:0"
    mask.getMask(photo)
    assert loads[-1] == (str(all_on), "cpu:0") and len(loads) == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where there is no GPU")
def test_cuda_without_a_gpu_is_a_clear_error(all_on: Path) -> None:
    mask.device, mask.modelPath = "cuda", all_on
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        mask.getMask(noise_photo(8, 8))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_device(all_on: Path) -> None:
    mask.device, mask.modelPath = "cuda", all_on
    m = mask.getMask(noise_photo(8, 8))
    assert m.shape == (1, 8, 8) and m.device.type == "cpu"
    assert next(mask._segmenter().model.parameters()).device.type == "cuda"


def test_missing_weights_name_the_path(tmp_path: Path) -> None:
    mask.device, mask.modelPath = "cpu", tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mask.getMask(noise_photo(8, 8))


def test_add_mask_multiplies_element_wise(all_on: Path, all_off: Path) -> None:
    photo = noise_photo(21, 34)
    image = torch.from_numpy(photo).permute(2, 0, 1).float() / 255  # what torchvision's to_tensor gives
    mask.device, mask.modelPath = "cpu", all_on
    assert torch.equal(mask.addMask(image, mask.getMask(photo)), image)
    mask.modelPath = all_off
    assert torch.equal(mask.addMask(image, mask.getMask(photo)), torch.zeros_like(image))
    half = torch.zeros(1, 21, 34)
    half[:, :, :17] = 1
    out = mask.addMask(image, half)
    assert torch.equal(out[:, :, :17], image[:, :, :17]) and not out[:, :, 17:].any()
    with pytest.raises(ValueError, match=r"\(3, 21, 34\).*\(1, 34, 21\)"):
        mask.addMask(image, half.transpose(1, 2))


def test_float_tensors_must_be_on_the_0_1_scale(all_on: Path) -> None:
    """A 0-255 float tensor was silently clamped (nearly all white); now it is refused with the fix in the message."""
    photo = torch.from_numpy(noise_photo(21, 34)).permute(2, 0, 1).float()  # 0-255, not divided
    mask.device, mask.modelPath = "cpu", all_on
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*divide a 0-255 tensor by 255"):
        mask.getMask(photo)
    with pytest.raises(ValueError, match="NaN"):
        mask.getMask(torch.full((3, 8, 8), float("nan")))
    assert mask.getMask(photo / 255).shape == (1, 21, 34)
