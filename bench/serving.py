"""The running app under 1, 4 and 16 concurrent gradio_client clients on localhost.

Starts ``app.py`` on a free localhost port (SEGMENTER_MODEL = the weights), then per concurrency level sends a
bounded number of ``/segment`` requests (each client its own gradio_client.Client, results left on the server):
throughput, latency p50/p95, errors, and the server's peak RSS (psutil on its pid, sampled every 0.1 s). A soak
phase then sends ``--requests`` requests at 4 clients and compares the server's RSS after the first 50 with its
RSS at the end (and every 50 between). The model-bound rate, 1 / (the model's batch-1 forward time), is measured in
this process with the app's torch thread count, before the app starts and after it stops; the faster reading is
used (the app runs one photo per model call: no batching).

    .venv/bin/python bench/serving.py                    # 0.3 MP photos, soak of 100 requests (~2 min)
    .venv/bin/python bench/serving.py --requests 500     # RSS after 50 vs after 500 (several minutes)
    .venv/bin/python bench/serving.py --quick            # 1 and 4 clients, no soak
    .venv/bin/python bench/serving.py --app-threads 1    # the app with OMP_NUM_THREADS=1
    .venv/bin/python bench/serving.py --app-env MALLOC_ARENA_MAX=2
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import common
import psutil
import torch

from segmenter.images import as_pil
from segmenter.inference import Segmenter


class RssSampler:
    """Samples a process's RSS in a background thread; ``peak()`` since the last ``reset()``."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self._peak = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        return int(self.proc.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                value = self.rss()
            except psutil.Error:
                return
            with self._lock:
                self._peak = max(self._peak, value)

    def reset(self) -> None:
        with self._lock:
            self._peak = self.rss()

    def peak(self) -> int:
        with self._lock:
            return max(self._peak, self.rss())

    def __enter__(self) -> RssSampler:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Load:
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0
    peak_rss: int = 0
    rss_trace: list[tuple[int, int]] = field(default_factory=list)  # (requests completed, server RSS)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0


def drive(sends: list[Callable[[], object]], requests: int, on_done: Callable[[int], None] | None = None) -> Load:
    """``requests`` requests in all, one thread per ``send`` (a client's one request; raising counts as an error),
    each sending again as soon as its last answer came. ``on_done(n)`` runs (under the lock) after each of them."""
    result = Load(len(sends))
    lock = threading.Lock()
    remaining = [requests]

    def worker(send: Callable[[], object]) -> None:
        while True:
            with lock:
                if remaining[0] == 0:
                    return
                remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                send()
                err = ""
            except Exception as e:  # any failure counts as an error of the app under load
                err = f"{type(e).__name__}: {e}"[:200]
            with lock:
                (result.errors.append(err) if err else result.latencies.append(time.perf_counter() - t0))
                if on_done is not None:
                    on_done(len(result.latencies) + len(result.errors))

    start = time.perf_counter()
    with ThreadPoolExecutor(len(sends)) as pool:
        list(pool.map(worker, sends))
    result.wall = time.perf_counter() - start
    return result


def run_load(url: str, photo: Path, clients: int, requests: int, rss: RssSampler, rss_every: int = 0) -> Load:
    """``requests`` requests from ``clients`` concurrent clients (each its own Client). With ``rss_every``, the
    server's RSS is read each time that many more requests have completed (``Load.rss_trace``)."""
    pool_clients = [common.gradio_client(url, download=False) for _ in range(clients)]
    trace: list[tuple[int, int]] = []

    def sample(done: int) -> None:
        if rss_every and done % rss_every == 0:
            trace.append((done, rss.rss()))

    rss.reset()
    result = drive([partial(common.call_segment, client, photo) for client in pool_clients], requests, sample)
    result.rss_trace = trace
    result.peak_rss = rss.peak()
    return result


def model_time(weights: Path, rounds: int) -> common.Timing:
    """The generator's batch-1 forward in this process (same torch threads as the app), on a real-size input."""
    seg = Segmenter.from_pretrained(weights, device="cpu")
    x = seg.preprocess([as_pil(torch.zeros(3, 480, 640, dtype=torch.uint8))])
    return common.time_calls(lambda: seg.forward(x), rounds, warmup=2)


def mib(n: int) -> str:
    return f"{n / 2**20:.0f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 and 4 clients, 2 requests per client, no soak")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--per-client", type=int, default=3, help="requests per client at each level (min 8 in all)")
    p.add_argument("--requests", type=int, default=100, help="soak: requests in all (RSS after 50 vs after this)")
    p.add_argument("--soak-clients", type=int, default=4)
    p.add_argument("--mp", type=float, default=0.3, help="photo size in megapixels")
    p.add_argument("--weights", help="weights folder (default: weights/ if it holds effnet_unet, else random)")
    p.add_argument(
        "--app-threads",
        type=int,
        default=0,
        help="torch threads in the app (OMP_NUM_THREADS) and in the model-bound measurement; 0: default",
    )
    p.add_argument("--app-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra environment for the app")
    args = p.parse_args(argv)
    if args.app_threads:
        torch.set_num_threads(args.app_threads)
    app_env = dict(kv.split("=", 1) for kv in args.app_env)
    if args.app_threads:
        app_env["OMP_NUM_THREADS"] = str(args.app_threads)
    if args.quick:
        args.clients, args.per_client, args.requests = [1, 4], 2, 0
    weights = common.weights_for("effnet_unet", override=args.weights)
    common.print_machine("Serving: concurrent common.gradio_client clients against app.py")
    print(
        f"weights: {common.weights_label(weights)}; photo {args.mp:g} MP JPEG; endpoint /segment (mask + cutout PNGs); "
        f"app torch threads: {args.app_threads or 'default'}; extra app environment: {app_env or 'none'}\n"
    )
    model_before = model_time(weights, 10)
    photo = common.write_temp_jpeg(common.jpeg_bytes(args.mp))
    loads: list[Load] = []
    soak_rows = []
    try:
        with common.running_app(weights, env=app_env) as app, RssSampler(app.proc.pid) as rss:
            run_load(app.url, photo, 1, 2, rss)  # warm-up: first-request costs out of the way
            idle_rss = rss.rss()
            for clients in args.clients:
                loads.append(run_load(app.url, photo, clients, max(8, clients * args.per_client), rss))
                if loads[-1].errors:
                    print(f"errors at {clients} clients, first: {loads[-1].errors[0]}")
            if args.requests > 50:
                soak = run_load(app.url, photo, args.soak_clients, args.requests, rss, rss_every=50)
                time.sleep(1.0)  # let the last responses' buffers go
                end = rss.rss()
                first = soak.rss_trace[0][1] if soak.rss_trace else end
                growth = (end - first) / first
                trace = " ".join(f"{n}:{mib(v)}" for n, v in soak.rss_trace)
                soak_rows.append(
                    [
                        str(args.soak_clients),
                        str(args.requests),
                        str(len(soak.errors)),
                        mib(idle_rss),
                        mib(first),
                        mib(end),
                        f"{growth * 100:+.1f}%",
                        mib(soak.peak_rss),
                        trace,
                        "met" if growth < 0.10 and not soak.errors else "NOT met",
                    ]
                )
    finally:
        photo.unlink(missing_ok=True)
    model_after = model_time(weights, 10)
    model = min(model_before, model_after, key=lambda t: t.p50)  # the faster reading: the stricter target
    model_rate = 1 / model.p50
    rows = []
    for load in loads:
        t = common.Timing(load.latencies) if load.latencies else None
        rows.append(
            [
                str(load.clients),
                str(len(load.latencies)),
                str(len(load.errors)),
                f"{load.wall:.1f}",
                f"{load.throughput:.2f}",
                f"{load.throughput / model_rate:.2f}x",
                common.ms(t.p50) if t else "–",
                common.ms(t.p95) if t else "–",
                mib(load.peak_rss),
            ]
        )
    print(
        f"model-bound rate: 1 / {common.ms(model.p50)} common.ms = {model_rate:.2f} img/s (batch-1 forward p50 in this process, "
        f"the faster of before the app ({common.ms(model_before.p50)} common.ms) and after it ({common.ms(model_after.p50)} common.ms))\n"
    )
    print("### Concurrent clients (requests bounded per level)\n")
    print(
        common.markdown_table(
            [
                "clients",
                "ok",
                "errors",
                "wall s",
                "img/s",
                "vs model-bound",
                "p50 common.ms",
                "p95 common.ms",
                "server peak RSS MiB",
            ],
            rows,
        )
    )
    if soak_rows:
        print("\n### Soak: server RSS\n")
        print(
            common.markdown_table(
                [
                    "clients",
                    "requests",
                    "errors",
                    "idle MiB",
                    "after 50 MiB",
                    "at end MiB",
                    "growth",
                    "peak MiB",
                    "MiB every 50 requests",
                    "growth < 10%, no errors",
                ],
                soak_rows,
            )
        )
    top = max(rows, key=lambda r: int(r[0]))
    print(
        f"\nTarget at {top[0]} clients: throughput >= 0.9x model-bound: {top[5]} "
        f"({'met' if float(top[5][:-1]) >= 0.9 else 'NOT met'}); errors: {top[2]}"
    )


if __name__ == "__main__":
    main()
