"""A bounded result cache: Gradio's cache folder kept under a total size and a maximum file age.

Gradio keeps every upload and result file until its own ``delete_cache`` sweep (by age only), so a burst of large
requests could fill the disk. :class:`CacheSweeper` walks the folder every second, deletes files older than
``max_age_s`` and then the oldest files until the total is under three quarters of ``max_bytes``, so that a
second's new results stay under the cap; the newest results, which a client may still be fetching, go last.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("segmenter.server")
EMPTY_DIR_GRACE_S = 60.0


@dataclass(frozen=True)
class Sweep:
    removed: int  # files deleted
    kept_bytes: int  # total size of the files left


def _files(folder: Path, keep: Collection[str] = ()) -> list[tuple[float, int, str]]:
    """(mtime, size, path) of every regular file under ``folder`` but those in ``keep`` (real paths); files that
    vanish meanwhile are skipped."""
    found = []
    for root, _dirs, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if keep and os.path.realpath(path) in keep:
                continue
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            found.append((st.st_mtime, st.st_size, path))
    return found


def sweep(
    folder: str | Path,
    max_bytes: int,
    max_age_s: float,
    now: float | None = None,
    low_water: float = 1.0,
    keep: Collection[str | Path] = (),
) -> Sweep:
    """Delete files older than ``max_age_s``, then the oldest until the rest total at most ``low_water * max_bytes``
    (with ``low_water`` < 1: room under the cap for what arrives before the next sweep). Files in ``keep`` stay,
    whatever their age, and are not counted (the app's example photos: Gradio makes them once, at start-up)."""
    folder = Path(folder)
    now = time.time() if now is None else now
    kept = {os.path.realpath(p) for p in keep}
    files = sorted(_files(folder, kept))  # oldest first
    total = sum(size for _, size, _ in files)
    limit = low_water * max_bytes
    removed = 0
    for mtime, size, path in files:
        if mtime >= now - max_age_s and total <= limit:
            break
        try:
            os.unlink(path)
        except OSError:
            continue
        total -= size
        removed += 1
    for root, dirs, _ in os.walk(folder, topdown=False):  # folders left empty a while (one per result) go too
        for name in dirs:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):  # not empty, or gone
                if os.stat(path).st_mtime < now - EMPTY_DIR_GRACE_S:  # not one just made for a file to come
                    os.rmdir(path)
    return Sweep(removed, total)


class CacheSweeper:
    """Runs :func:`sweep` on ``folder`` every ``every_s`` seconds in a daemon thread, until ``stop()``; each sweep
    leaves at most ``low_water`` of the cap, so that results arriving before the next sweep stay under it.
    ``after`` (optional) runs after each sweep: the server's other housekeeping; ``keep`` (optional) returns the
    files each sweep must leave alone."""

    def __init__(
        self,
        folder: str | Path,
        max_bytes: int,
        max_age_s: float,
        every_s: float = 1.0,
        low_water: float = 0.75,
        after: Callable[[], object] | None = None,
        keep: Callable[[], Collection[str | Path]] | None = None,
    ) -> None:
        if max_bytes <= 0 or max_age_s <= 0 or every_s <= 0 or not 0 < low_water <= 1:
            raise ValueError(
                f"need positive limits, got {max_bytes} bytes, {max_age_s} s, every {every_s} s, low water {low_water}"
            )
        self.folder, self.max_bytes, self.max_age_s, self.every_s = Path(folder), max_bytes, max_age_s, every_s
        self.low_water, self.after, self.keep = low_water, after, keep
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-sweeper", daemon=True)

    def start(self) -> CacheSweeper:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                keep = self.keep() if self.keep is not None else ()
                done = sweep(self.folder, self.max_bytes, self.max_age_s, low_water=self.low_water, keep=keep)
                if self.after is not None:
                    self.after()
            except Exception:  # a sweep must never take the server down; the next one tries again
                log.exception("cache sweep of %s failed", self.folder)
                continue
            if done.removed:
                log.info("cache: removed %d files, %.0f MB left", done.removed, done.kept_bytes / 2**20)
