"""Keep a long-running server from holding on to the buffers of photos it has finished with (issue 15, item 5).

glibc serves buffers under its mmap threshold from its heaps, and raises that threshold to the largest block freed
so far (up to 32 MB): after a few large photos, their 1-32 MB buffers stay resident once freed, in one heap per
worker thread, and RSS grew by 1.8x over 500 mixed-size requests. :func:`trim_heap`, run each second, hands the
free pages back; :func:`return_freed_buffers` instead maps each large buffer on its own (returned at once, but each
photo's buffers are then faulted in anew, which made each photo slower).
"""

from __future__ import annotations

import ctypes
import functools

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
