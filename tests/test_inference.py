"""Segmenter: safetensors round trip, integrity checks, Hub cache loading, inputs of every kind and size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, make_tiny_weights, noise_photo, odd_modes, tiny_config
from PIL import Image

from segmenter.config import ModelConfig
from segmenter.data import to_rgb
from segmenter.inference import CONFIG_NAME, WEIGHTS_NAME, Segmenter, as_pil, save_pretrained, sha256_file
from segmenter.model import build_generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_weights(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def seg(tiny: Path) -> Segmenter:
    return Segmenter.from_pretrained(tiny, device="cpu")


# ------------------------------------------------------------------ save / load
@pytest.mark.parametrize("half", [False, True])
def test_save_then_load_is_bit_exact(tmp_path: Path, half: bool) -> None:
    torch.manual_seed(0)
    cfg = tiny_config()
    net = build_generator(cfg)
    net.train()(torch.rand(2, 3, 256, 256))  # move the BatchNorm running statistics off their defaults
    save_pretrained(net, cfg, tmp_path, half=half)
    loaded = Segmenter.from_pretrained(tmp_path, device="cpu")
    theirs = loaded.model.state_dict()
    for k, v in net.state_dict().items():
        expected = v.half().to(v.dtype) if half and v.is_floating_point() else v
        assert torch.equal(theirs[k], expected), k
    assert not loaded.model.training
    saved = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert saved["meta"]["sha256"] == sha256_file(tmp_path / WEIGHTS_NAME)
    assert saved["meta"]["dtype"] == ("float16" if half else "float32")
    assert ModelConfig.from_dict(saved).ngf == 8 and loaded.info()["sha256"] == saved["meta"]["sha256"]
    # The .safetensors file on its own also loads (its config.json is found beside it).
    again = Segmenter.from_pretrained(tmp_path / WEIGHTS_NAME, device="cpu")
    photo = noise_photo(50, 70)
    assert np.array_equal(again.predict_proba(photo), loaded.predict_proba(photo))


def test_tampered_weights_are_refused(tiny: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny, tmp_path / "w")
    data = bytearray((folder / WEIGHTS_NAME).read_bytes())
    data[-100] ^= 0xFF  # one bit pattern flipped inside a tensor, same size
    (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{WEIGHTS_NAME}: sha256 does not match"):
        Segmenter.from_pretrained(folder)


def test_truncated_weights_are_refused(tiny: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny, tmp_path / "w")
    weights = folder / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ValueError, match=rf"{weights}: sha256 does not match"):
        Segmenter.from_pretrained(folder)
    # Without a recorded sha256 (opted out) the safetensors reader catches it, and the message still names the file.
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    del cfg["meta"]["sha256"]
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{weights}: not a readable safetensors file"):
        Segmenter.from_pretrained(folder, verify=False)


def test_unverifiable_weights_are_refused_unless_the_caller_opts_out(tiny: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny, tmp_path / "w")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    del cfg["meta"]["sha256"]
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"^{folder / CONFIG_NAME}: records no sha256 .* verify=False") as e:
        Segmenter.from_pretrained(folder)
    assert "\n" not in str(e.value)
    assert Segmenter.from_pretrained(folder, verify=False).cfg.ngf == cfg["ngf"]  # the explicit opt-out loads
    (folder / CONFIG_NAME).unlink()
    for path in (folder, folder / WEIGHTS_NAME):
        with pytest.raises(FileNotFoundError, match=rf"^{folder}: no {CONFIG_NAME} beside {WEIGHTS_NAME}") as e:
            Segmenter.from_pretrained(path)
        assert "\n" not in str(e.value) and len(str(e.value)) < 300  # one line naming the missing file


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("input_size", 0),
        ("input_size", 100),
        ("threshold", 5),
        ("presence_threshold", -0.1),
        ("ngf", "64"),
        ("num_downs", 2),
        ("norm", "group"),
        ("arch", "resnet"),
        ("encoder", "lite9"),
        ("dropout", "yes"),
        ("std", [0.5, 0, 0.5]),
        ("mean", 0.5),
        ("decoder_channels", [16, 8]),
        ("in_channels", 4),
    ],
)
def test_every_config_value_is_validated_on_load(tiny: Path, tmp_path: Path, key: str, value: object) -> None:
    folder = shutil.copytree(tiny, tmp_path / "w")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg[key] = value
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=rf"{CONFIG_NAME}: not a valid model config: {key} must") as e:
        Segmenter.from_pretrained(folder)
    assert "\n" not in str(e.value)


def test_weights_for_another_architecture_are_refused(tiny: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny, tmp_path / "w")
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg["ngf"] = 16
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit a pix2pix_unet generator"):
        Segmenter.from_pretrained(folder)


def test_missing_weights_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=f"no {WEIGHTS_NAME} in"):
        Segmenter.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        Segmenter.from_pretrained(tmp_path / "nope.safetensors")


def test_hub_repo_id_loads_offline_from_the_cache(tiny: Path, tmp_path: Path) -> None:
    """A repo id resolves through a populated huggingface_hub cache with HF_HUB_OFFLINE=1 (no network)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--owner--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot, blobs = repo / "snapshots" / commit, repo / "blobs"
    snapshot.mkdir(parents=True)
    blobs.mkdir()
    for name in (WEIGHTS_NAME, CONFIG_NAME):  # as the hub lays them out: content-named blobs, linked from snapshots
        blob = blobs / sha256_file(tiny / name)
        shutil.copy(tiny / name, blob)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    code = (
        "import json; from segmenter import Segmenter; from helpers import noise_photo\n"
        "seg = Segmenter.from_pretrained('owner/name', device='cpu')\n"
        "print(json.dumps({'sha256': seg.info()['sha256'], 'sum': float(seg.predict_proba(noise_photo(50, 70)).sum())}))"
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests")]),
    }
    env.pop("HF_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["sha256"] == sha256_file(tiny / WEIGHTS_NAME)
    expected = Segmenter.from_pretrained(tiny, device="cpu").predict_proba(noise_photo(50, 70)).sum()
    assert got["sum"] == pytest.approx(float(expected), rel=1e-5)


# ------------------------------------------------------------------ inputs
@pytest.mark.parametrize(("height", "width"), [(1, 1), (257, 1023), (1, 4000), (4000, 1)])
def test_masks_come_back_at_the_input_size(seg: Segmenter, height: int, width: int) -> None:
    photo = noise_photo(height, width)
    proba = seg.predict_proba(photo)
    assert proba.shape == (height, width) and proba.dtype == np.float32
    assert proba.min() >= 0 and proba.max() <= 1
    mask = seg.get_mask(photo)
    assert mask.mode == "L" and mask.size == (width, height)
    assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_array_tensor_and_pil_inputs_agree(seg: Segmenter) -> None:
    photo = noise_photo(60, 90)
    expected = seg.predict_proba(Image.fromarray(photo))
    as_tensor = torch.from_numpy(photo).permute(2, 0, 1)
    for same in (photo, as_tensor, as_tensor.float() / 255, np.dstack([photo, np.full((60, 90), 255, np.uint8)])):
        assert np.allclose(seg.predict_proba(same), expected, atol=1e-6)
    batch = seg.get_masks([photo, noise_photo(30, 20, seed=1), photo], batch_size=2)
    assert [m.size for m in batch] == [(90, 60), (20, 30), (90, 60)]
    assert np.array_equal(np.asarray(batch[0]), np.asarray(batch[2]))


@pytest.mark.parametrize("mode", list(odd_modes()))
def test_odd_image_modes_segment_like_their_rgb(seg: Segmenter, mode: str) -> None:
    image, upright = odd_modes()[mode]
    proba = seg.predict_proba(image)
    assert proba.shape == upright.shape[:2]  # EXIF-rotated photos come back upright
    assert np.allclose(proba, seg.predict_proba(upright), atol=1e-6)


def test_exif_rotated_photo_mask_lines_up_with_the_upright_photo(seg: Segmenter) -> None:
    image, upright = odd_modes()["EXIF-6"]
    assert np.array_equal(np.asarray(to_rgb(image)), upright)
    proba = seg.predict_proba(image)
    # The network's answer depends on orientation, so the match above is not a coincidence.
    assert not np.allclose(proba, seg.predict_proba(np.flipud(upright).copy()), atol=1e-3)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="3xHxW"):
        as_pil(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="uint8"):
        as_pil(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="empty image"):
        as_pil(np.zeros((0, 8, 3), np.uint8))
    with pytest.raises(TypeError, match="PIL image"):
        as_pil("photo.jpg")  # type: ignore[arg-type]


def test_flip_averaging_is_the_mean_of_photo_and_mirror(tiny: Path) -> None:
    seg = Segmenter.from_pretrained(tiny, device="cpu")
    photo = noise_photo(40, 64)
    plain = torch.from_numpy(seg.predict_low_res([photo])[0])
    mirrored = torch.from_numpy(seg.predict_low_res([np.ascontiguousarray(photo[:, ::-1])])[0]).flip(-1)
    seg.cfg.tta_flip = True
    averaged = torch.from_numpy(seg.predict_low_res([photo])[0])
    assert not torch.allclose(plain, mirrored, atol=1e-4)  # the check below could fail
    torch.testing.assert_close(averaged, (plain + mirrored) / 2, atol=1e-5, rtol=0)
