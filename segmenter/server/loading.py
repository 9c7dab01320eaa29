"""Where the Space gets its model: the local ``weights/`` folder, else the model repo its README names.

A Space deployed without ``weights/`` (``scripts/deploy_space.py --weights hub``) loads the first entry of the
README front matter's ``models:`` list through :meth:`Segmenter.from_pretrained`, i.e. the Hugging Face cache
(``HF_HOME``, ``HF_HUB_OFFLINE=1`` respected).
"""

from __future__ import annotations

from pathlib import Path

from ..export import WEIGHTS_NAME
from ..inference import Engine, Segmenter

TRAIN_COMMAND = "python train.py --preset cpu-robust --export-to weights/"


class MissingWeightsError(FileNotFoundError):
    """No model.safetensors where the app looks for it, and no model repo to fall back on."""


def front_matter_models(readme: str | Path) -> list[str]:
    """The ``models:`` list of a Space README's YAML front matter (``[]`` without README or list)."""
    from huggingface_hub import metadata_load

    path = Path(readme)
    models = (metadata_load(path) or {}).get("models") if path.is_file() else None
    return [str(m) for m in models] if isinstance(models, list) else []


def load_segmenter(model_id: str | Path, fallback_repo: str | None = None, engine: Engine = "auto") -> Segmenter:
    """Load the generator once: ``model_id`` (folder, .safetensors file or Hub repo id).

    When ``model_id`` is a folder without weights, ``fallback_repo`` (a Hub repo id) is loaded instead; without
    one, MissingWeightsError says how to get weights.
    """
    path = Path(model_id)
    folder = path.is_dir() or str(model_id).rstrip("/").endswith("weights")
    if folder and not (path / WEIGHTS_NAME).is_file():
        hub_note = ""
        if fallback_repo:
            try:
                return Segmenter.from_pretrained(fallback_repo, engine=engine)
            except Exception as e:  # offline without a cached copy, unknown repo, ...
                hub_note = f" The model repo {fallback_repo} could not be loaded either: {str(e).splitlines()[0]}"
        raise MissingWeightsError(
            f"No model weights: {path}/{WEIGHTS_NAME} does not exist.{hub_note}\n"
            f"Train and export a model with\n    {TRAIN_COMMAND}\n"
            "or point SEGMENTER_MODEL at a weights folder, a .safetensors file or a Hub repo id, e.g.\n"
            "    SEGMENTER_MODEL=runs/<run-id>/export python app.py"
        )
    return Segmenter.from_pretrained(model_id, engine=engine)
