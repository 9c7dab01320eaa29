"""ASGI middleware: request bodies arrive whole, in time and within limits; the Gradio API reads only uploaded files
and never fetches a URL."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GRADIO_API = "/gradio_api/"
UPLOAD_ROUTE = f"{GRADIO_API}upload"
log = logging.getLogger("segmenter.server")


def json_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None as soon as it grows past ``limit`` bytes (also for chunked uploads)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def replay(body: bytes, receive: Receive | None = None) -> Receive:
    """An ASGI ``receive`` that hands over an already-read body, then defers to ``receive`` (e.g. for disconnects)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent and receive is not None:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


def is_http_url(text: str) -> bool:
    return text[:8].lower().startswith(("http://", "https://"))


def names_foreign_file(payload: object, upload_dir: Path) -> bool:
    """Whether a request's JSON names a file (a ``{"path": ...}`` object) that is not in ``upload_dir``."""
    stack = [payload]
    while stack:  # iterative: deeply nested JSON cannot exhaust the stack
        item = stack.pop()
        if isinstance(item, dict):
            path = item.get("path")
            if isinstance(path, str):
                try:
                    if not Path(os.path.realpath(path)).is_relative_to(upload_dir):
                        return True
                except ValueError:  # e.g. a NUL byte in the path
                    return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


class UploadsOnly:
    """ASGI middleware: the Gradio API only ever reads files that were uploaded to this server.

    Gradio copies any server path named in an API request (``{"path": "/etc/passwd", ...}``) into its cache and
    downloads http(s) URLs there; a mounted app (``gr.mount_gradio_app``) even skips Gradio's own check that inputs
    were uploaded. So every POST under ``/gradio_api/`` except the upload route itself is refused (400) when its
    JSON names a file outside Gradio's upload folder, and ``/gradio_api/file=<URL>`` (a fetching proxy) is refused
    (403): the server never fetches a URL. Request bodies over ``max_bytes`` are refused (413).
    """

    def __init__(self, app: ASGIApp, upload_dir: str | Path, max_bytes: int) -> None:
        self.app = app
        self.upload_dir = Path(os.path.realpath(upload_dir))
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = None
        if scope["type"] == "http" and scope["path"].startswith(GRADIO_API):
            refusal, receive = await self.check(scope, receive)
        await (refusal or self.app)(scope, receive, send)

    async def check(self, scope: Scope, receive: Receive) -> tuple[Response | None, Receive]:
        """(the refusal, or None to pass the request on; the ``receive`` to pass it on with)."""
        path = scope["path"]
        route = path.removeprefix(GRADIO_API)
        if route[:5] in ("file=", "file/") and is_http_url(route[5:]):
            log.warning("Refused %s %r: the server does not fetch URLs", scope["method"], path[:200])
            return json_error(403, "This server does not fetch URLs."), receive
        if scope["method"] != "POST" or path.rstrip("/") == UPLOAD_ROUTE:
            return None, receive
        body = await read_body(Request(scope, receive), self.max_bytes)
        if body is None:
            return json_error(413, f"The request is larger than the {self.max_bytes / 2**20:g} MB limit."), receive
        try:
            payload = json.loads(body) if body else None
        except (ValueError, RecursionError):
            payload = None  # not JSON: Gradio answers it (its JSON routes use the same parser)
        if names_foreign_file(payload, self.upload_dir):
            log.warning("Refused POST %s: it names a file that was not uploaded (a server path or URL)", path)
            message = "Files must be uploaded first (gradio_client: handle_file); server paths and URLs are refused."
            return json_error(400, message), receive
        return None, replay(body, receive)


def multipart_boundary(scope: Scope) -> bytes | None:
    """The ``--boundary`` delimiter of a multipart/form-data request, or None."""
    for key, value in scope.get("headers", []):
        if key == b"content-type" and value.lower().startswith(b"multipart/form-data"):
            for param in value.split(b";")[1:]:
                name, _, boundary = param.strip().partition(b"=")
                if name.lower() == b"boundary" and boundary:
                    return b"--" + boundary.strip(b'"')
    return None


class PartCounter:
    """Counts multipart delimiters in a body fed chunk by chunk (a delimiter may be split between chunks)."""

    def __init__(self, delimiter: bytes) -> None:
        self.delimiter, self.tail, self.seen = delimiter, b"", 0

    def feed(self, chunk: bytes) -> int:
        """Parts (files and fields) begun so far."""
        data = self.tail + chunk
        self.seen += data.count(self.delimiter)
        self.tail = data[-(len(self.delimiter) - 1) :]  # too short to hold a whole (already counted) delimiter
        return max(0, self.seen - 1)  # the closing delimiter (--boundary--) starts no part


class BodyGuard:
    """ASGI middleware: every request body arrives whole within ``deadline_s``, with no gap over ``idle_s``;
    Gradio's upload route takes at most ``upload_max_bytes`` and ``upload_max_files`` per request.

    A client that is too slow gets 408 and one that sends too much 413, with ``Connection: close``; either, and a
    client that goes away mid-body, is one log line. The request's own handler then sees a disconnect, and what it
    raises because of it is not logged as a crash (without this, each aborted upload logged a traceback).
    """

    def __init__(
        self, app: ASGIApp, deadline_s: float, idle_s: float, upload_max_bytes: int, upload_max_files: int
    ) -> None:
        self.app = app
        self.deadline_s, self.idle_s = deadline_s, idle_s
        self.upload_max_bytes, self.upload_max_files = upload_max_bytes, upload_max_files

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = BodyWatch(self, scope, receive, send)
        try:
            await self.app(scope, watch.receive, watch.send)
        except Exception:
            if watch.problem is None:
                raise  # an unexpected error: the server logs its one traceback
        if watch.problem is not None:
            await watch.finish()


class BodyWatch:
    """One request's body, read through :class:`BodyGuard`'s limits."""

    def __init__(self, guard: BodyGuard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard, self.scope, self._receive, self._send = guard, scope, receive, send
        self.deadline = asyncio.get_running_loop().time() + guard.deadline_s
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_ROUTE
        delimiter = multipart_boundary(scope) if upload else None
        self.parts = PartCounter(delimiter) if delimiter else None
        self.max_bytes = guard.upload_max_bytes if upload else None
        self.received, self.whole, self.started = 0, False, False
        self.problem: tuple[int | None, str] | None = None  # (status to answer, or None: the client left; message)

    async def receive(self) -> Message:
        if self.problem is not None:
            return {"type": "http.disconnect"}
        if self.whole:  # after the body only disconnects arrive: they may take as long as the response does
            return await self._receive()
        timeout = min(self.guard.idle_s, self.deadline - asyncio.get_running_loop().time())
        try:
            message = await asyncio.wait_for(self._receive(), max(timeout, 0.0))
        except TimeoutError:
            return self.fail(
                408,
                f"The request did not arrive within {self.guard.deadline_s:g} s "
                f"(or paused over {self.guard.idle_s:g} s).",
            )
        if message["type"] == "http.disconnect":
            return self.fail(None, "the client went away before its request arrived whole")
        body = message.get("body", b"")
        self.received += len(body)
        if self.max_bytes is not None and self.received > self.max_bytes:
            return self.fail(413, f"The upload is larger than the {self.max_bytes / 2**20:g} MB per-request limit.")
        if self.parts is not None and self.parts.feed(body) > self.guard.upload_max_files:
            return self.fail(413, f"At most {self.guard.upload_max_files} files can be uploaded at once.")
        self.whole = not message.get("more_body", False)
        return message

    def fail(self, status: int | None, message: str) -> Message:
        self.problem = (status, message)
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self.problem is not None:
            return  # the handler's answer to the disconnect it was shown; finish() answers instead
        self.started |= message["type"] == "http.response.start"
        await self._send(message)

    async def finish(self) -> None:
        """Log the problem in one line and, when the client is still there, answer it."""
        status, message = self.problem
        what = f"{self.scope['method']} {self.scope['path'][:200]}"
        log.warning("%s: %s (%.1f MB received)", what, message, self.received / 2**20)
        if status is None or self.started:
            return
        body = json.dumps({"error": message}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        try:
            await self._send({"type": "http.response.start", "status": status, "headers": headers})
            await self._send({"type": "http.response.body", "body": body})
        except OSError:  # the client left meanwhile
            pass
