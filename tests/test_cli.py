"""python -m segmenter: files, folders and globs in; outputs, skipping, failures and exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO_ROOT, make_tiny_weights, noise_photo
from PIL import Image

from segmenter import Segmenter
from segmenter.cli import main
from segmenter.pipeline import Options


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(noise_photo(40, 60, seed=1)).save(root / "a.jpg")
    Image.fromarray(noise_photo(50, 30, seed=2)).save(root / "sub" / "b.png")
    (root / "sub" / "broken.jpg").write_bytes(b"not a photo")
    (root / "notes.txt").write_text("ignored: not a photo suffix")
    return root


def test_folder_to_masks_keeps_structure_and_reports_failures(
    photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = make_tiny_weights(tmp_path / "w")
    out = tmp_path / "out"
    assert main([str(photos), "-o", str(out), "--output", "mask", "--weights", str(weights), "--threshold", "0.4"]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "a.jpg" not in err
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]
    expected = Segmenter.from_pretrained(weights, device="cpu").segment(
        Image.open(photos / "sub" / "b.png"), Options(0.4)
    )
    assert np.array_equal(np.asarray(Image.open(out / "sub" / "b.png")), np.asarray(expected.mask))
    (out / "a.png").write_bytes(b"keep me")
    main([str(photos / "a.jpg"), "-o", str(out), "--weights", str(weights)])
    assert (out / "a.png").read_bytes() == b"keep me"  # exists: skipped
    assert main([str(photos / "a.jpg"), "-o", str(out), "--weights", str(weights), "--overwrite"]) == 0
    assert Image.open(out / "a.png").mode == "RGBA"  # the default output is the cutout


def test_glob_and_composite_from_the_command_line(photos: Path, tmp_path: Path) -> None:
    weights = make_tiny_weights(tmp_path / "w", constant=5.0)  # everything is person
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "segmenter",
            str(photos / "**" / "*.png"),
            "-o",
            str(out),
            "--output",
            "composite",
            "--background",
            "#ff0000",
            "--weights",
            str(weights),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 written" in proc.stdout
    result = Image.open(out / "b.png")
    assert result.mode == "RGB" and result.size == (30, 50)
    missing = subprocess.run(
        [sys.executable, "-m", "segmenter", str(tmp_path / "nothing*.jpg"), "-o", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "no photos found" in missing.stderr


@pytest.mark.parametrize(
    "option",
    [["--threshold", "1.5"], ["--threshold", "-0.1"], ["--feather", "-1"], ["--feather", "nan"], ["--workers", "0"]],
)
def test_numeric_options_are_checked(option: list[str], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exited:
        main([str(tmp_path), "-o", str(tmp_path / "out"), *option])
    assert exited.value.code == 2 and option[0] in capsys.readouterr().err


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A folder of a.jpg, b.jpg and c.png (whose cutout would be named c.png too)."""
    root = tmp_path / "D"
    root.mkdir()
    for i, name in enumerate(["a.jpg", "b.jpg", "c.png"]):
        Image.fromarray(noise_photo(30, 40, seed=i)).save(root / name)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_the_input_folder_as_output_folder_is_refused(
    mixed: Path, tmp_path: Path, overwrite: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``D -o D`` once skipped c.png as "exists", took a.png as a photo the next time (a.png.png) and, with
    --overwrite, replaced c.png by its own cutout: now the run is refused and nothing in D changes."""
    weights, before = make_tiny_weights(tmp_path / "w"), snapshot(mixed)
    for _ in range(2):
        assert main([str(mixed), "-o", str(mixed), "--weights", str(weights), *overwrite]) == 2
        assert "holds the input folder" in capsys.readouterr().err
        assert snapshot(mixed) == before


def test_outputs_under_the_input_folder_are_not_taken_as_photos(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights, out = make_tiny_weights(tmp_path / "w"), mixed / "out"
    assert main([str(mixed), "-o", str(out), "--weights", str(weights)]) == 0
    assert sorted(snapshot(out)) == ["a.png", "b.png", "c.png"]
    capsys.readouterr()
    assert main([str(mixed), "-o", str(out), "--weights", str(weights)]) == 0  # the outputs are no new photos
    assert "3 already done" in capsys.readouterr().out and sorted(snapshot(out)) == ["a.png", "b.png", "c.png"]
    assert main([str(mixed / "*"), "-o", str(out), "--weights", str(weights), "--overwrite"]) == 0  # a glob neither
    assert sorted(snapshot(out)) == ["a.png", "b.png", "c.png"]


def test_an_output_never_replaces_its_photo(mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """c.png named as a file with -o D: its cutout would be D/c.png, the photo itself; refused, with --overwrite too,
    while a.jpg next to it is written."""
    weights, photo = make_tiny_weights(tmp_path / "w"), (mixed / "c.png").read_bytes()
    args = [str(mixed / "c.png"), str(mixed / "a.jpg"), "-o", str(mixed), "--weights", str(weights), "--overwrite"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "c.png" in err and "would replace an input photo" in err
    assert (mixed / "c.png").read_bytes() == photo and Image.open(mixed / "a.png").mode == "RGBA"
