"""Faults: a missing, truncated or tampered weights file is refused at start, naming the file and the problem.

Checked wherever weights are loaded: ``Segmenter.from_pretrained``, ``app.create_app`` and ``python app.py``,
which must exit with status 1 and a one-line error instead of serving. A truncated file, or a valid file with
other numbers put in its place, is caught by the sha256 that config.json recorded at export.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import make_tiny_weights
from served_app import app_env, run_app

import app
from segmenter.inference import WEIGHTS_NAME, Segmenter

FAULTS = ["missing", "truncated", "tampered"]
REASONS = {
    "missing": r"does not exist|not found|no model\.safetensors",
    "truncated": "sha256 does not match",
    "tampered": "sha256 does not match",
}
SECRET = "hf_fAuLtSeCrEt0123456789abcdefghijklmn"


def broken_copy(weights: Path, folder: Path, fault: str) -> Path:
    """A copy of the weights folder ``weights`` whose model.safetensors is missing, truncated or tampered with."""
    folder = shutil.copytree(weights, folder)
    target = folder / WEIGHTS_NAME
    if fault == "missing":
        target.unlink()
    elif fault == "truncated":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    else:  # a valid safetensors file with other numbers, beside the original config.json
        other = make_tiny_weights(folder.parent / f"{folder.name}-other", seed=1)
        shutil.copy(other / WEIGHTS_NAME, target)
    return folder


def assert_explains(message: str, folder: Path, fault: str) -> None:
    """The message names the weights file (by its folder and name) and says what is wrong with it."""
    assert str(folder) in message and WEIGHTS_NAME in message, message
    assert re.search(REASONS[fault], message), message


@pytest.mark.parametrize("as_file", [False, True], ids=["folder", "file"])
@pytest.mark.parametrize("fault", FAULTS)
def test_segmenter_and_create_app_refuse(tiny_weights: Path, tmp_path: Path, fault: str, as_file: bool) -> None:
    folder = broken_copy(tiny_weights, tmp_path / "weights", fault)
    model = folder / WEIGHTS_NAME if as_file else folder
    for load in (Segmenter.from_pretrained, app.create_app):
        with pytest.raises((ValueError, FileNotFoundError)) as refused:
            load(model)
        assert_explains(str(refused.value), folder, fault)


def test_python_app_exits_with_the_reason(tiny_weights: Path, tmp_path: Path) -> None:
    """``python app.py`` with each fault (run side by side): exit 1, an ``error:`` line, no traceback or secret."""
    folders = {fault: broken_copy(tiny_weights, tmp_path / fault, fault) for fault in FAULTS}
    envs = [app_env(folders[f], GRADIO_SERVER_PORT="0", HF_TOKEN=SECRET) for f in FAULTS]
    with ThreadPoolExecutor(len(FAULTS)) as pool:
        runs = dict(zip(FAULTS, pool.map(run_app, envs), strict=True))
    for fault, proc in runs.items():
        assert proc.returncode == 1, (fault, proc.returncode, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr and "Uvicorn running" not in proc.stdout + proc.stderr
        error = next(line for line in proc.stderr.splitlines() if line.startswith("error:"))
        assert_explains(error, folders[fault], fault)
        assert SECRET not in proc.stdout + proc.stderr
