"""segmenter.export: --export-to swaps the export in whole, and the files it writes are readable by everyone."""

from __future__ import annotations

import os
import shutil
import signal
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import make_tiny_weights

from segmenter import Segmenter, export
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


def export_killed_at(src: Path, dest: Path, kill_at: int, atomic_exchange: bool) -> int:
    """copy_export(src, dest) in a forked child that SIGKILLs itself just before its ``kill_at``-th file-system
    step; returns the child's wait status (0: it finished first)."""
    pid = os.fork()
    if pid == 0:  # the child: patch freely, it never returns
        steps = [0]

        def step(fn: Callable) -> Callable:
            def wrapped(*args: object, **kwargs: object) -> object:
                steps[0] += 1
                if steps[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)

            return wrapped

        shutil.copyfile, shutil.copytree, shutil.rmtree = (
            step(shutil.copyfile),
            step(shutil.copytree),
            step(shutil.rmtree),
        )
        os.chmod, Path.rename = step(os.chmod), step(Path.rename)
        export.exchange = step(export.exchange if atomic_exchange else lambda a, b: False)
        try:
            copy_export(src, dest)
        finally:
            os._exit(0)
    return os.waitpid(pid, 0)[1]


@pytest.mark.parametrize("atomic_exchange", [True, False], ids=["exchange", "two-renames"])
def test_a_kill_at_any_step_leaves_one_whole_export(
    tmp_path: Path, atomic_exchange: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL before each file-system step in turn: ``dest`` always loads and holds the old set or the new one,
    never a mix; the next export then completes. Without renameat2 (``two-renames``) the next call repairs."""
    if not atomic_exchange:
        monkeypatch.setattr(export, "exchange", lambda a, b: False)
    src = write_export(tmp_path / "new", seed=2)
    new = {name: (src / name).read_bytes() for name in EXPORT_FILES}
    outcomes = []
    for kill_at in range(1, 100):
        dest = write_export(tmp_path / f"weights-{kill_at}", seed=1)
        old = {name: (dest / name).read_bytes() for name in EXPORT_FILES}
        status = export_killed_at(src, dest, kill_at, atomic_exchange)
        if status == 0:
            break
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        if not atomic_exchange and not dest.exists():  # killed between the two renames: the next export repairs
            outcomes.append("repaired")
            copy_export(src, dest)
        held = {name: (dest / name).read_bytes() for name in EXPORT_FILES}
        assert held in (old, new), f"killed at step {kill_at}: a mix of two exports"
        Segmenter.from_pretrained(dest, device="cpu")
        outcomes.append("new" if held == new else "old")
        copy_export(src, dest)  # the next export after a kill works and leaves nothing behind
        assert {name: (dest / name).read_bytes() for name in EXPORT_FILES} == new
        assert [p.name for p in dest.parent.iterdir() if p.name.startswith(f".{dest.name}")] == []
    else:
        pytest.fail("copy_export never finished")
    assert outcomes.count("old") >= 6 and outcomes[-1] == "new", outcomes
    assert ("repaired" in outcomes) != atomic_exchange, outcomes  # only the two-rename swap has that window
