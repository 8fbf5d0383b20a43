"""Checkpoint files and folders: finding the weights and tokenizer, reading them safely, writing them.

:func:`locate` is the one place that turns what a user names (``--checkpoint``, ``--init``,
``load_pretrained(...)``) into files, and :data:`WEIGHTS_NAMES` / :func:`read_state_dict` the one
place that knows weight file formats; a new kind of source (e.g. a Hugging Face Hub id resolved to a
local snapshot) or weights format is added there. Weights are read without executing pickled code:
safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError
from ..fsutil import atomic_write, atomic_write_bytes, atomic_write_text
from .convert import CheckpointError, unwrap_state_dict

#: the key of our ``config.json`` that holds the model configuration
CONFIG_MARKER = "rs2sam2_config"
#: tokenizer file names, in order of preference (ours, the released folders', BEiT-3's)
TOKENIZER_NAMES = ("tokenizer.model", "sentencepiece.bpe.model", "beit3.spm")
#: weight file names in a checkpoint folder, in order of preference (``*.index.json``: sharded)
WEIGHTS_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
#: the checkpoints of a training run folder (``RUN/checkpoints/<name>``), in order of preference
RUN_CHECKPOINTS = ("best", "last")
#: what :func:`locate` accepts, for the ``--checkpoint`` help of the commands
CHECKPOINT_HELP = ("a save_pretrained folder, a training run folder (its checkpoints/best, else checkpoints/last), "
                   "a released RS2-SAM2 folder, or a weights file")
#: the ``--tokenizer`` help of the commands
TOKENIZER_HELP = (f"SentencePiece model (default: the first of {', '.join(TOKENIZER_NAMES)} saved with the "
                  "checkpoint, or in its training run folder)")


@dataclass(frozen=True)
class Located:
    """The files of one checkpoint.

    Attributes:
        path: the checkpoint: a weights file, or the folder holding one (a run folder resolved to
            its ``checkpoints/best`` or ``checkpoints/last``).
        weights: the weights file (or shard index) to read.
        tokenizer: the SentencePiece model saved with it (its folder, else the run folder), or None.
        config: the configuration our ``config.json`` records; None for released folders and bare
            weights files (then it is inferred from the weights).
    """

    path: Path
    weights: Path
    tokenizer: Path | None
    config: ModelConfig | None

    def tokenizer_file(self, override: str | os.PathLike | None = None) -> Path:
        """``override`` when given (it must exist), else the tokenizer saved with the checkpoint;
        :class:`CheckpointError` with what was looked for when there is none."""
        if override is not None:
            if not Path(override).is_file():
                raise CheckpointError(f"tokenizer not found: {override}")
            return Path(override)
        if self.tokenizer is None:
            folders = " and ".join(str(f) for f in _tokenizer_folders(self.path))
            raise CheckpointError(
                f"no tokenizer found for checkpoint {self.path}: looked for {', '.join(TOKENIZER_NAMES)} in "
                f"{folders}; pass the SentencePiece model with --tokenizer (tokenizer= in Python), e.g. "
                "BEiT-3's beit3.spm for the released checkpoints")
        return self.tokenizer


def locate(path: str | os.PathLike) -> Located:
    """The weights, tokenizer and configuration of a checkpoint.

    ``path`` is a weights file, a ``save_pretrained`` folder, a released RS2-SAM2 folder, or a
    training run folder (``RUN/`` -> ``RUN/checkpoints/best``, else ``RUN/checkpoints/last``).
    Reads only ``config.json``; the weights are read by :func:`read_state_dict`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        weights = _weights_file_in(path)
        if weights is None and (path / "checkpoints").is_dir():
            path = _run_checkpoint(path)
            weights = _weights_file_in(path)
        if weights is None:
            raise CheckpointError(
                f"{path}: no weights found (expected {', '.join(WEIGHTS_NAMES)}, or a training run folder "
                "with checkpoints/best or checkpoints/last)")
    else:
        weights = path
    return Located(path, weights, find_tokenizer(path), read_config(path if path.is_dir() else path.parent))


def _weights_file_in(folder: Path) -> Path | None:
    return next((folder / n for n in WEIGHTS_NAMES if (folder / n).is_file()), None)


def _run_checkpoint(run: Path) -> Path:
    for name in RUN_CHECKPOINTS:
        if (run / "checkpoints" / name / "config.json").is_file():
            return run / "checkpoints" / name
    raise CheckpointError(f"{run}: a training run folder without a saved checkpoint "
                          f"(expected {' or '.join(f'checkpoints/{n}' for n in RUN_CHECKPOINTS)})")


def _tokenizer_folders(checkpoint: Path) -> list[Path]:
    """Where a checkpoint's tokenizer may be: its folder, then the run folder above ``checkpoints/``."""
    folder = checkpoint if checkpoint.is_dir() else checkpoint.parent
    return [folder, folder.parent.parent] if folder.parent.name == "checkpoints" else [folder]


def find_tokenizer(checkpoint: str | os.PathLike) -> Path | None:
    """The first of :data:`TOKENIZER_NAMES` next to ``checkpoint`` (a file or folder), else in the
    training run folder above it; None when there is none."""
    return next((f / n for f in _tokenizer_folders(Path(checkpoint)) for n in TOKENIZER_NAMES
                 if (f / n).is_file()), None)


def read_config(folder: str | os.PathLike) -> ModelConfig | None:
    """The configuration recorded in ``folder/config.json`` by :func:`save_state_dict`; None when
    there is no such file or it is not ours (the released folders' config.json does not say which
    SAM2 size was used)."""
    config_file = Path(folder) / "config.json"
    if not config_file.is_file():
        return None
    try:
        raw = json.loads(config_file.read_text())
    except ValueError as e:
        raise CheckpointError(f"{config_file}: invalid JSON ({e})") from e
    if not isinstance(raw, dict) or CONFIG_MARKER not in raw:
        return None
    try:
        return ModelConfig.from_dict(raw[CONFIG_MARKER])
    except ConfigError as e:  # names the key, as a dotted path under the marker
        raise CheckpointError(f"{config_file}: {CONFIG_MARKER}.{e}") from e


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``), a sharded
    checkpoint (``*.index.json``) or anything :func:`locate` accepts. Unwraps ``{"model": ...}`` /
    ``{"state_dict": ...}`` / ``{"module": ...}`` containers."""
    path = Path(path)
    if path.is_dir():
        path = locate(path).weights
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from e
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(read_state_dict(path.parent / shard))
        return sd
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error type for malformed headers
            raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated?") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips and refused pickles
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot load as a weights-only torch checkpoint ({msg}). Files are loaded with "
            "weights_only=True, so pickles that would execute code are refused; truncated files fail too."
        ) from e
    return unwrap_state_dict(obj, str(path))


def save_pretrained(model, folder: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Write ``model`` (anything with ``state_dict()`` and ``config``) as ``config.json`` +
    ``model.safetensors`` (+ ``tokenizer.model``) into ``folder``."""
    return save_state_dict(model.state_dict(), model.config, folder, tokenizer_path)


def save_state_dict(state_dict: Mapping[str, Tensor], config: ModelConfig, folder: str | os.PathLike,
                    tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Write a state dict of our layout with its ``config`` as a ``save_pretrained`` folder.

    Training saves gathered (FSDP) state dicts through this without a model at hand. Files are
    written to temporary names and renamed, so an interrupted save never leaves a half-written
    checkpoint behind under the final names."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_write(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    cfg = {CONFIG_MARKER: config.to_dict(), "library": "rs2sam2"}
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2))
    if tokenizer_path is not None:
        atomic_write_bytes(folder / "tokenizer.model", Path(tokenizer_path).read_bytes())
    return folder
