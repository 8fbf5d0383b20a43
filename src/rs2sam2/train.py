"""Training RS2-SAM2 with the published recipe (``rs2sam2 train``), on one process or many (torchrun).

Recipe (defaults of :class:`TrainConfig`, as published):

* **Freeze policy** (:func:`freeze_published`): the whole SAM2 image encoder (Hiera trunk and FPN
  neck) is frozen except the two BHFM adapters (``space_adapter``, ``mlp_adapter``) of every block;
  everything else trains. Parameters that no loss can reach are frozen too (see
  :func:`unreachable_parameter_names`): they get no gradient in the published run either, and DDP
  requires that every trainable parameter receives one.
* **Optimiser**: AdamW, weight decay 0.01, two learning rates (:func:`param_groups`): 1e-4 for the
  fusion / adapter / MPG parameters (our names ``space_adapter``, ``mlp_adapter``, ``mpg.``,
  ``mask_decoder.text_guidance``; the published names vlfusion_module, lvfusion_module,
  text_in_linear, text_out_linear, MLP_Adapter, Space_Adapter, mask_linear, mask_product, vmtoken),
  5e-5 for the rest. Step decay: the learning rates are multiplied by ``lr_gamma`` (0.1) for every
  milestone reached; ``lr_milestones: [50]`` means epochs 50, 51, ... (0-based) run at 0.1x -- "x0.1
  after epoch 49". (With the published 40 epochs on RRSIS-D it never fires.)
* **Loss**: 0.9 CE + 0.1 Dice + 0.2 TBL ("hard", published) -- :mod:`rs2sam2.losses`. The published
  Dice term is *summed* over the batch, and CE is a class-weighted mean over all pixels of the batch,
  so the published loss of a batch is not the mean of its samples' losses. The published run used one
  sample per GPU and averaged gradients over 8 GPUs, i.e. it minimised the **mean over the global
  batch of per-sample losses**. We compute exactly that for any per-process batch size: the loss of a
  batch is the mean of its samples' losses, each computed as a batch of one; DDP / FSDP average over
  ranks (all ranks see equal batch sizes), and gradient accumulation divides by the number of
  micro-batches. Hence 2 ranks x batch 1 and 1 process x batch 2 take the same steps.
* **Data**: an epoch is one pass over the *refs* (objects); each step draws one random expression
  per ref (deterministic from ``(seed, epoch, ref)``); the RRSIS-D random black boxes are on for
  ``rrsisd`` (``random_boxes``, 20% of the samples). The refs are split over ranks with
  ``torch.utils.data.DistributedSampler`` (seeded, reshuffled every epoch). Validation runs every
  expression of the val split with the published protocol; the best epoch by ``mIoU + oIoU`` is kept.
* **Precision**: bf16 autocast on CUDA (``precision: auto``), fp32 on the CPU. Seeded.

Distributed: ``torchrun --nproc_per_node N -m rs2sam2 train ...`` (env ``RANK``/``WORLD_SIZE``/
``LOCAL_RANK``; NCCL on CUDA, gloo on the CPU). ``--fsdp`` shards gradients and optimizer state
(torch FSDP2 ``fully_shard`` with ``reshard_after_forward=False``, the equivalent of the published
DeepSpeed ZeRO-2) per BEiT-3 layer and Hiera block; ``--grad-checkpointing`` recomputes those blocks'
activations in the backward pass. Rank 0 logs and writes checkpoints.

Outputs in ``RUN/``: ``train_config.yaml`` (resolved), ``tokenizer.model``, ``checkpoints/last``
and ``checkpoints/best`` (``save_pretrained`` folders + ``trainer_state.pt``), ``logs/train.csv``,
``logs/val.csv``, ``tb/`` (TensorBoard), ``summary.json``.

Memory, paper preset (927.0M parameters, 713.2M trainable under the published freeze), batch 1 per
GPU at 1024x1024, bf16 autocast, fp32 weights + AdamW states -- measured on one H200 (torch 2.11):
fp32 weights 3.53 GiB, gradients 2.66 GiB, Adam moments 5.31 GiB (11.55 GiB between steps);
peak 15.75 GiB allocated / 16.1 GiB reserved (activations ~4.2 GiB), 14.07 GiB with
``--grad-checkpointing`` (0.5 s vs 1.0 s per step). DDP keeps the same per GPU (gradients are views
into its buckets) plus the NCCL buffers, so it fits 24 GB GPUs. ``--fsdp`` on 8 GPUs (estimated from
the same figures, not measured): gradients and Adam moments sharded (0.33 + 0.66 GiB), parameters
stored sharded (0.44 GiB) but held unsharded from forward to backward (3.53 GiB,
``reshard_after_forward=False``) -> ~9 GiB peak, ~7.5 GiB with activation checkpointing.

Checkpoint folders are written completely under a temporary name and then swapped in, and
``trainer_state.pt`` (written last) holds only weights-only-loadable values (tensors, numbers,
strings, lists, dicts), so ``torch.load(weights_only=True)`` reads it. ``last`` has everything needed
to resume (optimizer, scheduler, step, epoch, position in the epoch, RNG states, best metric);
``best`` has the model and a small state without the optimizer. ``--resume`` continues from
``last`` exactly (same weights as an uninterrupted run, given the same world size and batch size).
"""

from __future__ import annotations

import argparse
import bisect
import csv
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import typing
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .config import ModelConfig, get_config
from .fsutil import atomic_write, atomic_write_bytes
from .losses import LossOutput, RS2SAM2Loss

__all__ = [
    "TrainConfig",
    "NonFiniteLossError",
    "train",
    "train_cpu_processes",
    "freeze_published",
    "freeze_unreachable",
    "unreachable_parameter_names",
    "is_fusion_parameter",
    "param_groups",
    "trainable_parameter_counts",
    "enable_activation_checkpointing",
    "per_sample_loss",
    "load_trainer_state",
    "add_arguments",
    "run",
]

DATASET_EPOCHS = {"rrsisd": 40, "refsegrs": 60}
FUSION_NAME_MARKERS = ("space_adapter", "mlp_adapter", "mask_decoder.text_guidance")
TRAINER_STATE = "trainer_state.pt"
STATE_FORMAT = "rs2sam2-trainer-state"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


# =====================================================================================================
# configuration
# =====================================================================================================


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
    # data
    random_boxes: bool | None = None
    box_prob: float = 0.2
    num_workers: int = 2
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
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}; valid keys: {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None = None, **overrides: Any) -> "TrainConfig":
        """Defaults <- YAML file <- ``overrides`` (``None`` values are ignored)."""
        d: dict[str, Any] = {}
        if path is not None:
            d = read_yaml(path)
        for k, v in overrides.items():
            if v is not None:
                d[k] = v
        return cls.from_dict(d)

    def resolved(self) -> "TrainConfig":
        """A copy with the dataset-dependent ``None`` defaults filled in and values checked."""
        c = dataclasses.replace(self, model=json.loads(json.dumps(self.model)))
        ds = str(c.dataset).lower().replace("-", "")
        c.dataset = ds
        if c.random_boxes is None:
            c.random_boxes = ds == "rrsisd"
        if c.epochs is None and c.max_steps is None:
            c.epochs = DATASET_EPOCHS.get(ds, 40)
        if c.freeze not in ("published", "none"):
            raise ValueError(f"freeze must be 'published' or 'none', got {c.freeze!r}")
        if c.boundary_loss not in ("hard", "soft"):
            raise ValueError(f"boundary_loss must be 'hard' or 'soft', got {c.boundary_loss!r}")
        if c.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {c.precision!r}")
        if c.best_metric not in ("mIoU+oIoU", "mIoU", "oIoU"):
            raise ValueError(f"best_metric must be mIoU+oIoU, mIoU or oIoU, got {c.best_metric!r}")
        for name in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_every_steps", "eval_every_epochs"):
            if int(getattr(c, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(c, name)}")
        if c.max_steps is not None and c.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0, got {c.max_steps}")
        if not c.data:
            raise ValueError("no dataset root given (--data ROOT)")
        if not c.out:
            raise ValueError("no run folder given (--out RUN)")
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
            raise ValueError(value)
        if int in args:
            return int(value)
        if float in args:
            return float(value)
    except ValueError:
        raise ValueError(f"training config {name!r}: cannot read {value!r} as {hint}") from None
    return value


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({exc})") from exc
    if not isinstance(d, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    return d


def _write_yaml(path: Path, d: dict[str, Any]) -> None:
    import yaml

    atomic_write_bytes(path, yaml.safe_dump(d, sort_keys=False).encode("utf-8"))


def _merge_dicts(base: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in new.items():
        out[k] = _merge_dicts(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_config_from(preset: str, overrides: dict[str, Any]) -> ModelConfig:
    """A preset's :class:`ModelConfig` with nested overrides applied."""
    base = get_config(preset).to_dict()
    return ModelConfig.from_dict(_merge_dicts(base, overrides or {}))


# =====================================================================================================
# freeze policy and parameter groups
# =====================================================================================================


def unreachable_parameter_names(model: nn.Module) -> list[str]:
    """Parameters that no output used by the loss depends on, whatever the input.

    * the mask decoder's ``iou_prediction_head`` and ``pred_obj_score_head`` (their outputs are not
      part of the loss) and the hypernetwork MLPs of the multimask tokens (``output_hypernetworks_mlps[1:]``:
      only the first mask token's mask is used);
    * the prompt encoder's point embeddings (``point_embeddings``, ``not_a_point_embed``: no point
      prompts) and ``no_mask_embed`` when the MPG supplies the dense prompt (without the MPG:
      the ``mask_downscaling`` convs instead);
    * with the bidirectional BHFM, the last Hiera block's text-update path
      (``space_adapter.attend_image``, ``space_adapter.text_out``): the text state it produces is
      discarded after the last block.

    In the published run these parameters receive no gradient either (and so never change under
    AdamW); they are frozen so that DDP (which needs a gradient for every trainable parameter) works
    without ``find_unused_parameters``.
    """
    core = getattr(model, "module", model)
    cfg = core.config
    prefixes = [
        "mask_decoder.iou_prediction_head.",
        "mask_decoder.pred_obj_score_head.",
        "prompt_encoder.point_embeddings.",
        "prompt_encoder.not_a_point_embed.",
    ]
    prefixes += [f"mask_decoder.output_hypernetworks_mlps.{i}." for i in range(1, cfg.num_multimask_outputs + 1)]
    if getattr(core, "mpg", None) is not None:
        prefixes.append("prompt_encoder.no_mask_embed.")
    else:  # no mask prompt: the dense prompt is no_mask_embed and the mask-downscaling convs are idle
        prefixes.append("prompt_encoder.mask_downscaling.")
    if cfg.fusion.bhfm == "bi":
        last = sum(cfg.hiera.stages) - 1
        prefixes += [f"image_encoder.trunk.blocks.{last}.space_adapter.attend_image.",
                     f"image_encoder.trunk.blocks.{last}.space_adapter.text_out."]
    return [n for n, _ in core.named_parameters() if n.startswith(tuple(prefixes))]


def freeze_unreachable(model: nn.Module) -> list[str]:
    """Freeze :func:`unreachable_parameter_names`; returns their names."""
    names = set(unreachable_parameter_names(model))
    core = getattr(model, "module", model)
    for n, p in core.named_parameters():
        if n in names:
            p.requires_grad_(False)
    return sorted(names)


def _is_adapter(name: str) -> bool:
    return ".space_adapter." in name or ".mlp_adapter." in name


def freeze_published(model: nn.Module) -> dict[str, dict[str, int]]:
    """Apply the published freeze policy in place and return :func:`trainable_parameter_counts`.

    The SAM2 image encoder (``image_encoder.*``: Hiera trunk + FPN neck) is frozen except every
    block's ``space_adapter`` and ``mlp_adapter``; every other parameter trains (BEiT-3, text
    projection, sparse prompt, MPG, prompt encoder, mask decoder with its text guidance, boundary
    head, ``no_mem_embed``), except the unreachable ones (:func:`unreachable_parameter_names`).
    """
    core = getattr(model, "module", model)
    for n, p in core.named_parameters():
        p.requires_grad_(not n.startswith("image_encoder.") or _is_adapter(n))
    freeze_unreachable(core)
    return trainable_parameter_counts(core)


def trainable_parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{top-level part: {"trainable": n, "total": n}}`` plus a ``"total"`` entry (element counts)."""
    core = getattr(model, "module", model)
    out: dict[str, dict[str, int]] = {}
    for n, p in core.named_parameters():
        part = out.setdefault(n.split(".")[0], {"trainable": 0, "total": 0})
        part["total"] += p.numel()
        part["trainable"] += p.numel() if p.requires_grad else 0
    out["total"] = {"trainable": sum(v["trainable"] for v in out.values()),
                    "total": sum(v["total"] for v in out.values())}
    return out


def is_fusion_parameter(name: str) -> bool:
    """True for the parameters trained at ``lr_fusion`` (BHFM adapters, MPG, decoder text guidance)."""
    return any(m in name for m in FUSION_NAME_MARKERS) or name.startswith("mpg.") or ".mpg." in name


def param_groups(model: nn.Module, lr: float, lr_fusion: float, weight_decay: float) -> list[dict[str, Any]]:
    """The two AdamW groups over the trainable parameters: ``fusion`` (``lr_fusion``) and ``base`` (``lr``).
    Weight decay applies to every trainable parameter, as published."""
    fusion, base = [], []
    for n, p in getattr(model, "module", model).named_parameters():
        if p.requires_grad:
            (fusion if is_fusion_parameter(n) else base).append(p)
    groups = [{"name": "fusion", "params": fusion, "lr": lr_fusion, "weight_decay": weight_decay},
              {"name": "base", "params": base, "lr": lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


# =====================================================================================================
# loss, activation checkpointing
# =====================================================================================================


def per_sample_loss(loss_fn: RS2SAM2Loss, logits: torch.Tensor, target: torch.Tensor,
                    boundary_weight: torch.Tensor) -> LossOutput:
    """Mean over the batch of the published loss computed on each sample alone (see the module
    docstring: this is what the published 1-sample-per-GPU run optimises, for any batch size)."""
    terms = [loss_fn(logits[i : i + 1], target[i : i + 1], boundary_weight[i : i + 1]) for i in range(logits.shape[0])]
    mean = lambda name: torch.stack([getattr(t, name) for t in terms]).mean()  # noqa: E731
    return LossOutput(total=mean("total"), ce=mean("ce"), dice=mean("dice"), boundary=mean("boundary"))


def _checkpointed(forward):
    from torch.utils.checkpoint import checkpoint

    def wrapped(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return wrapped


def _block_types() -> tuple[type, ...]:
    from .models.beit3 import Beit3Layer
    from .models.hiera import HieraBlock

    return (HieraBlock, Beit3Layer)


def enable_activation_checkpointing(model: nn.Module) -> int:
    """Recompute every Hiera block's and BEiT-3 layer's activations during backward (non-reentrant
    ``torch.utils.checkpoint``); parameter names are unchanged. Returns the number of blocks wrapped."""
    n = 0
    for m in model.modules():
        if isinstance(m, _block_types()) and not getattr(m, "_rs2sam2_checkpointed", False):
            m.forward = _checkpointed(m.forward)
            m._rs2sam2_checkpointed = True
            n += 1
    return n


# =====================================================================================================
# distributed helpers
# =====================================================================================================


@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
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


def _setup_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    if want_cuda:
        dev = torch.device(device if ":" in device and world == 1 else f"cuda:{local_rank}")
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo")
        created = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return _Dist(rank, world, local_rank, dev, created)


def _all_any(flag: bool, d: _Dist) -> bool:
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def _all_mean(values: list[float], d: _Dist) -> list[float]:
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device if d.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return (t / d.world_size).tolist()


# =====================================================================================================
# data
# =====================================================================================================


class _RefRange(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class RefSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, ref_index)`` for this rank: a ``DistributedSampler`` over the refs (seeded
    shuffle per epoch, padded so that every rank gets the same count), optionally skipping the first
    ``skip`` items (resuming inside an epoch)."""

    def __init__(self, num_refs: int, rank: int, world_size: int, seed: int, shuffle: bool = True) -> None:
        self.inner = torch.utils.data.DistributedSampler(
            _RefRange(num_refs), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = int(epoch)
        self.skip = int(skip)
        self.inner.set_epoch(self.epoch)

    def __iter__(self):
        for k, ref in enumerate(self.inner):
            if k >= self.skip:
                yield (self.epoch, int(ref))

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)

    @property
    def per_epoch(self) -> int:
        return len(self.inner)


class TrainSamples(torch.utils.data.Dataset):
    """``(epoch, ref)`` -> a transformed sample of one randomly chosen expression of that ref.

    The choice of expression and the random boxes come from a generator seeded with
    ``(seed, epoch, ref)``, so a sample does not depend on the worker, the rank or on resuming."""

    def __init__(self, dataset, image_size: int, evf_size: int, seed: int, random_boxes: bool,
                 box_prob: float = 0.2) -> None:
        self.dataset = dataset
        self.image_size, self.evf_size = image_size, evf_size
        self.seed, self.random_boxes, self.box_prob = int(seed), bool(random_boxes), float(box_prob)

    def __len__(self) -> int:
        return self.dataset.num_refs

    def __getitem__(self, key) -> dict[str, Any]:
        from .data.transforms import SampleTransform

        epoch, ref = key
        rng = np.random.default_rng([self.seed, int(epoch), int(ref)])
        expressions = self.dataset.ref_expressions(ref)
        index = expressions[int(rng.integers(len(expressions)))]
        transform = SampleTransform(self.image_size, self.evf_size, train=True, random_boxes=self.random_boxes,
                                    rng=rng, box_prob=self.box_prob)
        return transform(self.dataset.load(index))


def _list_collate(samples: list) -> list:
    return samples


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:  # global RNGs of workers: not used by the pipeline, seeded anyway
    seed = torch.initial_seed() % (2**32)
    np.random.seed(seed)
    random.seed(seed)


# =====================================================================================================
# trainer state (weights-only loadable)
# =====================================================================================================


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any]) -> None:
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


def _named_optimizer_state(optimizer: torch.optim.Optimizer, names: dict[nn.Parameter, str]) -> dict[str, Any]:
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


def _load_named_optimizer_state(optimizer: torch.optim.Optimizer, named: dict[str, Any],
                                names: dict[nn.Parameter, str]) -> None:
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


def load_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``trainer_state.pt`` (file or checkpoint folder) with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        path = path / TRAINER_STATE
    if not path.is_file():
        raise FileNotFoundError(f"trainer state not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise RuntimeError(f"{path}: not an rs2sam2 trainer state")
    return state


def _atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def _find_last_checkpoint(run: Path) -> Path | None:
    for name in ("last", "last.old"):  # last.old: a crash between the two renames of a swap
        folder = run / "checkpoints" / name
        if (folder / TRAINER_STATE).is_file() and (folder / "model.safetensors").is_file():
            return folder
    return None


# =====================================================================================================
# logging
# =====================================================================================================


class _CsvLog:
    def __init__(self, path: Path, fields: Sequence[str]) -> None:
        self.path, self.fields = path, list(fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.stat().st_size == 0:
            with path.open("w", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        else:  # resuming: keep the header that is there
            with path.open(newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header:
                self.fields = header

    def write(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


TRAIN_FIELDS = ("step", "epoch", "loss", "ce", "dice", "boundary", "lr_fusion", "lr_base", "grad_norm",
                "samples_per_s", "seconds")
VAL_FIELDS = ("step", "epoch", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU", "num_expressions",
              "orig_oIoU", "orig_mIoU", "seconds")


def _log(msg: str, d: _Dist) -> None:
    if d.is_main:
        print(f"[rs2sam2 train] {msg}", file=sys.stderr, flush=True)


# =====================================================================================================
# the trainer
# =====================================================================================================


def _score(metrics: dict[str, Any], best_metric: str) -> float:
    if best_metric == "mIoU":
        return float(metrics["mIoU"])
    if best_metric == "oIoU":
        return float(metrics["oIoU"])
    return float(metrics["mIoU"]) + float(metrics["oIoU"])


def _lr_factor(milestones: Sequence[int], gamma: float):
    ms = sorted(int(m) for m in milestones)
    return lambda epoch: gamma ** bisect.bisect_right(ms, epoch)


def _resolve_tokenizer(cfg: TrainConfig, run: Path, init_dir: Path | None, train_ds, d: _Dist):
    """Tokenizer path by priority: the run's own copy (resume), --tokenizer, the init checkpoint's,
    a newly trained one (--train-tokenizer). Returns (Tokenizer, path, trained: bool)."""
    from .evaluate import find_model_tokenizer
    from .text import load_tokenizer, train_tokenizer

    run_tok = run / "tokenizer.model"
    if cfg.resume and run_tok.is_file() and _find_last_checkpoint(run) is not None:
        return load_tokenizer(run_tok), run_tok, False
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer), Path(cfg.tokenizer), False
    if init_dir is not None:
        found = find_model_tokenizer(init_dir)
        if found is not None:
            return load_tokenizer(found), found, False
    if cfg.train_tokenizer:
        if d.is_main:
            texts = [text for _, text, _ in train_ds.expressions]
            train_tokenizer(texts, run_tok, vocab_size=cfg.tokenizer_vocab_size)
        d.barrier()
        return load_tokenizer(run_tok), run_tok, True
    raise ValueError(
        "no tokenizer: pass --tokenizer PATH (BEiT-3's beit3.spm for the paper models), start from a checkpoint "
        "that has one (--init), or build one from the training sentences with --train-tokenizer")


def _build_model(cfg: TrainConfig, tokenizer, trained_tok: bool, resume_dir: Path | None, d: _Dist):
    from .checkpoints import (
        load_beit3_checkpoint,
        load_pretrained,
        load_sam2_checkpoint,
    )
    from .models import RS2SAM2

    notes = []
    if resume_dir is None and cfg.init and cfg.model:
        notes.append("note: the 'model' overrides are ignored: the architecture comes from the checkpoint")
    if resume_dir is not None:
        model = load_pretrained(resume_dir)
        notes.append(f"resumed weights from {resume_dir}")
    elif cfg.init:
        from .evaluate import resolve_checkpoint

        path = resolve_checkpoint(cfg.init)
        model = load_pretrained(path)
        notes.append(f"initialised from {path}")
    else:
        overrides = json.loads(json.dumps(cfg.model))
        if trained_tok:
            overrides = _merge_dicts(overrides, {"beit3": {"vocab_size": len(tokenizer)}})
            cfg.model = overrides  # recorded in train_config.yaml
        mc = model_config_from(cfg.preset, overrides)
        model = RS2SAM2(mc)
        if cfg.sam2_checkpoint:
            notes.append(load_sam2_checkpoint(model, cfg.sam2_checkpoint).summary())
        if cfg.beit3_checkpoint:
            notes.append(load_beit3_checkpoint(model, cfg.beit3_checkpoint).summary())
        if not (cfg.sam2_checkpoint or cfg.beit3_checkpoint):
            notes.append(f"preset {cfg.preset!r} randomly initialised (seed {cfg.seed})")
    return model, notes


def _wrap_fsdp(model: nn.Module, d: _Dist) -> nn.Module:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for m in model.modules():
        if isinstance(m, _block_types()):
            fully_shard(m, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


class _Trainer:
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.d = _setup_distributed(cfg.device)
        self.run = Path(cfg.out)
        self.summary: dict[str, Any] = {}

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        from .data import build_dataset
        from .data.collate import check_vocabulary

        cfg, d = self.cfg, self.d
        _seed_everything(cfg.seed)
        resume_dir = _find_last_checkpoint(self.run) if cfg.resume else None
        if cfg.resume and resume_dir is None:
            _log(f"--resume: no checkpoint in {self.run / 'checkpoints'}; starting a new run", d)
        if not cfg.resume and _find_last_checkpoint(self.run) is not None:
            raise FileExistsError(f"{self.run} already holds a training run (checkpoints/last); pass --resume to "
                                  "continue it or choose another --out")
        self.resume_dir = resume_dir
        if d.is_main:
            (self.run / "logs").mkdir(parents=True, exist_ok=True)
        d.barrier()

        def split(name: str | None) -> str | None:  # jsonl: "all" = every line, whatever its split
            return None if cfg.dataset == "jsonl" and str(name).lower() in ("all", "none") else name

        self.train_ds = build_dataset(cfg.dataset, cfg.data, split(cfg.train_split))
        self.val_ds = None
        if cfg.val_split:
            try:
                self.val_ds = build_dataset(cfg.dataset, cfg.data, split(cfg.val_split))
            except ValueError as exc:  # DatasetError is a ValueError
                _log(f"no validation ({exc}); the best checkpoint is not tracked", d)

        init_dir = None
        if cfg.init and resume_dir is None:
            from .evaluate import resolve_checkpoint

            init_dir = resolve_checkpoint(cfg.init)
        self.tokenizer, self.tokenizer_path, trained = _resolve_tokenizer(cfg, self.run, init_dir, self.train_ds, d)
        if d.is_main and self.tokenizer_path.resolve() != (self.run / "tokenizer.model").resolve():
            atomic_write_bytes(self.run / "tokenizer.model", self.tokenizer_path.read_bytes())
        self.tokenizer_path = self.run / "tokenizer.model"

        model, notes = _build_model(cfg, self.tokenizer, trained, resume_dir, d)
        for n in notes:
            _log(n, d)
        self.model_config = model.config
        check_vocabulary(self.tokenizer, model.config.beit3.vocab_size)
        mc = model.config
        limit = mc.beit3.max_text_len
        self.max_len = limit if cfg.max_text_len is None else min(cfg.max_text_len, limit)

        if cfg.freeze == "published":
            counts = freeze_published(model)
        else:
            for p in model.parameters():
                p.requires_grad_(True)
            freeze_unreachable(model)
            counts = trainable_parameter_counts(model)
        self.param_counts = counts
        _log(f"parameters: {counts['total']['trainable']:,} trainable of {counts['total']['total']:,} "
             f"(freeze={cfg.freeze})", d)
        if cfg.grad_checkpointing:
            enable_activation_checkpointing(model)
        model.to(d.device)
        self.core = model
        self.names = {p: n for n, p in model.named_parameters()}

        if cfg.fsdp:
            if not d.enabled:
                _log("--fsdp with a single process: nothing to shard, running unsharded", d)
                self.ddp = model
            else:
                self.ddp = _wrap_fsdp(model, d)
                self.names = {p: n for n, p in model.named_parameters()}
        elif d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                           find_unused_parameters=cfg.find_unused_parameters, gradient_as_bucket_view=True)
        else:
            self.ddp = model
        self.fsdp = bool(cfg.fsdp and d.enabled)

        self.trainable = [p for p in model.parameters() if p.requires_grad]
        groups = param_groups(model, cfg.lr, cfg.lr_fusion, cfg.weight_decay)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(cfg.lr_milestones, cfg.lr_gamma))
        self.loss_fn = RS2SAM2Loss(cfg.w_ce, cfg.w_dice, cfg.w_tbl, boundary=cfg.boundary_loss)
        self.use_bf16 = d.device.type == "cuda" and cfg.precision in ("auto", "bf16")
        if cfg.precision == "bf16" and d.device.type != "cuda":
            _log("bf16 autocast is used on CUDA only; training in fp32 on the CPU", d)

        # data
        self.sampler = RefSampler(self.train_ds.num_refs, d.rank, d.world_size, cfg.seed)
        self.train_set = TrainSamples(self.train_ds, mc.image_size, mc.beit3.img_size, cfg.seed,
                                      bool(cfg.random_boxes), cfg.box_prob)
        self.loader = torch.utils.data.DataLoader(
            self.train_set, batch_size=cfg.batch_size, sampler=self.sampler, num_workers=cfg.num_workers,
            collate_fn=_list_collate, worker_init_fn=_worker_init, drop_last=False,
            pin_memory=d.device.type == "cuda")
        self.micro_per_epoch = math.ceil(self.sampler.per_epoch / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum_steps)

        # progress state
        self.global_step, self.epoch, self.micro_done = 0, 0, 0
        self.best: dict[str, Any] = {"score": None, "step": None, "epoch": None, "metrics": None}
        self.val_history: list[dict[str, Any]] = []
        self.loss_first: float | None = None
        self.loss_last: float | None = None
        self.elapsed_before = 0.0
        self._saved_step: int | None = None
        if resume_dir is not None:
            self._restore(resume_dir)
            self._saved_step = self.global_step

        if d.is_main:
            saved = cfg.to_dict()
            saved["resume"] = False
            _write_yaml(self.run / "train_config.yaml", saved)
            self.train_log = _CsvLog(self.run / "logs" / "train.csv", TRAIN_FIELDS)
            self.val_log = _CsvLog(self.run / "logs" / "val.csv", VAL_FIELDS)
            self.tb = None
            if cfg.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(str(self.run / "tb"), purge_step=self.global_step or None)
                except Exception as exc:  # noqa: BLE001 - TensorBoard is a convenience, not a requirement
                    _log(f"TensorBoard disabled ({exc})", d)
        _log(f"{self.train_ds.num_refs} train refs ({len(self.train_ds)} expressions), "
             f"{len(self.val_ds) if self.val_ds is not None else 0} val expressions; world size {d.world_size}, "
             f"batch {cfg.batch_size}/process x {cfg.grad_accum_steps} accumulation; {self.steps_per_epoch} "
             f"steps/epoch; device {d.device}{' bf16' if self.use_bf16 else ''}"
             f"{' FSDP' if self.fsdp else ' DDP' if d.enabled else ''}", d)

    def _restore(self, folder: Path) -> None:
        state = load_trainer_state(folder)
        cfg, d = self.cfg, self.d
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(self.ddp, self.optimizer, state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            _load_named_optimizer_state(self.optimizer, state["optimizer"], self.names)
        self.scheduler.load_state_dict(state["scheduler"])
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        done_refs = int(state["refs_done_in_epoch"])
        if int(state["world_size"]) != d.world_size or int(state["batch_size"]) != cfg.batch_size:
            _log(f"resuming with world size {d.world_size} x batch {cfg.batch_size} instead of "
                 f"{state['world_size']} x {state['batch_size']}: the data order of the current epoch is "
                 "approximated (not bit-exact)", d)
        self.micro_done = min(self.micro_per_epoch, done_refs // (d.world_size * cfg.batch_size))
        self.best = dict(state.get("best") or self.best)
        self.val_history = list(state.get("val_history") or [])
        self.loss_first = state.get("loss_first")
        self.loss_last = state.get("loss_last")
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        _set_rng_state(state["rng"])
        _log(f"resumed at step {self.global_step}, epoch {self.epoch} (+{self.micro_done} batches)", d)

    # ----------------------------------------------------------------------------------- checkpoints
    def _gather_model_state(self) -> dict[str, torch.Tensor] | None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            sd = get_model_state_dict(self.ddp, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return sd if self.d.is_main else None
        return self.core.state_dict() if self.d.is_main else None

    def _gather_optimizer_state(self) -> dict[str, Any] | None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            osd = get_optimizer_state_dict(self.ddp, self.optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return osd if self.d.is_main else None
        return _named_optimizer_state(self.optimizer, self.names) if self.d.is_main else None

    def _trainer_state(self, with_optimizer: bool, optimizer_state: dict | None) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        state: dict[str, Any] = {
            "format": STATE_FORMAT,
            "version": 1,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "refs_done_in_epoch": self.micro_done * cfg.batch_size * d.world_size,
            "world_size": d.world_size,
            "batch_size": cfg.batch_size,
            "grad_accum_steps": cfg.grad_accum_steps,
            "best": self.best,
            "val_history": self.val_history,
            "loss_first": self.loss_first,
            "loss_last": self.loss_last,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
        }
        if with_optimizer:
            state["optimizer"] = optimizer_state
        return state

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` (``last``: full trainer state; ``best``: without the optimizer)."""
        from .checkpoints import save_state_dict

        full = name == "last"
        if full and self._saved_step == self.global_step:
            return  # already written at this step
        sd = self._gather_model_state()
        osd = self._gather_optimizer_state() if full else None
        if self.d.is_main:
            root = self.run / "checkpoints"
            final, tmp, old = root / name, root / f"{name}.new", root / f"{name}.old"
            shutil.rmtree(tmp, ignore_errors=True)
            save_state_dict(sd, self.model_config, tmp, tokenizer_path=self.tokenizer_path)
            _atomic_torch_save(self._trainer_state(full, osd), tmp / TRAINER_STATE)
            shutil.rmtree(old, ignore_errors=True)
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        if full:
            self._saved_step = self.global_step
        self.d.barrier()

    # ----------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any] | None:
        if self.val_ds is None:
            return None
        from .evaluate import evaluate_model

        cfg = self.cfg
        report = evaluate_model(
            self.ddp if self.fsdp else self.core, self.val_ds, self.tokenizer, threshold=cfg.eval_threshold,
            batch_size=cfg.eval_batch_size, device=self.d.device, max_len=self.max_len, mask_rule=cfg.mask_rule,
            limit=cfg.val_limit, precision="bf16" if self.use_bf16 else "fp32",
            progress=cfg.progress and self.d.is_main,
        )
        entry = {"step": self.global_step, "epoch": self.epoch,
                 **{k: v for k, v in report.items() if isinstance(v, (int, float))}}
        orig = report.get("original_resolution") or {}
        entry["orig_mIoU"], entry["orig_oIoU"] = orig.get("mIoU"), orig.get("oIoU")
        self.val_history.append(entry)
        score = _score(report, cfg.best_metric)
        improved = self.best["score"] is None or score > self.best["score"]
        _log(f"val @ step {self.global_step} (epoch {self.epoch}): mIoU {report['mIoU']:.2f} oIoU {report['oIoU']:.2f} "
             f"Pr@0.5 {report['Pr@0.5']:.2f} (n={report['num_expressions']}){'  * best' if improved else ''}", self.d)
        if self.d.is_main:
            self.val_log.write(entry)
            if self.tb is not None:
                for k in ("mIoU", "oIoU", "Pr@0.5", "Pr@0.7", "Pr@0.9"):
                    self.tb.add_scalar(f"val/{k}", report[k], self.global_step)
                self.tb.flush()
        if improved:
            self.best = {"score": score, "metric": cfg.best_metric, "step": self.global_step, "epoch": self.epoch,
                         "metrics": {k: v for k, v in entry.items() if k not in ("step", "epoch")}}
            self.save("best")
        return report

    # ----------------------------------------------------------------------------------- summary
    def write_summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        elapsed = self.elapsed_before + (time.perf_counter() - self.t_start)
        summary = {
            "status": status,
            "message": message,
            "world_size": d.world_size,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_seen": self.global_step * cfg.batch_size * cfg.grad_accum_steps * d.world_size,
            "best": self.best,
            "last_val": self.val_history[-1] if self.val_history else None,
            "val_history": self.val_history,
            "train_loss_first": self.loss_first,
            "train_loss_last": self.loss_last,
            "elapsed_s": round(elapsed, 3),
            "device": str(d.device),
            "precision": "bf16" if self.use_bf16 else "fp32",
            "fsdp": self.fsdp,
            "grad_checkpointing": cfg.grad_checkpointing,
            "parameters": self.param_counts,
            "model": self.model_config.name,
            "vocab_size": self.model_config.beit3.vocab_size,
            "checkpoints": {"last": str(self.run / "checkpoints" / "last"),
                            "best": str(self.run / "checkpoints" / "best") if self.best["step"] is not None else None},
            "config": cfg.to_dict(),
        }
        if d.is_main:
            atomic_write_bytes(self.run / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
        self.summary = summary
        return summary

    # ----------------------------------------------------------------------------------- training
    def _done(self) -> bool:
        cfg = self.cfg
        if cfg.max_steps is not None and self.global_step >= cfg.max_steps:
            return True
        return cfg.epochs is not None and self.epoch >= cfg.epochs

    def _forward_loss(self, samples: list) -> tuple[torch.Tensor, LossOutput, int]:
        from .data.collate import collate, move_batch

        batch = move_batch(collate(samples, self.tokenizer, max_len=self.max_len, mask_rule=self.cfg.mask_rule),
                           self.d.device, non_blocking=True)
        ctx = torch.autocast("cuda", dtype=torch.bfloat16) if self.use_bf16 else nullcontext()
        with ctx:
            out = self.ddp(images=batch["images"], images_evf=batch["images_evf"], input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"])
        terms = per_sample_loss(self.loss_fn, out.logits.float(), batch["masks"], out.boundary_weight.float())
        return terms.total, terms, len(samples)

    def train(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.d
        self.t_start = time.perf_counter()
        if cfg.eval_at_start and self.global_step == 0 and not self.val_history:
            self.evaluate()
        last_eval_step = self.val_history[-1]["step"] if self.val_history else None
        window = {"loss": 0.0, "ce": 0.0, "dice": 0.0, "boundary": 0.0, "n": 0, "samples": 0}
        t_window = time.perf_counter()
        grad_norm = float("nan")
        bar = None
        status, message = "completed", None
        try:
            while not self._done():
                self.sampler.set_epoch(self.epoch, skip=self.micro_done * cfg.batch_size)
                first_step_of_epoch = self.micro_done // cfg.grad_accum_steps
                if cfg.progress and d.is_main:
                    from tqdm.auto import tqdm

                    bar = tqdm(total=self.steps_per_epoch, initial=first_step_of_epoch, desc=f"epoch {self.epoch}",
                               dynamic_ncols=True, leave=False)
                it = iter(self.loader)
                while self.micro_done < self.micro_per_epoch and not self._done():
                    group = min(cfg.grad_accum_steps, self.micro_per_epoch - self.micro_done)
                    step_number = self.global_step + 1
                    self.optimizer.zero_grad(set_to_none=True)
                    losses, nonfinite = [], False
                    for k in range(group):
                        samples = next(it)
                        sync = k == group - 1
                        ctx = self.ddp.no_sync() if (d.enabled and not self.fsdp and not sync) else nullcontext()
                        if self.fsdp:
                            self.ddp.set_requires_gradient_sync(sync)
                        with ctx:
                            total, terms, n = self._forward_loss(samples)
                            if cfg.debug_nonfinite_at_step == step_number:
                                total = total * float("nan")
                            if not torch.isfinite(total.detach()).item():
                                nonfinite = True
                            (total / group).backward()
                        losses.append((float(total.detach()), terms.as_dict(), n))
                        self.micro_done += 1
                    if _all_any(nonfinite, d):
                        bad = [v for v, _, _ in losses if not math.isfinite(v)]
                        raise NonFiniteLossError(
                            f"non-finite loss ({bad[0] if bad else 'on another rank'}) at step {step_number} "
                            f"(epoch {self.epoch}); stopped without applying it. The last good checkpoint is kept "
                            f"in {self.run / 'checkpoints' / 'last'} (step of the last save) -- lower the learning "
                            "rate, enable --clip-grad-norm or check the data, then --resume")
                    if cfg.clip_grad_norm:
                        norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.clip_grad_norm)
                        grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: DTensor
                        # gradients are all-reduced, so every rank computes the same norm and stops alike
                        if not math.isfinite(grad_norm):
                            raise NonFiniteLossError(
                                f"non-finite gradient norm at step {step_number} (epoch {self.epoch}); stopped "
                                "without applying it. The last good checkpoint is kept in "
                                f"{self.run / 'checkpoints' / 'last'}")
                    self.optimizer.step()
                    self.global_step += 1
                    step_loss = sum(v for v, _, _ in losses) / len(losses)
                    if self.loss_first is None:
                        self.loss_first = _all_mean([step_loss], d)[0]
                    for _, t, n in losses:
                        for key in ("ce", "dice", "boundary"):
                            window[key] += t[key]
                        window["loss"] += t["total"]
                        window["n"] += 1
                        window["samples"] += n
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{step_loss:.4f}", step=self.global_step)
                    if self.global_step % cfg.log_every_steps == 0 or self._done():
                        self._log_window(window, t_window, grad_norm)
                        window = {k: 0.0 if k not in ("n", "samples") else 0 for k in window}
                        t_window = time.perf_counter()
                    if cfg.save_every_steps and self.global_step % cfg.save_every_steps == 0:
                        self.save("last")
                if bar is not None:
                    bar.close()
                    bar = None
                if self.micro_done >= self.micro_per_epoch:  # epoch finished
                    self.epoch += 1
                    self.micro_done = 0
                    self.scheduler.step()
                    if self.epoch % cfg.eval_every_epochs == 0:
                        self.evaluate()
                        last_eval_step = self.global_step
                    self.save("last")
                    self.write_summary("running")
            if window["n"]:
                self._log_window(window, t_window, grad_norm)
            if cfg.eval_at_end and last_eval_step != self.global_step and self.global_step > 0:
                self.evaluate()
            self.save("last")
        except NonFiniteLossError as exc:
            status, message = "stopped_nonfinite_loss", str(exc)
            _log(message, d)
            self.write_summary(status, message)
            raise
        finally:
            if bar is not None:
                bar.close()
            if d.is_main and getattr(self, "tb", None) is not None:
                self.tb.close()
        return self.write_summary(status, message)

    def _log_window(self, window: dict[str, float], t_window: float, grad_norm: float) -> None:
        n = max(1, window["n"])
        vals = _all_mean([window["loss"] / n, window["ce"] / n, window["dice"] / n, window["boundary"] / n], self.d)
        self.loss_last = vals[0]
        seconds = time.perf_counter() - t_window
        row = {
            "step": self.global_step, "epoch": self.epoch, "loss": vals[0], "ce": vals[1], "dice": vals[2],
            "boundary": vals[3], "lr_fusion": self._lr("fusion"), "lr_base": self._lr("base"),
            "grad_norm": grad_norm if self.cfg.clip_grad_norm else "",
            "samples_per_s": window["samples"] * self.d.world_size / max(seconds, 1e-9), "seconds": seconds,
        }
        if self.d.is_main:
            self.train_log.write(row)
            if self.tb is not None:
                for k in ("loss", "ce", "dice", "boundary"):
                    self.tb.add_scalar(f"train/{k}", row[k], self.global_step)
                for k in ("lr_fusion", "lr_base"):
                    if row[k] is not None:
                        self.tb.add_scalar(f"lr/{k[3:]}", row[k], self.global_step)
                self.tb.add_scalar("perf/samples_per_s", row["samples_per_s"], self.global_step)
                if self.cfg.clip_grad_norm:
                    self.tb.add_scalar("train/grad_norm", grad_norm, self.global_step)

    def _lr(self, name: str) -> float | None:
        for g in self.optimizer.param_groups:
            if g.get("name") == name:
                return float(g["lr"])
        return None

    def close(self) -> None:
        if self.d.created_group and dist.is_initialized():
            dist.destroy_process_group()


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or resume, with ``config.resume``) a training run; returns the content of ``summary.json``.

    Under torchrun call it on every rank. Raises :class:`NonFiniteLossError` when the loss becomes
    NaN/inf (after writing ``summary.json``; ``checkpoints/last`` keeps the last good state).
    """
    cfg = config.resolved()
    trainer = _Trainer(cfg)
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
    from .runtime import exit_with_parent, tune_cpu_allocator

    exit_with_parent()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(threads)
    tune_cpu_allocator()
    train(TrainConfig.from_dict(config))


def train_cpu_processes(config: TrainConfig, processes: int, threads_per_process: int | None = None
                        ) -> dict[str, Any]:
    """Data-parallel training on this machine's CPU cores without torchrun: ``processes`` gloo ranks
    of ``threads_per_process`` threads each (default: the available cores shared between them),
    started here and joined; returns ``summary.json``. A rank that stops on a non-finite loss raises
    :class:`NonFiniteLossError` here, as :func:`train` does; other failures of a rank raise
    ``torch.multiprocessing.ProcessRaisedException`` with its traceback.

    Why: with the small tensors of CPU training, one process spends much of its time synchronising
    its threads; single-threaded ranks each do their own stream of work. Measured on the 2-core
    development machine (nano preset at 128 px, global batch 8, `rs2sam2 demo`): 28 samples/s with
    2 ranks x 1 thread against 24 samples/s in one 2-thread process. ``config.batch_size`` is per
    process, as under torchrun, and the result equals one process with ``processes x batch_size``
    (per-sample loss).
    """
    from .runtime import available_cores

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


# =====================================================================================================
# command line
# =====================================================================================================

# CLI flag -> TrainConfig field (only flags given on the command line override the YAML / saved config)
_CLI_FIELDS = {
    "preset": "preset", "dataset": "dataset", "data": "data", "out": "out", "epochs": "epochs",
    "max_steps": "max_steps", "batch_size": "batch_size", "tokenizer": "tokenizer", "init": "init",
    "sam2_checkpoint": "sam2_checkpoint", "beit3_checkpoint": "beit3_checkpoint", "device": "device",
    "num_workers": "num_workers", "seed": "seed", "lr": "lr", "lr_fusion": "lr_fusion",
    "grad_accum_steps": "grad_accum_steps", "clip_grad_norm": "clip_grad_norm", "precision": "precision",
    "freeze": "freeze", "boundary_loss": "boundary_loss", "eval_every": "eval_every_epochs",
    "val_limit": "val_limit", "log_every": "log_every_steps", "save_every": "save_every_steps",
    "eval_batch_size": "eval_batch_size", "random_boxes": "random_boxes", "train_split": "train_split",
    "val_split": "val_split",
}
_CLI_FLAGS = {"train_tokenizer": "train_tokenizer", "fsdp": "fsdp", "grad_checkpointing": "grad_checkpointing",
              "eval_at_start": "eval_at_start"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", help="model preset: paper | base | tiny-parity | nano")
    parser.add_argument("--dataset", choices=("rrsisd", "refsegrs", "jsonl"))
    parser.add_argument("--data", help="dataset root (jsonl: the .jsonl file or its folder)")
    parser.add_argument("--out", help="run folder (checkpoints, logs, summary.json)")
    parser.add_argument("--config", help="YAML training config (configs/rrsisd.yaml, ...); flags override it")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs (passes over the refs); default 40 RRSIS-D, 60 RefSegRS")
    length.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, help="samples per process per micro-batch (published: 1 x 8 GPUs)")
    parser.add_argument("--resume", action="store_true", help="continue RUN from checkpoints/last (exactly)")
    parser.add_argument("--tokenizer", help="SentencePiece model (beit3.spm for the paper models)")
    parser.add_argument("--train-tokenizer", action="store_true", default=None,
                        help="train a SentencePiece model on the training expressions (saved in RUN); the model's "
                             "vocab_size is set to its size")
    parser.add_argument("--init", help="start from a full RS2-SAM2 checkpoint (ours, a run folder, or released)")
    parser.add_argument("--sam2-checkpoint", help="official SAM2 weights, e.g. sam2_hiera_large.pt (published init)")
    parser.add_argument("--beit3-checkpoint", help="official BEiT-3 weights, e.g. beit3_large_patch16_224.pth")
    parser.add_argument("--device", help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers per process")
    parser.add_argument("--fsdp", action="store_true", default=None,
                        help="shard gradients and optimizer state over the ranks (FSDP2, ZeRO-2 equivalent)")
    parser.add_argument("--grad-checkpointing", action="store_true", default=None,
                        help="activation checkpointing of every Hiera block and BEiT-3 layer")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--lr", type=float, help="learning rate of the non-fusion parameters (5e-5)")
    parser.add_argument("--lr-fusion", type=float, help="learning rate of adapters / MPG / text guidance (1e-4)")
    parser.add_argument("--grad-accum-steps", type=int)
    parser.add_argument("--clip-grad-norm", type=float)
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--freeze", choices=("published", "none"))
    parser.add_argument("--boundary-loss", choices=("hard", "soft"))
    parser.add_argument("--random-boxes", action=argparse.BooleanOptionalAction, default=None,
                        help="RRSIS-D black-box augmentation (default: on for rrsisd)")
    parser.add_argument("--eval-every", type=int, help="validate every N epochs")
    parser.add_argument("--eval-at-start", action="store_true", default=None, help="validate before training")
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--val-limit", type=int, help="score only the first N val expressions")
    parser.add_argument("--train-split")
    parser.add_argument("--val-split")
    parser.add_argument("--log-every", type=int, help="log every N steps")
    parser.add_argument("--save-every", type=int, help="also save checkpoints/last every N steps")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--no-tensorboard", action="store_true")
    parser.add_argument("--cpu-processes", type=int, default=1, metavar="N",
                        help="CPU only: N data-parallel processes started here (no torchrun), the cores shared "
                             "between them; --batch-size is per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (YAML value), e.g. --set w_tbl=0 --set model.fusion.bhfm=uni")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """YAML (``--config``, or the run's saved ``train_config.yaml`` with ``--resume``) <- flags given."""
    import yaml

    base: dict[str, Any] = {}
    saved = Path(args.out) / "train_config.yaml" if args.out else None
    if args.resume and saved is not None and saved.is_file():
        base = read_yaml(saved)
    elif args.config:
        base = read_yaml(args.config)
    for flag, key in {**_CLI_FIELDS, **_CLI_FLAGS}.items():
        value = getattr(args, flag, None)
        if value is not None:
            base[key] = value
    if getattr(args, "epochs", None) is not None:
        base["max_steps"] = None
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        parts = key.strip().split(".")
        target = base
        for p in parts[:-1]:
            target = target.setdefault(p, {})
        target[parts[-1]] = value
    if args.no_progress:
        base["progress"] = False
    if args.no_tensorboard:
        base["tensorboard"] = False
    base["resume"] = bool(args.resume)
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        missing = [f"--{k}" for k in ("preset", "dataset", "data", "out") if not getattr(cfg, k, None)]
        if missing:
            raise ValueError(f"missing {', '.join(missing)} (give them as flags or in --config)")
        summary = train_cpu_processes(cfg, args.cpu_processes) if args.cpu_processes > 1 else train(cfg)
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.multiprocessing.ProcessRaisedException as exc:  # a --cpu-processes rank failed
        print(f"error in a training process: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary.get("best") or {}
        line = f"done: {summary['global_step']} steps, world size {summary['world_size']}"
        if best.get("metrics"):
            line += f"; best val mIoU {best['metrics'].get('mIoU'):.2f} oIoU {best['metrics'].get('oIoU'):.2f} " \
                    f"(step {best['step']})"
        print(line)
        print(f"summary: {Path(cfg.out) / 'summary.json'}")
    return 0
