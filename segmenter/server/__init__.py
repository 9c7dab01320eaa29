"""Serving pieces the Space mounts around its Gradio UI: the plain HTTP endpoint, the upload guard, the batch ZIP.

They take their limits as a :class:`Limits` value (the app reads the environment once and passes it on).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..pipeline import Options, Segmentation

Segment = Callable[[Image.Image, Options], Segmentation]  # Segmenter.segment, or the app's wrapper of it


@dataclass(frozen=True)
class Limits:
    """What one request may send: upload size (per file and per request), pixels per photo, photos per batch, the
    time its body may take; model runs at a time; HTTP requests in flight."""

    max_upload_bytes: int = 20 * 2**20  # one file
    max_request_bytes: int = 100 * 2**20  # one upload request (the Batch tab sends its photos in one)
    max_pixels: int = 16_000_000
    max_batch: int = 24
    concurrency: int = 2
    body_timeout_s: float = 120.0  # the whole request body; 20 MB then needs about 1.4 Mbit/s
    body_idle_s: float = 20.0  # the longest pause between two pieces of a body
    # POST /api/segment: at most http_requests bodies in memory at once; up to http_waiting more requests wait (their
    # bodies unread) for http_wait_s, beyond either: 503 with Retry-After (32 uploads of 19 MB at once once took RSS
    # from 1 to 2.6 GB).
    http_requests: int = 4
    http_waiting: int = 32
    http_wait_s: float = 10.0

    @property
    def max_upload_mb(self) -> float:
        return self.max_upload_bytes / 2**20
