"""Evaluate weights through the served pipeline: every mask scored is the one the Space returns for that photo.

    python -m segmenter.evaluate weights/ --all              # every val split (+ the published test), far people too
    python -m segmenter.evaluate runs/x/export --all --compare weights/   # ... beside the shipped model, with a verdict
    python -m segmenter.evaluate weights/ --split test       # one split of --data (the Human Segmentation Dataset)
    python -m segmenter.evaluate weights/ --data my_annotations.csv --split all --csv per_image.csv

Masks are compared at each photo's original size, made by ``Segmenter.segment`` with the Space's default options
(guided upsampling, fill holes, the presence gate). ``--all`` reads every dataset's ``val`` rows, the ``test`` rows of
the Human Segmentation Dataset (the figure we publish; never used to choose) and the far-people set built from val
photos (:mod:`segmenter.far_people`); ``--train`` adds the train rows. ``missed`` counts the photos with a person
answered "No person found" or with an empty mask: the worst answer, whose target is 0.

``--compare REF`` scores REF on the same photos and prints one table of both, split by split, with the rule a model
ships by: no val split worse than REF beyond NOISE mIoU, no more photos missed, and a better pooled val mIoU.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import sys
import time
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from . import far_people
from .data import DATA_ROOT, DEFAULT_DATA_DIR, Pair, load_pair, load_pairs
from .inference import ENGINES, Segmenter
from .metrics import METRICS, mean_scores, score
from .pipeline import Options, Upsample, check_threshold
from .weights import CONFIG_NAME

LABELS = {"iou": "mIoU", "dice": "Dice", "accuracy": "accuracy", "boundary_f": "boundary-F"}
WORST = 5
PUBLISHED_TEST = DEFAULT_DATA_DIR.name  # the only dataset whose test rows are read
NOISE = 0.005  # a val split's mIoU may drop this much before a candidate counts as worse there


def evaluate(
    seg: Segmenter, pairs: list[Pair], options: Options | None = None, progress: bool = True, batch_size: int = 8
) -> tuple[dict[str, float], list[dict]]:
    """Segment ``pairs`` with ``seg.segment_batch`` and score each mask at the photo's size -> (means, per image).

    Means hold the METRICS, ``person_share`` (mean share of pixels called person), ``no_person`` (share of photos
    reported "No person found") and ``seconds_per_image`` (the segmenter's own time: decoding files excluded).
    """
    rows: list[dict] = []
    seconds = 0.0
    bar = tqdm(total=len(pairs), desc="evaluate", unit="img", disable=not progress)
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        loaded = [load_pair(p) for p in chunk]
        t0 = time.perf_counter()
        results = seg.segment_batch([img for img, _ in loaded], options)
        seconds += time.perf_counter() - t0
        for pair, (_, truth), result in zip(chunk, loaded, results, strict=True):
            pred = np.asarray(result.mask) > 127
            rows.append(
                {
                    "image": str(pair.image),
                    **score(pred, np.asarray(truth) > 127),
                    "person_share": float(pred.mean()),
                    "no_person": float(result.no_person),
                    "presence": result.presence,
                    "missed": float(result.no_person and bool((np.asarray(truth) > 127).any())),
                }
            )
        bar.update(len(chunk))
    bar.close()
    means = {
        **mean_scores(rows),
        "person_share": float(np.mean([r["person_share"] for r in rows])),
        "no_person": float(np.mean([r["no_person"] for r in rows])),
        "missed": float(sum(r["missed"] for r in rows)),
        "seconds_per_image": seconds / len(pairs),
    }
    return means, rows


def all_splits(
    root: Path, train: bool = False, far: Path | None = far_people.DEFAULT_DIR
) -> list[tuple[str, str, list[Pair]]]:
    """(dataset, split, pairs) for every dataset folder with a split.csv under ``root``: its ``val`` rows (``train``
    too when asked), the published dataset's ``test`` rows, then the far-people splits (built under ``far`` when
    missing; None: left out)."""
    out = []
    for folder in sorted(p for p in root.iterdir() if (p / "split.csv").is_file()):
        with (folder / "split.csv").open(newline="") as f:
            splits = sorted({row.get("split", "") for row in csv.DictReader(f)} - {""})
        for split in splits:
            wanted = (
                split == "val" or (split == "train" and train) or (split == "test" and folder.name == PUBLISHED_TEST)
            )
            if wanted:
                out.append((folder.name, split, load_pairs(folder, split)))
    if far is not None and all((root / name).is_dir() for name, _ in (*far_people.DONORS, far_people.SCENES)):
        folder = far_people.ensure(far, root)
        out += [(far_people.NAME, split, load_pairs(folder, split)) for split in far_people.splits()]
    return out


def format_table(results: list[tuple[str, str, dict[str, float]]]) -> str:
    """One markdown row per (dataset, split): mIoU, Dice, boundary F, person share, no-person share, seconds."""
    lines = [
        "| dataset | split | photos | mIoU | Dice | boundary F | mean person share | reported no person | missed "
        "| s/photo |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, split, m in results:
        lines.append(
            f"| {name} | {split} | {m['photos']:.0f} | {m['iou']:.4f} | {m['dice']:.4f} | {m['boundary_f']:.4f} "
            f"| {m['person_share']:.2%} | {m['no_person']:.0%} | {m.get('missed', 0):.0f} | {m['seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def judged(split: str) -> bool:
    """Whether a split may choose a model: val splits (far people included), never test or train."""
    return split not in ("test", "train")


def pooled(results: list[tuple[str, str, dict[str, float]]]) -> float:
    """Mean IoU over every photo of the judged (val) splits."""
    rows = [(m["iou"], m["photos"]) for _, split, m in results if judged(split)]
    return sum(i * n for i, n in rows) / max(1, sum(n for _, n in rows))


def compare_table(
    new: list[tuple[str, str, dict[str, float]]], ref: list[tuple[str, str, dict[str, float]]], ref_name: str
) -> tuple[str, bool]:
    """Candidate against ``ref`` on the same splits -> (markdown table with a verdict line, whether it ships).

    It ships when no val split is worse than ``ref`` by more than NOISE mIoU, no val split misses more photos, and
    the pooled val mIoU is higher. Test rows are shown, never judged.
    """
    lines = [
        f"| dataset | split | photos | mIoU {ref_name} | mIoU candidate | change | missed {ref_name} | missed candidate |"
        " verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ships = True
    for (name, split, m), (_, _, r) in zip(new, ref, strict=True):
        delta = m["iou"] - r["iou"]
        worse = judged(split) and (delta < -NOISE or m.get("missed", 0) > r.get("missed", 0))
        ships &= not worse
        verdict = "worse" if worse else ("not judged" if not judged(split) else ("better" if delta > NOISE else "same"))
        lines.append(
            f"| {name} | {split} | {m['photos']:.0f} | {r['iou']:.4f} | {m['iou']:.4f} | {delta:+.4f} "
            f"| {r.get('missed', 0):.0f} | {m.get('missed', 0):.0f} | {verdict} |"
        )
    p_new, p_ref = pooled(new), pooled(ref)
    ships &= p_new > p_ref
    lines.append(
        f"| pooled val | | {sum(m['photos'] for _, s, m in new if judged(s)):.0f} | {p_ref:.4f} "
        f"| {p_new:.4f} | {p_new - p_ref:+.4f} | | | {'ships' if ships else 'does not ship'} |"
    )
    return "\n".join(lines), ships


def format_report(means: dict[str, float], rows: list[dict], worst: int = WORST, root: Path | None = None) -> str:
    """Markdown tables: the mean of each metric, then the ``worst`` images by IoU (paths shown relative to ``root``)."""
    lines = ["| metric | mean |", "| --- | --- |"]
    lines += [f"| {LABELS[k]} | {means[k]:.4f} |" for k in METRICS]
    lines.append(f"| mean person share | {means['person_share']:.4f} |")
    lines.append(f"| reported no person | {means['no_person']:.4f} |")
    lines.append(f"| seconds per image (segmenter only) | {means['seconds_per_image']:.3f} |")
    per_image = ["IoU", *(LABELS[k] for k in METRICS[1:])]
    lines += [
        "",
        f"Worst {min(worst, len(rows))} by IoU:",
        "",
        "| image | " + " | ".join(per_image) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for row in sorted(rows, key=lambda r: r["iou"])[:worst]:
        lines.append(f"| {_shown(row['image'], root)} | " + " | ".join(f"{row[k]:.4f}" for k in METRICS) + " |")
    return "\n".join(lines)


def _shown(image: str, root: Path | None) -> str:
    """An image path relative to the dataset root when it lies inside it."""
    try:
        return str(Path(image).relative_to(root)) if root is not None else image
    except ValueError:
        return image


def write_card_results(card: Path, table: str, argv: list[str] | None) -> None:
    """Replace the ``## Results`` section of a model card with ``table`` and the command that printed it."""
    text = card.read_text()
    start = text.index("## Results\n")
    end = text.find("\n## ", start + 1)
    command = shlex.join(["python", "-m", "segmenter.evaluate", *(sys.argv[1:] if argv is None else argv)])
    section = (
        "## Results\n\nEvery split of every dataset, scored through the pipeline the Space serves (masks at each "
        f"photo's original size, mean per photo; only the Human Segmentation test row is a held-out figure), from\n"
        f"`{command}`:\n\n{table}\n"
    )
    card.write_text(text[:start] + section + (text[end:] if end != -1 else ""))


def metrics_record(means: dict[str, float], images: int) -> dict[str, float]:
    """One split's means as ``config.json``'s ``meta.metrics`` keeps them: the photo count, figures to 4 places."""
    return {"images": images, **{k: round(v, 4) for k, v in means.items()}}


def write_config_metrics(config: Path, results: list[tuple[str, str, dict]]) -> None:
    """Put the val and test rows into ``config.json``'s ``meta.metrics`` (what the Space's Model tab shows), as the
    export does, so that card, config and README carry the same figures; other keys stay as they are."""
    cfg = json.loads(config.read_text())
    metrics = cfg.setdefault("meta", {}).setdefault("metrics", {})
    for name, split, means in results:
        if split in ("val", "test"):
            metrics[f"{name}/{split}"] = metrics_record(
                {k: v for k, v in means.items() if k != "photos"}, means["photos"]
            )
    tmp = config.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    tmp.replace(config)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["image", *METRICS, "person_share", "no_person", "presence"], extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m segmenter.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "weights", help="weights folder (config.json + model.safetensors), .safetensors file or Hub repo id"
    )
    parser.add_argument(
        "--all", action="store_true", help="every val split under --data-root, the published test and far people"
    )
    parser.add_argument("--train", action="store_true", help="with --all: the train splits too")
    parser.add_argument(
        "--far-people", type=Path, default=far_people.DEFAULT_DIR, help="far-people set folder (built when missing)"
    )
    parser.add_argument(
        "--compare", default=None, help="with --all: also score these weights (e.g. weights/) and print the comparison"
    )
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT, help="datasets for --all (default: %(default)s)")
    parser.add_argument(
        "--data",
        default=str(DEFAULT_DATA_DIR),
        help="dataset folder (with split.csv) or images,masks[,split] CSV (default: %(default)s)",
    )
    parser.add_argument("--split", default="test", help="split to evaluate, or 'all' (default: %(default)s)")
    parser.add_argument(
        "--threshold", type=float, default=None, help="probability threshold (default: the one in the weights' config)"
    )
    parser.add_argument("--upsample", choices=get_args(Upsample), default="guided", help="default: %(default)s")
    parser.add_argument("--csv", type=Path, default=None, help="also write per-image scores to this CSV file")
    parser.add_argument(
        "--card",
        action="store_true",
        help="with --all: put the table, and this command, in the weights' README.md, and the val and test figures in "
        "its config.json (meta.metrics: the Space's Model tab)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument(
        "--engine", choices=ENGINES, default="auto", help="model arithmetic (auto: what the Space uses)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.threshold is not None:
        try:
            check_threshold(args.threshold)
        except ValueError as e:
            parser.error(str(e))
    if args.compare and not args.all:
        parser.error("--compare needs --all")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.card and not (args.all and (Path(args.weights) / "README.md").is_file()):
        parser.error("--card needs --all and a weights folder with a README.md (model card)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.all:
            jobs = all_splits(args.data_root, args.train, args.far_people)
            if not jobs:
                raise ValueError(f"{args.data_root}: no dataset folders with a split.csv")
        else:
            jobs = [
                (Path(args.data).name, args.split, load_pairs(args.data, None if args.split == "all" else args.split))
            ]
            if not jobs[0][2]:
                raise ValueError(f"{args.data}: no images to evaluate")
        seg = Segmenter.from_pretrained(args.weights, device=args.device, engine=args.engine)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    options = Options(threshold=args.threshold, upsample=args.upsample)
    info = seg.info()
    sha = info.get("sha256", "")
    print(
        f"weights: {args.weights} ({seg.cfg.arch}{', sha256 ' + sha[:12] if sha else ''}), "
        f"input {seg.cfg.input_size}px{' + flip' if seg.cfg.tta_flip else ''}, presence head "
        f"{'yes, threshold ' + format(seg.cfg.presence_threshold, 'g') if info['presence_head'] else 'no'}"
        f"{' + scene prior' if seg.cfg.scene_prior else ''}, "
        f"{seg.device} {seg.engine}, {torch.get_num_threads()} threads"
    )
    print(
        f"threshold {seg.threshold if args.threshold is None else args.threshold:g}, {args.upsample} upsampling; "
        "the Space's default pipeline; mean per photo at its original size\n"
    )
    results, all_rows = [], []
    for name, split, pairs in jobs:
        means, rows = evaluate(seg, pairs, options, progress=not args.no_progress, batch_size=args.batch_size)
        results.append((name, split, {**means, "photos": len(pairs)}))
        all_rows += rows
        if not args.all:
            data = Path(args.data)
            print(f"data: {args.data}, split {split}: {len(rows)} images\n")
            print(format_report(means, rows, root=data if data.is_dir() else data.parent))
    if args.all:
        print(format_table(results))
    if args.compare:
        ref_seg = Segmenter.from_pretrained(args.compare, device=args.device, engine=args.engine)
        ref = [
            (
                name,
                split,
                {**evaluate(ref_seg, pairs, options, not args.no_progress, args.batch_size)[0], "photos": len(pairs)},
            )
            for name, split, pairs in jobs
        ]
        table, _ = compare_table(results, ref, args.compare)
        print(
            f"\nagainst {args.compare} on the same photos (ships: no val split worse beyond {NOISE}, none missed more, "
            f"pooled val mIoU higher):\n\n{table}"
        )
    if args.card:
        write_card_results(Path(args.weights) / "README.md", format_table(results), argv)
        write_config_metrics(Path(args.weights) / CONFIG_NAME, results)
        print(f"\nmodel card updated: {Path(args.weights) / 'README.md'}, and meta.metrics in its {CONFIG_NAME}")
    if args.csv is not None:
        write_csv(all_rows, args.csv)
        print(f"\nper-image scores: {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
