"""Every README block marked ``<!-- example: NAME -->`` runs as written, in a scratch folder like a user's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, requires_shared_data
from PIL import Image

README = (REPO_ROOT / "README.md").read_text()
EXAMPLES = dict(re.findall(r"<!-- example: (\w+) -->\n```\w+\n(.*?)```", README, re.S))
LOCAL_URL = "http://localhost:7860/"


def test_every_user_has_an_example() -> None:
    assert sorted(EXAMPLES) == ["cli", "deploy", "gradio_client", "http", "python", "train"]


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A user's folder: photo.jpg, photos/ (with a sub-folder), shots/, and the repo's weights/, train.py, scripts/."""
    photos = sorted((REPO_ROOT / "examples").glob("*.jpg"))
    shutil.copy(photos[0], tmp_path / "photo.jpg")
    for i, photo in enumerate(photos[:2]):
        (tmp_path / "photos" / f"day{i}").mkdir(parents=True)
        shutil.copy(photo, tmp_path / "photos" / f"day{i}" / photo.name)
    (tmp_path / "shots" / "a").mkdir(parents=True)
    shutil.copy(photos[-1], tmp_path / "shots" / "a" / "shot.jpg")
    for name in ("weights", "train.py", "scripts"):
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    return tmp_path


def run(kind: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` as bash (each ``python`` is this interpreter) or as a Python script, with the repo importable."""
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def is_mask(path: Path, size: tuple[int, int]) -> bool:
    mask = Image.open(path)
    return mask.size == size and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_python_example(scratch: Path) -> None:
    run("python", EXAMPLES["python"], scratch)
    size = Image.open(scratch / "photo.jpg").size
    assert is_mask(scratch / "mask.png", size)
    assert Image.open(scratch / "cutout.png").mode == "RGBA"
    assert Image.open(scratch / "portrait-mode.jpg").size == size


def test_cli_example(scratch: Path) -> None:
    run("bash", EXAMPLES["cli"], scratch)
    for i, photo in enumerate(sorted((scratch / "photos").rglob("*.jpg"))):
        assert Image.open(scratch / "out" / f"day{i}" / f"{photo.stem}.png").mode == "RGBA"
        assert (scratch / "composites" / f"day{i}").is_dir()
    assert is_mask(scratch / "masks" / "shot.png", Image.open(scratch / "shots" / "a" / "shot.jpg").size)


def test_http_and_gradio_client_examples(scratch: Path, app_url: str) -> None:
    result = run("bash", EXAMPLES["http"].replace(LOCAL_URL, app_url), scratch)
    assert "x-person-present:" in result.stdout.lower()
    assert is_mask(scratch / "mask.png", Image.open(scratch / "photo.jpg").size)
    result = run("python", EXAMPLES["gradio_client"].replace(LOCAL_URL, app_url), scratch)
    mask_png, cutout_png = result.stdout.split()[-2:]
    assert is_mask(Path(mask_png), Image.open(scratch / "photo.jpg").size)
    assert Image.open(cutout_png).mode == "RGBA"


def test_deploy_example(scratch: Path) -> None:
    result = run("bash", EXAMPLES["deploy"], scratch)
    assert "weights/model.safetensors" in result.stdout and "dry run: nothing uploaded" in result.stdout


@pytest.mark.slow
@requires_shared_data
def test_train_example(scratch: Path) -> None:
    run("bash", EXAMPLES["train"], scratch)
    export = scratch / "runs" / "quick-try" / "export"
    assert {"model.safetensors", "config.json", "README.md"} <= {p.name for p in export.iterdir()}
