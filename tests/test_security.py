"""Security: upload caps, temporary files, reading only what was uploaded, fetching no URL, keeping secrets.

Most tests run against ``python app.py`` in a subprocess with small caps (2 MB, 1 megapixel), its own temp and
Gradio cache folders and an HF_TOKEN in its environment. The URL tests use the in-process server of conftest.py
(``app_url``), where Gradio's SSRF filter can be told that 127.0.0.1 is the public internet: a URL that reached
Gradio would then really be fetched, and a local recording server shows that none is.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
from corpus import REFUSALS, corpus, encode, valid_photo
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from served_app import Served, post_photo, serve_app, stop, wait_for

import app
import segmenter.inference
from segmenter.inference import Segmenter
from segmenter.server.cache import Sweep, sweep
from segmenter.server.guard import BodyGuard, PartCounter

MAX_UPLOAD_MB, MAX_REQUEST_MB, MAX_PIXELS = 2, 3, 1_000_000
BODY_TIMEOUT_S, BODY_IDLE_S = 6, 2
SECRET = "hf_tEsTsEcReT0123456789abcdefghijklmnop"
FILE_DATA = {"_type": "gradio.FileData"}


def server_env(tmp: Path) -> dict[str, str]:
    """Caps, private temp and cache folders, a token that must never show."""
    (tmp / "tmp").mkdir()
    return {
        "MAX_UPLOAD_MB": str(MAX_UPLOAD_MB),
        "MAX_REQUEST_MB": str(MAX_REQUEST_MB),
        "BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
        "BODY_IDLE_S": str(BODY_IDLE_S),
        "MAX_PIXELS": str(MAX_PIXELS),
        "HF_TOKEN": SECRET,
        "GRADIO_TEMP_DIR": str(tmp / "cache"),
        "TMPDIR": str(tmp / "tmp"),
    }


@pytest.fixture(scope="module")
def server(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("security-server")
    with serve_app(tiny_weights, tmp, **server_env(tmp)) as served:
        yield served


@pytest.fixture(scope="module")
def client(server: Served) -> Client:
    return Client(server.url, verbose=False)  # not closed: close() waits 1 s; its heartbeat ends with the server


@pytest.fixture(scope="module")
def outside_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A readable image on the server's disk that was never uploaded."""
    path = tmp_path_factory.mktemp("server-files") / "private.png"
    path.write_bytes(valid_photo())
    return path


def noise_png(side: int) -> bytes:
    """An incompressible PNG of ``side`` x ``side`` pixels (about 3 * side**2 bytes)."""
    return encode(Image.fromarray(np.random.default_rng(side).integers(0, 256, (side, side, 3), np.uint8)), "PNG")


def upload_status(url: str, data: bytes, name: str = "photo.png") -> int:
    return httpx.post(f"{url}gradio_api/upload", files={"files": (name, data)}, timeout=60).status_code


def upload(url: str, data: bytes, name: str = "photo.png") -> str:
    """Upload like the UI and gradio_client do; returns the server path of the upload."""
    r = httpx.post(f"{url}gradio_api/upload", files={"files": (name, data)}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()[0]


def fn_index(url: str, elem_id: str | None = None) -> int:
    """The id by which the UI calls an event: the ``/segment`` API's, or that of the event reading ``elem_id``."""
    config = httpx.get(f"{url}config", timeout=30).json()
    if elem_id is None:
        return next(d["id"] for d in config["dependencies"] if d.get("api_name") == app.SEGMENT_API_NAME)
    ids = {c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id}
    return next(d["id"] for d in config["dependencies"] if ids & set(d["inputs"]))


def api_call(url: str, endpoint: str, data: list) -> httpx.Response:
    """POST ``data`` as an API call: gradio_client's queue/join, the REST call/, or the UI's queue/join by id."""
    if endpoint == "call":
        return httpx.post(f"{url}gradio_api/call/segment", json={"data": data}, timeout=30)
    index = fn_index(url, "batch-files") if endpoint == "batch" else fn_index(url)
    body = {"data": data, "fn_index": index, "session_hash": "security-test"}
    return httpx.post(f"{url}gradio_api/queue/join", json=body, timeout=30)


def call_result(url: str, event_id: str) -> str:
    """The SSE stream of a REST call/ event, until it completes or fails."""
    return httpx.get(f"{url}gradio_api/call/segment/{event_id}", timeout=60).text


# ---------------------------------------------------------------- caps


def test_http_caps_name_the_limit(server: Served) -> None:
    too_long = post_photo(server.url, b"\0" * (MAX_UPLOAD_MB * 2**20 + 2**17))
    assert too_long.status_code == 413 and f"{MAX_UPLOAD_MB} MB" in too_long.json()["error"]
    over_cap = next(c for c in corpus(MAX_PIXELS) if c.name == "over_cap.png")
    too_big = post_photo(server.url, over_cap.data)
    assert too_big.status_code == 413 and "at most 1 megapixels" in too_big.json()["error"]
    assert post_photo(server.url, valid_photo()).status_code == 200


def test_gradio_caps_name_the_limit(server: Served, client: Client, tmp_path: Path) -> None:
    limit = MAX_UPLOAD_MB * 2**20
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * (limit + 1))
    with pytest.raises(ValueError, match=f"maximum file size of {limit} bytes"):  # gradio_client checks first
        client.predict(handle_file(big), 0.5, api_name="/segment")
    r = httpx.post(f"{server.url}gradio_api/upload", files={"files": ("big.png", big.read_bytes())}, timeout=60)
    assert r.status_code == 413 and f"{limit} bytes" in r.text  # the server refuses a raw upload too
    over_cap = next(c for c in corpus(MAX_PIXELS) if c.name == "over_cap.png").write(tmp_path)
    with pytest.raises(AppError, match="at most 1 megapixels"):
        client.predict(handle_file(over_cap), 0.5, api_name="/segment")
    body = {"data": ["x" * (limit + 1)], "fn_index": 0, "session_hash": "s"}  # API requests are capped as well
    assert httpx.post(f"{server.url}gradio_api/queue/join", json=body, timeout=60).status_code == 413


def test_uploads_are_capped_per_request_as_well_as_per_file(server: Served) -> None:
    under_file_cap = b"\0" * int(0.75 * MAX_UPLOAD_MB * 2**20)  # 1.5 MB: each file is allowed ...
    assert upload_status(server.url, under_file_cap) == 200
    files = [("files", (f"{i}.png", under_file_cap)) for i in range(3)]  # ... three in one request are not
    r = httpx.post(f"{server.url}gradio_api/upload", files=files, timeout=60)
    assert r.status_code == 413 and f"{MAX_REQUEST_MB} MB per-request limit" in r.json()["error"], r.text
    many = [("files", (f"{i}.png", b"x")) for i in range(app.LIMITS.max_batch + 1)]  # the Batch tab's cap + 1
    r = httpx.post(f"{server.url}gradio_api/upload", files=many, timeout=60)
    assert r.status_code == 413 and f"At most {app.LIMITS.max_batch} files" in r.json()["error"], r.text
    assert httpx.post(f"{server.url}gradio_api/upload", files=many[1:], timeout=60).status_code == 200
    assert server.alive()


def start_body(url: str, path: str, length: int, first: bytes) -> socket.socket:
    """A raw HTTP/1.1 multipart POST whose headers promise ``length`` body bytes, of which ``first`` are sent."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    head = (
        f"POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary=b0undary\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode() + first)
    return sock


def status_of(sock: socket.socket) -> int | None:
    """The status code the server answers on ``sock`` (None: it closed without answering)."""
    data = sock.recv(4096)
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1") else None


PART = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
SLOW_ROUTES = ["api/segment", "gradio_api/upload", "gradio_api/queue/join"]


@pytest.mark.parametrize("path", SLOW_ROUTES)
def test_a_stalled_body_times_out(server: Served, path: str) -> None:
    start = time.monotonic()
    with start_body(server.url, path, 10_000, PART) as sock:  # then nothing more
        assert status_of(sock) == 408
    assert time.monotonic() - start < BODY_IDLE_S + 5
    assert post_photo(server.url, valid_photo()).status_code == 200


@pytest.mark.parametrize("path", SLOW_ROUTES)
def test_a_trickling_body_times_out(server: Served, path: str) -> None:
    """One byte per half second never pauses long enough for the idle limit, but the whole-body limit ends it."""
    start = time.monotonic()
    with start_body(server.url, path, 10_000, PART) as sock:
        sock.settimeout(0.5)
        answer = None
        while answer is None and time.monotonic() - start < BODY_TIMEOUT_S + 10:
            try:
                answer = status_of(sock)
            except TimeoutError:
                sock.sendall(b"x")
    assert answer == 408 and BODY_TIMEOUT_S - 1 < time.monotonic() - start < BODY_TIMEOUT_S + 5


def test_aborted_uploads_log_one_line_each_without_a_traceback(server: Served) -> None:
    start = len(server.log_text())
    for path in ("api/segment", "gradio_api/upload", "api/segment", "gradio_api/upload"):
        start_body(server.url, path, 1_000_000, PART + b"x" * 50_000).close()  # the client gives up mid-upload
    wait_for(lambda: server.log_text()[start:].count("client went away") >= 4, 120, "four log lines")
    logged = server.log_text()[start:]
    assert "Traceback" not in logged and "Exception in ASGI" not in logged, logged
    assert logged.count("client went away") == 4, logged
    assert post_photo(server.url, valid_photo()).status_code == 200


def test_parts_are_counted_across_chunk_borders() -> None:
    body = b"".join(b"--b0undary\r\nContent-Disposition: form-data\r\n\r\nabc\r\n" for _ in range(5)) + b"--b0undary--"
    counter = PartCounter(b"--b0undary")
    counts = [counter.feed(body[i : i + 7]) for i in range(0, len(body), 7)]  # delimiters split every way
    assert counts[-1] == 5 and counts == sorted(counts)


def test_body_guard_passes_unexpected_errors_on() -> None:
    """Only failures caused by a client that left or was cut off are quiet; anything else reaches the server's log."""

    async def broken(scope: dict, receive: object, send: object) -> None:
        await receive()
        raise RuntimeError("a bug")

    async def receive() -> dict:
        return {"type": "http.request", "body": b"abc", "more_body": False}

    async def send(message: dict) -> None:
        pass

    guard = BodyGuard(broken, deadline_s=5, idle_s=1, upload_max_bytes=100, upload_max_files=2)
    with pytest.raises(RuntimeError, match="a bug"):
        asyncio.run(guard({"type": "http", "method": "POST", "path": "/api/segment", "headers": []}, receive, send))


# ---------------------------------------------------------------- fairness


def completions(
    url: str, session: str, done: dict[str, float], stop_after: int, started: set[str] | None = None
) -> None:
    """Read the session's queue stream, noting when each event completed (``done``: event id -> monotonic time) and
    which have started (``started``)."""
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=120) as r:
        for line in r.iter_lines():
            if started is not None and line.startswith("data:") and '"process_starts"' in line:
                started.add(json.loads(line[5:])["event_id"])
            if line.startswith("data:") and '"process_completed"' in line:
                done[json.loads(line[5:])["event_id"]] = time.monotonic()
                if len(done) >= stop_after:
                    return


def test_a_single_photo_does_not_wait_behind_two_batches(server: Served, client: Client) -> None:
    """Two batches are queued first; a single photo sent after them still finishes before either."""
    noise = np.random.default_rng(0).integers(0, 256, (900, 1100, 3), np.uint8)  # just under the 1 MP cap
    big = encode(Image.fromarray(noise), "JPEG", quality=50)  # noise: slow to cut out and compress
    files = [{"path": upload(server.url, big, f"b{i}.jpg"), "meta": FILE_DATA} for i in range(16)]
    session, done, started = "fairness", {}, set()
    batch = {"data": [files, 0.5], "fn_index": fn_index(server.url, "batch-files"), "session_hash": session}
    events = [httpx.post(f"{server.url}gradio_api/queue/join", json=batch, timeout=30).json()["event_id"] for _ in "ab"]
    reader = threading.Thread(target=completions, args=(server.url, session, done, 1, started), daemon=True)
    reader.start()  # like the UI: join, then listen (the session's messages wait for the stream)
    wait_for(lambda: started, 300, "the first batch to start")  # the second queues behind it (one at a time)
    sent = time.monotonic()
    photo = Path(server.env["TMPDIR"]).parent / "single.jpg"
    photo.write_bytes(valid_photo())
    client.predict(handle_file(photo), 0.5, api_name="/segment")
    single = time.monotonic()
    reader.join(timeout=300)
    assert done and set(done) <= set(events), done
    print(f"single photo: {single - sent:.2f} s; first batch done after {min(done.values()) - sent:.2f} s")
    assert single < min(done.values()), "the single photo finished after a batch"


# ---------------------------------------------------------------- temporary files


def test_delete_cache_is_configured(tiny_weights: Path) -> None:
    frequency, age = app.build_demo(Segmenter.from_pretrained(tiny_weights, device="cpu")).delete_cache
    assert 0 < frequency <= 3600 and 0 < age <= 3600  # minutes, not hours


def folder_bytes(folder: Path) -> int:
    """Total size of the files under ``folder``, which the app's sweeper may be changing meanwhile: a file it deletes
    between the listing and the stat counts as gone (it is), instead of failing with FileNotFoundError."""
    return sum(size for _, size in files_of(folder))


def files_of(folder: Path) -> list[tuple[Path, int]]:
    """(path, size) of each regular file under ``folder``, skipping any that vanish while it is walked."""
    found = []
    for root, _dirs, names in os.walk(folder):  # os.walk skips folders removed meanwhile (onerror ignores them)
        for name in names:
            path = Path(root, name)
            try:
                st = path.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((path, st.st_size))
    return found


def cached_files(folder: Path) -> set[Path]:
    """The files under ``folder`` now (the sweeper may delete some while this looks)."""
    return {p for p, _ in files_of(folder)}


def test_sweep_drops_old_files_then_the_oldest_until_under_the_cap(tmp_path: Path) -> None:
    now = time.time()
    ages = {"a": 3600, "b": 300, "c": 200, "d": 100, "e": 0}  # seconds old; each file 1000 bytes
    for name, age in ages.items():
        path = tmp_path / name / "result.png"
        path.parent.mkdir()
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age, now - age))
        os.utime(path.parent, (now - age - 120, now - age - 120))
    (tmp_path / "fresh-empty").mkdir()  # just made for an upload: kept
    done = sweep(tmp_path, max_bytes=2500, max_age_s=1800, now=now)
    assert sorted(p.parent.name for p in tmp_path.rglob("*.png")) == ["d", "e"]  # a: too old; b, c: over the cap
    assert done == Sweep(removed=3, kept_bytes=2000) and folder_bytes(tmp_path) == 2000
    # Folders emptied now (their mtime is now) and the fresh one wait out the grace period, then go.
    assert sweep(tmp_path, max_bytes=2500, max_age_s=1800, now=now) == Sweep(0, 2000)
    assert len(list(tmp_path.iterdir())) == 6
    assert sweep(tmp_path, max_bytes=2500, max_age_s=1800, now=time.time() + 120) == Sweep(0, 2000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "e"]


def test_a_sweep_leaves_room_below_the_cap(tmp_path: Path) -> None:
    now = time.time()
    for i in range(9):  # nine fresh 1000-byte results, oldest first
        path = tmp_path / f"r{i}.png"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - 10 + i, now - 10 + i))
    assert sweep(tmp_path, max_bytes=10_000, max_age_s=60, now=now, low_water=0.5) == Sweep(4, 5000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r4.png", "r5.png", "r6.png", "r7.png", "r8.png"]


def test_the_served_cache_stays_under_its_cap(tiny_weights: Path, tmp_path: Path) -> None:
    """Results pile up in Gradio's cache with every gradio_client call; the app's sweeper (each second, down to 75%)
    holds it under CACHE_MAX_MB all along, as long as a second's results are under a quarter of the cap (about 90 KB
    a request here, at up to 10 requests a second: a 3 MB cap was once overrun by 617 bytes, so the cap is 6 MB)."""
    cap = 6 * 2**20
    env = {**server_env(tmp_path), "CACHE_MAX_MB": str(cap / 2**20)}
    photo = tmp_path / "noise.png"
    photo.write_bytes(noise_png(150))
    with serve_app(tiny_weights, tmp_path, **env) as served:
        client = Client(served.url, verbose=False, download_files=False)
        cache = Path(env["GRADIO_TEMP_DIR"])
        sizes = []
        for _ in range(160):
            client.predict(handle_file(photo), 0.5, api_name="/segment")
            sizes.append(folder_bytes(cache))
        assert 160 * sizes[0] > 2 * cap  # the premise: without sweeps the cache would be well over the cap
        assert max(sizes) <= cap, sizes
        client.predict(handle_file(photo), 0.5, api_name="/segment")  # and the app goes on serving


def test_request_temp_files_do_not_accumulate(server: Served, client: Client, tmp_path: Path) -> None:
    """Spooled uploads (over 1 MB, so on disk), refusals and raw uploads leave no files and no open descriptors."""
    tmpdir = Path(server.env["TMPDIR"])
    big_photo = noise_png(700)  # 1.5 MB: Starlette spools it to a temporary file
    assert 2**20 < len(big_photo) < MAX_UPLOAD_MB * 2**20
    (tmp_path / "big.png").write_bytes(big_photo)
    post_photo(server.url, valid_photo())  # warm-up: lazily opened files (fonts, models) are not leaks
    before = server.open_files()
    # What is there already stays out of the count: ONNX Runtime writes one 51-byte session id (.ses) into TMPDIR
    # when it is imported (with its telemetry off as well); it does not grow with requests.
    present = set(tmpdir.iterdir())
    for _ in range(5):
        assert post_photo(server.url, big_photo).status_code == 200
        assert post_photo(server.url, b"\0" * (MAX_UPLOAD_MB * 2**20 + 2**17)).status_code == 413
        assert post_photo(server.url, big_photo[: len(big_photo) // 2]).status_code == 415
        assert upload_status(server.url, b"\0" * 3 * 2**20) == 413
        client.predict(handle_file(tmp_path / "big.png"), 0.5, api_name="/segment")
    assert set(tmpdir.iterdir()) - present == set()
    assert all(p.name == ".ses" for p in present), present  # nothing but ONNX Runtime's session id
    assert server.open_files() <= before + 2  # a keep-alive socket or two may still be open


def test_shutdown_removes_uploads_and_results(tiny_weights: Path, tmp_path: Path) -> None:
    """SIGTERM with a client still connected: the server stops within seconds and Gradio's cache is emptied."""
    cache = tmp_path / "cache"
    with serve_app(tiny_weights, tmp_path, **server_env(tmp_path)) as server:
        examples = cached_files(cache)  # cached at start-up, kept by design
        client = Client(server.url, verbose=False)  # left connected: its heartbeat stays open
        photo = tmp_path / "photo.jpg"
        photo.write_bytes(valid_photo())
        results = client.predict(handle_file(photo), 0.5, api_name="/segment")
        assert post_photo(server.url, valid_photo()).status_code == 200
        made = cached_files(cache) - examples
        assert {p.name for p in made} >= {"photo.jpg", "photo-mask.png", "photo-cutout.png"}
        assert all(Path(r).exists() for r in results)  # downloaded copies on the client's side
        stop(server.proc, timeout=app.SHUTDOWN_SECONDS + 20)  # a hang would be killed and fail the check below
        assert "Application shutdown complete" in server.log_text()
    assert cached_files(cache) <= examples


# ---------------------------------------------------------------- only uploaded files are read


def foreign_payloads(server: Served, outside: Path) -> dict[str, dict]:
    """File payloads naming server files that were never uploaded."""
    cache = server.env["GRADIO_TEMP_DIR"]
    return {
        "system file": {"path": "/etc/passwd", "meta": FILE_DATA},
        "weights": {"path": str(Path(server.env["SEGMENTER_MODEL"]) / "model.safetensors"), "meta": FILE_DATA},
        "image elsewhere": {"path": str(outside), "meta": FILE_DATA, "orig_name": "private.png"},
        "no meta": {"path": str(outside)},  # Gradio itself does not look at these
        "traversal": {"path": f"{cache}/{os.path.relpath(outside, cache)}", "meta": FILE_DATA},
        "relative": {"path": "app.py", "meta": FILE_DATA},
    }


@pytest.mark.parametrize("endpoint", ["call", "queue", "batch"])
def test_api_reads_only_uploaded_files(server: Served, outside_photo: Path, endpoint: str) -> None:
    uploaded = {"path": upload(server.url, valid_photo(), "mine.jpg"), "meta": FILE_DATA}

    def wrap(file: dict) -> list:
        return [[file] if endpoint == "batch" else file, 0.5]

    works = api_call(server.url, endpoint, wrap(uploaded))  # the same request with an upload goes through
    assert works.status_code == 200 and "event_id" in works.json(), works.text
    if endpoint == "call":
        assert "mine-mask.png" in call_result(server.url, works.json()["event_id"])
    for name, payload in foreign_payloads(server, outside_photo).items():
        r = api_call(server.url, endpoint, wrap(payload))
        assert r.status_code == 400 and "uploaded" in r.json()["error"], (name, r.status_code, r.text)
    cache = Path(server.env["GRADIO_TEMP_DIR"])
    assert not [p for p in cached_files(cache) if p.name.startswith(("private", "passwd", "model"))]  # none copied
    assert server.alive()


def test_http_endpoint_reads_only_the_request(server: Served) -> None:
    """A path (or URL) sent to POST /api/segment is data, never a file name."""
    as_field = httpx.post(f"{server.url}api/segment", data={"file": "/etc/passwd"}, timeout=30)
    assert as_field.status_code == 400 and "field 'file'" in as_field.json()["error"]
    for text in ("/etc/passwd", server.env["SEGMENTER_MODEL"]):
        r = post_photo(server.url, text.encode(), "photo.png")
        assert r.status_code == REFUSALS["unreadable"][0] and "root:" not in r.text


@pytest.mark.parametrize("path", ["/etc/passwd", "weights", "outside", "app.py"])
def test_file_route_serves_no_server_files(server: Served, outside_photo: Path, path: str) -> None:
    target = {
        "weights": str(Path(server.env["SEGMENTER_MODEL"]) / "model.safetensors"),
        "outside": str(outside_photo),
    }.get(path, path)
    r = httpx.get(f"{server.url}gradio_api/file={target}", timeout=30)
    assert r.status_code in (403, 404) and "root:" not in r.text


# ---------------------------------------------------------------- no URL is fetched


class Recorder(BaseHTTPRequestHandler):
    """A local stand-in for the internet: answers every GET with a photo and records the path."""

    hits: list[str]

    def do_GET(self) -> None:
        self.hits.append(self.path)
        body = valid_photo()
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def internet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """(URL of a photo on a recording server at 127.0.0.1, its hits), with 127.0.0.1 passing Gradio's SSRF filter.

    DNS look-ups (safehttpx asks dns.google when the system resolver gives no public address) are stubbed out
    and counted as hits too, so nothing here can leave the machine.
    """
    import safehttpx
    from gradio import processing_utils

    hits: list[str] = []

    async def no_dns(hostname: str) -> list[str]:
        hits.append(f"dns:{hostname}")
        return []

    monkeypatch.setattr(safehttpx, "async_resolve_hostname_google", no_dns)
    monkeypatch.setattr(safehttpx, "is_public_ip", lambda ip: True)
    handler = type("Handler", (Recorder,), {"hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_port}/photo.jpg"
    try:
        # The premise: with this filter, a URL that reaches Gradio's downloader is fetched.
        asyncio.run(processing_utils.async_ssrf_protected_download(url, str(tmp_path)))
        assert hits == ["/photo.jpg"], hits
        hits.clear()
        yield url, hits
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_no_endpoint_fetches_urls(app_url: str, internet: tuple[str, list[str]]) -> None:
    url, hits = internet
    payloads = [{"path": url, "meta": FILE_DATA}, {"path": url}, {"path": "photo.jpg", "url": url, "meta": FILE_DATA}]
    for payload in payloads:
        for endpoint in ("call", "queue"):
            r = api_call(app_url, endpoint, [payload, 0.5])
            assert r.status_code == 400, (payload, endpoint, r.text)
    with pytest.raises(httpx.HTTPStatusError, match="400 Bad Request"):  # gradio_client leaves URLs to the server
        Client(app_url, verbose=False).predict(handle_file(url), 0.5, api_name="/segment")
    for route in (f"file={url}", f"file/{url}", f"proxy={url}"):
        for method in ("GET", "HEAD"):
            r = httpx.request(method, f"{app_url}gradio_api/{route}", timeout=30)
            assert r.status_code in (400, 403), (route, method, r.status_code)
    r = httpx.post(f"{app_url}api/segment", data={"file": url}, params={"url": url}, timeout=30)
    assert r.status_code == 400
    assert hits == []


# ---------------------------------------------------------------- secrets and internals


def test_internal_errors_stay_in_the_server_log(app_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An unexpected exception: clients get a generic message, not its text; the server lives on."""
    detail = "/srv/internal/path-1234"

    def broken(*args: object) -> None:
        raise RuntimeError(detail)

    monkeypatch.setattr(segmenter.inference, "upsample", broken)  # a step of the pipeline every entry point runs
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(valid_photo())
    with pytest.raises(AppError) as failed:
        Client(app_url, verbose=False).predict(handle_file(photo), 0.5, api_name="/segment")
    assert detail not in str(failed.value)
    r = post_photo(app_url, valid_photo())
    assert r.status_code == 500 and "still running" in r.json()["error"] and detail not in r.text
    monkeypatch.undo()
    assert post_photo(app_url, valid_photo()).status_code == 200


def test_no_secret_in_responses_logs_or_model_card(server: Served, client: Client, tmp_path: Path) -> None:
    pages = [
        httpx.get(f"{server.url}{page}", timeout=30) for page in ("", "config", "gradio_api/info", "api/openapi.json")
    ]
    assert "Weights sha256" in pages[1].text  # the model card is part of the UI's config
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(AppError, match="not a readable image") as refused:
        client.predict(handle_file(bad), 0.5, api_name="/segment")
    assert SECRET not in str(refused.value)
    answers = [
        *pages,
        post_photo(server.url, b"not an image"),
        post_photo(server.url, valid_photo()),
        api_call(server.url, "call", [{"path": "/etc/passwd", "meta": FILE_DATA}, 0.5]),
    ]
    for r in answers:
        assert SECRET not in r.text and SECRET not in str(r.headers), r.url
    assert SECRET not in server.log_text()


# ---------------------------------------------------------------- HTTP requests in flight (issue 28)


def test_http_bodies_in_flight_are_bounded() -> None:
    """POST /api/segment read every body before it waited for a model slot, with nothing capping how many: 32
    uploads of 19 MB at once took RSS from 1 to 2.6 GB. Now at most ``http_requests`` hold a body; ``http_waiting``
    more wait with theirs unread, and the rest get 503 with Retry-After at once (or after ``http_wait_s``).

    Two runs, so that no outcome hangs on how fast a loaded host is: with a wait far longer than the test, a request
    beyond the waiting one is refused at once (its waiting peer cannot time out first); with a short wait, the waiting
    request is refused once it has passed (a slow host only makes it wait longer, never changes the answer)."""
    from fastapi import FastAPI

    from segmenter.pipeline import Options, finish
    from segmenter.server import Limits
    from segmenter.server.http_api import add_http_api

    photo = valid_photo()

    async def scenario(wait_s: float, refused_id: int) -> tuple[list[httpx.Response], httpx.Response, dict[str, int]]:
        """Two requests held in a stand-in model, one waiting for a body slot; then request ``refused_id`` (3: one
        beyond the waiting one; 2: the waiting one itself, once ``wait_s`` has passed). (the held and, unless it is the
        refused one, the waiting request's answers after the release; the refused answer; body bytes read per id)."""
        release, running = threading.Event(), threading.Semaphore(0)  # a model that waits to be released

        def segment(image: Image.Image, options: object) -> object:
            running.release()
            assert release.wait(timeout=300)
            return finish(image, np.zeros((image.height, image.width), np.uint8), None, Options(), 0.5, 0.5)

        api = FastAPI()
        add_http_api(api, segment, Limits(concurrency=2, http_requests=2, http_waiting=1, http_wait_s=wait_s))
        read: dict[str, int] = {}  # request id -> body bytes the app took in

        async def counting(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
            key = scope.get("query_string", b"").decode()

            async def counted():  # type: ignore[no-untyped-def]
                message = await receive()
                read[key] = read.get(key, 0) + len(message.get("body", b""))
                return message

            await api(scope, counted if scope["type"] == "http" else receive, send)

        async def post(client: httpx.AsyncClient, i: int) -> httpx.Response:
            return await client.post(f"/api/segment?id={i}", files={"file": ("p.png", photo)})

        transport = httpx.ASGITransport(app=counting)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=300) as client:
            holding = [asyncio.create_task(post(client, i)) for i in range(2)]
            for _ in range(2):  # both are in the model (each holds its body); polled with a deadline
                assert await asyncio.to_thread(running.acquire, True, 300)
            assert api.state.http_load() == (2, 0)
            waiter = asyncio.create_task(post(client, 2))  # waits for a body slot, its body unread
            if refused_id == 2:
                refused = await waiter  # no slot within wait_s: 503
            else:
                deadline = time.monotonic() + 300
                while api.state.http_load() != (2, 1):
                    assert time.monotonic() < deadline, api.state.http_load()
                    await asyncio.sleep(0.01)
                refused = await post(client, refused_id)  # beyond the bound: 503 at once
            release.set()
            answers = await asyncio.gather(*holding, *([] if refused_id == 2 else [waiter]))
        return answers, refused, read

    for wait_s, refused_id, why, answered in (
        (3600, 3, "2 photos in flight and 1 waiting", 3),  # the waiting one gets its slot after the release
        (0.5, 2, "no slot for the photo within 0.5 s", 2),
    ):
        done, refused, read = asyncio.run(scenario(wait_s, refused_id))
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit(), refused.text
        assert f"The server is busy ({why})" in refused.json()["error"]
        assert read.get(f"id={refused_id}", 0) == 0  # the refused request's body was never read
        assert [r.status_code for r in done] == [200] * answered
