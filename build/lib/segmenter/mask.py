"""The original one-call API, kept for existing scripts::

    from segmenter import mask
    mask.device = "cpu"                                   # or "cuda"
    mask.modelPath = "weights/model.safetensors"
    generated_mask = mask.getMask(input_image)            # 1xHxW float tensor of 0/1 at the image's size
    masked_image = mask.addMask(image_tensor, generated_mask)

The model is loaded on first use and reloaded when ``device`` or ``modelPath`` changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .inference import ImageLike, Segmenter

device: str = "cuda" if torch.cuda.is_available() else "cpu"
modelPath: str | Path = Path(__file__).resolve().parent.parent / "weights" / "model.safetensors"

# One loaded model at a time, keyed by the (device, modelPath) it was loaded for.
_loaded: dict[tuple[str, str], Segmenter] = {}


def _segmenter() -> Segmenter:
    """The Segmenter for the current ``device`` and ``modelPath``, loading it when either changed."""
    key = (str(device), str(modelPath))
    if key not in _loaded:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"mask.device is {device!r} but CUDA is not available; set mask.device = 'cpu'")
        _loaded.clear()
        _loaded[key] = Segmenter.from_pretrained(modelPath, device=device)
    return _loaded[key]


def getMask(input_image: ImageLike) -> torch.Tensor:
    """Person mask from the pre-trained model: float tensor (1, H, W) of 0/1 at the input's size.

    ``input_image``: PIL image, HxWx3 uint8 array, or 3xHxW tensor (uint8, or float in [0, 1]).
    """
    binary = np.asarray(_segmenter().get_mask(input_image)) > 127  # (H, W) bool
    return torch.from_numpy(binary).float()[None]


def addMask(image_tensor: torch.Tensor, mask_tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise product, e.g. a 3xHxW image times a 1xHxW mask keeps the person and blacks out the rest."""
    try:
        torch.broadcast_shapes(image_tensor.shape, mask_tensor.shape)
    except RuntimeError as e:
        raise ValueError(
            f"addMask: image of shape {tuple(image_tensor.shape)} and mask of shape "
            f"{tuple(mask_tensor.shape)} cannot be multiplied element-wise"
        ) from e
    return image_tensor * mask_tensor
