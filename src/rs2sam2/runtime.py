"""Process-level settings: a faster CPU allocator (results unchanged), worker clean-up, the
distributed setup (process group, rank, device), the end of a process that joined one, and the
autocast rule that training, evaluation and the benchmark share."""

from __future__ import annotations

import atexit
import ctypes
import ctypes.util
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist

from .errors import ConfigError

_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_tuned: bool | None = None
_joined_group = False  # whether init_distributed created a process group in this process
_LOOPBACK_INTERFACE = "lo0" if sys.platform == "darwin" else "lo"


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    PyTorch's CPU allocator is plain malloc. By default glibc serves every block above 128 KiB-32 MiB
    with a fresh ``mmap`` and unmaps it on free, so each large activation (tens of MB per Hiera
    block) is page-faulted in again on first touch (the effect is measured in benchmarks/README.md).
    Raising the mmap and trim thresholds keeps those pages in the heap; peak memory is unchanged. This is what the usual advice of preloading
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


def heap_releaser(every: int = 64 << 20) -> Callable[[int], None]:
    """A function to call with the bytes a long run of frees has freed so far (each call: the bytes
    of one free): where :func:`tune_cpu_allocator` keeps freed memory in the heap, it returns the
    heap's free pages to the OS (glibc ``malloc_trim``) every ``every`` bytes, so that replacing
    gigabytes of weights one layer at a time (``RS2SAM2.pack_linear_weights``) never holds both
    copies; elsewhere glibc returns them by itself and the function does nothing."""
    trim = _linux_libc_function("malloc_trim") if _tuned else None
    pending = [0]

    def freed(nbytes: int) -> None:
        pending[0] += nbytes
        if trim is not None and pending[0] >= every:
            trim(0)
            pending[0] = 0

    return freed


def exit_with_parent() -> bool:
    """Ask Linux to terminate this process (SIGTERM) when its parent dies, so that worker processes
    started by a launcher that is killed do not keep running on their own. Returns whether it took
    effect (Linux only)."""
    prctl = _linux_libc_function("prctl")
    return prctl is not None and prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) == 0


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def autocast_enabled(device: torch.device | str, precision: str) -> bool:
    """Whether forward passes run under bf16 autocast: on CUDA with precision ``auto`` or ``bf16``.
    On the CPU training and evaluation compute in fp32 (inference has its own bf16 path,
    ``model.set_precision``)."""
    return torch.device(device).type == "cuda" and precision in ("auto", "bf16")


def autocast(device: torch.device | str, precision: str):
    """The autocast context of training, evaluation and the benchmark (:func:`autocast_enabled`)."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast_enabled(device, precision))


def _linux_libc_function(name: str):
    """``name`` from the C library on Linux, or None (another OS, or a libc without it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


@dataclass
class Dist:
    """This process's place in a (possibly one-process) data-parallel run, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def _reduce(self, values: list[float], op) -> torch.Tensor:
        t = torch.tensor(values, dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
        dist.all_reduce(t, op=op)
        return t

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one of them."""
        return bool(self._reduce([float(flag)], dist.ReduceOp.MAX).item() > 0) if self.enabled else flag

    def mean(self, values: list[float]) -> list[float]:
        """The mean of ``values`` over the ranks (element-wise)."""
        return (self._reduce(values, dist.ReduceOp.SUM) / self.world_size).tolist() if self.enabled else values

    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace the gradients of ``params`` by their mean over the ranks, in one all-reduce (for
        training steps outside DDP's wrapper; a missing gradient counts as zeros)."""
        if not self.enabled:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
        dist.all_reduce(flat)
        flat /= self.world_size
        for p, g in zip(params, flat.split([p.numel() for p in params])):
            if p.grad is None:
                p.grad = g.view_as(p).clone()
            else:
                p.grad.copy_(g.view_as(p))

    def first_message(self, message: str | None) -> str | None:
        """The message of the lowest rank that has one, on every rank; None when no rank has one.
        This is how a problem that one rank finds (a sample it cannot load, a failed save) stops
        every rank alike, with its message."""
        if not self.enabled:
            return message
        if not self.any(message is not None):
            return None
        messages: list[str | None] = [None] * self.world_size
        dist.all_gather_object(messages, message)
        return next(m for m in messages if m is not None)

    def close(self) -> None:
        """Leave the process group if :func:`init_distributed` created it."""
        if self.created_group and dist.is_initialized():
            dist.destroy_process_group()


def launch_ranks() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` as torchrun sets them; ``(0, 1)`` outside torchrun. Raises
    :class:`~rs2sam2.errors.ConfigError` when they are not whole numbers with ``0 <= RANK < WORLD_SIZE``."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                          "expected whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def init_distributed(device: str = "auto", rank: int | None = None, world_size: int | None = None,
                     rendezvous: str | os.PathLike | None = None) -> Dist:
    """Join the process group when the run has several ranks and pick this rank's device.

    The ranks come from torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` unless ``rank`` and
    ``world_size`` are given. The group uses NCCL on CUDA and gloo on the CPU; a rank on CUDA uses
    ``cuda:LOCAL_RANK``. ``device`` is ``auto`` (CUDA when available), ``cpu``, ``cuda`` or
    ``cuda:N`` (one process only). A group that exists already is joined as it is. Raises
    ``ValueError`` when CUDA is asked for but not available.

    The ranks meet through ``MASTER_ADDR``/``MASTER_PORT`` (torchrun sets them), or, for CPU ranks
    on one machine (``rendezvous``: a file path they all share), through that file: then no store
    server listens anywhere and gloo connects the ranks over the loopback interface only, so nothing
    is reachable from the network.
    """
    global _joined_group
    env_rank, env_world = launch_ranks() if rank is None or world_size is None else (rank, world_size)
    world = env_world if world_size is None else int(world_size)
    rank = env_rank if rank is None else int(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = str(device)
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    dev = torch.device("cpu")
    if want_cuda:
        dev = torch.device(device if ":" in device and world == 1 else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    created = False
    if world > 1 and not dist.is_initialized():
        if rendezvous is None:
            dist.init_process_group(backend="nccl" if want_cuda else "gloo", rank=rank, world_size=world)
        elif want_cuda:
            raise ValueError("a rendezvous file joins CPU ranks on one machine; CUDA ranks use torchrun")
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = _LOOPBACK_INTERFACE  # read when gloo creates its device
            dist.init_process_group(backend="gloo", store=dist.FileStore(str(rendezvous), world), rank=rank,
                                    world_size=world)
        created = _joined_group = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return Dist(rank, world, local_rank, dev, created)


def end_process(status: int) -> NoReturn:
    """End this process with exit ``status``, once the program's own files are closed.

    A process that joined a process group (:func:`init_distributed`) runs the exit handlers
    (``atexit``: multiprocessing's clean-up of its semaphores, tqdm's, ...), flushes stdout and
    stderr, then ends with ``os._exit``, skipping the interpreter's finalization: gloo's worker
    threads outlive ``destroy_process_group`` while something still holds the group (FSDP's device
    mesh does, for the life of the process), and a thread that frees the tensors of a finished
    collective needs the GIL; if the interpreter is finalizing by then, the thread is torn down
    inside C++ and the process aborts (SIGABRT, "terminate called without an active exception"),
    so a rank that finished its work would be reported as failed. Other processes exit normally.
    """
    if _joined_group:
        atexit._run_exitfuncs()  # what the interpreter runs first at exit, while it is still whole
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the current process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# --- inference precision ---------------------------------------------------------------------------

PRECISIONS = ("auto", "fp32", "bf16", "int8")
_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
_cpu_bf16: tuple[bool, str] | None = None
_bf16_warned = False
_SLOW_BF16 = 1.5  # an explicit bf16 warns where its matrix multiplies take this many times the fp32 time



def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None``/``"auto"``: the model's device when one is given,
    else CUDA when available, else the CPU. Asking for CUDA without it raises :class:`ConfigError`."""
    if device is None or str(device) == "auto":
        if model is not None:
            param = next(model.parameters(), None)
            if param is not None:
                return param.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device {str(device)!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not available; use --device cpu")
    return dev

def resolve_precision(precision: str, device="cpu") -> str:
    """The inference precision to use on ``device`` (a ``torch.device`` or its name).

    ``auto`` becomes ``bf16`` where the device multiplies bfloat16 matrices faster than float32 (a
    CUDA GPU with bf16 support, a CPU with AMX or AVX512-BF16 units) and ``fp32`` elsewhere. An
    explicit ``bf16`` on a CPU without bf16 units is kept but warns once where a timed bf16 matrix
    multiply is slow: such a CPU converts every bf16 operand in software, so it is usually many times
    slower than float32, not faster. ``int8`` (int8
    MLP layers in the image encoder, see ``RS2SAM2.set_precision``) is never chosen automatically
    and runs on the CPU only: asking for it on another device raises ``ValueError``."""
    return precision_choice(precision, device)[0]


def precision_choice(precision: str, device="cpu") -> tuple[str, str]:
    """:func:`resolve_precision`'s answer and, in words, why (what ``predict --verbose`` prints)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    device = torch.device(device)
    if precision == "int8" and device.type != "cpu":
        raise ValueError(f"precision int8 runs on the CPU only, not on {device}")
    if precision != "auto":
        if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16_units():
            _warn_slow_cpu_bf16()
        return precision, "as asked"
    if device.type == "cuda":
        fast = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        why = "this GPU computes bf16" if fast else "this GPU has no bf16"
    elif device.type == "cpu":
        fast, why = _cpu_bf16_units()
        why += "; int8 only when asked for: it was not faster than bf16 on the CPUs measured (benchmarks/README.md)"
    else:
        fast, why = False, f"no bf16 path on {device.type}"
    return ("bf16" if fast else "fp32"), f"auto: {why}"


def cpu_has_bf16_units() -> bool:
    """Whether this CPU has bfloat16 matrix units (AMX-BF16 or AVX512-BF16): read from the CPU flags
    of /proc/cpuinfo, or where there is none, decided by timing a bf16 against an fp32 matrix
    multiply. Cached for the process."""
    return _cpu_bf16_units()[0]


def _cpu_bf16_units() -> tuple[bool, str]:
    """:func:`cpu_has_bf16_units` and the evidence, in words (cached)."""
    global _cpu_bf16
    if _cpu_bf16 is None:
        flags = _cpu_flags()
        if flags is not None:
            units = sorted(flags & _BF16_CPU_FLAGS)
            _cpu_bf16 = (bool(units), f"this CPU lists bf16 units ({', '.join(units)})" if units
                         else "this CPU lists no bf16 units (amx_bf16, avx512_bf16)")
        else:
            speedup = _bf16_matmul_speedup()
            _cpu_bf16 = (speedup > 1.0, f"a bf16 matrix multiply ran {speedup:.2g}x as fast as fp32 here")
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
    global _bf16_warned
    if _bf16_warned:
        return
    _bf16_warned = True
    slowdown = 1.0 / max(_bf16_matmul_speedup(), 1e-9)
    if slowdown < _SLOW_BF16:  # no bf16 flags, yet bf16 is not slow here (a VM hiding them): nothing to warn of
        return
    warnings.warn(
        f"precision bf16 on a CPU without bf16 units (AMX / AVX512-BF16): its matrix multiplies run about "
        f"{slowdown:.0f}x slower than fp32 here, so expect the model to take many times longer; use "
        "precision 'auto' or 'fp32' on this machine", RuntimeWarning, stacklevel=3)
