"""Load: 16 concurrent clients x 50 requests against ``python app.py``; no failure, every answer right, RSS flat.

Half the clients use gradio_client's ``/segment``, half POST /api/segment. Each client sends photos of its own
size, so an answer that went to the wrong client shows up as a wrong size. The server's resident memory is
sampled through the run; after a warm-up round it may not grow by more than 10 %.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from served_app import serve_app

CLIENTS = 16  # half gradio_client, half plain HTTP
REQUESTS = 50  # per client
WARMUP = 5  # per client, before the memory baseline is taken
DEADLINE = 240.0  # seconds for the whole run (it takes 70-90 s on a loaded 2-core machine), then it stops
RSS_GROWTH = 0.10

pytestmark = pytest.mark.slow


def photo(tmp_path: Path, i: int) -> Path:
    """Client ``i``'s photo: random colours, a size no other client uses."""
    path = tmp_path / f"client{i}.png"
    pixels = np.random.default_rng(i).integers(0, 256, (24 + i, 32 + 2 * i, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def check(mask: Image.Image, cutout: Image.Image, size: tuple[int, int]) -> None:
    assert mask.mode == "L" and mask.size == size, (mask.mode, mask.size, size)
    assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    assert cutout.mode == "RGBA" and cutout.size == size, (cutout.mode, cutout.size, size)


def gradio_requester(url: str, path: Path, closing: contextlib.ExitStack) -> Callable[[], None]:
    client = Client(url, verbose=False)  # not closed: close() waits 1 s; its heartbeat ends with the server
    size = Image.open(path).size

    def request() -> None:
        mask, cutout = client.submit(handle_file(path), 0.5, api_name="/segment").result(timeout=60)
        check(Image.open(mask), Image.open(cutout), size)

    return request


def http_requester(url: str, path: Path, closing: contextlib.ExitStack) -> Callable[[], None]:
    http = closing.enter_context(httpx.Client(base_url=url, timeout=60))
    data, size = path.read_bytes(), Image.open(path).size

    def request() -> None:
        images = []
        for output in ("mask", "cutout"):  # two calls, so both outputs are checked like gradio_client's pair
            r = http.post("api/segment", files={"file": (path.name, data)}, params={"output": output})
            assert r.status_code == 200, r.text
            images.append(Image.open(io.BytesIO(r.content)))
        check(*images, size)

    return request


def test_concurrent_clients_get_right_answers_and_memory_stays_flat(tiny_weights: Path, tmp_path: Path) -> None:
    with serve_app(tiny_weights, tmp_path) as server, contextlib.ExitStack() as closing:
        requesters = [
            (gradio_requester if i % 2 else http_requester)(server.url, photo(tmp_path, i), closing)
            for i in range(CLIENTS)
        ]
        warmed = threading.Barrier(CLIENTS + 1)
        stop = threading.Event()
        samples: list[int] = []

        def run(request: Callable[[], None]) -> int:
            """Send this client's requests; returns how many, or raises the first failure (stopping everyone)."""
            try:
                for n in range(REQUESTS):
                    if n == WARMUP:
                        warmed.wait(timeout=DEADLINE)
                    if stop.is_set():
                        return n
                    request()
                return REQUESTS
            except BaseException:
                stop.set()
                warmed.abort()
                raise

        start = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(run, r) for r in requesters]
            with contextlib.suppress(threading.BrokenBarrierError):  # a client failed: raised below
                warmed.wait(timeout=DEADLINE)
            baseline = server.rss()
            while not all(f.done() for f in futures) and time.monotonic() - start < DEADLINE:
                samples.append(server.rss())
                wait(futures, timeout=0.5)
            stop.set()
        failures = [e for f in futures if (e := f.exception()) and not isinstance(e, threading.BrokenBarrierError)]
        if failures:
            raise failures[0]
        done = [f.result() for f in futures]
        seconds = time.monotonic() - start
        assert done == [REQUESTS] * CLIENTS, f"not finished within {DEADLINE:.0f} s: {done}"
        assert server.alive()
        samples.append(server.rss())
    peak = max(samples)
    print(
        f"{CLIENTS * REQUESTS} requests in {seconds:.0f} s; RSS {baseline / 2**20:.0f} MiB after warm-up, "
        f"peak {peak / 2**20:.0f} MiB, end {samples[-1] / 2**20:.0f} MiB"
    )
    assert peak <= baseline * (1 + RSS_GROWTH), f"RSS grew from {baseline / 2**20:.0f} to {peak / 2**20:.0f} MiB"
