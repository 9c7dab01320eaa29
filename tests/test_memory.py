"""segmenter.server.memory: freed photo-sized buffers go back to the OS instead of staying in the heap."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import REPO_ROOT

# In a fresh interpreter: free one 8 MB block (glibc then raises its mmap threshold to 8 MB), allocate eight more
# and something small after them, free the eight; print how much of their 64 MB stays resident (after a trim, or
# with a fixed threshold set first).
RETAINED = """
import sys
import numpy as np, psutil
from segmenter.server.memory import return_freed_buffers, trim_heap
if sys.argv[1] == "mapped":
    assert return_freed_buffers()
proc = psutil.Process()
first = np.ones(1 << 20); del first
before = proc.memory_info().rss
blocks = [np.ones(1 << 20) for _ in range(8)]
after = [bytearray(200_000) for _ in range(3)]
del blocks
if sys.argv[1] == "trimmed":
    assert trim_heap()
print((proc.memory_info().rss - before) / 2**20)
"""


def retained_mb(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", RETAINED, mode], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    return float(out)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_buffers_return_to_the_os() -> None:
    default, trimmed, mapped = retained_mb("default"), retained_mb("trimmed"), retained_mb("mapped")
    assert default > 48, default  # glibc's default keeps them (what made the server's RSS grow)
    assert trimmed < 8, trimmed
    assert mapped < 8, mapped


def test_idle_trim_waits_for_an_idle_spell_after_the_last_request_and_trims_once() -> None:
    from segmenter.server.memory import IdleTrim

    now, trims = [100.0], []
    idle_trim = IdleTrim(10.0, trim=lambda: trims.append(now[0]) or True, clock=lambda: now[0])
    now[0] = 109.9
    assert not idle_trim()  # the sweeper calls it each second: too soon after start-up
    now[0] = 110.0
    assert idle_trim() and not idle_trim()  # idle 10 s: one trim, then none while still idle
    with idle_trim.active():  # a request from 115 to 130: never trimmed while it runs
        for now[0] in (115.0, 125.0, 130.0):
            assert not idle_trim()
    now[0] = 139.9
    assert not idle_trim()  # photos in quick succession keep their pages
    now[0] = 140.0
    assert idle_trim()
    assert trims == [110.0, 140.0]
    with pytest.raises(ValueError, match="idle_s"):
        IdleTrim(-1.0)


def test_idle_trim_of_zero_trims_after_each_request_never_during_one() -> None:
    from segmenter.server.memory import IdleTrim

    now, trims = [0.0], []
    idle_trim = IdleTrim(0.0, trim=lambda: trims.append(now[0]) or True, clock=lambda: now[0])
    for start in (1.0, 3.0):
        with idle_trim.active():
            now[0] = start
            assert not idle_trim()
        now[0] = start + 0.5
        assert idle_trim() and not idle_trim()
    assert trims == [1.5, 3.5]
