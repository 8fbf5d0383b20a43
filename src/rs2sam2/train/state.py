"""Where a run stands, and how it is saved and resumed.

``checkpoints/last`` holds everything needed to resume exactly (weights, optimizer, scheduler,
step, epoch, position in the epoch, RNG states, best metric); ``checkpoints/best`` the weights and a
small state without the optimizer. A folder is written completely under a temporary name and then
swapped in, ``trainer_state.pt`` last, so a crash never leaves a half-written checkpoint; a write
that fails (a full disk) removes its partial folder and leaves the saved checkpoints as they were.
The state holds only tensors, numbers, strings, lists and dicts, so ``torch.load(weights_only=True)``
reads it.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from ..checkpoints import CheckpointError, save_state_dict
from ..errors import OutputError
from ..fsutil import atomic_write

TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = "rs2sam2-trainer-state"


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The torch, numpy, Python (and CUDA) generators' states as weights-only-loadable values."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "internal": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state` (resume continues the same random stream)."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


# --- optimizer state, with parameter names instead of positions -----------------------------------


def named_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[nn.Parameter, str]) -> dict[str, Any]:
    """``optimizer.state_dict()`` with parameter names instead of positions (the same layout as
    ``torch.distributed.checkpoint``'s full optimizer state, so FSDP and non-FSDP runs can resume
    each other)."""
    sd = optimizer.state_dict()
    id_to_name: dict[int, str] = {}
    for g_sd, group in zip(sd["param_groups"], optimizer.param_groups):
        for i, p in zip(g_sd["params"], group["params"]):
            id_to_name[i] = names[p]
    return {
        "state": {id_to_name[i]: s for i, s in sd["state"].items()},
        "param_groups": [{**g, "params": [id_to_name[i] for i in g["params"]]} for g in sd["param_groups"]],
    }


def load_named_optimizer_state(optimizer: torch.optim.Optimizer, named: dict[str, Any],
                               names: dict[nn.Parameter, str]) -> None:
    """Load an optimizer state keyed by parameter names (as saved) into ``optimizer``."""
    current = optimizer.state_dict()
    name_to_id: dict[str, int] = {}
    for g_sd, group in zip(current["param_groups"], optimizer.param_groups):
        for i, p in zip(g_sd["params"], group["params"]):
            name_to_id[names[p]] = i
    saved_names = [n for g in named["param_groups"] for n in g["params"]]
    if sorted(saved_names) != sorted(name_to_id) or len(named["param_groups"]) != len(current["param_groups"]):
        missing = sorted(set(name_to_id) - set(saved_names))[:5]
        extra = sorted(set(saved_names) - set(name_to_id))[:5]
        raise RuntimeError(
            "the saved optimizer state does not match the trainable parameters (was the freeze policy or the "
            f"model changed?); not in the checkpoint: {missing}, not trainable now: {extra}")
    sd = {
        "state": {name_to_id[n]: s for n, s in named["state"].items()},
        "param_groups": [{**g, "params": [name_to_id[n] for n in g["params"]]} for g in named["param_groups"]],
    }
    optimizer.load_state_dict(sd)


def _full_state_options():
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def gather_model_state(module: nn.Module, core: nn.Module, fsdp: bool, is_main: bool) -> dict | None:
    """The full model state dict on the main rank (FSDP: gathered from the shards), None elsewhere."""
    if fsdp:
        sd = get_model_state_dict(module, options=_full_state_options())
        return sd if is_main else None
    return core.state_dict() if is_main else None


def gather_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, names: dict[nn.Parameter, str],
                           fsdp: bool, is_main: bool) -> dict | None:
    """The full, name-keyed optimizer state on the main rank, None elsewhere."""
    if fsdp:
        osd = get_optimizer_state_dict(module, optimizer, options=_full_state_options())
        return osd if is_main else None
    return named_optimizer_state(optimizer, names) if is_main else None


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, saved: dict[str, Any],
                         names: dict[nn.Parameter, str], fsdp: bool) -> None:
    """Load a saved optimizer state, sharding it first when the model is FSDP-sharded."""
    if fsdp:
        set_optimizer_state_dict(module, optimizer, saved, options=StateDictOptions(full_state_dict=True))
    else:
        load_named_optimizer_state(optimizer, saved, names)


# --- progress of a run --------------------------------------------------------------------------


def _no_best() -> dict[str, Any]:
    return {"score": None, "step": None, "epoch": None, "metrics": None}


@dataclass
class Progress:
    """Where a run stands: steps, epoch, micro-batches done in the epoch, validation so far."""

    global_step: int = 0
    epoch: int = 0
    micro_done: int = 0
    best: dict[str, Any] = field(default_factory=_no_best)
    val_history: list[dict[str, Any]] = field(default_factory=list)
    loss_first: float | None = None
    loss_last: float | None = None
    elapsed_before: float = 0.0

    def state(self, *, world_size: int, batch_size: int, grad_accum_steps: int, elapsed_s: float,
              scheduler: dict[str, Any], optimizer: dict[str, Any] | None = None) -> dict[str, Any]:
        """The content of ``trainer_state.pt`` (``optimizer`` only in ``last``)."""
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "version": 1,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "refs_done_in_epoch": self.micro_done * batch_size * world_size,
            "world_size": world_size,
            "batch_size": batch_size,
            "grad_accum_steps": grad_accum_steps,
            "best": self.best,
            "val_history": self.val_history,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "elapsed_s": elapsed_s,
            "scheduler": scheduler,
            "rng": rng_state(),
        }
        if optimizer is not None:
            state["optimizer"] = optimizer
        return state

    def restore(self, state: dict[str, Any], world_size: int, batch_size: int, micro_per_epoch: int) -> None:
        """Continue from a saved state, with as many samples per micro-batch (``world_size x
        batch_size``) as the run had: the position in the current epoch is then exact."""
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        done_refs = int(state["refs_done_in_epoch"])
        self.micro_done = min(micro_per_epoch, done_refs // (world_size * batch_size))
        self.best = dict(state.get("best") or self.best)
        self.val_history = list(state.get("val_history") or [])
        self.loss_first = state.get("loss_first")
        self.loss_last = state.get("loss_last")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))


# --- files --------------------------------------------------------------------------------------


class CheckpointWriteError(OutputError, OSError):
    """A checkpoint could not be written (no space left on the device, a folder that cannot be
    written); its partial files are removed and the checkpoints saved before are unchanged."""


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``trainer_state.pt`` (file or checkpoint folder) with ``weights_only=True``; a file
    that cannot be read (truncated, or not ours) is a :class:`CheckpointError` naming it."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"trainer state not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated zips and refused pickles
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read the trainer state ({reason}); is it truncated?") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not an rs2sam2 trainer state")
    return state


def find_last_checkpoint(run: Path) -> Path | None:
    """``RUN/checkpoints/last`` when it is complete (or its previous copy, after a crash mid-swap)."""
    for name in ("last", "last.old"):  # last.old: a crash between the two renames of a swap
        folder = run / "checkpoints" / name
        if (folder / TRAINER_STATE).is_file() and (folder / "model.safetensors").is_file():
            return folder
    return None


def write_checkpoint(root: Path, name: str, state_dict: dict[str, torch.Tensor], model_config,
                     tokenizer_path: Path, trainer_state: dict[str, Any], card=None) -> Path:
    """Write ``root/name`` (weights, config, tokenizer, then ``trainer_state.pt``) under a temporary
    name and swap it in. A write that fails for want of space, or on an ``OSError``, raises
    :class:`CheckpointWriteError` after removing the partial folder; ``root/name`` is unchanged."""
    final, tmp, old = root / name, root / f"{name}.new", root / f"{name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_state_dict(state_dict, model_config, tmp, tokenizer_path=tokenizer_path, card=card)
        with atomic_write(tmp / TRAINER_STATE) as part:
            torch.save(trainer_state, part)
    except BaseException as exc:  # a signal too: no partial folder is left behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(exc, Exception):
            raise
        reason = _write_failure(exc, final, _tensor_bytes(state_dict) + _tensor_bytes(trainer_state))
        if reason is None:
            raise
        raise CheckpointWriteError(f"cannot save checkpoint {final}: {reason}") from exc
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested state (what writing it needs, roughly)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _write_failure(exc: Exception, checkpoint: Path, needed: int) -> str | None:
    """Why a checkpoint write failed, for its message; None when it is not an I/O failure.

    torch's writer reports a full disk as an internal assertion and safetensors as its own error
    type, so a full disk is recognised by the space left once the partial files are gone."""
    folder = next(p for p in (checkpoint.parent, *checkpoint.parents) if p.exists())
    free = shutil.disk_usage(folder).free
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or free < needed:
        return (f"no space left on the device of {checkpoint.parent} ({free / 2**20:.1f} MiB free; the "
                f"checkpoint needs about {needed / 2**20:.1f} MiB)")
    return str(exc) if isinstance(exc, OSError) else None
