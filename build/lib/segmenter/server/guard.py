"""ASGI middleware that lets the Gradio API read only files uploaded to this server, and never fetch a URL."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

GRADIO_API = "/gradio_api/"
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
        if scope["method"] != "POST" or path.rstrip("/") == f"{GRADIO_API}upload":
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
