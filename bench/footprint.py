"""Disk and memory footprint of the served app under load (issue 15, items 1 and 5).

1. **Cache**: ``--cache-requests`` 12 MP photos through gradio_client ``/segment`` (the upload, the full-size mask
   and cutout and the previews all land in Gradio's cache); the cache folder's size is read after every request.
   Its largest value must stay under ``CACHE_MAX_MB`` (plus what arrives between two 5 s sweeps).
2. **Memory**: ``--mixed-requests`` requests of mixed sizes (0.3, 1, 4 and 12 MP in turn, through
   ``POST /api/segment`` and gradio_client alternately, 2 clients at once); the server's RSS when idle after
   start-up, idle after one photo of each size (12 MP last: the steady state), every 50 requests, and idle at the
   end; growth = end / steady. ``--compare`` runs it again with glibc's default heap (``TRIM_HEAP=0``).

    .venv/bin/python bench/footprint.py                  # 200 x 12 MP, 500 mixed (~15 min on 2 cores)
    .venv/bin/python bench/footprint.py --quick          # 20 x 12 MP under a 256 MB cap, 60 mixed (~3 min)
    .venv/bin/python bench/footprint.py --quick --compare --cache-requests 0   # the heap setting against glibc's

The last line reads
``footprint: cache_peak_mb=… cache_cap_mb=… rss_idle_mb=… rss_steady_mb=… rss_end_mb=… rss_growth=…``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import common
import httpx
import psutil

SIZES_MP = (0.3, 1.0, 4.0, 12.0)


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder`` (files removed while walking are skipped)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_size
    return total


def mb(n: float) -> str:
    return f"{n / 2**20:.0f}"


def cache_run(weights: Path, requests: int, cap_mb: float, env: dict[str, str]) -> dict[str, float]:
    """12 MP photos through gradio_client; the cache folder's size after each request (largest, last)."""
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as tmp:
        cache = Path(tmp) / "gradio"
        app_env = {"GRADIO_TEMP_DIR": str(cache), "CACHE_MAX_MB": f"{cap_mb:g}", **env}
        with common.running_app(weights, env=app_env) as app:
            photo = common.write_temp_jpeg(common.jpeg_bytes(12.0))
            client = common.gradio_client(app.url, download=False)
            sizes, errors, start = [], 0, time.perf_counter()
            for _ in range(requests):
                try:
                    common.call_segment(client, photo)
                except Exception:  # an error under load counts, it does not stop the run
                    errors += 1
                sizes.append(folder_bytes(cache))
            wall = time.perf_counter() - start
            time.sleep(6)  # one more sweep
            settled = folder_bytes(cache)
    return {
        "peak": max(sizes),
        "end": sizes[-1],
        "settled": settled,
        "errors": errors,
        "seconds": wall,
    }


# The app hands freed heap pages back once no photo has been segmented for TRIM_IDLE_S (default 10) seconds; its
# cache sweeper checks each second.
IDLE_SETTLE_S = 12.0


def rss_idle(proc: psutil.Process, settle: float = IDLE_SETTLE_S) -> int:
    time.sleep(settle)  # the last response's buffers are freed and, idle, handed back
    return int(proc.memory_info().rss)


def mixed_run(weights: Path, requests: int, env: dict[str, str]) -> dict:
    """Mixed sizes through both APIs, 2 clients. RSS idle after start-up, idle after one photo of each size
    (steady state), during the run (after each 50 requests) and idle at the end; errors; seconds."""
    photos = {mp: common.jpeg_bytes(mp, seed=i) for i, mp in enumerate(SIZES_MP)}
    files = {mp: common.write_temp_jpeg(data) for mp, data in photos.items()}
    with tempfile.TemporaryDirectory(prefix="bench-mixed-") as tmp:
        app_env = {"GRADIO_TEMP_DIR": str(Path(tmp) / "gradio"), **env}
        with common.running_app(weights, env=app_env) as app:
            proc = psutil.Process(app.proc.pid)
            clients = [common.gradio_client(app.url, download=False) for _ in range(2)]

            def one(index: int, mp: float, client: object) -> None:
                if index % 2:
                    common.call_segment(client, files[mp])
                else:
                    upload = {"file": ("photo.jpg", photos[mp], "image/jpeg")}
                    httpx.post(f"{app.url}api/segment", files=upload, timeout=120).raise_for_status()

            idle = rss_idle(proc, 0.0)
            for i, mp in enumerate(SIZES_MP):  # one of each size, the largest last, both APIs
                one(i, mp, clients[0])
            steady = rss_idle(proc)
            jobs = iter(enumerate(itertools.islice(itertools.cycle(SIZES_MP), requests)))
            lock, trace, errors, done = threading.Lock(), [], [0], [0]

            def worker(client: object) -> None:
                while (job := next(jobs, None)) is not None:
                    try:
                        one(*job, client)
                    except Exception:  # an error under load counts, it does not stop the run
                        with lock:
                            errors[0] += 1
                    with lock:
                        done[0] += 1
                        if done[0] % 50 == 0:
                            trace.append((done[0], proc.memory_info().rss))

            start = time.perf_counter()
            with ThreadPoolExecutor(len(clients)) as pool:
                list(pool.map(worker, clients))
            wall = time.perf_counter() - start
            end = rss_idle(proc)
    return {"idle": idle, "steady": steady, "end": end, "trace": trace, "errors": errors[0], "seconds": wall}


def memory_rows(label: str, run: dict, requests: int) -> list[tuple[str, str]]:
    peak = max([run["steady"], run["end"], *(v for _, v in run["trace"])])
    return [
        (f"{label}: RSS idle after start-up, MB", mb(run["idle"])),
        (f"{label}: RSS idle after one photo of each size, 12 MP last (steady state), MB", mb(run["steady"])),
        (f"{label}: RSS idle after {requests} more mixed requests, MB", mb(run["end"])),
        (f"{label}: RSS growth over the {requests} (end / steady)", f"{run['end'] / run['steady']:.2f}x"),
        (
            f"{label}: largest RSS read, MB; during the run every 50 requests",
            f"{mb(peak)}; " + " ".join(f"{n}:{mb(v)}" for n, v in run["trace"]),
        ),
        (f"{label}: errors; seconds for the {requests}", f"{run['errors']}; {run['seconds']:.0f}"),
    ]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="20 x 12 MP under a 256 MB cap, 60 mixed requests")
    p.add_argument("--cache-requests", type=int, default=None, help="12 MP requests (default 200; quick 20)")
    p.add_argument("--cache-mb", type=float, default=None, help="CACHE_MAX_MB (default: the app's 2048; quick 256)")
    p.add_argument("--mixed-requests", type=int, default=None, help="mixed requests (default 500; quick 60)")
    p.add_argument("--weights", default=None, help="weights folder (default: weights/)")
    p.add_argument(
        "--compare", action="store_true", help="run the memory part again with glibc's default heap (TRIM_HEAP=0)"
    )
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment for app.py")
    args = p.parse_args(argv)
    cache_requests = args.cache_requests if args.cache_requests is not None else (20 if args.quick else 200)
    cap_mb = args.cache_mb or (256.0 if args.quick else 2048.0)
    mixed_requests = args.mixed_requests or (60 if args.quick else 500)
    env = dict(item.split("=", 1) for item in args.env)
    weights = Path(args.weights) if args.weights else common.SHIPPED_WEIGHTS

    common.print_machine("Footprint: Gradio cache and server memory under load")
    print(f"weights: {common.weights_label(weights)}; app environment: {env or 'defaults'}\n")
    rows = []
    if cache_requests:
        cache = cache_run(weights, cache_requests, cap_mb, env)
        rows += [
            (f"cache after {cache_requests} x 12 MP via gradio_client: largest, MB", mb(cache["peak"])),
            ("cache at the end / after one more sweep, MB", f"{mb(cache['end'])} / {mb(cache['settled'])}"),
            ("CACHE_MAX_MB", f"{cap_mb:g}"),
            ("largest / cap", f"{cache['peak'] / (cap_mb * 2**20):.2f}x"),
            ("errors; seconds", f"{cache['errors']}; {cache['seconds']:.0f}"),
        ]
    runs = {"app (TRIM_HEAP=1)": mixed_run(weights, mixed_requests, env)}
    if args.compare:
        runs["glibc default (TRIM_HEAP=0)"] = mixed_run(weights, mixed_requests, {**env, "TRIM_HEAP": "0"})
    for label, run in runs.items():
        rows += memory_rows(label, run, mixed_requests)
    print(common.markdown_table(["figure", "value"], rows))
    run = next(iter(runs.values()))
    cache_part = f"cache_peak_mb={mb(cache['peak'])} cache_cap_mb={cap_mb:g} " if cache_requests else ""
    print(
        f"\nfootprint: {cache_part}rss_idle_mb={mb(run['idle'])} rss_steady_mb={mb(run['steady'])} "
        f"rss_end_mb={mb(run['end'])} rss_growth={run['end'] / run['steady']:.2f}"
    )


if __name__ == "__main__":
    main()
