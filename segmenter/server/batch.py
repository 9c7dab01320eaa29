"""Many photos -> one ZIP of masks and cutouts with a CSV of per-photo figures (the Space's Batch tab)."""

from __future__ import annotations

import csv
import io
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from ..images import ImageError, encode_png, load_image
from ..pipeline import Options
from . import Limits, Segment

CSV_COLUMNS = ["file", "width", "height", "person_share", "person_present", "presence", "seconds", "note"]


def run_batch(
    segment: Segment,
    paths: list[Path],
    options: Options,
    zip_path: Path,
    limits: Limits,
    progress: Callable[[Iterable], Iterable] = iter,
) -> list[dict]:
    """Segment ``paths`` into ``zip_path`` (masks/NNN_name.png, cutouts/NNN_name.png, figures.csv).

    Returns a row of figures per photo; an unreadable photo gets a row with the reason instead of stopping the batch.
    """
    rows = []
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:
        for i, path in enumerate(progress(paths), start=1):
            start = time.perf_counter()
            row: dict = {**dict.fromkeys(CSV_COLUMNS, ""), "file": path.name}
            try:
                image = load_image(path, limits.max_upload_bytes, limits.max_pixels)
            except ImageError as e:
                rows.append({**row, "note": str(e)})
                continue
            result = segment(image, options)
            name = f"{i:03d}_{path.stem}.png"
            zf.writestr(f"masks/{name}", encode_png(result.mask))
            zf.writestr(f"cutouts/{name}", encode_png(result.cutout()))
            rows.append(
                {
                    **row,
                    "width": image.width,
                    "height": image.height,
                    "person_share": round(result.share, 4),
                    "person_present": not result.no_person,
                    "presence": "" if result.presence is None else round(result.presence, 3),
                    "seconds": round(time.perf_counter() - start, 2),
                    "note": result.warning or "",
                }
            )
        zf.writestr("figures.csv", csv_text(rows))
    return rows


def batch_files(
    segment: Segment,
    paths: list[Path],
    options: Options,
    cache_dir: Path,
    limits: Limits,
    progress: Callable[[Iterable], Iterable] = iter,
) -> tuple[list[Path], list[dict]]:
    """:func:`run_batch` into a new folder of ``cache_dir``: -> ([segmentation.zip, figures.csv], rows)."""
    folder = cache_dir / uuid.uuid4().hex
    folder.mkdir(parents=True)
    rows = run_batch(segment, paths, options, folder / "segmentation.zip", limits, progress)
    (folder / "figures.csv").write_text(csv_text(rows))
    return [folder / "segmentation.zip", folder / "figures.csv"], rows


def csv_text(rows: list[dict]) -> str:
    """Rows with CSV_COLUMNS keys -> CSV text."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
