"""Keep a long-running server from holding on to the buffers of photos it has finished with (issue 15, item 5).

glibc serves buffers under its mmap threshold from its heaps, and raises that threshold to the largest block freed
so far (up to 32 MB): after a few large photos, their 1-32 MB buffers stay resident once freed, in one heap per
worker thread, and RSS grew by 1.8x over 500 mixed-size requests. :func:`trim_heap` hands the free pages back;
:class:`IdleTrim` calls it once the server has been idle a while (each second, as it once was, every photo faulted its
buffers in anew: a 12 MP photo took 1.13x as long); :func:`return_freed_buffers` instead maps each large buffer on its
own (returned at once, but each photo's buffers are then faulted in anew, which made each photo slower).
"""

from __future__ import annotations

import ctypes
import functools
import threading
import time
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # bytes: a 1 MP greyscale float32 plane is 4 MB, a 12 MP RGB photo 36 MB


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library once (trim_heap runs every second), or None where it is not glibc."""
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
    """Runs ``trim`` (:func:`trim_heap`) once the server has been idle ``idle_s`` seconds, i.e. no :meth:`busy` call
    since: freed photo buffers go back to the OS between visitors, while photos that follow each other reuse the pages
    of the last one instead of faulting them in anew. Call the object itself as often as you like (the cache
    sweeper does, each second); it trims at most once per idle spell."""

    def __init__(
        self, idle_s: float, trim: Callable[[], bool] = trim_heap, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if idle_s < 0:
            raise ValueError(f"idle_s must be >= 0, got {idle_s}")
        self.idle_s, self.trim, self.clock = idle_s, trim, clock
        self._last = clock()
        self._trimmed = False
        self._lock = threading.Lock()

    def busy(self) -> None:
        """A request is being served: no trim for the next ``idle_s`` seconds."""
        with self._lock:
            self._last = self.clock()
            self._trimmed = False

    def __call__(self) -> bool:
        """Trim if the server has been idle ``idle_s`` seconds and has not been trimmed since; True if it trimmed."""
        with self._lock:
            if self._trimmed or self.clock() - self._last < self.idle_s:
                return False
            self._trimmed = True
        return self.trim()
