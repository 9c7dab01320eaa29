"""``python -m bench``: the issue-13 figures in one run, each measured now on the weights in ``weights/``.

1. engine: what ``Segmenter.from_pretrained(weights)`` picked (``seg.engine``).
2. model ms: ``seg.forward`` alone at the shipped setting (the photo and its mirror when ``tta_flip``), p50.
3. FLOP floor ratio: model time / (FLOPs of that forward / this machine's fp32 rate), the rate probes of
   ``model_floor.py`` timed interleaved with the forward (rate = the faster fp32 probe). Eager PyTorch fp32
   (``engine="torch"``) is timed beside it for reference.
4. 1 MP and 12 MP through HTTP: ``app.py`` in a subprocess, JPEG bytes POSTed to ``/api/segment`` (httpx),
   interleaved with the in-process model step on the same decoded photo: e2e ratio = 1 MP HTTP p50 / model p50.
5. 16 clients: ``serving.run_load`` (gradio_client ``/segment``) throughput vs the model-bound rate: 1 / the model
   step of one request at the shipped setting (figure 2: the photo and its mirror when ``tta_flip``). ``serving.py``'s
   rate (1 / a batch-1 forward without the mirror, the faster of before and after the app) is shown beside it, and
   the CPU seconds per request of the server and of the clients: they run in this process, on the same cores.
   For reference, the same number of requests as plain ``POST /api/segment`` from as many httpx threads: clients
   that cost far less than gradio_client's queue protocol, and a server path without Gradio's queue.
6. live: the model step alone at the live webcam setting (``live.LIVE_OPTIONS``: 256 px, no flip) as frames per
   second, and the whole ``live.segment_frame`` beside it.

Every figure uses the same torch thread count (``--threads``; default torch's), here and in the app
(``TORCH_THREADS``), except the 16 clients: they load a second app started with the Space's own settings (two model
calls at once, one thread each on 2 cores: the best throughput, measured by ``--serving-threads same`` against it),
while the model-bound rate stays that of one request on all ``--threads``. On a shared CPU compare the ratios: each is taken from calls interleaved in this run, with an
idle pause before each call (``SETTLE_S``) so that one thread pool's spinning workers do not slow the next call.

    .venv/bin/python -m bench --quick      # under 3 minutes on a 2-core CPU
    .venv/bin/python -m bench              # more rounds and requests
    .venv/bin/python -m bench --threads 1
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # the scripts import each other as top-level modules (`from common import ...`)
    sys.path.insert(0, str(BENCH))

import common  # noqa: E402
import model_floor  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import serving  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from segmenter.export import CONFIG_NAME, WEIGHTS_NAME, Served  # noqa: E402
from segmenter.images import load_image  # noqa: E402
from segmenter.inference import Segmenter  # noqa: E402
from segmenter.server import Limits  # noqa: E402
from segmenter.server.live import LIVE_OPTIONS, LIVE_SIDE, segment_frame  # noqa: E402

TARGETS = {"floor": 1.3, "e2e": 1.2, "serving": 0.9, "live_fps": 15.0}  # issue 13
FP32_PROBES = ("matmul fp32", "conv3x3 fp32")
# Idle pause before each interleaved call: the candidates run on different thread pools (torch's OpenMP, ONNX
# Runtime's, the app's), whose spin-waiting workers would otherwise slow whichever call comes next.
SETTLE_S = 0.2


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def model_batch(seg: Segmenter, photo: Image.Image, size: int | None = None, flip: bool | None = None) -> torch.Tensor:
    """The batch ``segment`` hands the model for ``photo``: preprocessed, plus its mirror when flipping."""
    x = seg.preprocess([photo], size)
    flip = seg.cfg.tta_flip if flip is None else flip
    return torch.cat([x, x.flip(-1)]) if flip else x


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of ``proc`` and its threads so far."""
    t = proc.cpu_times()
    return t.user + t.system


def pick_weights(override: str | None) -> Path:
    folder = Path(override) if override else common.SHIPPED_WEIGHTS
    if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
        return folder
    if override:
        raise SystemExit(f"error: no {WEIGHTS_NAME} + {CONFIG_NAME} in {folder}")
    return common.weights_for("effnet_unet")  # no weights/: random effnet_unet weights (timings only)


def floor_figures(seg: Segmenter, eager: Segmenter, photo: Image.Image, args: argparse.Namespace) -> dict:
    """Model step at the shipped setting (engine picked + eager torch) interleaved with the fp32 rate probes."""
    x = model_batch(seg, photo)
    flops_one, _ = model_floor.count_flops(Served(eager.model), seg.cfg.input_size)  # what the engines run
    flops = flops_one * len(x)
    probes = {k: v for k, v in model_floor.rate_probes(torch.device("cpu")).items() if k in FP32_PROBES}
    calls: dict[str, Callable[[], object]] = {"model": lambda: seg.forward(x)}
    if eager is not seg:
        calls["eager"] = lambda: eager.forward(x)
    calls |= {name: call for name, (call, _) in probes.items()}
    t = common.time_interleaved(calls, args.rounds, warmup=2, max_seconds=args.max_seconds, settle_s=SETTLE_S)
    rates = {name: n / t[name].p50 for name, (_, n) in probes.items()}
    probe = max(rates, key=rates.__getitem__)
    floor_s = flops / rates[probe]
    return {
        "batch": len(x),
        "flops": flops,
        "rate": rates[probe],
        "probe": probe,
        "floor_s": floor_s,
        "model": t["model"],
        "eager": t.get("eager"),
    }


def live_figures(seg: Segmenter, args: argparse.Namespace) -> dict:
    """The live webcam path: model step alone at LIVE_OPTIONS' input (no clean-up), and segment_frame whole."""
    frame = np.asarray(common.synthetic_photo((640, 480), seed=1))
    image = Image.fromarray(frame).convert("RGB")
    image.thumbnail((LIVE_SIDE, LIVE_SIDE), Image.BILINEAR)  # as segment_frame shrinks it
    x = model_batch(seg, image, LIVE_OPTIONS["input_size"], bool(LIVE_OPTIONS.get("flip")))
    calls = {"model": lambda: seg.forward(x), "segment_frame": lambda: segment_frame(seg.segment, frame, seg.threshold)}
    t = common.time_interleaved(calls, args.live_rounds, warmup=2, max_seconds=args.max_seconds, settle_s=SETTLE_S)
    return {"model": t["model"], "frame": t["segment_frame"], "input": f"{x.shape[-1]} px, batch {len(x)}"}


def http_figures(
    url: str, seg: Segmenter, photos: dict[float, bytes], args: argparse.Namespace
) -> dict[float, dict[str, common.Timing]]:
    """Per photo size: POST /api/segment (httpx) and the in-process model step on that photo, interleaved."""
    import httpx

    limits = Limits()
    calls: dict[str, Callable[[], object]] = {}
    with httpx.Client(timeout=300) as client:

        def post(data: bytes) -> None:
            files = {"file": ("photo.jpg", data, "image/jpeg")}
            r = client.post(f"{url}api/segment", files=files, params={"output": args.output})
            if r.status_code != 200:
                raise RuntimeError(f"POST /api/segment answered {r.status_code}: {r.text[:300]}")

        for mp, data in photos.items():
            x = model_batch(seg, load_image(data, limits.max_upload_bytes, limits.max_pixels))
            calls[f"http {mp:g}"] = lambda data=data: post(data)
            calls[f"model {mp:g}"] = lambda x=x: seg.forward(x)
        t = common.time_interleaved(calls, args.http_rounds, warmup=1, max_seconds=args.max_seconds, settle_s=SETTLE_S)
    return {mp: {"http": t[f"http {mp:g}"], "model": t[f"model {mp:g}"]} for mp in photos}


def http_load(url: str, data: bytes, clients: int, requests: int, output: str) -> serving.Load:
    """``requests`` POSTs of one photo to /api/segment from ``clients`` threads, each with its own httpx.Client
    (keep-alive): the server's throughput when the clients cost little, unlike gradio_client's queue protocol."""
    import httpx

    def sender(client: httpx.Client) -> Callable[[], None]:
        def send() -> None:
            files = {"file": ("photo.jpg", data, "image/jpeg")}
            r = client.post(f"{url}api/segment", files=files, params={"output": output})
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

        return send

    pool = [httpx.Client(timeout=300) for _ in range(clients)]
    try:
        return serving.drive([sender(client) for client in pool], requests)
    finally:
        for client in pool:
            client.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and requests (under 3 minutes on 2 cores)")
    p.add_argument("--threads", type=int, default=0, help="torch threads here and in the app (0: torch's default)")
    p.add_argument("--weights", help="weights folder (default: weights/)")
    p.add_argument("--rounds", type=int, default=12, help="interleaved rounds: model step vs rate probes")
    p.add_argument("--live-rounds", type=int, default=20, help="interleaved rounds on the live path")
    p.add_argument("--http-rounds", type=int, default=12, help="interleaved rounds: HTTP requests vs model step")
    p.add_argument("--per-client", type=int, default=4, help="requests per client at 16 clients")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument(
        "--serving-threads",
        choices=["space", "same"],
        default="space",
        help="the app under 16 clients: the Space's own thread settings (default) or --threads like the rest",
    )
    p.add_argument("--serving-mp", type=float, default=0.3, help="photo size for the clients (serving.py's default)")
    p.add_argument("--output", choices=["mask", "cutout", "overlay"], default="mask", help="/api/segment ?output=")
    p.add_argument("--max-seconds", type=float, default=40.0, help="stop adding rounds to a block after this long")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.live_rounds, args.http_rounds, args.per_client, args.max_seconds = 5, 8, 5, 2, 15.0
    start = time.perf_counter()
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)  # before the Segmenters: their ONNX Runtime sessions take torch's thread count
    weights = pick_weights(args.weights)

    common.print_machine("python -m bench: issue 13 figures")
    seg = Segmenter.from_pretrained(weights, device="cpu")
    eager = seg if seg.engine == "torch" else Segmenter.from_pretrained(weights, device="cpu", engine="torch")
    flip = " + flip" if seg.cfg.tta_flip else ""
    print(
        f"weights: {common.weights_label(weights)} ({seg.cfg.arch}, input {seg.cfg.input_size}{flip}); "
        f"engine {seg.engine}; torch threads {threads} here and in the app (TORCH_THREADS); "
        f"HTTP ?output={args.output}; {args.clients} clients on {args.serving_mp:g} MP photos, against the app with "
        f"{'the Space defaults (CONCURRENCY 2, TORCH_THREADS cores / 2)' if args.serving_threads == 'space' else 'TORCH_THREADS ' + str(threads)}\n",
        flush=True,
    )

    floor = floor_figures(seg, eager, common.sample_photo(), args)
    live = live_figures(seg, args)
    model_before = serving.model_time(weights, 10 if args.quick else 20)  # serving.py's model-bound rate
    photos = {mp: common.jpeg_bytes(mp) for mp in (1.0, 12.0)}
    client_photo = common.write_temp_jpeg(common.jpeg_bytes(args.serving_mp))
    serving_env = {} if args.serving_threads == "space" else {"TORCH_THREADS": str(threads)}
    try:
        with common.running_app(weights, env={"TORCH_THREADS": str(threads)}) as app:
            http = http_figures(app.url, seg, photos, args)
        # Under load, the app as the Space runs it: CONCURRENCY model calls at once, cores / CONCURRENCY threads each.
        with common.running_app(weights, env=serving_env) as app, serving.RssSampler(app.proc.pid) as rss:
            serving.run_load(app.url, client_photo, 1, 2, rss)  # warm-up, as serving.py does
            server, here = psutil.Process(app.proc.pid), psutil.Process()
            cpu_before = (cpu_seconds(server), cpu_seconds(here))
            load = serving.run_load(app.url, client_photo, args.clients, args.clients * args.per_client, rss)
            cpu = (cpu_seconds(server) - cpu_before[0], cpu_seconds(here) - cpu_before[1])
            cpu_before = (cpu_seconds(server), cpu_seconds(here))
            http_clients = http_load(
                app.url, client_photo.read_bytes(), args.clients, args.clients * args.per_client, args.output
            )
            http_cpu = (cpu_seconds(server) - cpu_before[0], cpu_seconds(here) - cpu_before[1])
    finally:
        client_photo.unlink(missing_ok=True)
    model_after = serving.model_time(weights, 10 if args.quick else 20)
    model_b1 = min(model_before, model_after, key=lambda t: t.p50)
    for name, result in (("gradio_client", load), ("HTTP", http_clients)):
        if result.errors:
            print(f"{len(result.errors)} errors at {args.clients} {name} clients, first: {result.errors[0]}\n")

    floor_ratio = floor["model"].p50 / floor["floor_s"]
    e2e = {mp: t["http"].p50 / t["model"].p50 for mp, t in http.items()}
    model_rate = 1 / floor["model"].p50  # one request's model step at the shipped setting
    serving_ratio = load.throughput / model_rate
    live_fps = 1 / live["model"].p50
    shipped = f"{seg.cfg.input_size} px{flip}, batch {floor['batch']}"
    rows = [
        ["engine (seg.engine)", seg.engine, "–", "–"],
        [
            f"model ms, {shipped} (p50 / p95, {len(floor['model'].samples)} rounds)",
            f"{common.ms(floor['model'].p50)} / {common.ms(floor['model'].p95)}",
            "–",
            "–",
        ],
        ["GFLOP of that forward (FlopCounterMode)", f"{floor['flops'] / 1e9:.2f}", "–", "–"],
        [f"fp32 rate ({floor['probe']}, interleaved), GFLOP/s", f"{floor['rate'] / 1e9:.0f}", "–", "–"],
        ["floor ms = GFLOP / rate", common.ms(floor["floor_s"]), "–", "–"],
        [
            "**FLOP floor ratio** (model / floor)",
            f"{floor_ratio:.2f}x",
            "<= 1.3x",
            met(floor_ratio <= TARGETS["floor"]),
        ],
    ]
    if floor["eager"] is not None:
        t = floor["eager"]
        rows.append(
            [
                "reference: eager torch fp32 model ms, floor ratio",
                f"{common.ms(t.p50)}, {t.p50 / floor['floor_s']:.2f}x",
                "–",
                "–",
            ]
        )
    for mp, t in http.items():
        rows.append(
            [
                f"{mp:g} MP: POST /api/segment ms / model ms, same photo (p50, {len(t['http'].samples)} rounds)",
                f"{common.ms(t['http'].p50)} / {common.ms(t['model'].p50)}",
                "–",
                "–",
            ]
        )
    rows += [
        ["**1 MP end to end / model**", f"{e2e[1.0]:.2f}x", "<= 1.2x", met(e2e[1.0] <= TARGETS["e2e"])],
        ["12 MP end to end / model", f"{e2e[12.0]:.2f}x", "–", "–"],
        [
            f"{args.clients} clients: img/s ({len(load.latencies)} ok, {len(load.errors)} errors) / model-bound img/s",
            f"{load.throughput:.2f} / {model_rate:.2f}",
            "–",
            "–",
        ],
        [
            f"**{args.clients} clients / model-bound** (model-bound = 1 / the model step of one request)",
            f"{serving_ratio:.2f}x",
            ">= 0.9x",
            met(serving_ratio >= TARGETS["serving"] and not load.errors),
        ],
        [
            f"CPU seconds per request at {args.clients} clients: server / the clients (this process, same cores)",
            f"{cpu[0] / max(1, len(load.latencies)):.3f} / {cpu[1] / max(1, len(load.latencies)):.3f}",
            "–",
            "–",
        ],
        [
            f"reference: {args.clients} plain HTTP clients (POST /api/segment, httpx threads): img/s "
            f"({len(http_clients.latencies)} ok, {len(http_clients.errors)} errors), / model-bound, "
            "CPU s per request server / clients",
            f"{http_clients.throughput:.2f}, {http_clients.throughput / model_rate:.2f}x, "
            f"{http_cpu[0] / max(1, len(http_clients.latencies)):.3f} / "
            f"{http_cpu[1] / max(1, len(http_clients.latencies)):.3f}",
            "–",
            "–",
        ],
        [
            f"reference: {args.clients} clients / 1 / batch-1 forward without mirror ({common.ms(model_b1.p50)} ms)",
            f"{load.throughput * model_b1.p50:.2f}x",
            "–",
            "–",
        ],
        [
            f"**live fps**, model step alone ({live['input']})",
            f"{live_fps:.1f}",
            ">= 15",
            met(live_fps >= TARGETS["live_fps"]),
        ],
        ["live fps, whole segment_frame", f"{1 / live['frame'].p50:.1f}", "–", "–"],
    ]
    print(common.markdown_table(["figure", "value", "target (issue 13)", ""], rows))
    print(f"\n(took {time.perf_counter() - start:.0f} s)")
    print(
        f"bench: floor_ratio={floor_ratio:.2f} e2e_ratio={e2e[1.0]:.2f} "
        f"serving_ratio={serving_ratio:.2f} live_fps={live_fps:.1f}"
    )


if __name__ == "__main__":
    main()
