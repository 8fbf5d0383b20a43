"""Starting a training run: in this process (or one torchrun rank), or as CPU ranks started here.

CPU ranks exist because, with the small tensors of CPU training, one process spends much of its
time synchronising its threads, while single-threaded ranks each do their own stream of work.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import multiprocessing.connection
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.multiprocessing as mp

from ..checkpoints import CheckpointError
from ..data import DatasetError
from ..errors import ConfigError, FileFormatError, MissingFileError, OutputError, UserError
from ..fsutil import atomic_write_text
from ..runtime import available_cores, end_process, exit_with_parent, init_distributed, tune_cpu_allocator
from ..signals import Stopped, stop_on_signals
from .config import TrainConfig
from .state import CheckpointWriteError
from .trainer import NonFiniteLossError, Trainer


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume, with ``config.resume``) a training run; returns the content of ``summary.json``.

    Under torchrun call it on every rank. Raises :class:`NonFiniteLossError` when the loss becomes
    NaN/inf, ``DatasetError`` when a sample cannot be loaded and :class:`CheckpointWriteError` when
    a checkpoint cannot be written (a full disk), each after writing ``summary.json`` (the
    checkpoints on disk stay as they were); what setup finds wrong (the configuration, the data, a
    clash with the run being resumed, an unreadable checkpoint) raises before anything is written.
    """
    trainer = Trainer(config.resolved())
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


#: What ``rs2sam2 train`` reports as the user's doing (exit status 2, the message, no traceback): a
#: bad setting, file or dataset, a clash with the run being resumed, a checkpoint that cannot be read
#: (every :class:`~rs2sam2.errors.UserError`), and the run folder's file system failing (a full disk,
#: no permission: ``OSError``).
USER_ERRORS = (UserError, OSError)
#: How long the other ranks may take to stop on their own once one has failed (they stop together on
#: the problems one of them finds, and rank 0 writes summary.json meanwhile) before they are terminated.
_GRACE_S = 60.0
#: How long a rank may take to end after SIGTERM (saving nothing; shutting its loader workers down)
#: before it is killed with the processes it started.
_STOP_S = 3.0


def _cpu_worker(rank: int, world: int, folder: str, threads: int, config: dict[str, Any]) -> NoReturn:
    """One CPU rank. SIGTERM or SIGINT (from the launcher, or when the launcher dies) stops it like a
    user error would: its loader workers are shut down, and it ends with status 128 + the signal."""
    exit_with_parent()
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    status = 0
    with stop_on_signals():
        try:
            _train_rank(rank, world, Path(folder), config)
        except Stopped as stop:
            status = stop.status
    end_process(status)


def _train_rank(rank: int, world: int, folder: Path, config: dict[str, Any]) -> None:
    dist_handle = init_distributed("cpu", rank=rank, world_size=world, rendezvous=folder / "rendezvous")
    try:
        train(TrainConfig.from_dict(config))
    except (NonFiniteLossError, *USER_ERRORS) as exc:  # for the launcher to raise again (_rank_error)
        kinds = [c.__name__ for c in type(exc).__mro__]
        atomic_write_text(folder / f"rank{rank}.json", json.dumps({"kinds": kinds, "message": str(exc)}))
        raise
    finally:
        dist_handle.close()


def _wait_for_ranks(processes: list, grace_s: float) -> None:
    """Wait until every rank has ended; once one has failed, give the others ``grace_s`` to stop on
    their own, then stop them (:func:`_stop_ranks`)."""
    pending, deadline = list(processes), None
    while pending:
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        multiprocessing.connection.wait([p.sentinel for p in pending], timeout)
        pending = [p for p in pending if p.exitcode is None]
        if deadline is None and any(p.exitcode for p in processes if p.exitcode is not None):
            deadline = time.monotonic() + grace_s
        if pending and deadline is not None and time.monotonic() >= deadline:
            _stop_ranks(pending, _STOP_S)
            return


def _stop_ranks(processes: list, within_s: float) -> None:
    """SIGTERM to every rank still running, which then shuts its data-loader workers down and ends;
    a rank that has not ended within ``within_s`` is killed together with the processes it started."""
    for p in processes:
        if p.exitcode is None:
            p.terminate()
    deadline = time.monotonic() + within_s
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.exitcode is None:
            for pid in [*_descendants(p.pid), p.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            p.join()


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` and by those, from /proc (empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _rank_error(folder: Path, world: int) -> Exception | None:
    """The error the lowest failed rank recorded, as the type :func:`train` would have raised (the
    nearest of :data:`USER_ERRORS` and :class:`NonFiniteLossError`), or None when none recorded one."""
    known = {c.__name__: c for c in (NonFiniteLossError, DatasetError, CheckpointError, CheckpointWriteError,
                                     ConfigError, MissingFileError, FileFormatError, OutputError,
                                     FileExistsError, FileNotFoundError, *USER_ERRORS)}
    for rank in range(world):
        record = folder / f"rank{rank}.json"
        if record.is_file():
            error = json.loads(record.read_text())
            return next(known[k] for k in error["kinds"] if k in known)(error["message"])
    return None


def train_cpu_processes(config: TrainConfig, processes: int, threads_per_process: int | None = None
                        ) -> dict[str, Any]:
    """Data-parallel training on this machine's CPU cores without torchrun: ``processes`` gloo ranks
    of ``threads_per_process`` threads each (default: the available cores shared between them),
    started here and joined; returns ``summary.json``. The ranks meet through a file and connect
    over the loopback interface: nothing listens on the network. A rank's error is raised here as
    :func:`train` raises it (:class:`NonFiniteLossError`, the errors of :data:`USER_ERRORS`); any
    other failure of a rank raises ``torch.multiprocessing.ProcessRaisedException`` (with its
    traceback) or ``ProcessExitedException``.

    ``config.batch_size`` is per process, as under torchrun, and the result equals one process with
    ``processes x batch_size`` (per-sample loss).
    """
    if threads_per_process is None:
        threads_per_process = max(1, available_cores() // max(processes, 1))
    if processes < 1 or threads_per_process < 1:
        raise ConfigError(f"processes and threads_per_process must be >= 1, got {processes}, {threads_per_process}")
    if config.device not in ("cpu", "auto") or (config.device == "auto" and torch.cuda.is_available()):
        raise ConfigError(f"train_cpu_processes trains on the CPU; got device {config.device!r}")
    cfg = dataclasses.replace(config, device="cpu")
    cfg.resolved()  # configuration errors surface here, before any process starts
    if processes == 1:
        torch.set_num_threads(threads_per_process)
        return train(cfg)
    with tempfile.TemporaryDirectory(prefix="rs2sam2-ranks-") as folder:
        context = mp.start_processes(_cpu_worker, args=(processes, folder, threads_per_process, cfg.to_dict()),
                                     nprocs=processes, join=False, start_method="spawn")
        try:
            _wait_for_ranks(context.processes, _GRACE_S)
        except Stopped:  # SIGTERM or SIGINT to this launcher: passed on to the ranks, which end
            _stop_ranks(context.processes, _STOP_S)
            raise
        try:
            while not context.join():  # all have ended: raises for a failed rank, with its traceback
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException):
            error = _rank_error(Path(folder), processes)
            if error is None:
                raise
            raise error from None
        finally:  # where a failed rank pickled its traceback (torch puts these files in the temp folder)
            for name in context.error_files:
                Path(name).unlink(missing_ok=True)
    return json.loads((Path(cfg.out) / "summary.json").read_text())
