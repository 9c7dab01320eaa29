"""The weights format: ``model.safetensors`` + ``config.json`` (recording its sha256) and the optional
``model.onnx`` (the graph the ONNX Runtime engine serves, with its own sha256). The loader
(``segmenter.inference``) reads it; ``segmenter.export`` writes it. Nothing here imports either."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import warnings
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import ModelConfig

WEIGHTS_NAME, CONFIG_NAME, CARD_NAME, ONNX_NAME = "model.safetensors", "config.json", "README.md", "model.onnx"
EXPORT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
OPTIONAL_FILES = (ONNX_NAME,)  # the ONNX Runtime engine's graph; its sha256 in config.json says it is current


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def with_meta(cfg: ModelConfig, **meta: object) -> ModelConfig:
    """A copy of ``cfg`` with ``meta`` merged into its ``meta`` (a value of None drops that key)."""
    merged = {k: v for k, v in {**cfg.meta, **meta}.items() if v is not None}
    return dataclasses.replace(cfg, meta=copy.deepcopy(merged))


def save_pretrained(model: nn.Module, cfg: ModelConfig, folder: str | Path, half: bool = False) -> ModelConfig:
    """Write ``model.safetensors``, ``model.onnx`` (when the onnx package is there) and ``config.json`` into
    ``folder``. ``cfg`` is left as it was; returns the config written (``cfg`` with the files' sha256 and dtype)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous()
        for k, v in model.state_dict().items()
    }
    weights = folder / WEIGHTS_NAME
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(weights)
    onnx = save_onnx(model, cfg, folder)
    saved = with_meta(
        cfg,
        sha256=sha256_file(weights),
        dtype="float16" if half else "float32",
        onnx_sha256=None if onnx is None else sha256_file(onnx),
    )
    saved.save(folder / CONFIG_NAME)
    return saved


def save_folder(model: nn.Module, cfg: ModelConfig, folder: str | Path, half: bool = False) -> Path:
    """``save_pretrained`` for callers that want the folder back (``segmenter.export.save_pretrained``)."""
    save_pretrained(model, cfg, folder, half)
    return Path(folder)


class Served(nn.Module):
    """The forward the Segmenter runs: the generator's mask, plus its presence logits as a second output when it has
    a presence head. No flag to branch on, so the ONNX exporter (and torch.fx) can trace it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if getattr(self.model, "presence", None) is not None:
            return self.model(x, with_presence=True)
        return self.model(x)


def save_onnx(model: nn.Module, cfg: ModelConfig, folder: str | Path) -> Path | None:
    """Write ``model.onnx`` (fp32; batch, height and width dynamic); returns the file, or None (and removes a stale
    one). The caller records its sha256 in config.json (``save_pretrained`` does).

    Needs the ``onnx`` package (torch's exporter uses it; a training-time dependency): without it nothing is written
    and the ONNX Runtime engine is not offered for these weights.
    """
    path = Path(folder) / ONNX_NAME
    try:
        import onnx  # noqa: F401  (optional: only torch's exporter needs it)
    except ImportError:
        print(f"note: the onnx package is missing, so no {ONNX_NAME} (the ONNX Runtime engine) was written")
        path.unlink(missing_ok=True)
        return None
    net = Served(copy.deepcopy(model).float().cpu().eval())
    with_presence = getattr(net.model, "presence", None) is not None
    names = ["mask", "presence"] if with_presence else ["mask"]
    axes = {"pixels": {0: "batch", 2: "height", 3: "width"}, "mask": {0: "batch", 2: "height", 3: "width"}}
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notice
        sample = torch.zeros(1, 3, cfg.input_size, cfg.input_size)
        torch.onnx.export(
            net,
            (sample,),
            str(tmp),
            dynamo=False,
            opset_version=17,
            input_names=["pixels"],
            output_names=names,
            dynamic_axes={**axes, "presence": {0: "batch"}} if with_presence else axes,
        )
    tmp.replace(path)
    return path
