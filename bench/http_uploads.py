"""Peak memory of the served app under many large HTTP uploads at once (issue 28, item 2.3).

``--uploads`` clients (default 32) each POST one ~19 MB photo to ``/api/segment`` at the same moment; the server's
RSS is sampled every 50 ms from before the burst to the last answer. POST /api/segment used to read every body
before it waited for a model slot: 32 uploads of 19 MB took RSS from 1,055 to 2,621 MB. Now at most
MAX_HTTP_REQUESTS bodies are in memory (default 4), up to MAX_HTTP_WAITING more wait unread for HTTP_WAIT_S, and
the rest are answered 503 with Retry-After. ``--compare`` runs the burst again with the bound raised to the burst
(MAX_HTTP_REQUESTS=uploads: as before the fix).

    .venv/bin/python bench/http_uploads.py                 # the shipped weights (random ones if weights/ lacks them)
    .venv/bin/python bench/http_uploads.py --compare       # and without the bound

Prints a markdown table, one line per run:
``| bound | uploads | MB each | 200 | 503 | other | RSS before (MB) | peak RSS (MB) | growth (MB) | seconds |``.
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import httpx
import numpy as np
import psutil
from PIL import Image


def big_photo(megabytes: float = 19.0) -> bytes:
    """A noise PNG of about ``megabytes`` (noise does not compress): the size of a large phone photo's upload."""
    side = int((megabytes * 2**20 / 3) ** 0.5)
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def rss(pid: int) -> int:
    """Resident memory of the server and its children, in bytes."""
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def burst(weights: Path, photo: bytes, uploads: int, env: dict[str, str]) -> list[object]:
    """One burst of ``uploads`` simultaneous POSTs; the table row."""
    with common.running_app(weights, env) as app:
        warm = httpx.post(f"{app.url}api/segment", files={"file": ("warm.png", photo)}, timeout=300)
        assert warm.status_code == 200, warm.text
        time.sleep(2.0)  # let the warm-up's buffers settle (a baseline reading, not a synchronisation)
        before, samples, stop = rss(app.proc.pid), [], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(rss(app.proc.pid))
                stop.wait(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        ready = threading.Barrier(uploads)

        def post(i: int) -> int:
            with httpx.Client(timeout=600) as client:
                ready.wait()  # all at once
                return client.post(f"{app.url}api/segment", files={"file": (f"p{i}.png", photo)}).status_code

        start = time.monotonic()
        with ThreadPoolExecutor(uploads) as pool:
            statuses = list(pool.map(post, range(uploads)))
        seconds = time.monotonic() - start
        stop.set()
        sampler.join()
    peak = max([*samples, before])
    ok, busy = statuses.count(200), statuses.count(503)
    bound = env.get("MAX_HTTP_REQUESTS", "4 (default)")
    mb = 2**20
    counts = [ok, busy, uploads - ok - busy]
    figures = [f"{before / mb:.0f}", f"{peak / mb:.0f}", f"{(peak - before) / mb:.0f}", f"{seconds:.1f}"]
    return [bound, uploads, f"{len(photo) / mb:.1f}", *counts, *figures]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=32, help="simultaneous uploads (default: %(default)s)")
    parser.add_argument("--mb", type=float, default=19.0, help="size of each upload in MB (default: %(default)s)")
    parser.add_argument("--weights", default=None, help="weights folder (default: weights/, else random ones)")
    parser.add_argument("--compare", action="store_true", help="also run without the bound (as before the fix)")
    args = parser.parse_args()
    common.print_machine("HTTP uploads at once: peak RSS")
    weights = common.weights_for(override=args.weights)
    print(f"weights: {common.weights_label(weights)}")
    photo = big_photo(args.mb)
    env = {"MAX_UPLOAD_MB": "20", "LIVE_WEBCAM": "off"}
    runs = [env] + ([{**env, "MAX_HTTP_REQUESTS": str(args.uploads)}] if args.compare else [])
    rows = [burst(weights, photo, args.uploads, run) for run in runs]
    headers = ["bound", "uploads", "MB each", "200", "503", "other"]
    headers += ["RSS before (MB)", "peak RSS (MB)", "growth (MB)", "seconds"]
    print(common.markdown_table(headers, rows))


if __name__ == "__main__":
    main()
