"""``rs2sam2 benchmark``: forward-pass timing against the machine's matrix-multiply floor.

The floor is ``FLOPs of one forward / measured matmul rate`` in the same precision; the ratio to
it says how much time goes to anything but multiplying matrices at full speed. Two floors are
reported: all FLOPs (attention included) and those of the linear layers and convolutions only
(the weights' matrix multiplies). The last printed line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from .cliargs import number
from .config import PRESET_NAMES, get_config
from .errors import ConfigError
from .losses import RS2SAM2Loss
from .models import RS2SAM2
from .models.common import PackedLinear, packed_linear_available
from .runtime import PRECISIONS, autocast, heap_releaser, resolve_device, resolve_precision, tune_cpu_allocator
from .train.policy import freeze_published, param_groups, per_sample_loss

#: bounds of the arguments: far above a useful measurement, low enough to refuse a typo before any work
MAX_BATCH, MAX_RUNS, MAX_THREADS = 256, 1000, 1024


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 benchmark``."""
    p.add_argument("--preset", default="paper", choices=PRESET_NAMES)
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="auto (default): bf16 where the device multiplies bf16 faster than fp32, else fp32")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--batch", type=number(int, low=1, high=MAX_BATCH), default=1,
                   help=f"images per forward, one expression each (at most {MAX_BATCH} with --texts)")
    p.add_argument("--texts", type=number(int, low=1, high=MAX_BATCH), default=1,
                   help="expressions per image, batched in one pass")
    p.add_argument("--text-len", type=number(int, low=2), default=12,
                   help="tokens per expression, BOS and EOS included (at most the preset's position table)")
    p.add_argument("--runs", type=number(int, low=1, high=MAX_RUNS), default=3)
    p.add_argument("--warmup", type=number(int, low=0, high=MAX_RUNS), default=1)
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--train", action="store_true",
                   help="time a training step (published freeze policy, AdamW, published loss) instead")
    p.add_argument("--grad-checkpointing", action="store_true", help="with --train: recompute blocks in backward")
    p.add_argument("--threads", type=number(int, low=1, high=MAX_THREADS), default=None,
                   help="torch intra-op threads (default: torch's)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="time runs and the matmul rate by the wall clock (default) or by this process's CPU "
                        "time: with --threads 1 on a shared machine, CPU time leaves out the time the "
                        "process waited for a core")
    p.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's malloc thresholds at their defaults")
    p.add_argument("--json", action="store_true", help="print only the JSON line")


def build_random_model(preset: str, precision: str, device: str) -> RS2SAM2:
    """The preset with random weights, materialised directly in its inference precision (built on
    the meta device first, so the float32 copy of a bf16 model never exists; int8 layers are
    quantized from the random float32 weights)."""
    with torch.device("meta"):
        model = RS2SAM2(get_config(preset))
    model.set_precision("fp32" if precision == "int8" else precision)
    model = model.to_empty(device=device).eval()
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for p in list(model.parameters()) + list(model.buffers()):
            p.copy_((torch.randn(p.shape, generator=gen) * 0.02).to(p.dtype))
    if precision == "int8":
        model.set_precision(precision)
    model.pack_linear_weights(heap_releaser())  # on the CPU, as the Predictor runs it
    return model


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def matmul_gflops(dtype: torch.dtype, device: str, n: int = 2048, reps: int = 8, clock=time.perf_counter) -> float:
    """The best rate of an ``n x n`` matrix multiply in ``dtype`` on ``device``, in billions of
    operations per second (the floor's denominator). On the CPU the better of ``torch.matmul`` and
    oneDNN's product on a packed weight (what :class:`~rs2sam2.models.common.PackedLinear` runs):
    which of the two libraries behind them is faster depends on the CPU (benchmarks/README.md), and
    a floor must be the fastest product available."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    products = [lambda: a @ b]
    if torch.device(device).type == "cpu" and packed_linear_available(dtype):
        layer = torch.nn.Linear(n, n, bias=False)
        layer.weight = torch.nn.Parameter(b.t().contiguous(), requires_grad=False)  # a @ b as a linear layer
        packed = PackedLinear(layer)
        products.append(lambda: packed(a))
    best = float("inf")
    for product in products:
        for _ in range(3):
            _sync(device)
            t = clock()
            for _ in range(reps):
                product()
            _sync(device)
            best = min(best, (clock() - t) / reps)
    return 2 * n**3 / best / 1e9


def forward_tflop(preset: str, batch: int, text_len: int) -> tuple[float, float]:
    """TFLOPs of one forward, counted on the meta device (no arithmetic runs): all of them, and
    those of the linear layers and convolutions (attention's score and value products excluded)."""
    with torch.device("meta"):
        model = RS2SAM2(get_config(preset)).eval()
        inputs = random_inputs(model, batch, text_len, "meta")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*inputs)
    by_op = counter.get_flop_counts()["Global"]
    linear = sum(n for op, n in by_op.items() if op.__name__.split(".")[0] in ("addmm", "mm", "convolution"))
    return counter.get_total_flops() / 1e12, linear / 1e12


def random_inputs(model: RS2SAM2, batch: int, text_len: int, device):
    """Random model inputs of the model's sizes: images, BEiT-3 images, token ids, attention mask."""
    cfg = model.config
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=device)
    evf = torch.randn(batch, 3, cfg.beit3.img_size, cfg.beit3.img_size, device=device)
    ids = torch.randint(4, min(cfg.beit3.vocab_size, 1000), (batch, text_len), device=device)
    ids[:, 0], ids[:, -1] = 0, 2
    return images, evf, ids, torch.ones_like(ids, dtype=torch.bool)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed_runs(forward, dtype, device: str, now, warmup: int, runs: int) -> tuple[list[float], list[float]]:
    """``(seconds, matmul rate in GFLOP per second)`` of each timed run of ``forward`` after ``warmup`` untimed ones.

    The machine's speed drifts (turbo, neighbours): the matmul rate is measured right before and right
    after every timed run, and their geometric mean is the run's rate, so per-run ratios cancel the drift."""
    times, rates = [], []
    with torch.inference_mode():
        for i in range(warmup + runs):
            before = matmul_gflops(dtype, device, reps=4, clock=now) if i >= warmup else None
            _sync(device)
            t = now()
            forward()
            _sync(device)
            if i >= warmup:
                elapsed = now() - t
                times.append(elapsed)
                rates.append((before * matmul_gflops(dtype, device, reps=4, clock=now)) ** 0.5)
    return times, rates


def run_benchmark(preset="paper", precision="auto", device="cpu", batch=1, texts=1, text_len=12, runs=3,
                  warmup=1, compile=False, threads=None, clock="wall") -> dict:
    """Time the forward pass of ``preset`` with random weights and report seconds, the FLOP count and the ratio to the matmul floor."""
    if threads:
        torch.set_num_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available")
    precision = resolve_precision(precision, device)
    if clock == "cpu" and device != "cpu":
        raise ConfigError("--clock cpu times this process's CPU time: use it with --device cpu")
    now = CLOCKS[clock]
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32  # int8: against the fp32 floor
    n = batch * texts  # BHFM conditions the image encoder on the text: every expression is a full pass
    model = build_random_model(preset, precision, device)
    if compile:
        model = torch.compile(model)
    images, evf, ids, mask = random_inputs(model if not compile else model._orig_mod, batch, text_len, device)
    if texts > 1:  # one image, several expressions: the image tensors are repeated along the batch
        images, evf = images.repeat_interleave(texts, 0), evf.repeat_interleave(texts, 0)
        ids, mask = ids.repeat_interleave(texts, 0), mask.repeat_interleave(texts, 0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    tflop, linear_tflop = forward_tflop(preset, n, text_len)
    times, rates = _timed_runs(lambda: model(images, evf, ids, mask), dtype, device, now, warmup, runs)
    ratios = [t / (tflop * 1e3 / r) for t, r in zip(times, rates)]
    per_forward = statistics.median(times)
    rate = statistics.median(rates)
    linear_ratios = [t / (linear_tflop * 1e3 / r) for t, r in zip(times, rates)]
    floor = tflop * 1e3 / rate
    return {
        "preset": preset,
        "precision": precision,
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "batch": batch,
        "texts": texts,
        "seconds_per_forward": round(per_forward, 4),
        "seconds_per_image": round(per_forward / batch, 4),
        "seconds_per_expression": round(per_forward / n, 4),
        "runs": [round(t, 4) for t in times],
        "tflop_per_forward": round(tflop, 4),
        "matmul_gflops": round(rate, 1),
        "matmul_gflops_runs": [round(r, 1) for r in rates],
        "floor_seconds": round(floor, 4),
        "ratio_to_floor": round(statistics.median(ratios), 3),
        "linear_tflop_per_forward": round(linear_tflop, 4),
        "ratio_to_linear_floor": round(statistics.median(linear_ratios), 3),
        "ratios_to_linear_floor": [round(x, 3) for x in linear_ratios],
        **_memory_and_system(device),
        "cpu": platform.processor() or platform.machine(),
        "compile": compile,
        "clock": clock,
    }


def _memory_and_system(device: str) -> dict:
    """Peak memory so far and the conditions of the run: threads, versions, device (shared by both benchmarks)."""
    return {
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda" else None,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_train_benchmark(preset="nano", device="cpu", batch=1, text_len=12, runs=3, warmup=1,
                        grad_checkpointing=False, threads=None) -> dict:
    """Seconds and peak memory of one optimizer step (forward, published loss, backward, AdamW), with
    the published freeze policy; bf16 autocast on CUDA as in training."""
    if threads:
        torch.set_num_threads(threads)
    model = build_random_model(preset, "fp32", device).train()
    counts = freeze_published(model)
    if grad_checkpointing:
        model.set_grad_checkpointing()
    optimizer = torch.optim.AdamW(param_groups(model, 5e-5, 1e-4, 0.01))
    loss_fn = RS2SAM2Loss()
    images, evf, ids, mask = random_inputs(model, batch, text_len, device)
    size = model.config.image_size
    target = (torch.rand(batch, size, size, device=device) > 0.7).float()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + runs):
        _sync(device)
        t = time.perf_counter()
        with autocast(device, "auto"):
            out = model(images, evf, ids, mask)
        loss = per_sample_loss(loss_fn, out.logits.float(), target, out.boundary_weight.float()).total
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {
        "preset": preset,
        "mode": "train",
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "batch": batch,
        "grad_checkpointing": grad_checkpointing,
        "seconds_per_step": round(statistics.median(times), 4),
        "runs": [round(t, 4) for t in times],
        "trainable_params": counts["total"]["trainable"],
        **_memory_and_system(device),
    }


def run(args: argparse.Namespace) -> int:
    """``rs2sam2 benchmark``: print the result (``--json``: as JSON)."""
    check_arguments(args)
    tuned = False if args.no_malloc_tuning else tune_cpu_allocator()
    if args.train:
        result = run_train_benchmark(args.preset, args.device, args.batch, args.text_len, args.runs, args.warmup,
                                     args.grad_checkpointing, args.threads)
    else:
        result = run_benchmark(args.preset, args.precision, args.device, args.batch, args.texts, args.text_len,
                               args.runs, args.warmup, args.compile, args.threads, args.clock)
    result["malloc_tuned"] = tuned
    if not args.json:
        for k, v in result.items():
            print(f"{k:>22}: {v}")
    print(json.dumps(result))
    return 0


def check_arguments(args: argparse.Namespace) -> None:
    """What the parser cannot check alone, before any work: a CUDA device that is not there, more
    expressions per pass than :data:`MAX_BATCH`, a text longer than the preset's position table."""
    resolve_device(args.device)  # CUDA asked for but not there: a ConfigError
    if args.batch * args.texts > MAX_BATCH:
        raise ConfigError(f"--batch {args.batch} x --texts {args.texts}: at most {MAX_BATCH} expressions per pass")
    longest = get_config(args.preset).beit3.max_text_len
    if args.text_len > longest:
        raise ConfigError(f"--text-len {args.text_len}: the {args.preset} preset reads at most {longest} tokens")
