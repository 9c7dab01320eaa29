"""Inference session: a generator loaded once from safetensors (local folder, file or Hub repo) that segments photos.

Every mask goes through :meth:`Segmenter.segment` (see ``segmenter.pipeline`` for the steps after the model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .config import ModelConfig
from .hardware import cpu_has_bf16
from .images import ImageLike, as_pil, model_input
from .model import build_generator
from .pipeline import Options, Segmentation, finish, upsample
from .weights import CONFIG_NAME, ONNX_NAME, WEIGHTS_NAME, sha256_file
from .weights import save_folder as save_pretrained  # the older name: writes weights + config, returns the folder

__all__ = [
    "CONFIG_NAME",
    "ENGINES",
    "WEIGHTS_NAME",
    "ImageLike",
    "Segmenter",
    "as_pil",
    "cpu_has_bf16",
    "pick_engine",
    "save_pretrained",
    "sha256_file",
]

Engine = Literal["auto", "onnx", "torch", "bf16"]
ENGINES: tuple[str, ...] = ("auto", "onnx", "torch", "bf16")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def pick_engine(engine: str, device: torch.device, onnx_file: Path | None) -> str:
    """The engine that runs the model: ``auto`` -> ``onnx`` (ONNX Runtime, fp32: 2.1x eager PyTorch on this
    project's 2-core CPU, same masks) on a CPU when onnxruntime and the weights' ``model.onnx`` are there, else
    ``torch`` (eager fp32; always on CUDA). ``bf16`` (autocast + channels-last on CPUs with native bf16) is faster
    still but moves 0.11% of mask pixels, so it is only used when asked for."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    onnx_ok = device.type == "cpu" and onnx_file is not None and onnxruntime_installed()
    if engine == "auto":
        return "onnx" if onnx_ok else "torch"
    if engine == "onnx" and not onnx_ok:
        raise ValueError(
            f"engine onnx needs a CPU device, the onnxruntime package and {ONNX_NAME} beside the weights "
            "with its sha256 in config.json (written at export when the onnx package is installed)"
        )
    if engine == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        raise ValueError("engine bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); use torch or onnx")
    return engine


def onnx_session(path: Path):  # -> onnxruntime.InferenceSession
    """An ONNX Runtime session on the CPU with as many threads as torch uses (the app sets them per worker)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _checked_onnx(weights: Path, cfg: ModelConfig, hub: tuple[str, str | None] | None) -> Path | None:
    """The weights' model.onnx when config.json records its sha256 (a stale or foreign graph is never used)."""
    expected = cfg.meta.get("onnx_sha256")
    if not expected:
        return None
    path = weights.with_name(ONNX_NAME)
    if hub is not None:
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(hub[0], ONNX_NAME, revision=hub[1]))
        except Exception:  # an older repo without the graph: the torch engine serves
            return None
    if not path.is_file():
        return None
    if sha256_file(path) != expected:
        raise ValueError(
            f"{path}: sha256 does not match the one recorded in config.json; the file is corrupt or stale, so the "
            'ONNX engine (engine="onnx", or "auto" on a CPU) refuses it; engine="torch" does not use this file'
        )
    return path


HUB_PREFIX = "hf://"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")  # owner/name, as the Hub spells repo ids


def hub_repo_id(path_or_repo_id: str | Path) -> str | None:
    """The Hub repo id that ``path_or_repo_id`` names, or None when it names a local path: ``hf://owner/name``
    always; a bare ``owner/name`` only when nothing exists at that path here."""
    text = str(path_or_repo_id)
    if text.startswith(HUB_PREFIX):
        repo = text.removeprefix(HUB_PREFIX)
        if not HUB_ID.fullmatch(repo):
            raise ValueError(f"{text}: not a Hub repo id (hf://owner/name)")
        return repo
    if HUB_ID.fullmatch(text) and not Path(text).exists():
        return text
    return None


def _resolve(path_or_repo_id: str | Path, revision: str | None) -> tuple[Path, Path | None]:
    """-> (weights file, config file or None). Hub repo ids go through the huggingface_hub cache (offline-capable)."""
    p = Path(path_or_repo_id)
    if p.is_dir():
        if not (p / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"no {WEIGHTS_NAME} in {p}")
        return p / WEIGHTS_NAME, (p / CONFIG_NAME if (p / CONFIG_NAME).is_file() else None)
    if p.suffix == ".safetensors":
        if not p.is_file():
            raise FileNotFoundError(f"weights file not found: {p}")
        cfg = p.with_name(CONFIG_NAME)
        return p, (cfg if cfg.is_file() else None)
    repo = hub_repo_id(path_or_repo_id)
    if repo is None:
        raise FileNotFoundError(
            f"{path_or_repo_id}: not a weights folder, a .safetensors file or a Hub repo id (owner/name or hf://owner/name)"
        )
    from huggingface_hub import hf_hub_download

    weights = Path(hf_hub_download(repo, WEIGHTS_NAME, revision=revision))
    config = Path(hf_hub_download(repo, CONFIG_NAME, revision=revision))
    return weights, config


class Segmenter:
    """A generator loaded once, in eval mode, that maps photos to person masks at the photo's own size."""

    def __init__(
        self,
        model: nn.Module,
        cfg: ModelConfig,
        device: str | torch.device | None = None,
        engine: Engine = "auto",
        onnx_file: Path | None = None,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.cfg = cfg
        self.engine = pick_engine(engine, self.device, onnx_file)
        self.model = model.to(self.device).eval()
        if self.engine == "bf16":  # oneDNN's bf16 convolutions want NHWC weights and activations
            self.model = self.model.to(memory_format=torch.channels_last)
        self.session = onnx_session(onnx_file) if self.engine == "onnx" and onnx_file else None
        if getattr(self.model, "presence", None) is None:
            self.model.presence = None  # the pix2pix U-Net has none: every photo counts as showing a person

    @property
    def threshold(self) -> float:
        return self.cfg.threshold

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | Path,
        device: str | torch.device | None = None,
        revision: str | None = None,
        engine: Engine = "auto",
        verify: bool = True,
    ) -> Segmenter:
        """Load from a folder with config.json + model.safetensors, a .safetensors file, or a Hub repo id.

        The weights file must match the sha256 that config.json records. ``verify=False`` is the explicit opt-out
        for weights without one (or without a config.json: then the default pix2pix_unet config); a recorded
        sha256 is checked either way. ``engine``: ``onnx``, ``torch``, ``bf16`` or ``auto`` (see
        :func:`pick_engine`); ``model.onnx`` is used only when its sha256 matches too, and only the ONNX engine
        (``onnx``, or ``auto`` on a CPU) reads it: a corrupt graph fails those and leaves ``torch`` and ``bf16`` be.
        """
        weights, config = _resolve(path_or_repo_id, revision)
        if config is None and verify:
            raise FileNotFoundError(
                f"{weights.parent}: no {CONFIG_NAME} beside {weights.name} (it records the architecture and the "
                "weights' sha256); pass verify=False to load bare weights as the default pix2pix_unet"
            )
        cfg = ModelConfig.load(config) if config is not None else ModelConfig()
        expected = cfg.meta.get("sha256")
        if not expected and verify:
            raise ValueError(
                f"{config}: records no sha256 of {weights.name}, so the weights cannot be verified; "
                "pass verify=False to load them anyway"
            )
        if expected and sha256_file(weights) != expected:
            raise ValueError(
                f"{weights}: sha256 does not match the one recorded in {config}; "
                "the file is corrupt, truncated or was replaced"
            )
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{weights}: not a readable safetensors file ({e})") from e
        model = build_generator(cfg)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{weights}: weights do not fit a {cfg.arch} generator: {e}") from e
        repo = hub_repo_id(path_or_repo_id)
        hub = (repo, revision) if repo is not None else None
        on_cpu = (torch.device(device) if device is not None else default_device()).type == "cpu"
        wants_onnx = engine == "onnx" or (engine == "auto" and on_cpu)
        return cls(model, cfg, device, engine, _checked_onnx(weights, cfg, hub) if wants_onnx else None)

    # ------------------------------------------------------------ the model step
    def preprocess(self, images: Sequence[Image.Image], size: int | None = None) -> torch.Tensor:
        """RGB photos -> (B,3,S,S) normalised batch on the device (S: ``size`` or the model's input size)."""
        return model_input(images, size or self.cfg.input_size, self.cfg.mean, self.cfg.std).to(self.device)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B,3,S,S) preprocessed batch -> ((B,1,S,S) tanh map, (B,) presence logits or None): the model alone."""
        if self.session is not None:
            outputs = self.session.run(None, {"pixels": np.ascontiguousarray(x.numpy(), dtype=np.float32)})
            return torch.from_numpy(outputs[0]), (torch.from_numpy(outputs[1]) if len(outputs) > 1 else None)
        bf16 = self.engine == "bf16"
        if bf16:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            if self.model.presence is not None:
                y, logit = self.model(x, with_presence=True)
                return y.float(), logit.float()
            return self.model(x).float(), None

    def predict_low_res(
        self, images: Sequence[ImageLike], options: Options | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Photos -> ((B, S, S) float32 probabilities at the model's input size, (B,) presence scores or None)."""
        return self._low_res([as_pil(im) for im in images], options or Options())

    @torch.inference_mode()
    def _low_res(self, photos: Sequence[Image.Image], options: Options) -> tuple[np.ndarray, np.ndarray | None]:
        """predict_low_res on photos already converted to upright RGB (each full-size photo is converted once)."""
        x = self.preprocess(photos, options.input_size)
        if self.cfg.tta_flip if options.flip is None else options.flip:  # the photo and its mirror, averaged
            y, logit = self.forward(torch.cat([x, x.flip(-1)]))
            y = (y[: len(x)] + y[len(x) :].flip(-1)) / 2  # (B,1,S,S) in [-1,1]
            logit = None if logit is None else (logit[: len(x)] + logit[len(x) :]) / 2
        else:
            y, logit = self.forward(x)
        prob = ((y[:, 0].float() + 1) / 2).clamp_(0, 1).cpu().numpy()
        return prob, None if logit is None else torch.sigmoid(logit.float()).cpu().numpy()

    # ------------------------------------------------------------ the one pipeline
    def segment(self, image: ImageLike, options: Options | None = None) -> Segmentation:
        """One photo -> Segmentation at its full size (mask, alpha, outputs, presence), by ``options``."""
        return self.segment_batch([image], options)[0]

    def segment_batch(self, images: Sequence[ImageLike], options: Options | None = None) -> list[Segmentation]:
        """Photos -> Segmentations, the model run once on the whole batch."""
        options = options or Options()
        pils = [as_pil(im) for im in images]
        if not pils:
            return []
        low, presence = self._low_res(pils, options)
        return [
            finish(
                pil,
                upsample(p, pil, options.upsample),
                None if presence is None else float(presence[i]),
                options,
                self.threshold,
                self.cfg.presence_threshold,
            )
            for i, (pil, p) in enumerate(zip(pils, low, strict=True))
        ]

    def segment_many(
        self, images: Iterable[ImageLike], options: Options | None = None, batch_size: int = 8
    ) -> Iterator[Segmentation]:
        """Lazily segment an iterable of photos, ``batch_size`` per model call."""
        chunk: list[ImageLike] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == batch_size:
                yield from self.segment_batch(chunk, options)
                chunk = []
        yield from self.segment_batch(chunk, options)

    # ------------------------------------------------------------ shortcuts onto segment()
    def predict_proba(self, image: ImageLike, options: Options | None = None) -> np.ndarray:
        """One photo -> (H, W) float32 person probabilities in [0, 1] at its size (the pipeline's stored map / 255)."""
        return self.segment(image, options).probability.astype(np.float32) / 255.0

    def predict_probas(self, images: Sequence[ImageLike], batch_size: int = 8) -> list[np.ndarray]:
        return [s.probability.astype(np.float32) / 255.0 for s in self.segment_many(images, batch_size=batch_size)]

    def get_mask(self, image: ImageLike, threshold: float | None = None) -> Image.Image:
        """One photo -> binary mask (PIL "L", 0/255) at its size: exactly the Space's default mask."""
        return self.segment(image, Options(threshold=threshold)).mask

    def get_masks(
        self, images: Sequence[ImageLike], batch_size: int = 8, threshold: float | None = None
    ) -> list[Image.Image]:
        return [s.mask for s in self.segment_many(images, Options(threshold=threshold), batch_size)]

    def info(self) -> dict:
        """Provenance for display: arch, input size, presence head, scene prior (and ``scene_prior_fit``: its fit, as
        recorded in config.json's ``meta.scene_prior``), sha256, metrics recorded at export."""
        meta = dict(self.cfg.meta)
        fit = meta.pop("scene_prior", None)
        prior = getattr(self.model, "scene", None) is not None
        return json.loads(
            json.dumps(
                {
                    "arch": self.cfg.arch,
                    "input_size": self.cfg.input_size,
                    "tta_flip": self.cfg.tta_flip,
                    "presence_head": self.model.presence is not None,
                    "device": str(self.device),
                    "engine": self.engine,
                    **meta,
                    "scene_prior": prior,
                    **({"scene_prior_fit": fit} if fit and prior else {}),
                }
            )
        )
