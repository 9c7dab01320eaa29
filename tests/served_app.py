"""``python app.py`` as a subprocess on a free 127.0.0.1 port, for what only a separate process shows.

Its memory (RSS), open files, log output, temporary folders and exit status belong to that process alone; the
in-process server of conftest.py (``app_url``) shares all of them with the test runner.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RUNNING = re.compile(r"Uvicorn running on http://[^:/]+:(\d+)")  # uvicorn's start-up line names the bound port
# Seconds: importing torch and gradio took over 120 s on a loaded 2-core host. Only a deadline: a server that
# answers sooner is used at once, and one that exits is reported at once (serve_app polls both).
START_TIMEOUT = 600.0


def wait_for(condition: Callable[[], object], timeout: float, what: str, every: float = 0.05) -> None:
    """Poll ``condition`` until it holds, for at most ``timeout`` seconds: a deadline, never a sleep that assumes how
    fast the machine is."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(every)


def app_env(weights: Path | str | None, **overrides: str) -> dict[str, str]:
    """The environment for ``python app.py``: offline, localhost only, no live-webcam probe, plus ``overrides``.

    ``weights`` None: no SEGMENTER_MODEL, the app's own default (``weights/``, else the front matter's model repo).
    """
    env = {
        **{k: v for k, v in os.environ.items() if k != "SEGMENTER_MODEL"},
        **({} if weights is None else {"SEGMENTER_MODEL": str(weights)}),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "HF_HUB_OFFLINE": "1",
        "LIVE_WEBCAM": "off",
        "PYTHONUNBUFFERED": "1",
    }
    return {**env, **overrides}


def run_app(env: dict[str, str], timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``python app.py`` to its end (for start-up failures); stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def post_photo(url: str, data: bytes, name: str = "photo.png", **params: str) -> httpx.Response:
    """POST ``data`` to the app at ``url`` as ``/api/segment``'s multipart field ``file``."""
    files = {"file": (name, data, "application/octet-stream")}
    return httpx.post(f"{url}api/segment", files=files, params=params, timeout=60)


@dataclass
class Served:
    """A running ``python app.py``: base URL (trailing slash), process, stdout+stderr log file, environment."""

    url: str
    proc: subprocess.Popen
    log: Path
    env: dict[str, str]

    def rss(self) -> int:
        """Resident memory of the server process, in bytes."""
        return psutil.Process(self.proc.pid).memory_info().rss

    def open_files(self) -> int:
        """How many file descriptors the server process holds."""
        return psutil.Process(self.proc.pid).num_fds()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None


@contextmanager
def serve_app(weights: Path | str | None, log_dir: Path, cwd: Path = ROOT, **env: str) -> Iterator[Served]:
    """Start ``python app.py`` in ``cwd`` with ``weights`` (and ``env`` overrides), wait until it answers; stop it after.

    Stopping is a SIGTERM, so uvicorn shuts down gracefully (Gradio's cache clean-up runs), then a SIGKILL if it
    takes over 30 s.
    """
    log = log_dir / "server.log"
    # Port 0: the server binds a free port itself and logs which (a port picked here first could be taken by
    # another process before the server binds it).
    env = app_env(weights, **{"GRADIO_SERVER_PORT": "0", **env})
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    served = Served("", proc, log, env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if not served.alive():
                raise RuntimeError(f"python app.py exited with {proc.returncode}:\n{served.log_text()[-3000:]}")
            if not served.url and (bound := RUNNING.search(served.log_text())):
                served.url = f"http://127.0.0.1:{bound.group(1)}/"
            try:
                if served.url and httpx.get(f"{served.url}config", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"python app.py did not answer within {START_TIMEOUT:.0f} s")
            time.sleep(0.25)
        yield served
    finally:
        stop(proc)


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()
