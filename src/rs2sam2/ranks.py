"""Sharing independent jobs among the processes of a ``torchrun`` launch (CPU-friendly, gloo).

``torchrun --nproc_per_node N -m rs2sam2 predict --batch jobs.csv`` starts N copies of the command
with ``RANK`` / ``WORLD_SIZE`` (and the rendezvous address) in their environment. Every rank reads
and checks the same job list; :func:`share` gives rank ``r`` the items ``r, r + N, r + 2N, ...``, so
each job runs on exactly one rank and its outputs are written once. A gloo process group (it runs
on CPUs, and binds where torchrun's rendezvous says: loopback for ``--standalone``) lets the ranks
agree on the outcome (:func:`any_failed`) so every rank exits with the same status.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

__all__ = ["any_failed", "finish", "rank_and_world", "share", "start"]

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """``(RANK, WORLD_SIZE)`` from the environment torchrun sets; ``(0, 1)`` outside torchrun."""
    try:
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r}: "
                         "expected whole numbers (as torchrun sets them)") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not within WORLD_SIZE={world}")
    return rank, world


def start(timeout_s: float = 1800.0) -> bool:
    """Join the gloo group of a torchrun launch (a no-op for one process); returns whether one was
    joined. ``timeout_s`` bounds how long a rank waits for the others at :func:`any_failed`."""
    import torch.distributed as dist

    _, world = rank_and_world()
    if world == 1 or dist.is_initialized():
        return False
    dist.init_process_group("gloo", init_method="env://", timeout=timedelta(seconds=timeout_s))
    return True


def share(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items`` (all of them outside torchrun)."""
    rank, world = rank_and_world()
    return list(items[rank::world])


def any_failed(failed: bool) -> bool:
    """Whether any rank failed (every rank gets the same answer); ``failed`` outside a group."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return failed
    flag = torch.tensor([1 if failed else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


def finish() -> None:
    """Leave the process group, if one was joined."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
