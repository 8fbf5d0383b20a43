"""Starting a training run: in this process (or one torchrun rank), or as CPU ranks started here.

CPU ranks exist because, with the small tensors of CPU training, one process spends much of its
time synchronising its threads, while single-threaded ranks each do their own stream of work.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .trainer import NonFiniteLossError, Trainer


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume, with ``config.resume``) a training run; returns the content of ``summary.json``.

    Under torchrun call it on every rank. Raises :class:`NonFiniteLossError` when the loss becomes
    NaN/inf (after writing ``summary.json``; ``checkpoints/last`` keeps the last good state).
    """
    trainer = Trainer(config.resolved())
    try:
        trainer.setup()
        return trainer.train()
    finally:
        trainer.close()


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_worker(rank: int, world: int, port: int, threads: int, config: dict[str, Any]) -> None:
    from ..runtime import exit_with_parent, init_distributed, tune_cpu_allocator

    exit_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    d = init_distributed("cpu", rank=rank, world_size=world)
    try:
        train(TrainConfig.from_dict(config))
    finally:
        d.close()


def train_cpu_processes(config: TrainConfig, processes: int, threads_per_process: int | None = None
                        ) -> dict[str, Any]:
    """Data-parallel training on this machine's CPU cores without torchrun: ``processes`` gloo ranks
    of ``threads_per_process`` threads each (default: the available cores shared between them),
    started here and joined; returns ``summary.json``. A rank that stops on a non-finite loss raises
    :class:`NonFiniteLossError` here, as :func:`train` does; other failures of a rank raise
    ``torch.multiprocessing.ProcessRaisedException`` with its traceback.

    ``config.batch_size`` is per process, as under torchrun, and the result equals one process with
    ``processes x batch_size`` (per-sample loss).
    """
    from ..runtime import available_cores

    if threads_per_process is None:
        threads_per_process = max(1, available_cores() // max(processes, 1))
    if processes < 1 or threads_per_process < 1:
        raise ValueError(f"processes and threads_per_process must be >= 1, got {processes}, {threads_per_process}")
    if config.device not in ("cpu", "auto") or (config.device == "auto" and torch.cuda.is_available()):
        raise ValueError(f"train_cpu_processes trains on the CPU; got device {config.device!r}")
    cfg = dataclasses.replace(config, device="cpu")
    cfg.resolved()  # configuration errors surface here, before any process starts
    if processes == 1:
        torch.set_num_threads(threads_per_process)
        return train(cfg)
    import torch.multiprocessing as mp

    summary_path = Path(cfg.out) / "summary.json"
    try:
        mp.spawn(_cpu_worker, args=(processes, _free_port(), threads_per_process, cfg.to_dict()),
                 nprocs=processes, join=True)
    except mp.ProcessRaisedException:
        # the exception object stays in the rank; summary.json tells a non-finite stop apart
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        if summary.get("status") == "stopped_nonfinite_loss":
            raise NonFiniteLossError(summary["message"]) from None
        raise
    return json.loads(summary_path.read_text())
