"""``POST /api/segment``: a photo as multipart field ``file`` in, a PNG out, through the package's one pipeline."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..images import ImageError, encode_png, load_image
from ..pipeline import Options, Segmentation, check_threshold
from . import Limits, Segment
from .guard import json_error, read_body, replay

HTTP_OUTPUTS = ("cutout", "mask", "overlay")
RETRY_AFTER_S = 5
log = logging.getLogger("segmenter.server")


def result_headers(result: Segmentation) -> dict[str, str]:
    """X-Person-Present, X-Person-Share, X-Presence (the presence head's score) and X-Warning when there is one."""
    headers = {"X-Person-Present": "false" if result.no_person else "true", "X-Person-Share": f"{result.share:.4f}"}
    if result.presence is not None:
        headers["X-Presence"] = f"{result.presence:.4f}"
    if result.warning:
        headers["X-Warning"] = result.warning.encode("ascii", "replace").decode()
    return headers


def add_http_api(
    app: FastAPI,
    segment: Segment,
    limits: Limits,
    active: Callable[[], AbstractContextManager[object]] = contextlib.nullcontext,
) -> None:
    """Register ``POST /api/segment``: multipart field ``file`` -> PNG (``?output=cutout|mask|overlay``).

    Bad requests get 4xx with JSON ``{"error": ...}``. Model runs share a ``limits.concurrency``-wide limiter. Each
    request's decoding, segmenting and encoding run inside ``active()`` (the server's ``IdleTrim.active``).
    At most ``limits.http_requests`` requests hold their body at once; up to ``limits.http_waiting`` more wait for
    one of those slots, their bodies unread, for ``limits.http_wait_s``; beyond either, 503 with Retry-After.
    ``app.state.http_load()`` says how many hold a body and how many wait.
    """
    limiter = anyio.CapacityLimiter(limits.concurrency)
    bodies = anyio.Semaphore(limits.http_requests)
    waiting = 0  # requests waiting for a body slot (this runs on one event loop: a plain counter is exact)

    def load() -> tuple[int, int]:
        """(requests holding a body, requests waiting for a slot)."""
        return limits.http_requests - bodies.value, waiting

    app.state.http_load = load

    def busy(why: str) -> JSONResponse:
        response = json_error(503, f"The server is busy ({why}); retry in {RETRY_AFTER_S} s.")
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        response.headers["Connection"] = "close"  # the unread body is not drained
        return response

    async def invalid_query(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return json_error(422, problems)

    app.add_exception_handler(RequestValidationError, invalid_query)

    def segment_png(data: bytes, output: str, options: Options) -> tuple[bytes, Segmentation]:
        with active():
            result = segment(load_image(data, limits.max_upload_bytes, limits.max_pixels), options)
            return encode_png(result.render(output)), result

    @app.post(
        "/api/segment",
        summary="Segment the people in a photo",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "the cutout, mask or overlay as PNG"},
            400: {"description": 'bad request: JSON {"error": ...}'},
            413: {"description": "file or image too large"},
            415: {"description": "not an image"},
        },
    )
    async def http_segment(
        request: Request,
        output: str = "cutout",
        threshold: float | None = None,
        keep_largest: bool = False,
        fill_holes: bool = True,
    ) -> Response:
        """Send a photo as multipart form field ``file``; get a PNG at the photo's size.

        ``output``: ``cutout`` (RGBA, default), ``mask`` (binary, 0/255) or ``overlay``; ``threshold`` in (0, 1)
        (default: the model's); ``keep_largest`` and ``fill_holes`` as in the UI. Response headers:
        ``X-Person-Present: true|false``, ``X-Person-Share``, ``X-Presence`` (the presence score) and ``X-Warning``.
        """
        if output not in HTTP_OUTPUTS:
            return json_error(400, f"output must be one of {', '.join(HTTP_OUTPUTS)}, got {output!r}")
        try:
            threshold = None if threshold is None else check_threshold(threshold)
            options = Options(threshold=threshold, keep_largest=keep_largest, fill_holes=fill_holes)
        except ValueError as e:  # pipeline.check_threshold's one message
            return json_error(400, str(e))
        nonlocal waiting
        if bodies.value == 0 and waiting >= limits.http_waiting:
            return busy(f"{limits.http_requests} photos in flight and {waiting} waiting")
        got = False
        waiting += 1
        try:
            with anyio.move_on_after(limits.http_wait_s):
                await bodies.acquire()
                got = True
        finally:
            waiting -= 1
        if not got:
            return busy(f"no slot for the photo within {limits.http_wait_s:g} s")
        try:
            return await segment_request(request, output, options)
        finally:
            bodies.release()

    async def segment_request(request: Request, output: str, options: Options) -> Response:
        body = await read_body(request, limits.max_upload_bytes + 2**16)  # the photo plus the form's framing
        if body is None:
            return json_error(413, f"The request is larger than the {limits.max_upload_mb:g} MB upload limit.")
        try:
            async with Request(request.scope, replay(body)).form(max_files=1, max_fields=4) as form:
                upload = form.get("file")
                if not isinstance(upload, UploadFile):
                    return json_error(
                        400, "Send the photo as multipart/form-data field 'file' (curl -F file=@photo.jpg)."
                    )
                data = await upload.read()
        except HTTPException as e:  # malformed multipart body
            return json_error(400, f"Could not read the form: {e.detail}")
        try:
            png, result = await anyio.to_thread.run_sync(segment_png, data, output, options, limiter=limiter)
        except ImageError as e:
            return json_error(e.status, str(e))
        except Exception:
            log.exception("POST /api/segment failed")
            return json_error(500, "Internal error while segmenting; the server is still running.")
        headers = {**result_headers(result), "Content-Disposition": f'inline; filename="{output}.png"'}
        return Response(png, media_type="image/png", headers=headers)
