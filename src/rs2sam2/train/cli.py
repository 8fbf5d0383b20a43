"""``rs2sam2 train``: every :class:`TrainConfig` key is a flag whose ``dest`` is the key itself.

The configuration is ``--config``, overridden by the flags given, then by ``--set KEY=VALUE``;
with ``--resume`` all of it applies on top of the run's saved ``train_config.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from ..cliargs import number
from ..data import DATASETS
from ..errors import ConfigError
from .config import RANGES, TrainConfig, merge_dicts, read_yaml
from .launch import USER_ERRORS, train, train_cpu_processes
from .trainer import NonFiniteLossError

_BOOL = dict(action=argparse.BooleanOptionalAction, default=None)


def _in_range(key: str):
    """The argparse type of a numeric key: its :data:`~.config.RANGES` entry, checked as it is parsed."""
    return number(**RANGES[key])


def _yaml_mapping(text: str) -> dict[str, Any]:
    value = yaml.safe_load(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a YAML mapping such as '{{fusion: {{bhfm: uni}}}}', got {text!r}")
    return value


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", dest="preset", help="model preset: paper | base | tiny-parity | nano")
    p.add_argument("--dataset", dest="dataset", choices=tuple(DATASETS))
    p.add_argument("--data", dest="data", help="dataset root (jsonl: the .jsonl file or its folder)")
    p.add_argument("--out", dest="out", help="run folder (checkpoints, logs, summary.json)")
    p.add_argument("--train-split", dest="train_split")
    p.add_argument("--val-split", dest="val_split")
    p.add_argument("--model", dest="model", type=_yaml_mapping, metavar="YAML",
                   help="model config overrides, e.g. '{fusion: {bhfm: uni}}' (or --set model.fusion.bhfm=uni)")
    p.add_argument("--init", dest="init",
                   help="start from a full RS2-SAM2 checkpoint (ours, a run folder, or released)")
    p.add_argument("--sam2-checkpoint", dest="sam2_checkpoint",
                   help="official SAM2 weights, e.g. sam2_hiera_large.pt (published init)")
    p.add_argument("--beit3-checkpoint", dest="beit3_checkpoint",
                   help="official BEiT-3 weights, e.g. beit3_large_patch16_224.pth")
    p.add_argument("--tokenizer", dest="tokenizer", help="SentencePiece model (beit3.spm for the paper models)")
    p.add_argument("--train-tokenizer", dest="train_tokenizer", **_BOOL,
                   help="train a SentencePiece model on the training expressions (saved in RUN); the model's "
                        "vocab_size is set to its size")
    p.add_argument("--tokenizer-vocab-size", dest="tokenizer_vocab_size", type=_in_range("tokenizer_vocab_size"))
    p.add_argument("--max-text-len", dest="max_text_len", type=_in_range("max_text_len"),
                   help="tokens per sentence incl. BOS/EOS (default: the model's limit)")
    p.add_argument("--mask-rule", dest="mask_rule", choices=("published", "clean"))


def _add_optimisation_arguments(p: argparse.ArgumentParser) -> None:
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", dest="epochs", type=_in_range("epochs"),
                        help="epochs (passes over the refs); default 40 RRSIS-D, 60 RefSegRS")
    length.add_argument("--max-steps", dest="max_steps", type=_in_range("max_steps"), help="stop after this many optimizer steps")
    p.add_argument("--batch-size", dest="batch_size", type=_in_range("batch_size"),
                   help="samples per process per micro-batch (published: 1 x 8 GPUs)")
    p.add_argument("--grad-accum-steps", dest="grad_accum_steps", type=_in_range("grad_accum_steps"))
    p.add_argument("--lr", dest="lr", type=_in_range("lr"), help="learning rate of the non-fusion parameters (5e-5)")
    p.add_argument("--lr-fusion", dest="lr_fusion", type=_in_range("lr_fusion"),
                   help="learning rate of adapters / MPG / text guidance (1e-4)")
    p.add_argument("--weight-decay", dest="weight_decay", type=_in_range("weight_decay"))
    p.add_argument("--betas", dest="betas", type=_in_range("betas"), nargs=2, metavar=("BETA1", "BETA2"))
    p.add_argument("--adam-eps", dest="adam_eps", type=_in_range("adam_eps"))
    p.add_argument("--lr-milestones", dest="lr_milestones", type=_in_range("lr_milestones"), nargs="*", metavar="EPOCH",
                   help="epochs from which the learning rates are multiplied by --lr-gamma once more")
    p.add_argument("--lr-gamma", dest="lr_gamma", type=_in_range("lr_gamma"))
    p.add_argument("--clip-grad-norm", dest="clip_grad_norm", type=_in_range("clip_grad_norm"))
    p.add_argument("--freeze", dest="freeze", choices=("published", "none"))
    p.add_argument("--w-ce", dest="w_ce", type=_in_range("w_ce"), help="weight of the cross-entropy term (0.9)")
    p.add_argument("--w-dice", dest="w_dice", type=_in_range("w_dice"), help="weight of the Dice term (0.1)")
    p.add_argument("--w-tbl", dest="w_tbl", type=_in_range("w_tbl"), help="weight of the text-guided boundary term (0.2)")
    p.add_argument("--boundary-loss", dest="boundary_loss", choices=("hard", "soft"))
    p.add_argument("--w-grounding", dest="w_grounding", type=_in_range("w_grounding"),
                   help="weight of the MPG grounding loss (0: published; see rs2sam2.losses.grounding_loss)")
    p.add_argument("--grounding-warmup-steps", dest="grounding_warmup_steps", type=_in_range("grounding_warmup_steps"),
                   help="steps that train the union encoder and the MPG alone before the whole model (0)")
    p.add_argument("--grounding-warmup-lr", dest="grounding_warmup_lr", type=_in_range("grounding_warmup_lr"), help="their learning rate (5e-4)")
    p.add_argument("--grounding-warmup-batch-size", dest="grounding_warmup_batch_size", type=_in_range("grounding_warmup_batch_size"),
                   help="their batch per process (8)")
    p.add_argument("--random-boxes", dest="random_boxes", **_BOOL,
                   help="RRSIS-D black-box augmentation (default: on for rrsisd)")
    p.add_argument("--box-prob", dest="box_prob", type=_in_range("box_prob"), help="share of samples given black boxes (0.2)")
    p.add_argument("--negatives", dest="negatives", type=_in_range("negatives"), metavar="P",
                   help="share of absent-object samples (another image's sentence, an empty target) that train the "
                        "object-presence score (0: published recipe)")
    p.add_argument("--w-presence", dest="w_presence", type=_in_range("w_presence"),
                   help="weight of the presence loss when --negatives > 0 (1.0)")
    p.add_argument("--num-workers", dest="num_workers", type=_in_range("num_workers"), help="DataLoader workers per process")
    p.add_argument("--image-cache-mb", dest="image_cache_mb", type=_in_range("image_cache_mb"),
                   help="decoded training images kept in memory per process and loader worker, in MB (0)")


def _add_evaluation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--eval-every", "--eval-every-epochs", dest="eval_every_epochs", type=_in_range("eval_every_epochs"),
                   help="validate every N epochs")
    p.add_argument("--eval-at-start", dest="eval_at_start", **_BOOL, help="validate before training")
    p.add_argument("--eval-at-end", dest="eval_at_end", **_BOOL, help="validate after the last step (on)")
    p.add_argument("--eval-batch-size", dest="eval_batch_size", type=_in_range("eval_batch_size"))
    p.add_argument("--val-limit", dest="val_limit", type=_in_range("val_limit"), help="score only the first N val expressions")
    p.add_argument("--eval-threshold", dest="eval_threshold", type=_in_range("eval_threshold"))
    p.add_argument("--best-metric", dest="best_metric", choices=("mIoU+oIoU", "mIoU", "oIoU"))


def _add_system_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", dest="seed", type=_in_range("seed"))
    p.add_argument("--device", dest="device", help="auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)")
    p.add_argument("--precision", dest="precision", choices=("auto", "bf16", "fp32"))
    p.add_argument("--fsdp", dest="fsdp", **_BOOL,
                   help="shard gradients and optimizer state over the ranks (FSDP2, ZeRO-2 equivalent)")
    p.add_argument("--grad-checkpointing", dest="grad_checkpointing", **_BOOL,
                   help="activation checkpointing of every Hiera block and BEiT-3 layer")
    p.add_argument("--find-unused-parameters", dest="find_unused_parameters", **_BOOL)
    p.add_argument("--log-every", "--log-every-steps", dest="log_every_steps", type=_in_range("log_every_steps"), help="log every N steps")
    p.add_argument("--save-every", "--save-every-steps", dest="save_every_steps", type=_in_range("save_every_steps"),
                   help="also save checkpoints/last every N steps")
    p.add_argument("--tensorboard", dest="tensorboard", **_BOOL, help="TensorBoard events in RUN/tb (on)")
    p.add_argument("--progress", dest="progress", **_BOOL, help="tqdm bars (on)")
    p.add_argument("--resume", dest="resume", action="store_true", help="continue RUN from checkpoints/last (exactly)")
    p.add_argument("--overwrite", dest="overwrite", action="store_true",
                   help="start a new run in the folder of an earlier run, removing that run's files (and only those)")
    p.add_argument("--debug-nonfinite-at-step", dest="debug_nonfinite_at_step", type=_in_range("debug_nonfinite_at_step"),
                   help="testing hook: make the loss of this optimizer step NaN")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 train``: ``--config``, one flag per :class:`TrainConfig` field, ``--set``."""
    parser.add_argument("--config", help="YAML training config (configs/rrsisd.yaml, ...); flags override it")
    _add_run_arguments(parser)
    _add_optimisation_arguments(parser)
    _add_evaluation_arguments(parser)
    _add_system_arguments(parser)
    parser.add_argument("--cpu-processes", type=number(int, low=1, high=256), default=1, metavar="N",
                        help="CPU only: N data-parallel processes started here (no torchrun), the cores shared "
                             "between them; --batch-size is per process")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (YAML value), e.g. --set w_tbl=0 --set model.fusion.bhfm=uni")


def _apply_set(config: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    target = config
    for p in parts[:-1]:
        target = target.setdefault(p, {})
    target[parts[-1]] = yaml.safe_load(raw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """``--config`` <- flags given <- ``--set`` items; with ``--resume``, on top of the run's saved
    ``train_config.yaml`` (model overrides merged into the run's), so that the run's values stay
    unless the command line names others -- which the trainer then checks (``resume_clashes``)."""
    given: dict[str, Any] = read_yaml(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            given[f.name] = value
    if args.epochs is not None:
        given["max_steps"] = None
    saved = Path(args.out) / "train_config.yaml" if args.out else None
    base = read_yaml(saved) if args.resume and saved is not None and saved.is_file() else {}
    for key, value in given.items():
        both_mappings = isinstance(value, dict) and isinstance(base.get(key), dict)
        base[key] = merge_dicts(base[key], value) if both_mappings else value
    for item in args.set:
        _apply_set(base, item)
    return TrainConfig.from_dict(base)


def run(args: argparse.Namespace) -> int:
    """Exit status 0 done, 2 a user error (:data:`~.launch.USER_ERRORS`: its message, no traceback),
    3 stopped on a non-finite loss; printed by rank 0 only."""
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        cfg = config_from_args(args)
        missing = [f"--{k}" for k in ("preset", "dataset", "data", "out") if not getattr(cfg, k, None)]
        if missing:
            raise ConfigError(f"missing {', '.join(missing)} (give them as flags or in --config)")
        summary = train_cpu_processes(cfg, args.cpu_processes) if args.cpu_processes > 1 else train(cfg)
    except (NonFiniteLossError, *USER_ERRORS) as exc:
        if main_rank:
            print(f"rs2sam2 train: error: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, NonFiniteLossError) else 2
    if main_rank:
        _print_result(summary, Path(cfg.out))
    return 0


def _print_result(summary: dict[str, Any], out: Path) -> None:
    best = summary.get("best") or {}
    line = f"done: {summary['global_step']} steps, world size {summary['world_size']}"
    if best.get("metrics"):
        line += f"; best val mIoU {best['metrics'].get('mIoU'):.2f} oIoU {best['metrics'].get('oIoU'):.2f} " \
                f"(step {best['step']})"
    print(line)
    print(f"summary: {out / 'summary.json'}")
