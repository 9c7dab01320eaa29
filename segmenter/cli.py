"""Command-line tool: segment photos, folders or globs into masks, cutouts, overlays or composites.

    python -m segmenter photos/ -o out/                      # cutouts of every photo under photos/
    python -m segmenter 'shots/**/*.jpg' a.png -o out/ --output mask --threshold 0.4
    person-segment photos/ -o out/ --output composite --background '#00b140'

Sub-folders of an input folder are kept under OUTDIR; outputs that exist are skipped unless --overwrite. Each
output is named after its photo with .png (a.jpg -> a.png); when two photos would share a name, the later one
keeps its suffix too (a.tif -> a.tif.png). Files named on the command line are always tried, whatever their
suffix; folders and globs take photos by suffix (never files under OUTDIR, which are this tool's outputs), including picture formats that are not read (PSD, SVG, EPS,
HEIC, ...), which are then reported as failed rather than dropped unseen (other files, such as notes, are left
alone). The content decides how a file is read, not its suffix. Photos are decoded by worker threads while the
model runs. An output never replaces an input photo, --overwrite or not: such a photo is refused by name, and an
input folder that is OUTDIR or lies inside it refuses the run (exit 2). Exit code 1 when any photo could not be read
or was refused.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from .images import IMAGE_SUFFIXES, ImageError, encode_png, load_image
from .inference import ENGINES, Segmenter
from .pipeline import Background, Options, check_threshold

OUTPUTS = ("mask", "cutout", "overlay", "composite")
MAX_BYTES, MAX_PIXELS = 200 * 2**20, 100_000_000  # generous: these are the user's own files
# Pictures a folder or glob still picks although they are not read: reported as failed, never skipped silently.
UNREAD_PICTURES = {".psd", ".psb", ".svg", ".svgz", ".eps", ".ps", ".ai", ".heic", ".heif", ".ico", ".jp2", ".jxl"}


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path


def find_jobs(inputs: list[str], out_dir: Path) -> tuple[list[Job], list[str]]:
    """Files, folders (recursively) and globs -> (jobs with their output paths, inputs that matched nothing)."""
    jobs: dict[Path, Job] = {}
    taken: set[Path] = set()
    missing = []
    out_root = out_dir.resolve()

    def outside_out(p: Path) -> bool:  # a folder or glob never takes this tool's outputs as new photos
        return not p.resolve().is_relative_to(out_root)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [(p, p.relative_to(path)) for p in sorted(path.rglob("*")) if _is_photo(p) and outside_out(p)]
        elif path.is_file():
            found = [(path, Path(path.name))]
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            root = Path(os.path.commonpath([str(m.parent) for m in matches])) if matches else Path()
            found = [(p, p.relative_to(root)) for p in matches if _is_photo(p) and outside_out(p)]
        if not found:
            missing.append(item)
        for source, rel in found:
            key = source.resolve()
            if key not in jobs:
                jobs[key] = job = Job(source, _target(out_dir / rel, taken))
                taken.add(job.target)
    return list(jobs.values()), missing


def overlapping_inputs(inputs: list[str], out_dir: Path) -> list[str]:
    """Input folders that are OUTDIR or lie inside it: their outputs would land among the photos (and be taken as
    photos by the next run, or replace one), so such a run is refused."""
    out_root = out_dir.resolve()
    return [item for item in inputs if Path(item).is_dir() and Path(item).resolve().is_relative_to(out_root)]


def clobbers_input(job: Job, sources: set[Path]) -> bool:
    """Whether writing ``job``'s output would replace one of the input photos."""
    return job.target.resolve() in sources


def _target(out: Path, taken: set[Path]) -> Path:
    """``out`` with .png, or with its suffix kept (a.tif.png, then a.tif-2.png, ...) when that is taken."""
    target, n = out.with_suffix(".png"), 1
    while target in taken:
        target = out.with_name(f"{out.name}.png" if n == 1 else f"{out.name}-{n}.png")
        n += 1
    return target


def _is_photo(p: Path) -> bool:
    suffix = p.suffix.lower()
    return p.is_file() and (suffix in IMAGE_SUFFIXES or suffix in UNREAD_PICTURES) and not p.name.startswith(".")


def parse_background(value: str | None) -> Background:
    """'blur', a colour ('#00b140', 'white') or an image file -> Background; None: transparent."""
    if value is None:
        return Background()
    if value == "blur":
        return Background("blur")
    if Path(value).is_file():
        return Background("image", image=load_image(value, MAX_BYTES, MAX_PIXELS))
    try:
        return Background("color", Background.parse_color(value))
    except ValueError:
        raise SystemExit(f"--background {value!r}: not 'blur', a colour or an image file") from None


def decoded(jobs: list[Job], workers: int) -> Iterator[tuple[Job, Image.Image | Exception]]:
    """Jobs with their decoded photos (or the error), in order, decoded ``workers`` at a time ahead of the model."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        ahead: list[tuple[Job, Future]] = []
        it = iter(jobs)
        for job in it:
            ahead.append((job, pool.submit(load_image, job.source, MAX_BYTES, MAX_PIXELS)))
            if len(ahead) > 2 * workers:
                break
        while ahead:
            job, future = ahead.pop(0)
            nxt = next(it, None)
            if nxt is not None:
                ahead.append((nxt, pool.submit(load_image, nxt.source, MAX_BYTES, MAX_PIXELS)))
            try:
                yield job, future.result()
            except (ImageError, OSError) as e:
                yield job, e


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m segmenter", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="photo files, folders or glob patterns")
    parser.add_argument("-o", "--out-dir", type=Path, required=True, help="where the outputs go")
    parser.add_argument("--output", choices=OUTPUTS, default="cutout", help="what to write (default: %(default)s)")
    parser.add_argument(
        "--weights",
        default=os.getenv("SEGMENTER_MODEL", "weights/"),
        help="weights folder, .safetensors file or Hub repo id (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold", type=float, default=None, help="person probability threshold (default: the model's)"
    )
    parser.add_argument("--keep-largest", action="store_true", help="keep only the largest person region")
    parser.add_argument("--no-fill-holes", action="store_true", help="do not fill holes in the mask")
    parser.add_argument(
        "--feather", type=float, default=Options.feather_px, help="edge softness in px (default: %(default)s)"
    )
    parser.add_argument("--background", default=None, help="for composite: 'blur', a colour or an image file")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist")
    parser.add_argument("--workers", type=int, default=2, help="decoding threads (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--engine", choices=ENGINES, default="auto", help="model arithmetic (auto: the fastest here)")
    args = parser.parse_args(argv)
    if args.threshold is not None:
        try:
            check_threshold(args.threshold)
        except ValueError as e:
            parser.error(f"--threshold: {e}")
    if not 0.0 <= args.feather <= 100.0:
        parser.error(f"--feather must be in [0, 100] px, not {args.feather}")
    if args.workers < 1:
        parser.error(f"--workers must be at least 1, not {args.workers}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for item in overlapping_inputs(args.inputs, args.out_dir):
        print(
            f"error: the output folder {args.out_dir} holds the input folder {item}: the outputs would mix with the "
            "photos (and replace or be taken as photos next time); choose another -o",
            file=sys.stderr,
        )
        return 2
    jobs, missing = find_jobs(args.inputs, args.out_dir)
    for item in missing:
        print(f"no photos found: {item}", file=sys.stderr)
    sources = {j.source.resolve() for j in jobs}
    refused = [j for j in jobs if clobbers_input(j, sources)]  # an output never replaces a photo, --overwrite or not
    jobs = [j for j in jobs if j not in refused]
    for job in refused:
        print(f"refused: {job.source}: its output {job.target} would replace an input photo", file=sys.stderr)
    if refused and not jobs:
        return 1
    todo = [j for j in jobs if args.overwrite or not j.target.exists()]
    if not todo:
        print(f"nothing to do: {len(jobs)} photo(s), {len(jobs) - len(todo)} already done (--overwrite to redo)")
        return 1 if missing or refused else 0
    try:
        seg = Segmenter.from_pretrained(args.weights, device=args.device, engine=args.engine)
        options = Options(args.threshold, args.keep_largest, not args.no_fill_holes, args.feather)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    background = parse_background(args.background)
    failed, no_person, start = [], 0, time.perf_counter()
    for job, photo in tqdm(decoded(todo, args.workers), total=len(todo), desc="segment", unit="photo"):
        if isinstance(photo, Exception):
            failed.append(f"{job.source}: {photo}")
            continue
        result = seg.segment(photo, options)
        no_person += result.no_person
        job.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = job.target.with_name(f".{job.target.name}.tmp")
        tmp.write_bytes(encode_png(result.render(args.output, background)))
        tmp.replace(job.target)
    seconds = time.perf_counter() - start
    print(
        f"{len(todo) - len(failed)} written to {args.out_dir} ({args.output}), {len(jobs) - len(todo)} skipped "
        f"(exist), {len(failed)} failed, {no_person} with no person found; {seconds:.1f} s"
    )
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed or missing or refused else 0


if __name__ == "__main__":
    sys.exit(main())
