"""What handing freed heap pages back costs a photo: the app with its default (trim once idle ``TRIM_IDLE_S``
seconds), trimming after every photo (``TRIM_IDLE_S=0``: what trimming each second amounted to) and never
(``TRIM_HEAP=0``), each in its own subprocess, interleaved round-robin.

Each request is ``POST /api/segment?output=cutout`` with a photo of a person (``common.jpeg_bytes``), after a pause of
``--pause`` seconds (a visitor looking at the last result; the cache sweeper, which trims, runs each second), so that
the pages freed after one photo are given back before the next unless the app waits for an idle spell. The server's
RSS after the last request is printed beside it; ``bench/footprint.py`` measures memory under load.

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
    "default (trim once idle TRIM_IDLE_S)": {},
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
                time.sleep(args.pause)
                files = {"file": ("photo.jpg", data, "image/jpeg")}
                client.post(f"{url}api/segment", files=files, params={"output": "cutout"}).raise_for_status()

            return call

        # The pause is timed too: subtract it (every call sleeps the same).
        t = common.time_interleaved({name: post(app.url) for name, app in apps.items()}, rounds, warmup=1)
        rss = {name: psutil.Process(app.proc.pid).memory_info().rss for name, app in apps.items()}
    base = t[next(iter(VARIANTS))].p50 - args.pause
    rows = [
        [
            name,
            common.ms(t[name].p50 - args.pause),
            f"{(t[name].p50 - args.pause) / base:.2f}x",
            f"{rss[name] / 2**20:.0f}",
        ]
        for name in VARIANTS
    ]
    print(common.markdown_table(["app", "POST ms p50", "/ default", "RSS after, MB"], rows))
    print(f"\n{rounds} interleaved rounds")


if __name__ == "__main__":
    main()
