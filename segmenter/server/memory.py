"""Keep a long-running server from holding on to the buffers of photos it has finished with (issue 15, item 5).

glibc serves buffers under its mmap threshold from its heaps, and raises that threshold to the largest block freed
so far (up to 32 MB): after a few large photos, their 1-32 MB buffers stay resident once freed, in one heap per
worker thread, and RSS grew by 1.8x over 500 mixed-size requests. :func:`trim_heap` hands the free pages back;
:class:`IdleTrim` calls it once the server has been idle a while (trimming each second, as it once did, handed back
the pages of one photo just before the next one needed them: ``bench/heap_trim.py``); :func:`return_freed_buffers`
instead maps each large buffer on its own (returned at once, but each photo's buffers are then faulted in anew, which
made each photo slower).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import threading
import time
from collections.abc import Callable, Iterator

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # bytes: a 1 MP greyscale float32 plane is 4 MB, a 12 MP RGB photo 36 MB


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library once (trim_heap may run every second), or None where it is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 (both exist in glibc only)
    except (OSError, AttributeError):
        return None
    return libc


def return_freed_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, returned to the OS when freed (glibc;
    a fixed threshold also stops glibc from raising it). False where the C library is not glibc."""
    libc = _glibc()
    return libc is not None and libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1


def trim_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the OS (``malloc_trim``); False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


class IdleTrim:
    """Runs ``trim`` (:func:`trim_heap`) once the server has been idle ``idle_s`` seconds: no request inside
    :meth:`active` and none left one for that long. Freed photo buffers go back to the OS between visitors, while photos
    that follow each other reuse the pages of the last one instead of faulting them in anew. Call the object itself as
    often as you like (the cache sweeper does, each second); it trims at most once per idle spell. ``idle_s`` 0 trims
    at the first call after each request (what trimming each second did)."""

    def __init__(
        self, idle_s: float, trim: Callable[[], bool] = trim_heap, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if idle_s < 0:
            raise ValueError(f"idle_s must be >= 0, got {idle_s}")
        self.idle_s, self.trim, self.clock = idle_s, trim, clock
        self._last = clock()  # when the last request left (start-up counts as one)
        self._running = 0
        self._trimmed = False
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Around a request's work (segmenting, rendering, encoding): no trim while it runs nor ``idle_s`` after."""
        with self._lock:
            self._running += 1
            self._trimmed = False
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                self._last = self.clock()

    def __call__(self) -> bool:
        """Trim if idle ``idle_s`` seconds and not trimmed since the last request; True if it trimmed."""
        with self._lock:
            if self._running or self._trimmed or self.clock() - self._last < self.idle_s:
                return False
            self._trimmed = True
        return self.trim()
