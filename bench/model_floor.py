"""How close does the generator's forward pass get to this machine's arithmetic floor, and which levers help?

Everything is measured on the forward the Segmenter serves (the mask, plus the presence logit of the presence head and
any scene prior) at the weights' own input size. FLOPs per image come from torch.utils.flop_counter.FlopCounterMode
(2 FLOPs per multiply-add, convolutions and matmuls only: BatchNorm, activations, concatenation and resampling are
memory traffic, not counted). The machine's fp32 rate
is measured in the same run, interleaved with the forward passes (a 2048^2 matmul and a 3x3 conv 128->128 at 64x64):
floor = FLOPs / the faster of the two. "convs alone" sums each of the model's convolutions timed in isolation on its
real input shape: the floor for this op mix with these kernels (narrow and depthwise convs run far below peak).

    .venv/bin/python bench/model_floor.py                 # both generators, 1 and 2 threads (~2 min)
    .venv/bin/python bench/model_floor.py --quick         # effnet_unet, 1 thread, few rounds (~30 s)
    .venv/bin/python bench/model_floor.py --compile       # + torch.compile variants (about a minute each to compile)
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import torch
from common import (
    Timing,
    fmt,
    markdown_table,
    print_machine,
    sample_photo,
    time_interleaved,
    weights_for,
    weights_label,
)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from segmenter.config import Arch, ModelConfig
from segmenter.export import Served, save_onnx
from segmenter.inference import Segmenter

Forward = Callable[[torch.Tensor], torch.Tensor]


def count_flops(model: nn.Module, size: int) -> tuple[float, list[str]]:
    """FLOPs of one forward pass of ``model`` (the served forward: ``Served(generator)``) on a (1,3,size,size) input,
    and the op kinds counted."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops()), sorted(str(k) for k in counter.get_flop_counts()["Global"])


# ------------------------------------------------------------------ machine rates
def rate_probes(device: torch.device) -> dict[str, tuple[Callable[[], object], float]]:
    """name -> (call, FLOPs per call): the kernels that define this machine's achievable fp32 rate."""
    n = 4096 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    conv = nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(1, 128, 64, 64, device=device)
    conv_flops = 2 * 9 * 128 * 128 * 64 * 64
    ab, bb = a.bfloat16(), b.bfloat16()

    def run_conv() -> torch.Tensor:
        with torch.inference_mode():
            return conv(x)

    return {
        "matmul fp32": (lambda: a @ b, 2 * n**3),
        "conv3x3 fp32": (run_conv, conv_flops),
        "matmul bf16": (lambda: ab @ bb, 2 * n**3),
    }


def convs_alone(model: nn.Module, size: int, device: torch.device, rounds: int, max_seconds: float) -> float:
    """Seconds for one b1 forward's convolutions, each timed alone on its recorded input (sum of p50s)."""
    calls: dict[str, Callable[[], object]] = {}

    def record(mod: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        calls[str(len(calls))] = lambda: mod(args[0])

    hooks = [
        m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    with torch.inference_mode():
        model(torch.randn(1, 3, size, size, device=device))
        for h in hooks:
            h.remove()
        timings = time_interleaved(calls, rounds, device=device, max_seconds=max_seconds)
    return sum(t.p50 for t in timings.values())


# ------------------------------------------------------------------ levers
@dataclass
class Variant:
    name: str
    build: Callable[[nn.Module, torch.device, int], Forward]  # (eval model, device, threads) -> forward
    devices: tuple[str, ...] = ("cpu", "cuda")
    exact: bool = True  # fp32 arithmetic: masks should match the baseline's
    batched: bool = True  # also timed at batch 8 and 16 when it is among the fastest


def _eager(no_grad_only: bool = False, channels_last: bool = False, bf16: bool = False) -> Callable[..., Forward]:
    def build(model: nn.Module, device: torch.device, threads: int) -> Forward:
        net = copy.deepcopy(model).to(memory_format=torch.channels_last) if channels_last else model
        ctx = torch.no_grad if no_grad_only else torch.inference_mode

        def forward(x: torch.Tensor) -> torch.Tensor:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with ctx(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                out = net(x)
            return (out[0] if isinstance(out, tuple) else out).float()  # the mask

        return forward

    return build


def _folded_channels_last(model: nn.Module, device: torch.device, threads: int) -> Forward:
    """Conv+BatchNorm pairs folded into single convs (torch.fx), channels_last weights and activations."""
    from torch.fx.experimental.optimization import fuse

    net = fuse(copy.deepcopy(model)).to(memory_format=torch.channels_last)
    return _eager()(net, device, threads)


def _compiled(bf16: bool) -> Callable[..., Forward]:
    def build(model: nn.Module, device: torch.device, threads: int) -> Forward:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True  # fold BN and pre-pack weights: inference only
        return _eager(bf16=bf16)(torch.compile(copy.deepcopy(model), dynamic=False), device, threads)

    return build


def onnx_file(model: Served, cfg: ModelConfig, key: str) -> Path:
    """``model.onnx`` as the package exports it (``save_onnx``: dynamic batch and size), written once to a temp
    folder named by ``key``; later runs reuse it."""
    folder = Path(tempfile.gettempdir()) / f"bench-{key}"
    if not (folder / "model.onnx").is_file():
        folder.mkdir(exist_ok=True)
        save_onnx(model.model, copy.deepcopy(cfg), folder)
    return folder / "model.onnx"


def _onnxruntime(key: str, cfg: ModelConfig) -> Callable[..., Forward]:
    def build(model: Served, device: torch.device, threads: int) -> Forward:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_file(model, cfg, key)), opts, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"pixels": x.numpy()})[0])

    return build


def variants(onnx_key: str, cfg: ModelConfig, with_compile: bool) -> list[Variant]:
    out = [
        Variant("eager fp32, no_grad (baseline)", _eager(no_grad_only=True)),
        Variant("+ inference_mode", _eager()),
        Variant("+ channels_last", _eager(channels_last=True)),
        Variant("+ BN folded (fx) + channels_last", _folded_channels_last),
        Variant("bf16 autocast", _eager(bf16=True), exact=False),
        Variant("bf16 autocast + channels_last", _eager(channels_last=True, bf16=True), exact=False),
    ]
    if all(_has(m) for m in ("onnxruntime", "onnx")):  # run, and export as the package does
        out.append(Variant("ONNX Runtime fp32", _onnxruntime(onnx_key, cfg), devices=("cpu",)))
    if with_compile:
        out += [
            Variant("torch.compile (inductor, freezing)", _compiled(False), batched=False),
            Variant("torch.compile + bf16 autocast", _compiled(True), exact=False, batched=False),
        ]
    return out


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ------------------------------------------------------------------ measurement
@dataclass
class ArchResult:
    arch: str
    size: int  # input side, px
    device: str
    threads: int
    flops: float
    rates: dict[str, float]  # GFLOP/s, median over rounds
    convs_alone_s: float
    b1: dict[str, Timing]
    batched: dict[tuple[str, int], Timing]
    max_diff: dict[str, float]
    flipped: dict[str, float]  # fraction of mask pixels (tanh > 0) that differ from the baseline
    exact: set[str]  # the fp32 variants

    def fastest(self, exact_only: bool) -> str:
        return min((n for n in self.b1 if n in self.exact or not exact_only), key=lambda n: self.b1[n].p50)

    @property
    def floor_s(self) -> float:
        return self.flops / (max(self.rates["matmul fp32"], self.rates["conv3x3 fp32"]) * 1e9)


def measure(arch: str, device: torch.device, threads: int, args: argparse.Namespace) -> ArchResult:
    if device.type == "cpu":
        torch.set_num_threads(threads)
    seg = Segmenter.from_pretrained(weights_for(arch, override=args.weights), device=device)
    model, size = Served(seg.model.cpu()).eval(), seg.cfg.input_size
    flops, _ = count_flops(model, size)
    model.to(device)
    key = f"{arch}-{seg.cfg.meta.get('sha256', 'x')[:12]}"
    chosen = [v for v in variants(key, seg.cfg, args.compile) if device.type in v.devices]
    forwards = {v.name: v.build(model, device, threads) for v in chosen}
    x1 = seg.preprocess([sample_photo()], size)  # (1,3,S,S): a real photo, so the masks compared below mean something
    probes = rate_probes(device)
    candidates: dict[str, Callable[[], object]] = {name: (lambda f=f: f(x1)) for name, f in forwards.items()}
    candidates |= {name: call for name, (call, _) in probes.items()}
    timings = time_interleaved(candidates, args.rounds, warmup=2, device=device, max_seconds=args.max_seconds)
    rates = {name: probes[name][1] / timings[name].p50 / 1e9 for name in probes}
    b1 = {name: timings[name] for name in forwards}
    # accuracy of each lever against the baseline, on a photo-like input
    ref = forwards[chosen[0].name](x1).float().cpu()
    max_diff, flipped = {}, {}
    for name, f in forwards.items():
        y = f(x1).float().cpu()
        max_diff[name] = float((y - ref).abs().max())
        flipped[name] = float(((y > 0) != (ref > 0)).float().mean())
    # batch 8 and 16: the baseline, the fastest exact lever and the fastest lever overall
    batchable = [v for v in chosen if v.batched]
    fastest_exact = min((v for v in batchable if v.exact), key=lambda v: b1[v.name].p50)
    fastest = min(batchable, key=lambda v: b1[v.name].p50)
    names = list(dict.fromkeys([chosen[0].name, fastest_exact.name, fastest.name]))
    batched: dict[tuple[str, int], Timing] = {}
    for bs in args.batches:
        xb = torch.randn(bs, 3, size, size, device=device)
        fns = {n: (lambda f=forwards[n], xb=xb: f(xb)) for n in names}
        t = time_interleaved(
            fns, args.batch_rounds, warmup=1, device=device, max_seconds=args.max_seconds, min_rounds=1
        )
        batched |= {(n, bs): t[n] for n in names}
    alone = convs_alone(model, size, device, args.rounds, args.max_seconds)
    exact = {v.name for v in chosen if v.exact}
    return ArchResult(arch, size, device.type, threads, flops, rates, alone, b1, batched, max_diff, flipped, exact)


# ------------------------------------------------------------------ report
def print_flops(archs: list[str], override: str | None) -> None:
    rows = []
    for arch in archs:
        seg = Segmenter.from_pretrained(weights_for(arch, override=override), device="cpu")
        size = seg.cfg.input_size
        flops, ops = count_flops(Served(seg.model), size)
        params = sum(p.numel() for p in seg.model.parameters())
        rows.append([arch, f"{size}x{size}", f"{params / 1e6:.2f}", f"{flops / 1e9:.2f}", ", ".join(ops)])
    print("### FLOPs per image of the served forward (FlopCounterMode, 2 FLOPs per multiply-add)\n")
    print(markdown_table(["generator", "input", "params (M)", "GFLOP / image", "ops counted"], rows))
    print()


def print_results(results: list[ArchResult]) -> None:
    print("### Machine rates, measured interleaved with each generator's forward passes (p50 GFLOP/s)\n")
    probe_names = list(results[0].rates)
    print(
        markdown_table(
            ["measured beside", "device", "threads", *probe_names],
            [
                [f"{r.arch} ({r.size} px)", r.device, r.threads, *[fmt(r.rates[n], 0) for n in probe_names]]
                for r in results
            ],
        )
    )
    print()
    print("### Floor vs measured forward (p50; floor = FLOPs / max(fp32 matmul, conv rate))\n")
    rows = []
    for r in results:
        picks = {"baseline": next(iter(r.b1)), "fastest fp32": r.fastest(True), "fastest": r.fastest(False)}
        shown: set[str] = set()
        for label, name in picks.items():
            if name in shown:
                continue
            shown.add(name)
            tput = {bs: (f"{bs / r.batched[name, bs].p50:.1f}" if (name, bs) in r.batched else "–") for bs in (8, 16)}
            rows.append(
                [
                    f"{r.arch} ({r.size} px)",
                    r.device,
                    r.threads,
                    f"{label}: {name}",
                    f"{r.floor_s * 1e3:.1f}",
                    f"{r.convs_alone_s * 1e3:.1f}",
                    f"{r.b1[name].p50 * 1e3:.1f}",
                    f"{r.b1[name].p50 / r.floor_s:.2f}x",
                    tput[8],
                    tput[16],
                    f"{1 / r.floor_s:.1f}",
                ]
            )
    print(
        markdown_table(
            [
                "generator",
                "device",
                "threads",
                "forward",
                "floor ms",
                "convs alone ms",
                "b1 p50 ms",
                "b1 / floor",
                "b8 img/s",
                "b16 img/s",
                "floor img/s",
            ],
            rows,
        )
    )
    print()
    for r in results:
        base = r.b1[next(iter(r.b1))].p50
        print(f"### Levers: {r.arch}, {r.device}, {r.threads} thread(s), interleaved rounds\n")
        rows = []
        for name, t in r.b1.items():
            tput = {bs: (f"{bs / r.batched[name, bs].p50:.1f}" if (name, bs) in r.batched else "–") for bs in (8, 16)}
            rows.append(
                [
                    name,
                    f"{t.p50 * 1e3:.1f}",
                    f"{t.p95 * 1e3:.1f}",
                    f"{base / t.p50:.2f}x",
                    f"{t.p50 / r.floor_s:.2f}x",
                    tput[8],
                    tput[16],
                    f"{r.max_diff[name]:.1e}",
                    f"{r.flipped[name] * 100:.3f}",
                ]
            )
        print(
            markdown_table(
                [
                    "variant",
                    "b1 p50 ms",
                    "b1 p95 ms",
                    "speed-up",
                    "b1 / floor",
                    "b8 img/s",
                    "b16 img/s",
                    "max abs diff",
                    "mask px flipped %",
                ],
                rows,
            )
        )
        print()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="effnet_unet only, 1 thread, few rounds, batch 8 only")
    p.add_argument("--arch", nargs="+", default=["effnet_unet", "pix2pix_unet"], choices=get_args(Arch))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="CPU thread counts to try")
    p.add_argument("--rounds", type=int, default=6, help="interleaved rounds at batch 1")
    p.add_argument("--batch-rounds", type=int, default=2, help="interleaved rounds at batch 8 and 16")
    p.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    p.add_argument("--max-seconds", type=float, default=8.0, help="stop adding rounds to a measurement after this long")
    p.add_argument("--weights", help="weights folder to use for its arch (default: weights/ if it fits, else random)")
    p.add_argument("--compile", action="store_true", help="add torch.compile variants (slow to compile)")
    p.add_argument("--no-cuda", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.arch, args.threads, args.rounds, args.batch_rounds, args.batches = (["effnet_unet"], [1], 4, 1, [8])
    print_machine("Model floor: generator FLOPs vs this machine's rate")
    print("weights: " + "; ".join(f"{a}: {weights_label(weights_for(a, override=args.weights))}" for a in args.arch))
    print("(mask agreement is only meaningful with trained weights; timings do not depend on them)\n")
    print_flops(args.arch, args.weights)
    results = []
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() and not args.no_cuda else [])
    for device in devices:
        for arch in args.arch:
            for threads in args.threads if device.type == "cpu" else [torch.get_num_threads()]:
                results.append(measure(arch, device, threads, args))
    print_results(results)
    print("### Target: forward at batch 1 within 1.5x of the floor\n")
    rows = []
    for r in results:
        base, exact, any_ = (r.b1[n].p50 / r.floor_s for n in (next(iter(r.b1)), r.fastest(True), r.fastest(False)))
        rows.append(
            [
                r.arch,
                r.device,
                r.threads,
                f"{base:.2f}x",
                f"{exact:.2f}x ({r.fastest(True)})",
                f"{any_:.2f}x ({r.fastest(False)})",
                "met" if exact <= 1.5 else "NOT met",
            ]
        )
    print(
        markdown_table(
            ["generator", "device", "threads", "baseline", "fastest fp32", "fastest (any)", "fp32 within 1.5x"], rows
        )
    )


if __name__ == "__main__":
    main()
