"""Screenshot the running app with an example photo segmented, for the README (Debian's chromium + playwright).

python scripts/screenshot.py --photo examples/full_body.jpg --out docs/app.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from served_app import serve_app  # noqa: E402  (the one app launcher of tests, benchmarks and scripts)

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(ROOT / "examples" / "full_body.jpg"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "app.png"))
    parser.add_argument("--weights", default=str(ROOT / "weights"))
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as log_dir,
        serve_app(args.weights, Path(log_dir)) as app,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(app.url)
        page.wait_for_selector("#photo", timeout=60_000)
        page.locator("#photo input[type=file]").set_input_files(args.photo)
        page.wait_for_selector("#stats :text('person share')", timeout=120_000)
        page.wait_for_timeout(1500)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=False)
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
