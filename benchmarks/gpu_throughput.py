"""GPU throughput of a preset: training samples/s at batch 1 (published) and at the largest batch
that fits, inference images/s at batch 8.

Training: random weights, the published freeze policy, AdamW over the published parameter groups
(``fused=True``), bf16 autocast, the per-sample published loss (``rs2sam2.train.policy.per_sample_loss``,
the same objective for any batch size), the model under ``torch.compile``. The batch doubles from 1
until it no longer fits (or ``--max-batch``), then the largest fitting batch is found by bisection;
every batch size that ran is reported; ``--batches 1,24`` measures given sizes instead. Inference:
``rs2sam2.benchmark.run_benchmark`` at batch 8, precision ``auto`` (bf16 on a GPU with bf16), compiled.

Run from the repository root on a CUDA machine (a few minutes; no network):
    python3 benchmarks/gpu_throughput.py --out gpu-results/throughput.jsonl
Each result is printed and appended to ``--out`` as one JSON line. ``--device cpu --preset nano
--no-compile --max-batch 2`` is a quick smoke test of the script itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from rs2sam2.benchmark import build_random_model, random_inputs, run_benchmark
from rs2sam2.losses import RS2SAM2Loss
from rs2sam2.runtime import autocast
from rs2sam2.train.policy import freeze_published, param_groups, per_sample_loss


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model, compiled once, stepped at any batch size."""

    def __init__(self, preset: str, device: str, compile: bool, text_len: int):
        self.device, self.text_len = device, text_len
        self.model = build_random_model(preset, "fp32", device).train()
        self.trainable = freeze_published(self.model)["total"]["trainable"]
        self.optimizer = torch.optim.AdamW(param_groups(self.model, 5e-5, 1e-4, 0.01), fused=True)
        self.forward = torch.compile(self.model) if compile else self.model
        self.loss_fn = RS2SAM2Loss()

    def step(self, inputs, target) -> None:
        with autocast(self.device, "bf16"):  # bf16 autocast on CUDA; fp32 on the CPU (smoke runs)
            out = self.forward(*inputs)
        loss = per_sample_loss(self.loss_fn, out.logits.float(), target, out.boundary_weight.float()).total
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def measure(self, batch: int, steps: int, warmup: int) -> dict:
        """Samples/s at ``batch``; raises ``torch.cuda.OutOfMemoryError`` when it does not fit."""
        inputs = random_inputs(self.model, batch, self.text_len, self.device)
        size = self.model.config.image_size
        target = (torch.rand(batch, size, size, device=self.device) > 0.7).float()
        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(warmup):  # compilation (first batch sizes) and allocator warm-up
            self.step(inputs, target)
        _sync(self.device)
        warm_s = time.perf_counter() - start
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            self.step(inputs, target)
            _sync(self.device)
            times.append(time.perf_counter() - t)
        step_s = statistics.median(times)
        return {"batch": batch, "samples_per_second": round(batch / step_s, 3), "seconds_per_step": round(step_s, 4),
                "runs": [round(t, 4) for t in times], "warmup_seconds": round(warm_s, 1),
                "cuda_peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if self.device == "cuda" else None}

    def release(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.device == "cuda":
            torch.cuda.empty_cache()


def train_throughput(trainer: Trainer, max_batch: int, steps: int, warmup: int, budget_s: float, emit) -> None:
    """Batch 1, then doubling, then bisection up to the largest batch that fits (within the time budget)."""
    start = time.perf_counter()

    def fits(batch: int) -> bool:
        try:
            result = trainer.measure(batch, steps, warmup)
        except torch.cuda.OutOfMemoryError:
            result = None
        if result is None:  # released only now: the exception's frames held the batch's tensors
            trainer.release()
            emit({"mode": "train", "batch": batch, "fits": False})
            return False
        emit({"mode": "train", "fits": True, **result})
        return True

    if not fits(1):
        return
    ok, bad = 1, None
    while ok * 2 <= max_batch and time.perf_counter() - start < budget_s:
        if fits(ok * 2):
            ok *= 2
        else:
            bad = ok * 2
            break
    while bad is not None and bad - ok > 1 and time.perf_counter() - start < budget_s:
        mid = (ok + bad) // 2
        ok, bad = (mid, bad) if fits(mid) else (ok, mid)
    emit({"mode": "train", "largest_batch_that_fits": ok, "out_of_memory_at": bad, "max_batch": max_batch,
          "search_complete": (bad is None and ok * 2 > max_batch) or (bad is not None and bad - ok == 1)})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--out", default="gpu-results/throughput.jsonl", help="JSON lines are appended here")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation)")
    p.add_argument("--budget-s", type=float, default=420.0, help="stop the batch search after this many seconds")
    p.add_argument("--text-len", type=int, default=12)
    p.add_argument("--batches", type=lambda v: [int(b) for b in v.split(",")], default=None,
                   help="comma-separated training batch sizes to measure instead of the search (e.g. 1,24)")
    p.add_argument("--no-compile", action="store_true", help="eager (smoke tests of this script)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-inference", action="store_true")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device is available", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    common = {"preset": args.preset, "device": name, "torch": torch.__version__, "compile": not args.no_compile}

    def emit(record: dict) -> None:
        line = json.dumps({**common, **record})
        print(line, flush=True)
        with out.open("a") as f:
            f.write(line + "\n")

    if not args.skip_train:
        trainer = Trainer(args.preset, args.device, not args.no_compile, args.text_len)
        emit({"mode": "train", "trainable_params": trainer.trainable, "precision": "bf16 autocast" if
              args.device == "cuda" else "fp32", "optimizer": "AdamW(fused=True)"})
        if args.batches:
            for batch in args.batches:
                emit({"mode": "train", "fits": True, **trainer.measure(batch, args.steps, args.warmup)})
        else:
            train_throughput(trainer, args.max_batch, args.steps, args.warmup, args.budget_s, emit)
        del trainer
        if args.device == "cuda":
            torch.cuda.empty_cache()
    if not args.skip_inference:
        r = run_benchmark(args.preset, "auto", args.device, batch=8, runs=5, warmup=args.warmup,
                          compile=not args.no_compile)
        emit({"mode": "inference", "batch": 8, "images_per_second": round(8 / r["seconds_per_forward"], 2), **{
            k: r[k] for k in ("precision", "seconds_per_forward", "runs", "cuda_peak_mb")}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
