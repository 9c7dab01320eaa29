"""Shared fixtures for the whole test suite (any test file may use them).

``tiny_weights`` (session)
    A folder in the layout of ``weights/`` (``config.json`` + ``model.safetensors``) holding a tiny, untrained
    pix2pix U-Net (ngf=8, about 0.85 M parameters) with made-up provenance in its config meta. It loads in
    milliseconds; its predictions are meaningless but have the right shapes and value ranges.
``app_url`` (session)
    The real server, ``app.create_app(tiny_weights)`` (Gradio UI, the ``/segment`` API for gradio_client and
    ``POST /api/segment``), served by uvicorn in a background thread on a free 127.0.0.1 port. The value is the
    base URL with a trailing slash, e.g. ``"http://127.0.0.1:54321/"``. Started once, on first use.
``example_photo``
    Path of a bundled example photo with people in it (``examples/portrait.jpg``).

Everything stays offline: Gradio analytics are off and nothing is downloaded.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with a tiny untrained generator (see the module docstring)."""
    from helpers import make_tiny_weights

    meta = {"metrics": {"val": {"iou": 0.5}, "test": {"iou": 0.42}}, "run_id": "tiny-test", "command": "pytest"}
    return make_tiny_weights(tmp_path_factory.mktemp("tiny_weights"), meta=meta)


@pytest.fixture(scope="session")
def app_url(tiny_weights: Path) -> Iterator[str]:
    """Base URL of the full app (UI + APIs) running on a free localhost port (see the module docstring)."""
    import uvicorn

    import app

    server = uvicorn.Server(
        uvicorn.Config(
            app.create_app(tiny_weights),
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=app.SHUTDOWN_SECONDS,
        )
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
    port = sock.getsockname()[1]
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="app-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 600  # only a bound: the loop ends as soon as the server has started
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=15)
    sock.close()


@pytest.fixture
def example_photo() -> Path:
    """A bundled example photo with people in it."""
    return ROOT / "examples" / "portrait.jpg"
