"""Photo bytes in, mask PNG out: where the time goes for 0.3, 1 and 12 megapixel JPEGs.

Stages (each timed on its own input, interleaved with the others and with the whole pipeline, per photo size):
decode (JPEG bytes -> upright RGB, through ``Segmenter._prepare``: draft-mode decode for big JPEGs), resize
(to the model's 256x256 input, normalised), model (the generator's forward), upsample (bilinear to the photo's
size + threshold; with ``segmenter/refine.py`` present also the guided-filter refine, which needs the photo decoded
at full size), encode (the mask as PNG, zlib level 1 as in app.py). "end to end" times ``Image.open -> Segmenter.get_mask
-> PNG`` as one call. With ``app.py`` present, its ``/segment`` handler is also timed stage by stage in process
(its own functions) and end to end through gradio_client against the app started on a free localhost port.

    .venv/bin/python bench/end_to_end.py              # 0.3, 1, 12 MP, in process and through the app (~2 min)
    .venv/bin/python bench/end_to_end.py --quick      # 0.3 and 1 MP, few rounds, no app
    .venv/bin/python bench/end_to_end.py --threads 1 --rounds 30
"""

from __future__ import annotations

import argparse
import importlib.util
import io
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

from segmenter.inference import Segmenter, _binary, as_pil


def encode_png(mask: Image.Image) -> bytes:
    """PNG at zlib level 1, as app.py encodes its outputs (level 6, Pillow's default, is ~1.3-1.5x slower here)."""
    buf = io.BytesIO()
    mask.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def stage_calls(seg: Segmenter, data: bytes) -> dict[str, Callable[[], object]]:
    """name -> zero-argument call, each on the previous stage's (precomputed) output."""
    pil, size = seg._prepare(Image.open(io.BytesIO(data)))
    x = seg._batch([pil])
    low = seg._forward(x)[0]
    mask = Image.fromarray(_binary(seg._upsample(low, size), seg.threshold), "L")
    calls: dict[str, Callable[[], object]] = {
        "end to end": lambda: encode_png(seg.get_mask(Image.open(io.BytesIO(data)))),
        "decode": lambda: seg._prepare(Image.open(io.BytesIO(data))),
        "resize": lambda: seg._batch([pil]),
        "model": lambda: seg._forward(x),
        "upsample": lambda: Image.fromarray(_binary(seg._upsample(low, size), seg.threshold), "L"),
        "encode": lambda: encode_png(mask),
    }
    if importlib.util.find_spec("segmenter.refine") is not None:
        from segmenter.refine import guided_upsample

        full = as_pil(Image.open(io.BytesIO(data)))  # the guide: the photo at full size
        lowres = low.numpy()
        calls["decode (full size)"] = lambda: as_pil(Image.open(io.BytesIO(data)))
        calls["refine (guided)"] = lambda: Image.fromarray(_binary(guided_upsample(lowres, full), seg.threshold), "L")
    return calls


def in_process(seg: Segmenter, sizes: list[float], rounds: int, max_seconds: float) -> tuple[str, dict[float, dict[str, Timing]]]:  # fmt: skip
    results: dict[float, dict[str, Timing]] = {}
    for mp in sizes:
        results[mp] = time_interleaved(stage_calls(seg, jpeg_bytes(mp)), rounds, warmup=1, max_seconds=max_seconds)
    has_refine = "refine (guided)" in next(iter(results.values()))
    headers = ["photo", "JPEG KB", "rounds", "decode", "resize", "model", "upsample", "encode (PNG, level 1)",
               "sum of stages", "end to end", "e2e / model"]  # fmt: skip
    if has_refine:
        headers += ["with refine: decode full + refine", "refine pipeline / model"]
    rows = []
    for mp, t in results.items():
        stages = ["decode", "resize", "model", "upsample", "encode"]
        total = sum(t[s].p50 for s in stages)
        row = [f"{mp:g} MP", str(len(jpeg_bytes(mp)) // 1024), str(len(t["model"].samples))]
        row += [f"{ms(t[s].p50)} / {ms(t[s].p95)}" for s in stages]
        row += [
            ms(total),
            f"{ms(t['end to end'].p50)} / {ms(t['end to end'].p95)}",
            f"{t['end to end'].p50 / t['model'].p50:.2f}x",
        ]
        if has_refine:
            refine_total = (
                t["decode (full size)"].p50
                + t["resize"].p50
                + t["model"].p50
                + t["refine (guided)"].p50
                + t["encode"].p50
            )
            row += [
                f"{ms(t['decode (full size)'].p50)} + {ms(t['refine (guided)'].p50)}",
                f"{refine_total / t['model'].p50:.2f}x",
            ]
        rows.append(row)
    table = "### In process: Segmenter.get_mask, ms p50 / p95\n\n" + markdown_table(headers, rows)
    noisy = [f"{mp:g} MP" for mp, t in results.items() if t["model"].p95 > 1.5 * t["model"].p50]
    if noisy:
        table += (f"\n\nNoisy ({', '.join(noisy)}: model p95 > 1.5x p50): the CPU is shared or oversubscribed; "
                  "ratios are unreliable. Try --threads 1, more --rounds, or a quieter machine.")  # fmt: skip
    return table, results


def app_stages(weights: Path, sizes: list[float], rounds: int, max_seconds: float) -> str:
    """The app's /segment handler, stage by stage in this process (its own functions, imported from app.py)."""
    try:
        import app  # gradio and the app's settings; ROOT is on sys.path
        from segmenter import blend, refine

        predict = app.make_predictor(app.load_segmenter(weights))
        rows = []
        for mp in sizes:
            path = write_temp_jpeg(jpeg_bytes(mp))
            try:
                image = app.load_image(str(path))
                low = predict(image)
                prob = app.probability_map(predict, image)
                result = app.make_mask(prob, app.Cleanup())
                cut = blend.cutout(image, result.alpha)
                calls: dict[str, Callable[[], object]] = {
                    "load_image": lambda path=path: app.load_image(str(path)),
                    "model (predict_low_res)": lambda image=image: predict(image),
                    "guided_upsample": lambda low=low, image=image: refine.guided_upsample(low, image),
                    "make_mask (holes, feather)": lambda prob=prob: app.make_mask(prob, app.Cleanup()),
                    "cutout": lambda image=image, result=result: blend.cutout(image, result.alpha),
                    "PNG mask + cutout": lambda result=result, cut=cut: (
                        app.encode_png(result.mask),
                        app.encode_png(cut),
                    ),
                }
                t = time_interleaved(calls, rounds, warmup=1, max_seconds=max_seconds)
            finally:
                path.unlink(missing_ok=True)
            total = sum(x.p50 for x in t.values())
            rows.append([f"{mp:g} MP", *[ms(x.p50) for x in t.values()], ms(total),
                         f"{total / t['model (predict_low_res)'].p50:.2f}x"])  # fmt: skip
        headers = ["photo", *calls, "sum", "sum / model"]
    except (ImportError, AttributeError, TypeError) as e:
        return f"(app.py's internals are not as this benchmark expects, app stages skipped: {e})"
    return "### The app's /segment handler (mask + cutout), stage by stage in process (p50 ms)\n\n" + markdown_table(
        headers, rows
    )


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
        print(app_stages(weights, args.sizes, max(3, args.rounds // 2), args.max_seconds) + "\n")
        start = time.perf_counter()
        print(through_app(weights, args.sizes, args.app_requests, args.max_seconds, args.threads))
        print(f"\n(app start-up and requests took {time.perf_counter() - start:.0f} s)\n")
    elif args.app == "auto":
        print(f"(no {APP.name} yet: the app was not timed)\n")


if __name__ == "__main__":
    main()
