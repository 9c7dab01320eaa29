"""What this machine's CPU can do, asked once by training (``--amp``) and by inference (``engine="bf16"``)."""

from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """True where oneDNN runs bf16 natively on this CPU (AVX-512 bf16 or AMX): bf16 autocast pays off there."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
