"""scripts/deploy_space.py against a patched HfApi (offline), and a Space without weights/ loading its model repo."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import ClassVar

import httpx
import numpy as np
import pytest
from helpers import REPO_ROOT, make_tiny_weights
from PIL import Image

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import deploy_space

from segmenter import Segmenter
from segmenter.pipeline import Options
from segmenter.server.loading import MissingWeightsError, front_matter_models, load_segmenter

TOKEN = f"hf_{uuid.uuid4().hex}"  # made here, so no file holds it unless something writes it


def tracked(*patterns: str) -> set[str]:
    """Files git knows or would add (tracked, or untracked and not ignored) under ``patterns``."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", *patterns],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def expected_files(weights: bool) -> set[str]:
    """What a Space runs, worked out from git independently of the script."""
    files = {"app.py", "requirements.txt", "README.md", "LICENSE"}
    files |= {f for f in tracked("segmenter") if f.endswith(".py")}
    files |= {f for f in tracked("examples") if f.endswith((".jpg", ".png", ".webp"))}
    if weights:
        files |= {"weights/config.json", "weights/model.safetensors", "weights/README.md", "weights/model.onnx"}
    return files


class RecordingHfApi:
    """Stands in for huggingface_hub.HfApi: records every call, uploads nothing."""

    calls: ClassVar[list[tuple[str, tuple, dict]]] = []
    on_space: ClassVar[list[str]] = ["app.py", ".gitattributes", "old_model.bin", "segmenter/stale.py"]

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("__init__", args, kwargs))

    def create_repo(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("create_repo", args, kwargs))

    def list_repo_files(self, *args: object, **kwargs: object) -> list[str]:
        self.calls.append(("list_repo_files", args, kwargs))
        return list(self.on_space)

    def create_commit(self, *args: object, **kwargs: object) -> None:
        self.calls.append(("create_commit", args, kwargs))


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list:
    RecordingHfApi.calls = []
    monkeypatch.setattr(deploy_space, "HfApi", RecordingHfApi)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return RecordingHfApi.calls


def test_space_file_set_is_exact() -> None:
    assert set(deploy_space.space_files(REPO_ROOT, "upload")) == expected_files(weights=True)
    assert set(deploy_space.space_files(REPO_ROOT, "hub")) == expected_files(weights=False)
    assert not any(f.startswith(("tests/", "runs/", "weights/hsd-lite0", "bench/")) for f in expected_files(True))


def test_deploy_creates_the_space_and_syncs_it_in_one_commit(recorded: list, tmp_path: Path, capsys) -> None:
    assert deploy_space.main(["someone/person-seg"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "https://huggingface.co/spaces/someone/person-seg"
    names = [c[0] for c in recorded]
    assert names == ["__init__", "create_repo", "list_repo_files", "create_commit"]
    _, args, kwargs = recorded[1]
    assert args == ("someone/person-seg",)
    assert kwargs["repo_type"] == "space" and kwargs["space_sdk"] == "gradio" and kwargs["exist_ok"] is True
    assert kwargs["space_hardware"] == deploy_space.front_matter()["suggested_hardware"]
    _, args, kwargs = recorded[3]
    assert kwargs["repo_type"] == "space"
    operations = args[1]
    added = {op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationAdd"}
    deleted = {op.path_in_repo for op in operations if type(op).__name__ == "CommitOperationDelete"}
    assert added == expected_files(weights=True)
    assert deleted == {"old_model.bin", "segmenter/stale.py"}  # .gitattributes and current files stay
    # The token is used by huggingface_hub only: never passed on, printed or written.
    assert all(TOKEN not in repr(c) for c in recorded)
    assert TOKEN not in out
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    written += [REPO_ROOT / f for f in tracked() if (REPO_ROOT / f).is_file()]
    assert all(TOKEN.encode() not in p.read_bytes() for p in written)


def test_dry_run_lists_files_and_sizes_without_the_hub(recorded: list, capsys) -> None:
    assert deploy_space.main(["someone/person-seg", "--dry-run", "--weights", "hub"]) == 0
    out = capsys.readouterr().out
    assert recorded == []  # no HfApi at all
    for f in expected_files(weights=False):
        assert f in out
    assert "weights/model.safetensors" not in out
    assert f"in {len(expected_files(weights=False))} files" in out and "dry run: nothing uploaded" in out


def test_bad_space_id_is_refused(recorded: list) -> None:
    with pytest.raises(SystemExit) as exc:
        deploy_space.main(["no-owner"])
    assert exc.value.code == 2 and recorded == []


def populate_hub_cache(cache: Path, repo_id: str, weights: Path) -> None:
    """A huggingface_hub cache holding ``weights`` as the main revision of model repo ``repo_id``."""
    commit = "0" * 40
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(weights, repo / "snapshots" / commit)


def test_loading_falls_back_to_the_model_repo(tmp_path: Path) -> None:
    assert front_matter_models(REPO_ROOT / "README.md") == deploy_space.front_matter()["models"]
    with pytest.raises(MissingWeightsError, match=r"(?s)owner/absent could not be loaded either.*train\.py"):
        load_segmenter(tmp_path / "weights", "owner/absent")


@pytest.mark.slow
def test_space_without_weights_serves_the_front_matter_model_from_the_cache(tmp_path: Path) -> None:
    """Stage the files deploy --weights hub uploads, give the Hub cache the model, start the app there, offline."""
    from served_app import post_photo, serve_app

    space = tmp_path / "space"
    for f in deploy_space.space_files(REPO_ROOT, "hub"):
        (space / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / f, space / f)
    weights = make_tiny_weights(tmp_path / "model", seed=3)
    repo_id = front_matter_models(space / "README.md")[0]
    populate_hub_cache(tmp_path / "hub", repo_id, weights)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8))
    buf = io.BytesIO()
    photo.save(buf, "PNG")
    hub = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    with serve_app(None, tmp_path, cwd=space, **hub) as served:
        response = post_photo(served.url, buf.getvalue(), output="mask")
        card = httpx.get(f"{served.url}config", timeout=30).text
    assert response.status_code == 200, response.text
    expected = Segmenter.from_pretrained(weights, device="cpu").segment(photo, Options())
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(response.content))), np.asarray(expected.mask))
    assert Segmenter.from_pretrained(weights).info()["sha256"] in card  # the Model tab names the cached weights
