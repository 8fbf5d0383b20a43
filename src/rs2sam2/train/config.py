"""Configuration of a training run: :class:`TrainConfig`, read from YAML and overridden by flags."""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ModelConfig, get_config
from ..errors import ConfigError
from ..fsutil import atomic_write_bytes

DATASET_EPOCHS = {"rrsisd": 40, "refsegrs": 60}

#: What a resumed run keeps from the run it continues -- its model and weights, its tokenizer, its
#: data and the order and content of its samples -- so ``--resume`` refuses another value for them
#: (:func:`resume_clashes`). The schedule's length, learning rates, clipping, logging and validation
#: may change on resume.
RESUME_KEYS = ("preset", "model", "init", "sam2_checkpoint", "beit3_checkpoint", "tokenizer", "train_tokenizer",
               "tokenizer_vocab_size", "dataset", "data", "train_split", "seed", "random_boxes", "box_prob",
               "mask_rule", "freeze", "negatives")
_PATH_KEYS = {"init", "sam2_checkpoint", "beit3_checkpoint", "tokenizer", "data"}


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
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)  # type: ignore[assignment]
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.lr_milestones = [int(m) for m in (self.lr_milestones or [])]

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
        for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_every_steps", "eval_every_epochs"):
            if int(getattr(c, name)) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
        if c.w_grounding < 0 or c.grounding_warmup_steps < 0 or c.grounding_warmup_lr <= 0:
            raise ConfigError("w_grounding and grounding_warmup_steps must be >= 0 and grounding_warmup_lr > 0, got "
                              f"{c.w_grounding}, {c.grounding_warmup_steps}, {c.grounding_warmup_lr}")
        if c.grounding_warmup_batch_size < 1:
            raise ConfigError(f"grounding_warmup_batch_size must be >= 1, got {c.grounding_warmup_batch_size}")
        if c.grounding_warmup_steps and c.fsdp:
            raise ConfigError("grounding_warmup_steps cannot be combined with --fsdp (the warm-up updates whole "
                              "parameters); use DDP or set it to 0")
        if not 0 <= c.negatives < 1 or c.w_presence < 0:
            raise ConfigError(f"negatives must be in [0, 1) and w_presence >= 0, got {c.negatives}, {c.w_presence}")
        if c.image_cache_mb < 0:
            raise ConfigError(f"image_cache_mb must be >= 0, got {c.image_cache_mb}")
        if c.max_steps is not None and c.max_steps < 0:
            raise ConfigError(f"max_steps must be >= 0, got {c.max_steps}")
        if not c.data:
            raise ConfigError("no dataset root given (--data ROOT)")
        if not c.out:
            raise ConfigError("no run folder given (--out RUN)")
        return c


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
    import yaml

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
    import yaml

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
