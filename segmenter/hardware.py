"""What this machine's CPU can do, asked once by training (``--amp``) and by inference (``engine="bf16"``)."""

from __future__ import annotations

from pathlib import Path

import torch

NATIVE_BF16_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's own CPUID checks
NATIVE_BF16_FLAGS = {"avx512_bf16", "amx_bf16"}  # the same, as Linux's /proc/cpuinfo names them
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16() -> bool:
    """True where this CPU runs bf16 natively (AVX512-BF16 or AMX), so that bf16 autocast pays off.

    oneDNN also runs bf16 on plain AVX-512 by emulation, and ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` says
    True there; on such a Xeon a bf16 train step took 1.1-1.9x the fp32 one (bench/training.py --precision,
    2026-12-08), so that CPU counts as having none."""
    if not torch.backends.mkldnn.is_available():
        return False
    checks = [getattr(torch.cpu, name, None) for name in NATIVE_BF16_CHECKS]
    if any(check is not None for check in checks):
        return any(bool(check()) for check in checks if check is not None)
    try:  # an older torch without those checks
        return bool(NATIVE_BF16_FLAGS & set(CPUINFO.read_text().split()))
    except OSError:
        return False
