"""The UI's round trip in a real browser: photo chosen -> every output shown, against HTTP and the model.

Starts ``app.py`` (``common.running_app``) and Debian's chromium (playwright, ``/usr/bin/chromium``). Per photo size
(1 and 12 MP JPEGs), round-robin with the other calls of the round (``common.time_interleaved``):

- **browser**: a fresh page; the photo is set on the upload input; the clock stops when the status line, the mask,
  the cutout and the overlay are all shown (each ``<img>`` loaded), so it covers upload, the whole pipeline, the
  result files and their download and decoding by the browser;
- **http**: ``POST /api/segment?output=cutout`` with the same bytes (httpx);
- **model**: the model step on that photo in this process (same torch threads as the app).

Targets (issue 13): 1 MP browser <= 1.5x the model; 12 MP browser <= 2x HTTP.

    .venv/bin/python bench/browser.py --quick      # about 1.5 minutes on a 2-core CPU
    .venv/bin/python bench/browser.py --rounds 8
    .venv/bin/python bench/browser.py --trace      # where one round trip's time goes: its requests, in order
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch

from segmenter.images import load_image
from segmenter.inference import Segmenter
from segmenter.server import Limits

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SHOWN = """ids => ids.every(id => { const i = document.querySelector(`#${id} img`);
    return i && i.complete && i.naturalWidth > 0; })"""
OUTPUTS = ["mask", "cutout", "overlay"]
TARGETS = {1.0: ("model", 1.5), 12.0: ("http", 2.0)}


def browser_round_trip(browser, url: str, photo: Path) -> float:
    """Seconds from setting ``photo`` on a fresh page's upload input to every output shown."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        start = time.perf_counter()
        page.locator("#photo input[type=file]").set_input_files(str(photo))
        page.wait_for_selector("#stats :text('person share')", timeout=300_000)
        page.wait_for_function(SHOWN, arg=OUTPUTS, timeout=300_000)
        return time.perf_counter() - start
    finally:
        context.close()


def trace_round_trip(browser, url: str, photo: Path) -> list[tuple[float, str]]:
    """One round trip as ``browser_round_trip`` times it, as a timeline: (seconds from setting the photo, event) for
    each request the page sends from then on and its end (upload, queue, files), the status line and all outputs
    shown."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    events: list[tuple[float, str]] = []
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector("#photo input[type=file]", state="attached", timeout=60_000)
        start = time.perf_counter()

        sent: set[int] = set()  # requests sent after the photo was set (not the page's own loading)

        def note(kind: str, request) -> None:
            path = request.url[len(url) :].split("?")[0]
            if kind == "sent":
                sent.add(id(request))
            elif id(request) not in sent:
                return
            if "/file=" in path and "/gradio/" in path:  # a result file: its name, not its cache folder
                path = "gradio_api/file=.../" + path.rsplit("/", 1)[-1]
            events.append((time.perf_counter() - start, f"{kind} {request.method} {path}"))

        page.on("request", lambda r: note("sent", r))
        page.on("requestfinished", lambda r: note("done", r))
        page.locator("#photo input[type=file]").set_input_files(str(photo))
        page.wait_for_selector("#stats :text('person share')", timeout=300_000)
        events.append((time.perf_counter() - start, "status line shown"))
        page.wait_for_function(SHOWN, arg=OUTPUTS, timeout=300_000)
        events.append((time.perf_counter() - start, "mask, cutout and overlay shown"))
        events.append((0.0, "status: " + page.locator("#stats").inner_text().split("\n")[0]))
        return sorted(events)
    finally:
        context.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3 rounds")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--threads", type=int, default=0, help="torch threads here and in the app (0: torch's default)")
    p.add_argument("--weights", help="weights folder (default: weights/)")
    p.add_argument("--trace", action="store_true", help="instead: one round trip per size as a timeline of requests")
    args = p.parse_args(argv)
    rounds = 3 if args.quick else args.rounds
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    weights = common.weights_for(override=args.weights)
    import httpx
    from playwright.sync_api import sync_playwright  # the test extra; never downloads a browser

    common.print_machine("bench/browser.py: the UI's round trip in chromium")
    seg = None if args.trace else Segmenter.from_pretrained(weights, device="cpu")
    engine = f"engine {seg.engine}; " if seg is not None else ""
    print(f"weights: {common.weights_label(weights)}; {engine}torch threads {threads}\n", flush=True)
    limits = Limits()
    with (
        tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp,
        common.running_app(weights, env={"TORCH_THREADS": str(threads)}) as app,
        sync_playwright() as pw,
        httpx.Client(timeout=300) as client,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        if args.trace:
            for mp in TARGETS:
                photo = Path(tmp) / f"photo-{mp:g}mp.jpg"
                photo.write_bytes(common.jpeg_bytes(mp))
                browser_round_trip(browser, app.url, photo)  # warm-up: the first request of a size is slower
                rows = [[common.ms(t), event] for t, event in trace_round_trip(browser, app.url, photo)]
                print(f"### {mp:g} MP: one round trip\n\n" + common.markdown_table(["ms", "event"], rows) + "\n")
            browser.close()
            return
        calls: dict[str, Callable[[], object]] = {}
        for mp in TARGETS:
            data = common.jpeg_bytes(mp)
            photo = Path(tmp) / f"photo-{mp:g}mp.jpg"
            photo.write_bytes(data)
            x = seg.preprocess([load_image(data, limits.max_upload_bytes, limits.max_pixels)])
            if seg.cfg.tta_flip:
                x = torch.cat([x, x.flip(-1)])
            files = {"file": ("photo.jpg", data, "image/jpeg")}
            calls[f"browser {mp:g}"] = lambda photo=photo: browser_round_trip(browser, app.url, photo)
            calls[f"http {mp:g}"] = lambda files=files: client.post(
                f"{app.url}api/segment", files=files
            ).raise_for_status()
            calls[f"model {mp:g}"] = lambda x=x: seg.forward(x)
        t = common.time_interleaved(calls, rounds, warmup=1)
        browser.close()
    rows = []
    for mp, (against, target) in TARGETS.items():
        b, h, m = (t[f"{name} {mp:g}"].p50 for name in ("browser", "http", "model"))
        ratio = b / (m if against == "model" else h)
        rows.append(
            [
                f"{mp:g} MP",
                common.ms(b),
                common.ms(h),
                common.ms(m),
                f"{b / m:.2f}x",
                f"{b / h:.2f}x",
                f"browser / {against} <= {target}x: {'met' if ratio <= target else 'not met'}",
            ]
        )
    print(
        common.markdown_table(
            ["photo", "browser ms (p50)", "HTTP ms", "model ms", "browser / model", "browser / HTTP", "target"], rows
        )
    )
    print(f"\n{rounds} interleaved rounds; a fresh page each round (its load is not timed).")


if __name__ == "__main__":
    main()
