"""segmenter.export: --export-to swaps the export in whole, and the files it writes are readable by everyone."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest
from helpers import make_tiny_weights

from segmenter import Segmenter
from segmenter.export import EXPORT_FILES, copy_export


def write_export(folder: Path, seed: int) -> Path:
    make_tiny_weights(folder, seed=seed)
    (folder / "README.md").write_text(f"card {seed}\n")
    return folder


def test_copy_export_replaces_the_set_and_keeps_other_files(tmp_path: Path) -> None:
    dest = write_export(tmp_path / "weights", seed=1)
    other = write_export(dest / "hsd-lite0", seed=3)  # another model inside the folder, same file names
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    copy_export(write_export(tmp_path / "new", seed=2), dest)
    assert (dest / "README.md").read_text() == "card 2\n"
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    Segmenter.from_pretrained(dest, device="cpu")  # weights and config belong together (sha256 checked)
    for name in EXPORT_FILES:
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "weights"]  # no staging folder left


def test_a_crash_mid_copy_leaves_the_old_export_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = write_export(tmp_path / "weights", seed=1)
    before = {name: (dest / name).read_bytes() for name in EXPORT_FILES}
    copies, copyfile = [], shutil.copyfile

    def copy_then_crash(src: Path, dst: Path, **kwargs: object) -> Path:
        copies.append(dst)
        if len(copies) == 2:
            raise OSError("disk full")
        return copyfile(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_then_crash)
    with pytest.raises(OSError, match="disk full"):
        copy_export(write_export(tmp_path / "new", seed=2), dest)
    assert {name: (dest / name).read_bytes() for name in EXPORT_FILES} == before
    Segmenter.from_pretrained(dest, device="cpu")
