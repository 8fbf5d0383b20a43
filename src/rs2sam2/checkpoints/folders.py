"""Checkpoint files and folders: finding the weights and tokenizer, reading them safely, writing them.

:func:`locate` is the one place that turns what a user names (``--checkpoint``, ``--init``,
``load_pretrained(...)``) into files, and :data:`WEIGHTS_NAMES` / :func:`read_state_dict` the one
place that knows weight file formats; a new kind of source or weights format is added there. A
Hugging Face Hub id (``owner/name``, with a subfolder and revision) is resolved there too: only the
files the checkpoint needs are fetched (:mod:`.hub`), and the snapshot folder they land in is then
located like any folder. Weights are read without executing pickled code: safetensors, or
``torch.load(weights_only=True)``, sharded or not.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError
from ..fsutil import atomic_write, atomic_write_bytes, atomic_write_text
from . import hub
from .card import CardInfo, model_card, parameter_counts
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
                   "a released RS2-SAM2 folder, a weights file, or a Hugging Face Hub id owner/name (e.g. "
                   "ReeF2025/RS2-SAM2 with --subfolder rrsisd; needs the extra rs2sam2[hub]; HF_HUB_OFFLINE=1 "
                   "reads only the local Hub cache)")
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


def locate(path: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> Located:
    """The weights, tokenizer and configuration of a checkpoint.

    ``path`` is a weights file, a ``save_pretrained`` folder, a released RS2-SAM2 folder, a
    training run folder (``RUN/`` -> ``RUN/checkpoints/best``, else ``RUN/checkpoints/last``), or,
    when no such local path exists, a Hugging Face Hub id ``owner/name``. ``subfolder`` is a folder
    inside it (``rrsisd`` of the released repository); ``revision`` (a branch, tag or commit; default
    ``main``) applies to Hub ids only. A path that exists on disk in any form (a broken symbolic link
    or a link loop included) is local, and an error when it leads nowhere. A Hub id is resolved through huggingface_hub's cache
    (``HF_HUB_OFFLINE=1``: the cache only), fetching just the weights (and their shards),
    ``config.json`` and the tokenizer. Reads only ``config.json``; the weights are read by
    :func:`read_state_dict`.
    """
    sub = _subfolder(subfolder)
    local = Path(path)
    if os.path.lexists(local):  # anything on disk, a broken link too, is local: never a Hub id
        _check_link(local)
        if revision is not None:
            raise CheckpointError(f"a revision ({revision!r}) applies to Hugging Face Hub ids only; {path} is a "
                                  "local path")
        if sub:
            if not (local / sub).is_dir():
                raise CheckpointError(f"checkpoint not found: {path} has no subfolder {sub!r}")
            local = local / sub
        return _locate_local(local)
    if not hub.is_repo_id(str(path)):
        raise CheckpointError(f"checkpoint not found: {path}")
    return _locate_local(_hub_folder(str(path), sub, revision))


def _subfolder(subfolder: str | None) -> str:
    """``subfolder`` as a relative POSIX path ("" for none); :class:`CheckpointError` when it leaves its root."""
    if not subfolder:
        return ""
    parts = PurePosixPath(str(subfolder).replace("\\", "/")).parts
    if parts[0] == "/" or ".." in parts:
        raise CheckpointError(f"subfolder {subfolder!r} must be a relative path inside the checkpoint")
    return "/".join(p for p in parts if p != ".")


def _hub_folder(repo_id: str, subfolder: str, revision: str | None) -> Path:
    """The snapshot folder of ``repo_id``/``subfolder`` in the Hub cache, holding its weights (all
    shards), ``config.json`` when it has one, and its tokenizer when it has one."""
    repo = hub.HubRepo(repo_id, revision)
    prefix = f"{subfolder}/" if subfolder else ""
    weights = next(filter(None, (repo.file(prefix + n) for n in WEIGHTS_NAMES)), None)
    if weights is None:
        raise CheckpointError(f"checkpoint not found: {repo_id} is not a local path, and as a Hugging Face Hub id "
                              f"(revision {repo.revision}): {repo.why_missing(subfolder, WEIGHTS_NAMES)}")
    if weights.name.endswith(".index.json"):
        for shard in shard_names(weights):
            if repo.file(prefix + shard) is None:
                raise CheckpointError(f"{repo}: shard {prefix + shard} listed in {weights.name} is missing"
                                      + ("" if repo.hub_said_missing else " from the cache"))
    repo.file(prefix + "config.json")
    next(filter(None, (repo.file(prefix + n) for n in TOKENIZER_NAMES)), None)
    return weights.parent


def _check_link(path: Path) -> None:
    """:class:`CheckpointError` naming ``path`` when it is a symbolic link loop or a broken link."""
    try:
        path.resolve(strict=True)
    except RuntimeError as e:  # Python < 3.13 reports a loop as RuntimeError
        raise CheckpointError(f"checkpoint {path}: a loop of symbolic links") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CheckpointError(f"checkpoint {path}: a loop of symbolic links") from e
        if path.is_symlink() and not path.exists():
            raise CheckpointError(f"checkpoint {path}: a broken symbolic link (to {os.readlink(path)}, which does "
                                  "not exist)") from e
        raise CheckpointError(f"checkpoint {path}: cannot be read ({e.strerror})") from e


def weights_format(path: Path) -> str:
    """``"safetensors"``, ``"torch"`` (a zip or legacy pickle) or ``"index"`` (a shard index), from the
    file's first bytes; :class:`CheckpointError` saying what the file is when it is none of them."""
    if path.name.endswith(".index.json"):
        return "index"
    try:
        with path.open("rb") as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError as e:
        raise CheckpointError(f"{path}: cannot be read ({e.strerror})") from e
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch.save's zip, or a pickle (legacy torch.save)
        return "torch"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    raise CheckpointError(
        f"{path}: not a weights file ({_what_it_is(head, size)}); expected a .safetensors file, a torch checkpoint "
        f"(.pt, .pth, .bin), a shard index (*.index.json) or a folder holding {' or '.join(WEIGHTS_NAMES)}")


def _what_it_is(head: bytes, size: int) -> str:
    if size == 0:
        return "it is empty"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return f"it starts with the bytes {head[:8].hex(' ')}"
    return "it holds text"


def _locate_local(path: Path) -> Located:
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
        weights_format(weights)
    return Located(path, weights, find_tokenizer(path), read_config(path if path.is_dir() else path.parent))


def add_hub_arguments(parser) -> None:
    """The ``--subfolder`` and ``--revision`` options that go with ``--checkpoint`` in the commands."""
    parser.add_argument("--subfolder", metavar="DIR",
                        help="folder inside the checkpoint (a Hub repository or local folder), e.g. rrsisd or "
                             "refseg for ReeF2025/RS2-SAM2")
    parser.add_argument("--revision", metavar="REV",
                        help="branch, tag or commit of a Hugging Face Hub checkpoint (default: main)")


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
    return _read_weights(Path(path), meta=False)


def read_shapes(path: str | os.PathLike) -> dict[str, Tensor]:
    """What :func:`read_state_dict` would return, as tensors on the meta device: names, shapes and
    dtypes from the safetensors headers (a torch checkpoint's pickle, ``weights_only=True``), without
    reading the weights themselves, so a checkpoint can be checked against a model before it is loaded."""
    return _read_weights(Path(path), meta=True)


def _read_weights(path: Path, meta: bool) -> dict[str, Tensor]:
    if path.is_dir():
        path = locate(path).weights
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.name.endswith(".index.json"):
        return _read_shards(path, meta)
    if path.suffix == ".safetensors":
        try:
            return _safetensors_shapes(path) if meta else load_file(str(path))
        except Exception as e:  # safetensors raises its own error type for malformed headers
            raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated?") from e
    try:
        obj = torch.load(path, map_location="meta" if meta else "cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips and refused pickles
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot load as a weights-only torch checkpoint ({msg}). Files are loaded with "
            "weights_only=True, so pickles that would execute code are refused; truncated files fail too."
        ) from e
    return unwrap_state_dict(obj, str(path))


# safetensors' dtype names -> torch's
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def _safetensors_shapes(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as meta tensors, from its header alone."""
    out = {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            part = f.get_slice(key)
            dtype = _SAFETENSORS_DTYPES.get(part.get_dtype(), torch.float32)
            out[key] = torch.empty(part.get_shape(), dtype=dtype, device="meta")
    return out


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
            raise TypeError("keys and file names must be strings")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a valid shard index ({type(e).__name__}: {e})") from e
    for shard in set(weight_map.values()):
        parts = PurePosixPath(shard).parts
        if len(parts) != 1 or parts[0] in (".", ".."):
            raise CheckpointError(f"{index}: shard {shard!r} is not a file name beside the index")
    return weight_map


def shard_names(index: str | os.PathLike) -> list[str]:
    """The shard files a ``*.index.json`` names (``weight_map`` values), each a file beside it."""
    return sorted(set(_weight_map(Path(index)).values()))


def _read_shards(index: Path, meta: bool) -> dict[str, Tensor]:
    """The state dict of a sharded checkpoint: every shard read, and each shard holding exactly the
    tensors the index assigns to it."""
    weight_map = _weight_map(index)
    sd: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        part = _read_weights(index.parent / shard, meta)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(part) != listed:
            wrong = sorted(listed - set(part)) + sorted(set(part) - listed)
            raise CheckpointError(f"{index.parent / shard}: does not hold the tensors {index.name} lists for it "
                                  f"(missing or extra: {', '.join(wrong[:8])}{' ...' if len(wrong) > 8 else ''})")
        sd.update(part)
    return sd


def save_pretrained(model, folder: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                    card: CardInfo | Mapping | None = None) -> Path:
    """Write ``model`` (anything with ``state_dict()``, ``named_parameters()`` and ``config``) as
    ``config.json`` + ``model.safetensors`` (+ ``tokenizer.model``) + a ``README.md`` model card into
    ``folder``. The card counts the model's parameters (total and trainable, by part) and adds what
    ``card`` (a :class:`~.card.CardInfo` or a mapping of its fields) says: training data, metrics."""
    info = _card_info(card)
    if info.parameters is None:
        info = dataclasses.replace(info, parameters=parameter_counts(model))
    return save_state_dict(model.state_dict(), model.config, folder, tokenizer_path, card=info)


def save_state_dict(state_dict: Mapping[str, Tensor], config: ModelConfig, folder: str | os.PathLike,
                    tokenizer_path: str | os.PathLike | None = None, card: CardInfo | Mapping | None = None) -> Path:
    """Write a state dict of our layout with its ``config`` as a ``save_pretrained`` folder, with a
    ``README.md`` model card (:func:`~.card.model_card`; ``card`` as in :func:`save_pretrained`).

    Training saves gathered (FSDP) state dicts through this without a model at hand. Files are
    written to temporary names and renamed, so an interrupted save never leaves a half-written
    checkpoint behind under the final names."""
    info = _card_info(card)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_write(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    cfg = {CONFIG_MARKER: config.to_dict(), "library": "rs2sam2"}
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2))
    if tokenizer_path is not None:
        atomic_write_bytes(folder / "tokenizer.model", Path(tokenizer_path).read_bytes())
    atomic_write_text(folder / "README.md",
                      model_card(config, tensors, info, tokenizer=tokenizer_path is not None))
    return folder


def _card_info(card: CardInfo | Mapping | None) -> CardInfo:
    if card is None or isinstance(card, CardInfo):
        return card or CardInfo()
    try:
        return CardInfo(**card)
    except TypeError as e:
        raise TypeError(f"card: expected the fields of CardInfo ({e})") from e
