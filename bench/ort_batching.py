"""ONNX Runtime at the shipped setting: one run on a batch of N images against N runs of one image, interleaved.

The shipped model segments a photo and its mirror (batch 2 at 384 px). This times that batch as one
``InferenceSession.run`` and as runs of one image each (what ``Segmenter.forward`` does), on the weights' own
``model.onnx`` with the session options the package uses, plus a batch of 4 for a batch-tab call.

    .venv/bin/python bench/ort_batching.py              # weights/, torch's thread count (~1 minute)
    .venv/bin/python bench/ort_batching.py --threads 1 --rounds 20
    .venv/bin/python bench/ort_batching.py --quick      # 3 rounds (a smoke run)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from common import SHIPPED_WEIGHTS, markdown_table, ms, print_machine, time_interleaved

from segmenter.config import ModelConfig
from segmenter.export import ONNX_NAME
from segmenter.inference import onnx_session


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(SHIPPED_WEIGHTS))
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: torch's default)")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--quick", action="store_true", help="3 rounds")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds = 3
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ModelConfig.load(f"{args.weights}/config.json")
    session = onnx_session(Path(args.weights) / ONNX_NAME)
    s = cfg.input_size
    print_machine("bench/ort_batching.py: one run of N images vs N runs of one")
    x = np.random.default_rng(0).standard_normal((4, 3, s, s)).astype(np.float32)

    def batched(n: int) -> object:
        return session.run(None, {"pixels": x[:n]})

    def single(n: int) -> object:
        return [session.run(None, {"pixels": x[i : i + 1]}) for i in range(n)]

    calls = {
        f"{kind} {n}": (lambda n=n, f=f: f(n)) for n in (1, 2, 4) for kind, f in (("batch", batched), ("runs", single))
    }
    del calls["runs 1"]  # the same call as batch 1
    t = time_interleaved(calls, args.rounds, warmup=2, max_seconds=60)
    rows = []
    for n in (1, 2, 4):
        one_run = t[f"batch {n}"].p50
        runs = t[f"runs {n}"].p50 if n > 1 else one_run
        rows.append([n, f"{s} px", ms(one_run), ms(runs), f"{one_run / runs:.2f}x"])
    print(
        markdown_table(
            ["images", "input", "one run of the batch, ms p50", "one run per image, ms p50", "batch / runs"], rows
        )
    )


if __name__ == "__main__":
    main()
