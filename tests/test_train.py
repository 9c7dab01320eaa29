"""train.py on the CPU: options, run artefacts, resume determinism, crash safety, Ctrl-C, bad data, Hub (offline), DDP.

Every run trains a tiny pix2pix U-Net (ngf 8, 64x64) on a synthetic dataset of 6 train / 2 val / 2 test photos.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fnmatch
import importlib.util
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from train_helpers import ROOT, SPLITS, assert_same_tensors, checkpoint, make_dataset, only_run, tiny_args

import train
from segmenter.export import OPTIONAL_FILES, write_card
from segmenter.inference import Segmenter, sha256_file
from segmenter.model import build_generator

TOKEN = "hf_secret_test_value"
RUN_FILES = [
    "config.json",
    "log.jsonl",
    "metrics.csv",
    "last.pt",
    "samples/epoch_001.png",
    "curves.png",
    "export/model.safetensors",
    "export/config.json",
    "export/README.md",
]
LOG_KEYS = {"epoch", "loss_d", "loss_g_gan", "loss_g_l1", "lr_g", "lr_d", "val_iou", "val_dice", "val_l1", "seconds"}

# A training process whose steps each take 0.2 s longer (the math is untouched), so that a signal sent
# right after epoch 1's checkpoint lands in the middle of epoch 2.
SLOW_TRAIN = """
import sys, time
import train
l1_loss = train.F.l1_loss
def slow_l1_loss(*args, **kwargs):
    time.sleep(0.2)
    return l1_loss(*args, **kwargs)
train.F.l1_loss = slow_l1_loss
sys.exit(train.main(sys.argv[1:]))
"""


# ------------------------------------------------------------------ helpers and fixtures
@contextlib.contextmanager
def torch_state_kept() -> Iterator[None]:
    """Restore torch's thread count and the global RNGs that train.main sets."""
    threads, rngs = torch.get_num_threads(), (torch.get_rng_state(), np.random.get_state(), random.getstate())
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rngs[0])
        np.random.set_state(rngs[1])
        random.setstate(rngs[2])


def run_main(argv: list[str]) -> int:
    """train.main in this process; checks that it leaves the SIGINT handler as it found it."""
    handler = signal.getsignal(signal.SIGINT)
    with torch_state_kept():
        code = train.main(argv)
    assert signal.getsignal(signal.SIGINT) is handler
    return code


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def start_slow_training(argv: list[str], logs: Path) -> subprocess.Popen:
    """train.py with SLOW_TRAIN in a subprocess; stdout/stderr go to logs/{out,err}.txt."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "out.txt", "w") as out, open(logs / "err.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, *argv], cwd=ROOT, stdout=out, stderr=err)


def wait_for_checkpoint(proc: subprocess.Popen, out_dir: Path, logs: Path, timeout: float = 120) -> Path:
    """The run folder, once its first checkpoint has landed (the process still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(out_dir.glob("*/last.pt"))
        if found:
            return found[0].parent
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no checkpoint (exit {proc.poll()}): {(logs / 'err.txt').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def one_epoch(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a one-epoch run (do not modify: copy it)."""
    out = tmp_path_factory.mktemp("one_epoch")
    assert run_main(tiny_args(data, out)) == 0
    return only_run(out)


@pytest.fixture(scope="module")
def two_epochs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of the same run trained for two epochs straight: the reference for resumed runs."""
    out = tmp_path_factory.mktemp("two_epochs")
    assert run_main(tiny_args(data, out, "--epochs", "2")) == 0
    return only_run(out)


def assert_same_run(run: Path, reference: Path) -> None:
    """Bit-identical G and D, optimiser moments, the same exported weights and the same per-epoch losses."""
    a, b = checkpoint(run), checkpoint(reference)
    for key in ("G", "D", "best_G"):
        assert_same_tensors(a[key], b[key])
    assert_same_tensors(a["opt_g"]["state"][0], b["opt_g"]["state"][0])
    # Tensors, not file hashes: safetensors writes its metadata in no fixed order.
    assert_same_tensors(load_file(run / "export/model.safetensors"), load_file(reference / "export/model.safetensors"))
    drop = ("seconds", "data_seconds")
    assert [{k: v for k, v in r.items() if k not in drop} for r in records(run)] == [
        {k: v for k, v in r.items() if k not in drop} for r in records(reference)
    ]


# ------------------------------------------------------------------ options
def test_defaults_presets_and_overrides() -> None:
    assert train.parse_args([]) == train.TrainConfig()
    assert train.parse_args(["--epochs", "3"]) == dataclasses.replace(train.TrainConfig(), epochs=3)
    cpu = train.parse_args(["--preset", "cpu"])
    assert cpu == dataclasses.replace(train.TrainConfig(), preset="cpu", **train.PRESETS["cpu"])
    for argv in (["--preset", "cpu", "--epochs", "3"], ["--epochs", "3", "--preset", "cpu"]):
        assert train.parse_args(argv) == dataclasses.replace(cpu, epochs=3)
    flags = train.parse_args(["--no-amp", "--half"])
    assert (flags.amp, flags.half) == (False, True)


# Each preset that made a model in weights/ must not drift from the run recorded in that model's config.json.
REPRODUCED = {"cpu": "weights/hsd-lite0", "cpu-robust": "weights/robust-256"}


@pytest.mark.parametrize("preset", sorted(REPRODUCED))
def test_presets_match_the_runs_they_reproduce(preset: str) -> None:
    recorded = json.loads((ROOT / REPRODUCED[preset] / "config.json").read_text())["meta"]["train_config"]
    assert recorded["preset"] == preset
    # init_from names the folder the starting model had when the run was made; it was shipped in weights/ then.
    drift = {
        k: (v, recorded.get(k)) for k, v in train.PRESETS[preset].items() if k != "init_from" and recorded.get(k) != v
    }
    assert drift == {}, f"--preset {preset} no longer reproduces {REPRODUCED[preset]}: (preset, recorded) {drift}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--epoch-count", "3"],
        ["--epochs", "three"],
        ["--arch", "resnet"],
        ["--preset", "gpu"],
        ["--size", "100"],
        ["--arch", "effnet_unet", "--size", "80"],
        ["--paste-min-height", "0"],
        ["--paste-min-height", "1.5"],
    ],
)
def test_bad_options_are_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        train.parse_args(argv)
    assert e.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_help_lists_every_option_with_its_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping
    with pytest.raises(SystemExit) as e:
        train.parse_args(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out.split("options:", 1)[1]
    entries = {chunk.split()[0].rstrip(","): chunk for chunk in re.split(r"\n(?=  -)", text) if chunk.strip()}
    for f in dataclasses.fields(train.TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        assert f"(default: {getattr(train.TrainConfig(), f.name)})" in entries[flag], entries.get(flag)


def test_model_config_fits_the_unet_to_the_size() -> None:
    for size, downs in ((256, 8), (64, 6), (32, 5)):
        mcfg = train.model_config(train.parse_args(["--size", str(size), "--ngf", "4"]))
        assert (mcfg.num_downs, mcfg.input_size) == (downs, size)
        out = build_generator(mcfg).eval()(torch.zeros(1, 3, size, size))
        assert out.shape == (1, 1, size, size)
    assert train.model_config(train.parse_args(["--preset", "cpu"])).num_downs == 8  # unused by effnet_unet


def test_encoder_option_reaches_the_model_config() -> None:
    assert train.model_config(train.parse_args(["--preset", "cpu-robust"])).encoder == "lite0"
    mcfg = train.model_config(train.parse_args(["--preset", "cpu-robust", "--encoder", "lite2", "--init-from", ""]))
    assert mcfg.encoder == "lite2"
    assert build_generator(mcfg).encoder.skip_channels[-1] == 352  # Lite2's deepest features


def test_resume_config_keeps_the_run_and_allows_only_safe_changes() -> None:
    saved = dataclasses.asdict(train.TrainConfig(run_id="r", epochs=2, lr=1e-3, batch_size=4, device="cuda", threads=8))
    argv = ["--resume", "runs/r", "--epochs", "5", "--lr", "0.001", "--threads", "2", "--run-id", "r"]
    cfg = train.resume_config(saved, train.parse_args(argv), train.given_options(argv))
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.run_id, cfg.resume) == (5, 1e-3, 4, "r", "runs/r")
    assert (cfg.threads, cfg.device, cfg.export_to) == (2, "auto", "")  # this machine's, this command's
    for argv in (["--resume", "runs/r", "--lr", "0.01"], ["--resume", "runs/r", "--preset", "cpu"]):
        with pytest.raises(SystemExit, match=argv[2]):
            train.resume_config(saved, train.parse_args(argv), train.given_options(argv))


# ------------------------------------------------------------------ a run and its artefacts
def test_one_epoch_run_writes_every_artefact(one_epoch: Path) -> None:
    run = one_epoch
    assert [name for name in RUN_FILES if not (run / name).is_file()] == []
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    (record,) = records(run)
    assert record.keys() >= LOG_KEYS and record["epoch"] == 1
    assert record["loss_g_l1"] > 0 and record["loss_d"] > 0 and record["seconds"] > 0
    assert 0 <= record["val_iou"] <= 1 and 0 <= record["val_dice"] <= 1
    with open(run / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["val_iou"]) == pytest.approx(record["val_iou"])
    assert checkpoint(run)["epoch"] == 0
    with Image.open(run / "samples/epoch_001.png") as grid:  # photo | prediction | truth, for 2 val images
        assert grid.size == (3 * 66 + 2, 2 * 66 + 2)
    with Image.open(run / "curves.png") as curves:
        assert curves.width > 100

    seg = Segmenter.from_pretrained(run / "export", device="cpu")
    assert (seg.cfg.arch, seg.cfg.num_downs, seg.cfg.input_size, seg.cfg.meta["dtype"]) == (
        "pix2pix_unet",
        6,
        64,
        "float32",
    )
    assert seg.cfg.meta["sha256"] == sha256_file(run / "export/model.safetensors")
    mask = seg.get_mask(np.full((50, 40, 3), 128, np.uint8))
    assert mask.size == (40, 50) and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_model_card_renders_the_run(one_epoch: Path, data: Path) -> None:
    card = (one_epoch / "export/README.md").read_text()
    meta = json.loads((one_epoch / "export/config.json").read_text())["meta"]
    assert card.startswith("---\nlicense: mit\n") and "{" not in card and "}" not in card
    command = shlex.join(["python", "train.py", *tiny_args(data, one_epoch.parent)])  # main's argv, not pytest's
    assert meta["commands"] == [command] and f"Training ID `{one_epoch.name}`, preset `seed`: `{command}`." in card
    assert f"sha256 `{meta['sha256']}`" in card and "(float32)" in card
    for split in ("val", "test"):  # recorded per dataset and split, through the served pipeline
        m = meta["metrics"][f"{data.parent.name}/{split}"]
        assert f"| {data.parent.name}/{split} | {SPLITS[split]} | {m['iou']:.4f} | {m['dice']:.4f} |" in card
        assert 0 <= m["person_share"] <= 1 and "seconds_per_image" in m
    assert "70x70 PatchGAN discriminator (ndf 8), GAN weight 1.0 + L1 x 100.0" in card
    assert "\n# Person segmentation: pix2pix_unet trained as a Pix2Pix generator (GAN + L1)\n" in card
    assert "\ntags: [image-segmentation, person-segmentation, pix2pix_unet, pix2pix, gan]\n" in card
    assert (
        "1 epochs, batch 2" in card
        and "(epoch 1)" in card
        and "Input: an RGB photo resized to 64x64 (trained at\n64x64; no test-time augmentation)," in card
    )
    assert "Trained on 6 photos" in card and f"`{data.parent.name}` split `train`, sampling weight 1" in card


def test_model_card_of_the_shipped_preset(tmp_path: Path) -> None:
    cfg = train.parse_args(["--preset", "cpu-robust", "--run-id", "robust-run"])
    mcfg = train.model_config(cfg)
    train_sources, val_sources = train.sources(cfg)
    mcfg.meta = {
        "dtype": "float32",
        "sha256": "0" * 64,
        "best_epoch": 9,
        "commands": ["python train.py --preset cpu-robust"],
        "data": {
            "train_images": 455,
            "val_images": 98,
            "sources": [dataclasses.asdict(s) for s in train_sources],
            "val_sources": [dataclasses.asdict(s) for s in val_sources],
        },
        "presence_tuning": {"threshold": 0.3},
        "metrics": {
            "PennFudanPed/val": {
                "images": 50,
                "iou": 0.8,
                "dice": 0.9,
                "boundary_f": 0.7,
                "person_share": 0.2,
                "no_person": 0.0,
            }
        },
    }
    write_card(tmp_path, dataclasses.asdict(cfg), mcfg)
    card = (tmp_path / "README.md").read_text()
    assert (
        "| PennFudanPed/val | 50 | 0.8000 | 0.9000 | 0.7000 | 20.00% | 0% |" in card and "Trained on 455 photos" in card
    )
    assert "Training ID `robust-run`, preset `cpu-robust`: `python train.py --preset cpu-robust`." in card
    assert "L1 loss x 100.0 (no discriminator) + soft Dice x 50.0 + presence-head BCE x 1.0" in card
    assert "\n# Person segmentation: effnet_unet trained on L1 + Dice loss, without a discriminator\n" in card
    assert "\ntags: [image-segmentation, person-segmentation, effnet_unet]\n" in card and "Pix2Pix" not in card
    assert (
        "augmentation `robust`\n(copy-paste p=0.5" in card
        and "starting from the generator in `weights/hsd-lite0/`" in card
    )
    assert "`PennFudanPed` split `train`, sampling weight 0.3: street photos" in card
    assert "`Negatives/val`" in card and "presence head" in card and "{" not in card
    assert "scene prior" not in card
    mcfg.scene_prior = True
    mcfg.meta["scene_prior"] = {
        "weight_decay": 0.1,
        "threshold": 0.42,
        "lowest_with_person": 0.84,
        "train_samples": {"person": 561, "no_person": 564},
    }
    write_card(tmp_path, dataclasses.asdict(cfg), mcfg)
    card = (tmp_path / "README.md").read_text()
    assert "A scene prior can veto it" in card and "(561 samples with a person, 564 without)" in card
    assert "below 0.42 (half the lowest val score of a photo with a person, 0.840)" in card


def test_a_finished_run_folder_is_not_overwritten(one_epoch: Path, data: Path) -> None:
    before = (one_epoch / "log.jsonl").read_text()
    with pytest.raises(SystemExit, match="--resume"):
        run_main(tiny_args(data, one_epoch.parent, "--run-id", one_epoch.name))
    assert (one_epoch / "log.jsonl").read_text() == before


def test_l1_only_half_export_to(data: Path, tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    assert run_main(tiny_args(data, tmp_path / "runs", "--gan-weight", "0", "--half", "--export-to", str(dest))) == 0
    run = only_run(tmp_path / "runs")
    (record,) = records(run)
    assert record["loss_d"] == 0 and record["loss_g_gan"] == 0 and record["loss_g_l1"] > 0
    for name in train.EXPORT_FILES:
        assert (dest / name).read_bytes() == (run / "export" / name).read_bytes()
    assert {v.dtype for v in load_file(dest / "model.safetensors").values() if v.is_floating_point()} == {torch.float16}
    seg = Segmenter.from_pretrained(dest, device="cpu")
    assert seg.cfg.meta["dtype"] == "float16"
    # The fp16 file is the best epoch's generator.
    ref = build_generator(seg.cfg)
    ref.load_state_dict(checkpoint(run)["best_G"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(seg.model(x), ref.eval()(x), atol=1e-2)
    card = (dest / "README.md").read_text()
    assert "L1 loss x 100.0 (no discriminator)" in card and "(float16)" in card


@pytest.mark.parametrize("fault", ["missing", "unreadable"])
def test_a_bad_mask_stops_training_before_it_starts(fault: str, data: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(data.parent, tmp_path / "data"))
    bad = root / "masks" / "7.png"  # a val row
    if fault == "missing":
        bad.unlink()
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    with pytest.raises(SystemExit, match=re.escape(str(bad))):
        run_main(tiny_args(root / "data.csv", tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ determinism and resume
def test_the_same_seed_gives_the_same_weights(two_epochs: Path, data: Path, tmp_path: Path) -> None:
    assert run_main(tiny_args(data, tmp_path, "--epochs", "2")) == 0
    assert_same_run(only_run(tmp_path), two_epochs)


def test_resume_with_more_epochs_equals_training_straight(one_epoch: Path, two_epochs: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(one_epoch, tmp_path / "moved" / one_epoch.name))  # resumes where the checkpoint is
    assert not torch.equal(
        checkpoint(run)["G"]["model.model.0.weight"], checkpoint(two_epochs)["G"]["model.model.0.weight"]
    )
    assert run_main(["--resume", str(run), "--epochs", "2", "--threads", "1"]) == 0
    assert_same_run(run, two_epochs)
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert "resumed with `python train.py --resume" in (run / "export/README.md").read_text()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_001.png", "epoch_002.png"]


def test_resume_refuses_to_change_the_training(one_epoch: Path) -> None:
    with pytest.raises(SystemExit, match=re.escape("--lr 0.1 (the run has 0.0002)")):
        run_main(["--resume", str(one_epoch), "--epochs", "2", "--lr", "0.1"])


# ------------------------------------------------------------------ crashes and Ctrl-C
@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"])
def test_atomic_save_failure_keeps_the_previous_checkpoint(
    error: BaseException, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.pt"
    train.atomic_save({"epoch": 0, "w": torch.arange(1000)}, path)

    def failing_save(obj: Any, f: Any) -> None:
        f.write(b"half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(type(error)):
        train.atomic_save({"epoch": 1}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 0
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_sigkill_while_saving_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    train.atomic_save({"epoch": 0, "w": torch.arange(1000)}, path)
    killed_mid_write = (
        "import os, signal, sys, torch, train\n"
        "def dying_save(obj, f):\n"
        "    f.write(b'half a checkpoint'); f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
        "torch.save = dying_save\n"
        "train.atomic_save({'epoch': 1}, __import__('pathlib').Path(sys.argv[1]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", killed_mid_write, str(path)], cwd=ROOT, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert [p.read_bytes() for p in tmp_path.glob(".last.pt.*.tmp")] == [b"half a checkpoint"]  # it died mid-write
    assert torch.load(path, weights_only=True)["epoch"] == 0


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(
    two_epochs: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "runs"
    proc = start_slow_training(tiny_args(data, out, "--epochs", "2"), tmp_path)
    run = wait_for_checkpoint(proc, out, tmp_path)
    time.sleep(0.1)
    proc.kill()
    proc.wait(timeout=60)
    assert checkpoint(run)["epoch"] == 0 and len(records(run)) == 1  # killed in epoch 2
    # As if it had also died between logging epoch 2 and saving its checkpoint, or while saving it:
    with open(run / "log.jsonl", "a") as f:
        f.write(json.dumps({**records(run)[0], "epoch": 2}) + "\n")
    (run / ".last.pt.12345.tmp").write_bytes(b"half a checkpoint")
    assert run_main(["--resume", str(run), "--threads", "1"]) == 0
    assert_same_run(run, two_epochs)
    assert not list(run.glob(".*.tmp"))


def test_ctrl_c_exits_130_keeping_the_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    proc = start_slow_training(tiny_args(data, out, "--epochs", "3"), tmp_path)
    run = wait_for_checkpoint(proc, out, tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = (tmp_path / "err.txt").read_text()
    assert "Traceback" not in err
    assert f"holds epoch 1/3; continue with: python train.py --resume {run}" in err
    assert checkpoint(run)["epoch"] == 0 and len(records(run)) == 1
    assert not (run / "export").exists()


# ------------------------------------------------------------------ the Hub, offline
class FakeHub:
    """Stands in for HfApi.create_repo / upload_folder, recording what would be sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        from huggingface_hub import HfApi

        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: dict[str, bytes] = {}
        hub = self

        def create_repo(self: HfApi, repo_id: str, **kwargs: Any) -> None:
            if fail:
                raise ConnectionError("no network")
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

        def upload_folder(self: HfApi, **kwargs: Any) -> SimpleNamespace:
            hub.calls.append(("upload_folder", kwargs))
            folder = Path(kwargs["folder_path"])
            hub.sent = {
                p.name: p.read_bytes()
                for p in folder.iterdir()
                if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in kwargs.get("allow_patterns") or ["*"])
            }
            return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/{'0' * 40}")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)


def test_push_to_hub_sends_the_export_and_never_the_token(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = FakeHub(monkeypatch)
    assert run_main(tiny_args(data, tmp_path / "runs", "--push-to-hub", "user/repo")) == 0
    run = only_run(tmp_path / "runs")
    assert [name for name, _ in hub.calls] == ["create_repo", "upload_folder"]
    assert hub.calls[0][1] == {"repo_id": "user/repo", "repo_type": "model", "exist_ok": True}
    upload = hub.calls[1][1]
    assert (upload["repo_id"], upload["repo_type"], Path(upload["folder_path"])) == (
        "user/repo",
        "model",
        run / "export",
    )
    assert sorted(hub.sent) == exported_files(run)
    assert json.loads(hub.sent["config.json"])["meta"]["sha256"] == sha256_file(run / "export/model.safetensors")
    assert f"Training ID `{run.name}`" in hub.sent["README.md"].decode()
    output = capsys.readouterr()
    assert "pushed to the Hub: https://huggingface.co/user/repo/commit/" in output.out
    leaks = [p for p in run.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]
    leaks += [name for name, body in hub.sent.items() if TOKEN.encode() in body]
    assert leaks == [] and TOKEN not in output.out + output.err


def exported_files(run: Path) -> list[str]:
    """What a push must send: the export's required files and the optional ones it holds (model.onnx)."""
    optional = [name for name in OPTIONAL_FILES if (run / "export" / name).is_file()]
    assert optional == list(OPTIONAL_FILES) or importlib.util.find_spec("onnx") is None  # the graph when onnx is there
    return sorted([*train.EXPORT_FILES, *optional])


def test_a_failed_push_is_retried_with_resume(
    one_epoch: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(one_epoch, tmp_path / one_epoch.name))
    FakeHub(monkeypatch, fail=True)
    assert run_main(["--resume", str(run), "--push-to-hub", "user/repo"]) == 1
    assert f"retry with: python train.py --resume {run} --push-to-hub user/repo" in capsys.readouterr().err
    hub = FakeHub(monkeypatch)
    assert run_main(["--resume", str(run), "--push-to-hub", "user/repo"]) == 0
    assert sorted(hub.sent) == exported_files(run)
    assert len(records(run)) == 1  # nothing retrained


def test_hub_repo_id_loads_from_an_offline_cache(one_epoch: Path, tmp_path: Path) -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--user--repo"
    shutil.copytree(one_epoch / "export", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    predict = (
        "from segmenter import Segmenter\nimport numpy as np\n"
        "seg = Segmenter.from_pretrained('user/repo', device='cpu')\n"
        "image = np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)\n"
        "print(seg.info()['run_id'], repr(float(seg.predict_proba(image).sum())))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "home"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", predict], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    image = np.arange(48 * 40 * 3, dtype=np.uint8).reshape(48, 40, 3)
    local = Segmenter.from_pretrained(one_epoch / "export", device="cpu").predict_proba(image)
    assert proc.stdout.split() == [one_epoch.name, repr(float(local.sum()))]


# ------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_torchrun_two_processes(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs"
    # Batch 4: each process has 3 of the 6 training images, so dropping the last partial batch would leave none.
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "train.py",
        *tiny_args(data, out, "--batch-size", "4"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout and proc.stdout.count("exported best epoch") == 1
    run = only_run(out)
    (record,) = records(run)  # rank 0 alone logs
    assert record["loss_g_l1"] > 0 and record["loss_d"] > 0
    assert [name for name in RUN_FILES if not (run / name).is_file()] == []
    Segmenter.from_pretrained(run / "export", device="cpu")


def test_tune_inference_picks_the_best_val_setting(data: Path, tmp_path: Path) -> None:
    """effnet_unet at 64x64: export tries sizes 64..128 with and without flip averaging, keeps val's best."""
    argv = [*tiny_args(data, tmp_path), "--arch", "effnet_unet", "--no-pretrained", "--tune-inference"]
    assert run_main(argv) == 0
    cfg = json.loads((only_run(tmp_path) / "export" / "config.json").read_text())
    tried = cfg["meta"]["inference_tuning"]["val_miou"]
    assert set(tried) == {f"{s}{f}" for s in (64, 128) for f in ("", "+flip")}
    chosen = max(tried, key=tried.__getitem__)
    assert cfg["meta"]["inference_tuning"]["chosen"] == chosen
    assert cfg["input_size"] == int(chosen.split("+")[0]) and cfg["tta_flip"] == chosen.endswith("+flip")
    assert Segmenter.from_pretrained(only_run(tmp_path) / "export").get_mask(Image.new("RGB", (50, 30))).size == (
        50,
        30,
    )


def make_negatives(root: Path, size: int = 64) -> Path:
    """Frames without people (noise, all-background masks): 4 train, 2 val rows; returns the CSV."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows = []
    for i, split in enumerate(["train"] * 4 + ["val"] * 2):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        Image.new("L", (size, size), 0).save(root / "masks" / f"{i}.png")
        rows.append({"images": f"images/{i}.png", "masks": f"masks/{i}.png", "split": split})
    with (root / "split.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["images", "masks", "split"])
        w.writeheader()
        w.writerows(rows)
    return root / "split.csv"


def test_mix_of_datasets_with_copy_paste_and_presence_head(data: Path, tmp_path: Path) -> None:
    negatives = make_negatives(tmp_path / "negatives")
    mix = ["--datasets", f"{data}:train:3,{negatives}:train:1", "--val-datasets", f"{data},{negatives}"]
    model = ["--arch", "effnet_unet", "--no-pretrained", "--presence-weight", "1", "--dice-weight", "10"]
    augment = ["--aug", "robust", "--paste-p", "0.5", "--epoch-samples", "8", "--batch-size", "4", "--tune-inference"]
    argv = tiny_args(data, tmp_path / "runs", *mix, *model, *augment)  # later options win over tiny_args' own
    assert run_main(argv) == 0
    run = only_run(tmp_path / "runs")
    assert (run / "augmented.png").is_file()
    (record,) = records(run)
    assert {"val_iou/data0", "val_iou/negatives"} <= set(record) and record["loss_presence"] > 0
    assert record["loss_g_dice"] > 0
    assert record["val_iou"] == pytest.approx((record["val_iou/data0"] + record["val_iou/negatives"]) / 2)
    meta = json.loads((run / "export" / "config.json").read_text())
    assert meta["presence_head"] and 0 < meta["presence_threshold"] < 1
    sources = meta["meta"]["data"]["sources"]
    assert [(Path(s["path"]).name, s["split"], s["weight"]) for s in sources] == [
        ("data.csv", "train", 3.0),
        ("split.csv", "train", 1.0),
    ]
    assert set(meta["meta"]["metrics"]) == {"data0/val", "data0/test", "negatives/val"}  # no test rows for negatives
    tuning = meta["meta"]["presence_tuning"]
    assert (
        tuning["lowest_with_person"] >= meta["presence_threshold"]
        or tuning["highest_without_person"] < tuning["lowest_with_person"]
    )
    seg = Segmenter.from_pretrained(run / "export", device="cpu")
    assert seg.segment(Image.open(data.parent / "images" / "0.png")).presence is not None


def test_train_val_script_reproduces_the_logged_val_figure(one_epoch: Path, data: Path, capsys) -> None:
    """scripts/train_val.py gives any weights train.py's own val figure: on a run's export, the figure it logged."""
    spec = importlib.util.spec_from_file_location("train_val", ROOT / "scripts" / "train_val.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (record,) = records(one_epoch)
    with torch_state_kept():
        script.main([str(one_epoch / "export"), *tiny_args(data, one_epoch.parent / "unused")])
    printed = dict(re.findall(r"^  (\S+): ([\d.]+)$", capsys.readouterr().out, re.M))
    assert float(printed["val_iou"]) == pytest.approx(record["val_iou"], abs=1e-4)
    assert float(printed["val_l1"]) == pytest.approx(record["val_l1"], abs=1e-4)


def test_val_sets_from_one_folder_are_logged_per_split(data: Path, tmp_path: Path) -> None:
    """The far-people set is one folder read for four splits: each gets its own val_iou key, not one merged key."""
    from segmenter.training import lib as train_lib

    negatives = make_negatives(tmp_path / "negatives")
    cfg = train.parse_args(
        [
            "--datasets",
            f"{negatives}:train",
            "--val-datasets",
            f"{negatives}:val,{negatives}:train,{data}",
            "--size",
            "64",
        ]
    )
    _, _, val_sets = train_lib.load_data(cfg)
    assert [name for name, _ in val_sets] == ["negatives:val", "negatives:train", "data0"]
    assert [len(ds) for _, ds in val_sets] == [2, 4, len(train_lib.load_pairs(data, "val"))]


@pytest.mark.parametrize("option", ["--datasets", "--val-datasets"])
def test_a_mix_never_uses_test_rows(option: str, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args([option, f"{data}:test"])
    assert "the test split is never used" in capsys.readouterr().err


def test_scene_prior_without_a_val_set_without_people_stops_before_training(data: Path, tmp_path: Path) -> None:
    """Its threshold is chosen on val photos with and without people: refused up front, not after the epochs."""
    args = tiny_args(data, tmp_path / "runs", "--arch", "effnet_unet", "--size", "64", "--presence-weight", "1")
    with pytest.raises(SystemExit, match="--scene-prior chooses its threshold"):
        run_main([*args, "--scene-prior", "--run-id", "prior"])
    assert not (tmp_path / "runs" / "prior").exists()


def test_limit_holds_at_export_too(data: Path, tmp_path: Path) -> None:
    """--limit N (smoke runs): N pairs per split in training, and in what the export evaluates and records."""
    assert run_main(tiny_args(data, tmp_path / "runs", "--limit", "1", "--eval-test")) == 0
    meta = json.loads((only_run(tmp_path / "runs") / "export" / "config.json").read_text())["meta"]
    assert meta["data"]["train_images"] == 1
    assert set(meta["metrics"]) == {"data0/val", "data0/test"}
    assert {record["images"] for record in meta["metrics"].values()} == {1}
