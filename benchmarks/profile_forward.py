"""Where one forward's time goes: a torch.profiler op table (op, self time, share, achieved rate).

    python benchmarks/profile_forward.py --preset paper --precision bf16 [--warmup 1] [--top 14]

``--threads 1`` on a shared machine: one thread is descheduled in proportion to its work, while two
threads stall each other at every parallel region when the cores are oversubscribed, which inflates
short ops far more than long matrix multiplies. Random weights built as ``rs2sam2 benchmark`` builds them; one warm-up forward, then one profiled
forward. The rate column divides the op's FLOPs (counted on the meta device, per aten op) by its self
time; the GEMM rate of the same precision is measured right before the profiled forward so the table
can be read as a ratio. Prints a Markdown table and, last, a JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from rs2sam2.benchmark import build_random_model, matmul_gflops, random_inputs
from rs2sam2.config import get_config
from rs2sam2.models import RS2SAM2
from rs2sam2.runtime import tune_cpu_allocator


def flops_by_op(preset: str, text_len: int) -> dict[str, float]:
    """FLOPs of one forward per aten op name (``aten::addmm``...), counted on the meta device."""
    with torch.device("meta"):
        model = RS2SAM2(get_config(preset)).eval()
        inputs = random_inputs(model, 1, text_len, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    out: dict[str, float] = defaultdict(float)
    for op, n in counter.get_flop_counts()["Global"].items():
        name = op.__name__.split(".")[0]
        out["aten::" + _PROFILED_AS.get(name, name)] += n
    return out


# the meta device counts attention as batched matrix products and convolutions under their generic
# name; on the CPU they run as these kernels
_PROFILED_AS = {"bmm": "_scaled_dot_product_flash_attention_for_cpu", "convolution": "mkldnn_convolution"}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="paper")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--text-len", type=int, default=12)
    p.add_argument("--top", type=int, default=14)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_allocator()
    model = build_random_model(args.preset, args.precision, "cpu")
    inputs = random_inputs(model, 1, args.text_len, "cpu")
    flops = flops_by_op(args.preset, args.text_len)
    with torch.inference_mode():
        for _ in range(args.warmup):
            model(*inputs)
        rate = matmul_gflops(torch.bfloat16 if args.precision == "bf16" else torch.float32, "cpu", reps=4)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            model(*inputs)
            total = time.perf_counter() - t
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    print(f"{args.preset} {args.precision}: one forward {total:.2f} s, GEMM {rate:.1f} GFLOP/s")
    print("| op | calls | self time (s) | share | GFLOP/s |\n| --- | --- | --- | --- | --- |")
    table = []
    for e in rows[: args.top]:
        s = e.self_cpu_time_total / 1e6
        f = flops.get(e.key, 0.0)
        gf = f / s / 1e9 if f and s else None
        table.append({"op": e.key, "calls": e.count, "self_s": round(s, 3), "share": round(s / total, 4),
                      "gflops": round(gf, 1) if gf else None})
        print(f"| `{e.key}` | {e.count} | {s:.3f} | {s / total:.1%} | {f'{gf:.0f}' if gf else '-'} |")
    rest = total - sum(r["self_s"] for r in table)
    print(f"| rest | | {rest:.3f} | {rest / total:.1%} | |")
    print(json.dumps({"preset": args.preset, "precision": args.precision, "seconds": round(total, 3),
                      "matmul_gflops": round(rate, 1), "ops": table}))


if __name__ == "__main__":
    main()
