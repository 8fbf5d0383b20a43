"""Configuration of a training run: :class:`TrainConfig`, read from YAML and overridden by flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..checkpoints.hub import is_repo_id
from ..cliargs import describe_range, number
from ..config import PRESET_NAMES, ModelConfig, get_config
from ..errors import ConfigError, MissingFileError
from ..fsutil import atomic_write_bytes
from ..runtime import resolve_device

DATASET_EPOCHS = {"rrsisd": 40, "refsegrs": 60}

#: What a resumed run keeps from the run it continues -- its model and weights, its tokenizer, its
#: data and the order and content of its samples -- so ``--resume`` refuses another value for them
#: (:func:`resume_clashes`). The schedule's length, learning rates, clipping, logging and validation
#: may change on resume.
RESUME_KEYS = ("preset", "model", "init", "sam2_checkpoint", "beit3_checkpoint", "tokenizer", "train_tokenizer",
               "tokenizer_vocab_size", "dataset", "data", "train_split", "seed", "random_boxes", "box_prob",
               "mask_rule", "freeze", "negatives")
_PATH_KEYS = {"init", "sam2_checkpoint", "beit3_checkpoint", "tokenizer", "data"}

_STEPS = 10**9  # more optimizer steps, epochs or samples than any run takes
_BATCH = 4096
#: The allowed range of every numeric key, as the keyword arguments of :func:`rs2sam2.cliargs.number`:
#: the command-line flags parse with them (refused before any work) and :meth:`TrainConfig.resolved`
#: checks the values of YAML files and ``--set`` against them. ``betas`` and ``lr_milestones`` apply
#: to each item.
RANGES: dict[str, dict[str, Any]] = {
    "tokenizer_vocab_size": dict(kind=int, low=16, high=500_000),
    "max_text_len": dict(kind=int, low=3, high=8192),  # BOS, at least one token, EOS
    "epochs": dict(kind=int, low=1, high=_STEPS),
    "max_steps": dict(kind=int, low=0, high=_STEPS),
    "batch_size": dict(kind=int, low=1, high=_BATCH),
    "grad_accum_steps": dict(kind=int, low=1, high=_BATCH),
    "lr": dict(kind=float, low=0, low_open=True),
    "lr_fusion": dict(kind=float, low=0, low_open=True),
    "weight_decay": dict(kind=float, low=0, high=10),
    "betas": dict(kind=float, low=0, high=1, high_open=True),
    "adam_eps": dict(kind=float, low=0, high=1, low_open=True),
    "lr_milestones": dict(kind=int, low=0, high=_STEPS),
    "lr_gamma": dict(kind=float, low=0, high=10, low_open=True),
    "clip_grad_norm": dict(kind=float, low=0, high=1e6, low_open=True),
    "w_ce": dict(kind=float, low=0, high=1000),
    "w_dice": dict(kind=float, low=0, high=1000),
    "w_tbl": dict(kind=float, low=0, high=1000),
    "w_grounding": dict(kind=float, low=0, high=1000),
    "grounding_warmup_steps": dict(kind=int, low=0, high=_STEPS),
    "grounding_warmup_lr": dict(kind=float, low=0, low_open=True),
    "grounding_warmup_batch_size": dict(kind=int, low=1, high=_BATCH),
    "box_prob": dict(kind=float, low=0, high=1),
    "negatives": dict(kind=float, low=0, high=1, high_open=True),
    "w_presence": dict(kind=float, low=0, high=1000),
    "num_workers": dict(kind=int, low=0, high=256),
    "image_cache_mb": dict(kind=int, low=0, high=1 << 20),
    "eval_every_epochs": dict(kind=int, low=1, high=_STEPS),
    "eval_batch_size": dict(kind=int, low=1, high=_BATCH),
    "val_limit": dict(kind=int, low=1, high=_STEPS),
    "eval_threshold": dict(kind=float, low=0, high=1),
    "seed": dict(kind=int, low=0, high=2**32 - 1),
    "log_every_steps": dict(kind=int, low=1, high=_STEPS),
    "save_every_steps": dict(kind=int, low=1, high=_STEPS),
    "debug_nonfinite_at_step": dict(kind=int, low=1, high=_STEPS),
}


@dataclass
class TrainConfig:
    """Everything a training run needs. Load with :meth:`from_yaml`; CLI flags override YAML values.

    ``None`` for ``epochs`` means: 40 on RRSIS-D, 60 on RefSegRS, 40 otherwise -- or unbounded when
    ``max_steps`` is set. ``None`` for ``random_boxes`` means: on for RRSIS-D only (published).
    """

    # what and where
    preset: str = "paper"
    dataset: str = "rrsisd"
    data: str = ""
    out: str = ""
    train_split: str = "train"
    val_split: str | None = "val"
    model: dict[str, Any] = field(default_factory=dict)  # ModelConfig overrides, nested ({"fusion": {"bhfm": "uni"}})
    # initialisation and text
    init: str | None = None  # a full RS2-SAM2 checkpoint (ours or released) to start from
    sam2_checkpoint: str | None = None  # official SAM2 weights (published init)
    beit3_checkpoint: str | None = None  # official BEiT-3 weights (published init)
    tokenizer: str | None = None  # SentencePiece model (beit3.spm for the paper models)
    train_tokenizer: bool = False  # build one from the training expressions (offline / nano runs)
    tokenizer_vocab_size: int = 1000
    max_text_len: int | None = None  # tokens per sentence incl. BOS/EOS (None: the model's limit)
    mask_rule: str = "published"
    # schedule and optimiser
    epochs: int | None = None
    max_steps: int | None = None
    batch_size: int = 1  # per process
    grad_accum_steps: int = 1
    lr: float = 5e-5
    lr_fusion: float = 1e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    lr_milestones: list[int] = field(default_factory=lambda: [50])
    lr_gamma: float = 0.1
    clip_grad_norm: float | None = None
    freeze: str = "published"  # published | none (only unreachable parameters are frozen)
    # loss
    w_ce: float = 0.9
    w_dice: float = 0.1
    w_tbl: float = 0.2
    boundary_loss: str = "hard"  # hard (published) | soft
    w_grounding: float = 0.0  # weight of the MPG grounding loss (losses.grounding_loss; 0 = published)
    grounding_warmup_steps: int = 0  # union encoder + MPG trained alone first (train/grounding.py)
    grounding_warmup_lr: float = 5e-4
    grounding_warmup_batch_size: int = 8  # per process
    negatives: float = 0.0  # share of absent-object samples (train/sampling.py); > 0 trains the presence score
    w_presence: float = 1.0  # weight of the presence loss (losses.presence_loss), used only when negatives > 0
    # data
    random_boxes: bool | None = None
    box_prob: float = 0.2
    num_workers: int = 2
    image_cache_mb: int = 0  # decoded training images kept in memory per process (0: none; ReferringDataset.cache_images)
    # validation
    eval_every_epochs: int = 1
    eval_at_start: bool = False
    eval_at_end: bool = True
    eval_batch_size: int = 1
    val_limit: int | None = None  # score only the first N val expressions (quick runs)
    eval_threshold: float = 0.5
    best_metric: str = "mIoU+oIoU"  # mIoU+oIoU | mIoU | oIoU
    # system
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp32
    fsdp: bool = False
    grad_checkpointing: bool = False
    find_unused_parameters: bool = False
    # logging and checkpoints
    log_every_steps: int = 10
    save_every_steps: int | None = None
    tensorboard: bool = True
    progress: bool = True
    resume: bool = False
    overwrite: bool = False  # a new run in a folder of an earlier run: its files are removed first
    # testing hook: make the loss of this (1-based) optimizer step NaN
    debug_nonfinite_at_step: int | None = None

    # -------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        # YAML 1.1 reads "1e-4" (no dot) as a string: coerce numbers and booleans by the field types
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str):
                setattr(self, f.name, _coerce(f.name, value, hints[f.name]))
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ConfigError(f"betas: expected two numbers (BETA1, BETA2), got {self.betas!r}")
        if not isinstance(self.lr_milestones or [], (list, tuple)):
            raise ConfigError(f"lr_milestones: expected a list of epochs, got {self.lr_milestones!r}")
        try:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
            self.lr_milestones = [int(m) for m in (self.lr_milestones or [])]
        except (TypeError, ValueError) as e:
            raise ConfigError(f"betas, lr_milestones: expected numbers ({e})") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training config keys: {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
        """Defaults <- YAML file <- ``overrides`` (``None`` values are ignored)."""
        d: dict[str, Any] = {}
        if path is not None:
            d = read_yaml(path)
        for k, v in overrides.items():
            if v is not None:
                d[k] = v
        return cls.from_dict(d)

    def resolved(self) -> TrainConfig:
        """A copy with the dataset-dependent ``None`` defaults filled in and values checked."""
        c = dataclasses.replace(self, model=json.loads(json.dumps(self.model)))
        ds = str(c.dataset).lower().replace("-", "")
        c.dataset = ds
        if c.random_boxes is None:
            c.random_boxes = ds == "rrsisd"
        if c.epochs is None and c.max_steps is None:
            c.epochs = DATASET_EPOCHS.get(ds, 40)
        if c.freeze not in ("published", "none"):
            raise ConfigError(f"freeze must be 'published' or 'none', got {c.freeze!r}")
        if c.boundary_loss not in ("hard", "soft"):
            raise ConfigError(f"boundary_loss must be 'hard' or 'soft', got {c.boundary_loss!r}")
        if c.precision not in ("auto", "bf16", "fp32"):
            raise ConfigError(f"precision must be auto, bf16 or fp32, got {c.precision!r}")
        if c.best_metric not in ("mIoU+oIoU", "mIoU", "oIoU"):
            raise ConfigError(f"best_metric must be mIoU+oIoU, mIoU or oIoU, got {c.best_metric!r}")
        resolve_device(c.device)  # a device that does not exist here: a ConfigError naming it
        if c.preset not in PRESET_NAMES:
            raise ConfigError(f"preset: {c.preset!r} is not a preset; choose one of {', '.join(PRESET_NAMES)}")
        for name, bounds in RANGES.items():
            _check_range(name, getattr(c, name), **bounds)
        if not c.resume:
            _check_inputs(c)
        if c.grounding_warmup_steps and c.fsdp:
            raise ConfigError("grounding_warmup_steps cannot be combined with --fsdp (the warm-up updates whole "
                              "parameters); use DDP or set it to 0")
        if not c.data:
            raise ConfigError("no dataset root given (--data ROOT)")
        if not c.out:
            raise ConfigError("no run folder given (--out RUN)")
        return c


def _check_inputs(c: TrainConfig) -> None:
    """The files a new run starts from exist (a resumed run takes them from its folder): the
    tokenizer, and the checkpoints (``init`` may also be a Hugging Face Hub id)."""
    if c.tokenizer and not Path(c.tokenizer).is_file():
        raise MissingFileError(f"tokenizer: {c.tokenizer} is not a file")
    for key in ("init", "sam2_checkpoint", "beit3_checkpoint"):
        path = getattr(c, key)
        if path and not os.path.lexists(path) and not (key == "init" and is_repo_id(str(path))):
            raise MissingFileError(f"{key}: checkpoint not found: {path}")


def _check_range(name: str, value: Any, **bounds: Any) -> None:
    """:class:`ConfigError` naming ``name`` when ``value`` (each item of a list) is outside its
    :data:`RANGES` entry, by the rule of the command-line flags; None keeps the key's default meaning."""
    check = number(**bounds)
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        try:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise argparse.ArgumentTypeError(f"expected {describe_range(**bounds)}, got {item!r}")
            check(repr(item))
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{name}: {e}") from None


def _coerce(name: str, value: str, hint: Any) -> Any:
    args = typing.get_args(hint) or (hint,)
    if str in args:
        return value
    if value.strip().lower() in ("null", "none", "~") and type(None) in args:
        return None
    try:
        if bool in args:
            low = value.strip().lower()
            if low in ("true", "yes", "on", "1"):
                return True
            if low in ("false", "no", "off", "0"):
                return False
            raise ConfigError(value)
        if int in args:
            return int(value)
        if float in args:
            return float(value)
    except ValueError:
        raise ConfigError(f"training config {name!r}: cannot read {value!r} as {hint}") from None
    return value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping from ``path``; a missing file or another document is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys")
    return d


def write_yaml(path: Path, d: dict[str, Any]) -> None:
    """Write ``d`` as YAML, atomically."""
    atomic_write_bytes(path, yaml.safe_dump(d, sort_keys=False).encode("utf-8"))


def merge_dicts(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``new``, nested mappings merged key by key."""
    out = dict(base)
    for k, v in new.items():
        out[k] = merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_config_from(preset: str, overrides: dict[str, Any]) -> ModelConfig:
    """A preset's :class:`ModelConfig` with nested overrides applied."""
    base = get_config(preset).to_dict()
    return ModelConfig.from_dict(merge_dicts(base, overrides or {}))


def resume_clashes(saved: dict[str, Any], config: TrainConfig) -> list[str]:
    """``"KEY: X in the run, Y now"`` for every :data:`RESUME_KEYS` entry on which ``config``
    differs from ``saved`` (the run's ``train_config.yaml``). The model is compared as the
    configuration it resolves to, key by key (``model.image_size``), when the presets agree; paths
    are compared as the files they name."""
    now = config.to_dict()
    clashes = []
    for key in (k for k in RESUME_KEYS if k in saved):
        then_value, now_value = saved[key], now[key]
        if key == "model":
            if saved.get("preset") != config.preset:
                continue  # the preset's clash says it all
            then_value = model_config_from(config.preset, then_value).to_dict()
            now_value = model_config_from(config.preset, now_value).to_dict()
        clashes += _differences(key, then_value, now_value)
    return clashes


def _differences(key: str, then: Any, now: Any) -> list[str]:
    if isinstance(then, dict) and isinstance(now, dict):
        return [c for k in sorted(set(then) | set(now)) for c in _differences(f"{key}.{k}", then.get(k), now.get(k))]
    same = then == now
    if not same and key in _PATH_KEYS and isinstance(then, str) and isinstance(now, str):
        same = Path(then).resolve() == Path(now).resolve()
    return [] if same else [f"{key}: {then!r} in the run, {now!r} now"]
