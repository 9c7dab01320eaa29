"""What handing freed heap pages back costs a photo: the app trimming once idle 10 s (``TRIM_IDLE_S=10``, its
default), after every photo (``TRIM_IDLE_S=0``: what trimming each second did) and never (``TRIM_HEAP=0``), each in
its own subprocess, interleaved round-robin.

Each request is ``POST /api/segment?output=cutout`` with a photo of a person (``common.jpeg_bytes``), after an idle
pause of ``--pause`` seconds (not timed). Round-robin, each app then waits about 3 pauses and 2 other requests between
two of its own (the gap printed): longer than a sweep (each second), so the pages freed after one photo are handed
back before the next unless the app waits for an idle spell, and shorter than 10 s, so the default does wait. The
server's RSS after the last request is printed beside it; ``bench/footprint.py`` measures memory under load.

    .venv/bin/python bench/heap_trim.py            # 12 MP photos, 8 rounds (~2 minutes)
    .venv/bin/python bench/heap_trim.py --quick    # 4 rounds
    .venv/bin/python bench/heap_trim.py --mp 1 --rounds 12
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable

import common
import httpx
import psutil

VARIANTS = {
    "default (trim once idle 10 s: TRIM_IDLE_S=10)": {"TRIM_IDLE_S": "10"},
    "trim after every photo (TRIM_IDLE_S=0)": {"TRIM_IDLE_S": "0"},
    "never trim (TRIM_HEAP=0)": {"TRIM_HEAP": "0"},
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="4 rounds")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--mp", type=float, default=12.0, help="photo size in megapixels")
    p.add_argument("--pause", type=float, default=1.5, help="seconds before each request")
    p.add_argument("--weights", help="weights folder (default: weights/)")
    args = p.parse_args(argv)
    rounds = 4 if args.quick else args.rounds
    weights = common.weights_for(override=args.weights)
    data = common.jpeg_bytes(args.mp)
    common.print_machine("bench/heap_trim.py: a photo's time with and without heap trimming")
    print(f"weights: {common.weights_label(weights)}; {args.mp:g} MP photo, a {args.pause:g} s pause before each\n")
    with contextlib.ExitStack() as stack, httpx.Client(timeout=300) as client:
        apps = {name: stack.enter_context(common.running_app(weights, env)) for name, env in VARIANTS.items()}

        def post(url: str) -> Callable[[], None]:
            def call() -> None:
                files = {"file": ("photo.jpg", data, "image/jpeg")}
                client.post(f"{url}api/segment", files=files, params={"output": "cutout"}).raise_for_status()

            return call

        calls = {name: post(app.url) for name, app in apps.items()}
        for call in calls.values():  # warm-up
            call()
        start = time.perf_counter()
        t = common.time_interleaved(calls, rounds, warmup=0, settle_s=args.pause)
        round_s = (time.perf_counter() - start) / rounds
        rss = {name: psutil.Process(app.proc.pid).memory_info().rss for name, app in apps.items()}
    base = t[next(iter(VARIANTS))].p50
    rows = []
    for name in VARIANTS:
        p50 = t[name].p50
        rows.append([name, common.ms(p50), f"{p50 / base:.2f}x", f"{round_s - p50:.1f}", f"{rss[name] / 2**20:.0f}"])
    headers = ["app", "POST ms p50", "/ default", "s between its requests", "RSS after, MB"]
    print(common.markdown_table(headers, rows))
    print(f"\n{rounds} interleaved rounds")


if __name__ == "__main__":
    main()
