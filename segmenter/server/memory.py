"""Keep a long-running server from holding on to the buffers of photos it has finished with (issue 15, item 5)."""

from __future__ import annotations

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20  # bytes: a 1 MP greyscale float32 plane is 4 MB, a 12 MP RGB photo 36 MB


def return_freed_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Give every allocation of ``threshold`` bytes or more its own mapping, returned to the OS when freed (glibc).

    By default glibc raises that threshold to the size of the largest block freed so far (up to 32 MB), so after
    one large photo its 1-32 MB buffers come from the heap, where they stay resident once freed: the server's RSS
    nearly doubled after its first requests and never came back. A fixed threshold also stops the heap's trim
    threshold from growing. Returns False where the C library is not glibc (nothing changes there).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, threshold) == 1


def trim_heap() -> bool:
    """Hand the free pages inside glibc's heaps back to the OS (``malloc_trim``); False where not glibc."""
    try:
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    malloc_trim(0)
    return True
