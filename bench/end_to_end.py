"""Photo bytes in, mask PNG out: where the time goes for 0.3, 1 and 12 megapixel JPEGs, on the public pipeline.

Stages (each timed on its own input, interleaved with the others and with the whole pipeline, per photo size), all
public API: decode (``segmenter.images.as_pil``), preprocess (``Segmenter.preprocess``: resize + normalise), model
(``Segmenter.predict_low_res``'s forward), upsample (``segmenter.pipeline.upsample``: the guided filter the Space
uses), finish (``pipeline.finish``: threshold, presence gate, fill holes, feather), encode (``images.encode_png`` of
the mask). "end to end" times ``Segmenter.segment`` + PNG as one call: exactly what ``POST /api/segment`` runs.
With ``app.py`` present, its ``/segment`` endpoint is also timed through gradio_client on a free localhost port, and
the Photo tab's handler (``app.segment_photo``: the pipeline and every result file the UI shows) in process, its
files made side by side (``views.ENCODE_WORKERS``, the app's setting) and one at a time. The photos are a val photo of a
person scaled to each size (``common.jpeg_bytes``; a synthetic one, without a person, without the data).

    .venv/bin/python bench/end_to_end.py              # 0.3, 1, 12 MP, in process and through the app (~3 min)
    .venv/bin/python bench/end_to_end.py --quick      # 0.3 and 1 MP, few rounds, no app
    .venv/bin/python bench/end_to_end.py --threads 1 --rounds 30
"""

from __future__ import annotations

import argparse
import importlib
import io
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    APP,
    Timing,
    call_segment,
    gradio_client,
    jpeg_bytes,
    markdown_table,
    ms,
    print_machine,
    running_app,
    time_calls,
    time_interleaved,
    weights_for,
    weights_label,
    write_temp_jpeg,
)
from PIL import Image

from segmenter.images import as_pil, encode_png
from segmenter.inference import Segmenter
from segmenter.pipeline import Options, finish, upsample
from segmenter.server import views


def stage_calls(seg: Segmenter, data: bytes) -> dict[str, Callable[[], object]]:
    """name -> zero-argument call, each on the previous stage's (precomputed) output."""
    photo = as_pil(Image.open(io.BytesIO(data)))
    x = seg.preprocess([photo])
    x = torch.cat([x, x.flip(-1)]) if seg.cfg.tta_flip else x  # the batch segment() really runs (flip averaging)
    low, presence = seg.predict_low_res([photo])
    prob = upsample(low[0], photo, "guided")
    options = Options()
    result = finish(
        photo,
        prob,
        None if presence is None else float(presence[0]),
        options,
        seg.threshold,
        seg.cfg.presence_threshold,
    )
    return {
        "end to end": lambda: encode_png(seg.segment(Image.open(io.BytesIO(data))).mask),
        "decode": lambda: as_pil(Image.open(io.BytesIO(data))),
        "preprocess": lambda: seg.preprocess([photo]),
        "model": lambda: seg.forward(x),
        "upsample (guided)": lambda: upsample(low[0], photo, "guided"),
        "finish": lambda: finish(photo, prob, None, options, seg.threshold, seg.cfg.presence_threshold),
        "encode": lambda: encode_png(result.mask),
    }


STAGES = ["decode", "preprocess", "model", "upsample (guided)", "finish", "encode"]


def in_process(
    seg: Segmenter, sizes: list[float], rounds: int, max_seconds: float
) -> tuple[str, dict[float, dict[str, Timing]]]:
    results: dict[float, dict[str, Timing]] = {}
    for mp in sizes:
        results[mp] = time_interleaved(stage_calls(seg, jpeg_bytes(mp)), rounds, warmup=1, max_seconds=max_seconds)
    headers = ["photo", "JPEG KB", "rounds", *STAGES, "sum of stages", "end to end", "e2e / model"]
    rows = []
    for mp, t in results.items():
        total = sum(t[s].p50 for s in STAGES)
        row = [f"{mp:g} MP", str(len(jpeg_bytes(mp)) // 1024), str(len(t["model"].samples))]
        row += [f"{ms(t[s].p50)} / {ms(t[s].p95)}" for s in STAGES]
        row += [
            ms(total),
            f"{ms(t['end to end'].p50)} / {ms(t['end to end'].p95)}",
            f"{t['end to end'].p50 / t['model'].p50:.2f}x",
        ]
        rows.append(row)
    table = "### In process: Segmenter.segment + PNG, ms p50 / p95\n\n" + markdown_table(headers, rows)
    noisy = [f"{mp:g} MP" for mp, t in results.items() if t["model"].p95 > 1.5 * t["model"].p50]
    if noisy:
        table += (
            f"\n\nNoisy ({', '.join(noisy)}: model p95 > 1.5x p50): the CPU is shared or oversubscribed; "
            "ratios are unreliable. Try --threads 1, more --rounds, or a quieter machine."
        )
    return table, results


def through_app(weights: Path, sizes: list[float], requests: int, max_seconds: float, threads: int) -> str:
    """The app's /segment endpoint through gradio_client on localhost: p50/p95 per photo size."""
    rows = []
    with running_app(weights, env={"OMP_NUM_THREADS": str(threads)} if threads else None) as app:
        client = gradio_client(app.url)
        for mp in sizes:
            path = write_temp_jpeg(jpeg_bytes(mp))
            try:
                t = time_calls(
                    lambda path=path: call_segment(client, path), requests, warmup=1, max_seconds=max_seconds
                )
            finally:
                path.unlink(missing_ok=True)
            rows.append([f"{mp:g} MP", str(len(t.samples)), ms(t.p50), ms(t.p95)])
    return "### Through the app: gradio_client -> /segment (localhost), ms\n\n" + markdown_table(
        ["photo", "requests", "p50", "p95"], rows
    )


def ui_handler(seg: Segmenter, sizes: list[float], rounds: int, max_seconds: float) -> str:
    """The Photo tab's handler in process on each photo size: its result files made side by side
    (the app's ``views.ENCODE_WORKERS``) against one at a time (one worker), interleaved, with ``segment`` alone."""
    app = importlib.import_module("app")
    segment = app.make_segment(seg)
    settings = app.PhotoSettings(seg.threshold, blur_percent=3.0)  # the tab's defaults
    side_by_side = views.ENCODE_WORKERS

    def handler(path: Path, workers: int, cache: str) -> None:
        views.ENCODE_WORKERS = workers
        try:
            app.segment_photo(segment, cache, {"path": str(path)}, settings)
        finally:
            views.ENCODE_WORKERS = side_by_side

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as cache:
        for mp in sizes:
            path = Path(cache) / f"photo-{mp:g}mp.jpg"
            path.write_bytes(jpeg_bytes(mp))
            photo = as_pil(Image.open(path))
            t = time_interleaved(
                {
                    "segment": lambda photo=photo: segment(photo, Options()),
                    "side by side": lambda path=path: handler(path, side_by_side, cache),
                    "one at a time": lambda path=path: handler(path, 1, cache),
                },
                rounds,
                warmup=1,
                max_seconds=max_seconds,
            )
            both, one = t["side by side"].p50, t["one at a time"].p50
            label, n = f"{mp:g} MP ({photo.width}x{photo.height})", str(len(t["segment"].samples))
            rows.append([label, n, ms(t["segment"].p50), ms(both), ms(one), f"{both / one:.2f}x"])
    headers = ["photo", "rounds", "segment ms", f"handler ms, {side_by_side} encoders", "handler ms, 1"]
    return (
        "### The Photo tab's handler in process (app.segment_photo: pipeline + mask, cutout, overlay, before/after),"
        " ms p50\n\n" + markdown_table([*headers, "side by side / one at a time"], rows)
    )


def targets(results: dict[float, dict[str, Timing]]) -> str:
    rows = []
    if 1.0 in results:
        r = results[1.0]["end to end"].p50 / results[1.0]["model"].p50
        rows.append(["1 MP end to end <= 1.3x model", f"{r:.2f}x", "met" if r <= 1.3 else "NOT met"])
    if 12.0 in results:
        t = results[12.0]["end to end"].p50
        rows.append(["12 MP end to end < 1.5 s", f"{t:.2f} s", "met" if t < 1.5 else "NOT met"])
    return "### Targets\n\n" + markdown_table(["target", "measured (p50)", ""], rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="0.3 and 1 MP only, 5 rounds, no app")
    p.add_argument("--sizes", type=float, nargs="+", default=[0.3, 1.0, 12.0], help="megapixels")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds per photo size")
    p.add_argument("--max-seconds", type=float, default=25.0, help="stop adding rounds for a size after this long")
    p.add_argument("--threads", type=int, default=0, help="torch threads here and in the app (0: torch's default)")
    p.add_argument("--weights", help="weights folder (default: weights/ if it holds effnet_unet, else random)")
    p.add_argument(
        "--app", choices=["auto", "yes", "no"], default="auto", help="also time the app (auto: if app.py exists)"
    )
    p.add_argument("--app-requests", type=int, default=10, help="requests per photo size through the app")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.rounds, args.app = [0.3, 1.0], 5, "no"
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = weights_for("effnet_unet", override=args.weights)
    print_machine("End to end: JPEG bytes -> mask PNG")
    print(f"weights: {weights_label(weights)}; device cpu\n")
    seg = Segmenter.from_pretrained(weights, device="cpu")
    table, results = in_process(seg, args.sizes, args.rounds, args.max_seconds)
    print(table + "\n")
    print(targets(results) + "\n")
    if args.app == "yes" or (args.app == "auto" and APP.is_file()):
        print(ui_handler(seg, args.sizes, args.rounds, args.max_seconds) + "\n", flush=True)
        start = time.perf_counter()
        print(through_app(weights, args.sizes, args.app_requests, args.max_seconds, args.threads))
        print(f"\n(app start-up and requests took {time.perf_counter() - start:.0f} s)\n")
    elif args.app == "auto":
        print(f"(no {APP.name} yet: the app was not timed)\n")


if __name__ == "__main__":
    main()
