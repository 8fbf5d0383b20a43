"""Process-level settings: a faster CPU allocator (results unchanged) and worker clean-up."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned: bool | None = None


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    PyTorch's CPU allocator is plain malloc. By default glibc serves every block above 128 KiB-32 MiB
    with a fresh ``mmap`` and unmaps it on free, so each large activation (tens of MB per Hiera
    block) is page-faulted in again on first touch: on the development CPU an elementwise op on a
    37 MB tensor took 30 ms, 12 ms once memory is reused. Raising the mmap and trim thresholds keeps
    those pages in the heap; peak memory is unchanged. This is what the usual advice of preloading
    jemalloc/tcmalloc achieves, without the preload. Process-wide, so only the command-line entry
    points call it; returns whether it took effect (glibc only).
    """
    global _tuned
    if _tuned is not None:
        return _tuned
    mallopt = _linux_libc_function("mallopt")  # None on musl etc.: leave the allocator alone
    _tuned = mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
        mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1))
    return _tuned


def exit_with_parent() -> bool:
    """Ask Linux to terminate this process (SIGTERM) when its parent dies, so that worker processes
    started by a launcher that is killed do not keep running on their own. Returns whether it took
    effect (Linux only)."""
    prctl = _linux_libc_function("prctl")
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) == 0


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _linux_libc_function(name: str):
    """``name`` from the C library on Linux, or None (another OS, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


# --- inference precision ---------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "int8")
_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
_cpu_bf16: bool | None = None
_bf16_warned = False


def resolve_precision(precision: str, device="cpu") -> str:
    """The inference precision to use on ``device`` (a ``torch.device`` or its name).

    ``auto`` becomes ``bf16`` where the device multiplies bfloat16 matrices faster than float32 (a
    CUDA GPU with bf16 support, a CPU with AMX or AVX512-BF16 units) and ``fp32`` elsewhere. An
    explicit ``bf16`` on a CPU without bf16 units is kept but warns once: such a CPU converts every
    bf16 operand in software, so it is many times slower than float32, not faster. ``int8`` (int8
    MLP layers in the image encoder, see ``RS2SAM2.set_precision``) is never chosen automatically
    and runs on the CPU only: asking for it on another device raises ``ValueError``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    import torch  # here, not at the top: the allocator tuning above must not need torch loaded

    device = torch.device(device)
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only, not on {device}")
    if device.type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        fast = cpu_has_bf16_units()
    else:
        fast = False
    if precision == "auto":
        return "bf16" if fast else "fp32"
    if precision == "bf16" and device.type == "cpu" and not fast:
        _warn_slow_cpu_bf16()
    return precision


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16): read from the CPU flags
    of /proc/cpuinfo, or where there is none, decided by timing a bf16 against an fp32 matrix
    multiply. Cached for the process."""
    global _cpu_bf16
    if _cpu_bf16 is None:
        flags = _cpu_flags()
        _cpu_bf16 = bool(flags & _BF16_CPU_FLAGS) if flags is not None else _bf16_matmul_speedup() > 1.0
    return _cpu_bf16


def _cpu_flags() -> set[str] | None:
    """The CPU feature flags of /proc/cpuinfo, or None where the OS does not provide them."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return None


def _bf16_matmul_speedup(n: int = 384, reps: int = 3) -> float:
    """How many times faster a bf16 ``n x n`` matrix multiply runs than an fp32 one on this CPU (a
    few milliseconds on a CPU with bf16 units, well under a second on one without)."""
    import time

    import torch

    def best(dtype) -> float:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b  # warm-up: first-call dispatch and packing
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        return min(times)

    return best(torch.float32) / max(best(torch.bfloat16), 1e-9)


def _warn_slow_cpu_bf16() -> None:
    import warnings

    global _bf16_warned
    if _bf16_warned:
        return
    _bf16_warned = True
    slowdown = 1.0 / max(_bf16_matmul_speedup(), 1e-9)
    warnings.warn(
        f"precision bf16 on a CPU without bf16 units (AMX / AVX512-BF16): its matrix multiplies run about "
        f"{slowdown:.0f}x slower than fp32 here, so expect the model to take many times longer; use "
        "precision 'auto' or 'fp32' on this machine", RuntimeWarning, stacklevel=3)
