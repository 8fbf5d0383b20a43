"""The training loop of one process (one rank under torchrun): setup, steps, validation, checkpoints, logs.

Rank 0 logs and writes; every rank runs the same number of steps. A non-finite loss or gradient
norm stops the run before the step is applied (:class:`NonFiniteLossError`), keeping the last
good checkpoint. A problem found during the run -- a sample that cannot be loaded, a checkpoint that
cannot be written (a full disk) -- stops every rank alike and is recorded in ``summary.json``
(``status: failed``, the message); what setup finds wrong (the data, a clash with the run being
resumed, an unreadable checkpoint) stops the run before anything is written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from ..checkpoints import CardInfo, Located, load_beit3_checkpoint, load_pretrained, load_sam2_checkpoint, locate
from ..data import DatasetError, build_dataset
from ..data.checks import blocking_problems
from ..data.collate import check_vocabulary, collate, move_batch
from ..errors import ConfigError, OutputError
from ..evaluate import evaluate_model
from ..fsutil import atomic_write_bytes
from ..losses import LossOutput, grounding_loss, presence_loss
from ..models import RS2SAM2
from ..models.beit3 import Beit3Layer
from ..models.hiera import HieraBlock
from ..progress import progress_bar
from ..runtime import Dist, autocast, autocast_enabled, init_distributed
from ..signals import Stopped
from ..text import load_tokenizer, train_tokenizer
from .config import TrainConfig, merge_dicts, model_config_from, read_yaml, resume_clashes, write_yaml
from .grounding import grounding_warmup
from .policy import apply_freeze, build_loss, build_optimizer, build_scheduler, per_sample_loss
from .runfolder import check_run_folder
from .sampling import train_loader
from .state import (
    CheckpointWriteError,
    Progress,
    find_last_checkpoint,
    gather_model_state,
    gather_optimizer_state,
    load_optimizer_state,
    load_trainer_state,
    seed_everything,
    set_rng_state,
    write_checkpoint,
)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""


TRAIN_FIELDS = ("step", "epoch", "loss", "ce", "dice", "boundary", "grounding", "lr_fusion", "lr_base", "grad_norm",
                "samples_per_s", "seconds")
VAL_FIELDS = ("step", "epoch", "Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU", "num_expressions",
              "orig_oIoU", "orig_mIoU", "seconds")


def _log(msg: str, dist: Dist) -> None:
    if dist.is_main:
        print(f"[rs2sam2 train] {msg}", file=sys.stderr, flush=True)


# --- logs -----------------------------------------------------------------------------------------


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


class _RunLog:
    """``logs/train.csv``, ``logs/val.csv`` and TensorBoard (``tb/``), written on rank 0 only."""

    def __init__(self, run: Path, step: int, tensorboard: bool, dist: Dist) -> None:
        self.main, self.tb = dist.is_main, None
        if not self.main:
            return
        self.train_csv = _CsvLog(run / "logs" / "train.csv", TRAIN_FIELDS)
        self.val_csv = _CsvLog(run / "logs" / "val.csv", VAL_FIELDS)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 - optional, slow to import

                self.tb = SummaryWriter(str(run / "tb"), purge_step=step or None)
            except Exception as exc:  # noqa: BLE001 - TensorBoard is a convenience, not a requirement
                _log(f"TensorBoard disabled ({exc})", dist)

    def train(self, row: dict[str, Any], step: int, with_grad_norm: bool) -> None:
        if not self.main:
            return
        self.train_csv.write(row)
        if self.tb is not None:
            for k in _Window.KEYS:
                self.tb.add_scalar(f"train/{k}", row[k], step)
            for k in ("lr_fusion", "lr_base"):
                if row[k] is not None:
                    self.tb.add_scalar(f"lr/{k[3:]}", row[k], step)
            self.tb.add_scalar("perf/samples_per_s", row["samples_per_s"], step)
            if with_grad_norm:
                self.tb.add_scalar("train/grad_norm", row["grad_norm"], step)

    def val(self, entry: dict[str, Any], report: dict[str, Any], step: int) -> None:
        if not self.main:
            return
        self.val_csv.write(entry)
        if self.tb is not None:
            for k in ("mIoU", "oIoU", "Pr@0.5", "Pr@0.7", "Pr@0.9"):
                self.tb.add_scalar(f"val/{k}", report[k], step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class _Window:
    """Loss terms and samples summed since the last log line."""

    KEYS = ("loss", "ce", "dice", "boundary", "grounding")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sums = dict.fromkeys(self.KEYS, 0.0)
        self.n, self.samples, self.t0 = 0, 0, time.perf_counter()

    def add(self, losses: list[tuple[float, dict[str, float], int]]) -> None:
        for _, terms, n in losses:
            for key in self.KEYS[1:]:
                self.sums[key] += terms[key]
            self.sums["loss"] += terms["total"]
            self.n += 1
            self.samples += n

    def means(self) -> list[float]:
        return [self.sums[k] / max(1, self.n) for k in self.KEYS]


# --- model, tokenizer ------------------------------------------------------------------------------


def _score(metrics: dict[str, Any], best_metric: str) -> float:
    if best_metric == "mIoU":
        return float(metrics["mIoU"])
    if best_metric == "oIoU":
        return float(metrics["oIoU"])
    return float(metrics["mIoU"]) + float(metrics["oIoU"])


def _resolve_tokenizer(cfg: TrainConfig, run: Path, init: Located | None, train_ds, dist: Dist):
    """Tokenizer path by priority: the run's own copy (resume), --tokenizer, the init checkpoint's,
    a newly trained one (--train-tokenizer). Returns (Tokenizer, path, trained: bool)."""
    run_tok = run / "tokenizer.model"
    if cfg.resume and run_tok.is_file() and find_last_checkpoint(run) is not None:
        return load_tokenizer(run_tok), run_tok, False
    if cfg.tokenizer:
        return load_tokenizer(cfg.tokenizer), Path(cfg.tokenizer), False
    if init is not None and init.tokenizer is not None:
        return load_tokenizer(init.tokenizer), init.tokenizer, False
    if cfg.train_tokenizer:
        if dist.is_main:
            texts = [text for _, text, _ in train_ds.expressions]
            train_tokenizer(texts, run_tok, vocab_size=cfg.tokenizer_vocab_size)
        dist.barrier()
        return load_tokenizer(run_tok), run_tok, True
    raise ConfigError(
        "no tokenizer: pass --tokenizer PATH (BEiT-3's beit3.spm for the paper models), start from a checkpoint "
        "that has one (--init), or build one from the training sentences with --train-tokenizer")


def _build_model(cfg: TrainConfig, tokenizer, trained_tok: bool, resume_dir: Path | None):
    """The model to train (resumed, initialised from a checkpoint, or built from the preset with the
    official SAM2 / BEiT-3 weights) and notes on where its weights came from."""
    notes = []
    if resume_dir is None and cfg.init and cfg.model:
        notes.append("note: the 'model' overrides are ignored: the architecture comes from the checkpoint")
    if resume_dir is not None or cfg.init:
        path = resume_dir if resume_dir is not None else locate(cfg.init).path
        notes.append(f"{'resumed weights' if resume_dir is not None else 'initialised'} from {path}")
        model = load_pretrained(path)
        if model.config.name not in (cfg.preset, "custom"):  # "custom": weights that name no preset
            raise ConfigError(f"preset: {cfg.preset!r} given, but {path} holds a {model.config.name!r} model (the "
                             f"architecture comes from the checkpoint): give --preset {model.config.name}")
        return model, notes
    overrides = json.loads(json.dumps(cfg.model))
    if trained_tok:
        overrides = merge_dicts(overrides, {"beit3": {"vocab_size": len(tokenizer)}})
        cfg.model = overrides  # recorded in train_config.yaml
    model = RS2SAM2(model_config_from(cfg.preset, overrides))
    if cfg.sam2_checkpoint:
        notes.append(load_sam2_checkpoint(model, cfg.sam2_checkpoint).summary())
    if cfg.beit3_checkpoint:
        notes.append(load_beit3_checkpoint(model, cfg.beit3_checkpoint).summary())
    if not (cfg.sam2_checkpoint or cfg.beit3_checkpoint):
        notes.append(f"preset {cfg.preset!r} randomly initialised (seed {cfg.seed})")
    return model, notes


def _wrap_fsdp(model: nn.Module, dist: Dist) -> nn.Module:
    """Shard gradients and optimizer state per BEiT-3 layer and Hiera block (FSDP2; parameters stay
    gathered from forward to backward, as in the published DeepSpeed ZeRO-2)."""
    mesh = init_device_mesh(dist.device.type, (dist.world_size,))
    for m in model.modules():
        if isinstance(m, (HieraBlock, Beit3Layer)):
            fully_shard(m, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


# --- the trainer -----------------------------------------------------------------------------------


class Trainer:
    """One process of a training run. ``setup()``, then ``train()``, then ``close()``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.run = Path(cfg.out)
        self.summary: dict[str, Any] = {}
        self.grounding_warmup: dict[str, Any] | None = None  # what the warm-up did, when this process ran it
        self.log: _RunLog | None = None
        self.run_id: str | None = None  # on the main rank: the id in the run folder's marker
        self.module: torch.nn.Module | None = None  # the model as trained: wrapped by DDP / FSDP on several ranks

    # ------------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        seed_everything(cfg.seed)
        self.resume_dir = self._check_run_folder()
        self._load_data()
        self._check_data()
        self._claim_run_folder()
        self._prepare_tokenizer()
        self._prepare_model()
        self.optimizer = build_optimizer(self.core, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.loss_fn = build_loss(cfg)
        self.use_bf16 = autocast_enabled(dist.device, cfg.precision)
        if cfg.precision == "bf16" and dist.device.type != "cuda":
            _log("bf16 autocast is used on CUDA only; training in fp32 on the CPU", dist)
        self.sampler, self.loader = train_loader(self.train_ds, cfg, self.model_config, dist.rank, dist.world_size,
                                                 pin_memory=dist.device.type == "cuda")
        self.micro_per_epoch = math.ceil(self.sampler.per_epoch / cfg.batch_size)
        self.steps_per_epoch = math.ceil(self.micro_per_epoch / cfg.grad_accum_steps)
        self.progress = Progress()
        self.saved: dict[str, int] = {}  # checkpoints of this run on disk -> their step
        if self.resume_dir is not None:
            self._restore(self.resume_dir)
        if dist.is_main:
            write_yaml(self.run / "train_config.yaml", {**cfg.to_dict(), "resume": False, "overwrite": False})
        self.log = _RunLog(self.run, self.progress.global_step, cfg.tensorboard, dist)
        absent = self.train_ds.num_refs - len(self.train_ds.object_refs)
        _log(f"{self.train_ds.num_refs - absent} train refs ({len(self.train_ds.object_expressions)} expressions"
             f"{f'; {absent} absent sentences, drawn by --negatives' if absent else ''}), "
             f"{len(self.val_ds.object_expressions) if self.val_ds is not None else 0} val expressions; "
             f"world size {dist.world_size}, "
             f"batch {cfg.batch_size}/process x {cfg.grad_accum_steps} accumulation; {self.steps_per_epoch} "
             f"steps/epoch; device {dist.device}{' bf16' if self.use_bf16 else ''}"
             f"{' FSDP' if self.fsdp else ' DDP' if dist.enabled else ''}", dist)

    def _check_run_folder(self) -> Path | None:
        """Check the run folder on the main rank (:func:`~.runfolder.check_run_folder`: only this run
        writes there), writing nothing yet; returns the checkpoint to resume from (None: a new run)."""
        cfg, dist = self.cfg, self.dist
        self.run_folder = self._on_main(lambda: check_run_folder(self.run, resume=cfg.resume, overwrite=cfg.overwrite))
        resume_dir = find_last_checkpoint(self.run) if cfg.resume else None
        if cfg.resume and resume_dir is None:
            _log(f"--resume: no checkpoint in {self.run / 'checkpoints'}; starting a new run", dist)
        if resume_dir is not None:
            self._check_resume(resume_dir)
        return resume_dir

    def _claim_run_folder(self) -> None:
        """Once setup found nothing wrong: the earlier run's files go (``--overwrite``) and the marker
        of this run is written, before anything else of it."""
        claimed = self._on_main(lambda: self.run_folder.claim())
        self.run_id = claimed.run_id if claimed is not None else None

    def _on_main(self, action):
        """``action()`` on the main rank (None elsewhere); an OutputError it raises stops every rank."""
        result, problem = None, None
        if self.dist.is_main:
            try:
                result = action()
            except OutputError as exc:
                problem = str(exc)
        problem = self.dist.first_message(problem)
        if problem is not None:
            raise OutputError(problem)
        return result

    def _check_resume(self, folder: Path) -> None:
        """Read the trainer state of ``folder`` and refuse a command line that differs from the run
        in what a resumed run keeps (:data:`~.config.RESUME_KEYS`, and the samples per step, on which
        the position in the epoch depends); every clash names both values."""
        cfg, dist = self.cfg, self.dist
        self.resume_state = state = load_trainer_state(folder)
        saved_config = self.run / "train_config.yaml"
        clashes = resume_clashes(read_yaml(saved_config), cfg) if saved_config.is_file() else []
        run_batch = (int(state["world_size"]), int(state["batch_size"]), int(state["grad_accum_steps"]))
        batch = (dist.world_size, cfg.batch_size, cfg.grad_accum_steps)
        if run_batch[0] * run_batch[1] != batch[0] * batch[1] or run_batch[2] != batch[2]:
            clashes.append("samples per step: {} process(es) x batch {} x {} accumulation in the run, {} x {} x {} "
                           "now".format(*run_batch, *batch))
        if clashes:
            raise ConfigError(
                f"--resume {self.run}: the command line differs from the run ({saved_config}, {folder}) in what a "
                f"resumed run keeps: {'; '.join(clashes)}. Leave those settings out to continue the run, or start a "
                f"new run from its weights with --init {folder} --out NEW_RUN")

    def _load_data(self) -> None:
        cfg = self.cfg

        def split(name: str | None) -> str | None:  # jsonl: "all" = every line, whatever its split
            return None if cfg.dataset == "jsonl" and str(name).lower() in ("all", "none") else name

        self.train_ds = build_dataset(cfg.dataset, cfg.data, split(cfg.train_split))
        self.train_ds.cache_images(cfg.image_cache_mb << 20)
        self.val_ds = None
        if cfg.val_split:
            try:
                self.val_ds = build_dataset(cfg.dataset, cfg.data, split(cfg.val_split))
            except ValueError as exc:  # DatasetError is a ValueError
                _log(f"no validation ({exc}); the best checkpoint is not tracked", self.dist)

    def _check_data(self) -> None:
        """Before step 1: the checks of ``rs2sam2 check-data`` that need no decoding (every image and
        mask present and readable, image sizes from the headers against the annotations), on the
        training and validation splits; a problem that would stop a sample from loading stops here."""
        cfg, problem = self.cfg, None
        if self.dist.is_main:
            found = [m for ds in (self.train_ds, self.val_ds) if ds is not None for m in blocking_problems(ds)]
            if found:
                more = f"; ... and {len(found) - 3} more" if len(found) > 3 else ""
                problem = (f"{len(found)} dataset problem(s) that stop samples from loading: {'; '.join(found[:3])}"
                           f"{more}. `rs2sam2 check-data --dataset {cfg.dataset} --data {cfg.data}` lists them all")
        problem = self.dist.first_message(problem)
        if problem is not None:
            raise DatasetError(problem)

    def _prepare_tokenizer(self) -> None:
        """Find (or train) the tokenizer and keep a copy in the run folder."""
        cfg, dist = self.cfg, self.dist
        init = locate(cfg.init) if cfg.init and self.resume_dir is None else None
        self.tokenizer, path, self.trained_tokenizer = _resolve_tokenizer(cfg, self.run, init, self.train_ds, dist)
        self.tokenizer_path = self.run / "tokenizer.model"
        if dist.is_main and path.resolve() != self.tokenizer_path.resolve():
            atomic_write_bytes(self.tokenizer_path, path.read_bytes())

    def _prepare_model(self) -> None:
        """Build the model, apply the freeze policy, move it to the device and wrap it (DDP / FSDP)."""
        cfg, dist = self.cfg, self.dist
        model, notes = _build_model(cfg, self.tokenizer, self.trained_tokenizer, self.resume_dir)
        for n in notes:
            _log(n, dist)
        self.model_config = mc = model.config
        check_vocabulary(self.tokenizer, mc.beit3.vocab_size)
        self.max_len = mc.beit3.text_len(cfg.max_text_len)
        if (cfg.w_grounding or cfg.grounding_warmup_steps) and model.mpg is None:
            raise ConfigError("w_grounding and grounding_warmup_steps train the Mask Prompt Generator, which this "
                              "model has not (model.fusion.mpg is false)")
        if cfg.negatives > 0:  # the object score is trained: inference may trust it (config.json says so)
            model.config.presence_head = True
        self.param_counts = counts = apply_freeze(model, cfg.freeze, presence=cfg.negatives > 0)
        _log(f"parameters: {counts['total']['trainable']:,} trainable of {counts['total']['total']:,} "
             f"(freeze={cfg.freeze})", dist)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing()
        self.core = model.to(dist.device)
        self.fsdp = bool(cfg.fsdp and dist.enabled)
        if cfg.fsdp and not dist.enabled:
            _log("--fsdp with a single process: nothing to shard, running unsharded", dist)
        if self.fsdp:
            self.module = _wrap_fsdp(model, dist)
        elif dist.enabled:
            self.module = DDP(model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                              find_unused_parameters=cfg.find_unused_parameters, gradient_as_bucket_view=True)
        else:
            self.module = model
        self.names = {p: n for n, p in model.named_parameters()}
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def _restore(self, folder: Path) -> None:
        cfg, dist, state = self.cfg, self.dist, self.resume_state
        load_optimizer_state(self.module, self.optimizer, state["optimizer"], self.names, self.fsdp)
        self.scheduler.load_state_dict(state["scheduler"])
        p = self.progress
        p.restore(state, dist.world_size, cfg.batch_size, self.micro_per_epoch)
        set_rng_state(state["rng"])
        self.saved["last"] = p.global_step
        if p.best["step"] is not None and (self.run / "checkpoints" / "best" / "model.safetensors").is_file():
            self.saved["best"] = p.best["step"]
        _log(f"resumed at step {p.global_step}, epoch {p.epoch} (+{p.micro_done} batches)", dist)

    # ------------------------------------------------------------------------------ checkpoints
    def _elapsed(self) -> float:
        return self.progress.elapsed_before + (time.perf_counter() - self.t_start)

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>`` (``last``: full trainer state; ``best``: without the optimizer).
        A failed write (:class:`CheckpointWriteError`) stops every rank, the checkpoints on disk unchanged."""
        cfg, dist, p = self.cfg, self.dist, self.progress
        full = name == "last"
        if full and self.saved.get("last") == p.global_step:
            return  # already written at this step
        sd = gather_model_state(self.module, self.core, self.fsdp, dist.is_main)
        osd = gather_optimizer_state(self.module, self.optimizer, self.names, self.fsdp, dist.is_main) if full else None
        problem = None
        if dist.is_main:
            state = p.state(world_size=dist.world_size, batch_size=cfg.batch_size, grad_accum_steps=cfg.grad_accum_steps,
                            elapsed_s=self._elapsed(), scheduler=self.scheduler.state_dict(), optimizer=osd)
            try:
                write_checkpoint(self.run / "checkpoints", name, sd, self.model_config, self.tokenizer_path, state,
                                 card=self._card())
            except CheckpointWriteError as exc:
                problem = f"{exc}. {self._on_disk()}. Free some space, then {self._next_run()}"
        problem = dist.first_message(problem)  # also the barrier after the write
        if problem is not None:
            raise CheckpointWriteError(problem)
        self.saved[name] = p.global_step

    def _card(self) -> CardInfo:
        """What the model card of a saved checkpoint says about its training: the dataset, the best
        validation metrics so far, and the parameters the freeze left trainable."""
        best = self.progress.best
        source = (f"{self.cfg.val_split} split, best at step {best['step']}" if best.get("step") is not None
                  else None)
        return CardInfo(dataset=self.cfg.dataset, metrics=best.get("metrics"), metrics_source=source,
                        parameters=self.param_counts)

    def _on_disk(self) -> str:
        """The checkpoints of this run on disk, for the messages of a run that stops."""
        if not self.saved:
            return f"No checkpoint of this run is on disk ({self.run / 'checkpoints'} holds none)"
        return "Checkpoints on disk, unchanged: " + ", ".join(
            f"{self.run / 'checkpoints' / name} (step {self.saved[name]})" for name in ("last", "best")
            if name in self.saved)

    def _next_run(self) -> str:
        """How to go on after a stop: resume from checkpoints/last, or start again without one."""
        return "--resume" if "last" in self.saved else "start the run again"

    # ------------------------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, Any] | None:
        """Validate, log, and keep ``checkpoints/best`` when the score improved."""
        if self.val_ds is None:
            return None
        cfg, p = self.cfg, self.progress
        report = evaluate_model(
            self.module if self.fsdp else self.core, self.val_ds, self.tokenizer, threshold=cfg.eval_threshold,
            batch_size=cfg.eval_batch_size, device=self.dist.device, max_len=self.max_len, mask_rule=cfg.mask_rule,
            limit=cfg.val_limit, precision="bf16" if self.use_bf16 else "fp32",
            progress=cfg.progress and self.dist.is_main,
        )
        entry = {"step": p.global_step, "epoch": p.epoch,
                 **{k: v for k, v in report.items() if isinstance(v, (int, float))}}
        orig = report.get("original_resolution") or {}
        entry["orig_mIoU"], entry["orig_oIoU"] = orig.get("mIoU"), orig.get("oIoU")
        p.val_history.append(entry)
        score = _score(report, cfg.best_metric)
        improved = p.best["score"] is None or score > p.best["score"]
        _log(f"val @ step {p.global_step} (epoch {p.epoch}): mIoU {report['mIoU']:.2f} oIoU {report['oIoU']:.2f} "
             f"Pr@0.5 {report['Pr@0.5']:.2f} (n={report['num_expressions']}){'  * best' if improved else ''}", self.dist)
        self.log.val(entry, report, p.global_step)
        if improved:
            p.best = {"score": score, "metric": cfg.best_metric, "step": p.global_step, "epoch": p.epoch,
                      "metrics": {k: v for k, v in entry.items() if k not in ("step", "epoch")}}
            self.save("best")
        return report

    # ---------------------------------------------------------------------------------- summary
    def write_summary(self, status: str, message: str | None = None) -> dict[str, Any]:
        cfg, dist, p = self.cfg, self.dist, self.progress
        summary = {
            "status": status,
            "message": message,
            "run_id": self.run_id,
            "world_size": dist.world_size,
            "global_step": p.global_step,
            "epoch": p.epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_seen": p.global_step * cfg.batch_size * cfg.grad_accum_steps * dist.world_size,
            "best": p.best,
            "last_val": p.val_history[-1] if p.val_history else None,
            "val_history": p.val_history,
            "train_loss_first": p.loss_first,
            "train_loss_last": p.loss_last,
            "elapsed_s": round(self._elapsed(), 3),
            "device": str(dist.device),
            "precision": "bf16" if self.use_bf16 else "fp32",
            "fsdp": self.fsdp,
            "grad_checkpointing": cfg.grad_checkpointing,
            "parameters": self.param_counts,
            "grounding_warmup": self.grounding_warmup,
            "model": self.model_config.name,
            "vocab_size": self.model_config.beit3.vocab_size,
            "checkpoints": {name: str(self.run / "checkpoints" / name) if name in self.saved else None
                            for name in ("last", "best")},
            "config": cfg.to_dict(),
        }
        if dist.is_main:
            atomic_write_bytes(self.run / "summary.json", (json.dumps(summary, indent=2, default=str) + "\n").encode())
        self.summary = summary
        return summary

    def _record_stop(self, status: str, exc: Exception) -> None:
        """``summary.json`` of a run that stopped early; when even that cannot be written (a full
        disk), say so on stderr and let the original error go on."""
        try:
            self.write_summary(status, str(exc))
        except OSError as write_error:
            print(f"[rs2sam2 train] {self.run / 'summary.json'} could not be written either: {write_error}",
                  file=sys.stderr, flush=True)

    # --------------------------------------------------------------------------------- training
    def _done(self) -> bool:
        cfg, p = self.cfg, self.progress
        if cfg.max_steps is not None and p.global_step >= cfg.max_steps:
            return True
        return cfg.epochs is not None and p.epoch >= cfg.epochs

    def train(self) -> dict[str, Any]:
        """Run until ``max_steps`` / ``epochs``; returns the summary (also written to ``summary.json``)."""
        cfg, p = self.cfg, self.progress
        self.t_start = time.perf_counter()
        if cfg.eval_at_start and p.global_step == 0 and not p.val_history:
            self.evaluate()
        self.last_eval_step = p.val_history[-1]["step"] if p.val_history else None
        self.window, self.grad_norm = _Window(), float("nan")
        if cfg.grounding_warmup_steps and self.resume_dir is None:
            self.grounding_warmup = grounding_warmup(
                self.core, self.train_ds, self.tokenizer, steps=cfg.grounding_warmup_steps,
                batch_size=cfg.grounding_warmup_batch_size, lr=cfg.grounding_warmup_lr, weight_decay=cfg.weight_decay,
                seed=cfg.seed, d=self.dist, max_len=self.max_len, mask_rule=cfg.mask_rule,
                num_workers=cfg.num_workers, log=lambda msg: _log(msg, self.dist))
        try:
            while not self._done():
                self._run_epoch()
            if self.window.n:
                self._log_window()
            if cfg.eval_at_end and self.last_eval_step != p.global_step and p.global_step > 0:
                self.evaluate()
            self.save("last")
        except NonFiniteLossError as exc:
            self._record_stop("stopped_nonfinite_loss", exc)
            raise
        except (DatasetError, OSError) as exc:  # a sample that cannot be loaded, a failed write (full disk)
            self._record_stop("failed", exc)
            raise
        except Stopped as exc:  # SIGTERM or SIGINT: the checkpoints on disk are the last complete ones
            self._record_stop("stopped", exc)
            raise
        finally:
            self.log.close()
        return self.write_summary("completed")

    def _run_epoch(self) -> None:
        """The rest of the current epoch (or until the run is done)."""
        cfg, p = self.cfg, self.progress
        self.sampler.set_epoch(p.epoch, skip=p.micro_done * cfg.batch_size)
        bar = None
        if cfg.progress and self.dist.is_main:
            bar = progress_bar(total=self.steps_per_epoch, initial=p.micro_done // cfg.grad_accum_steps,
                               desc=f"epoch {p.epoch}", dynamic_ncols=True, leave=False)
        batches = iter(self.loader)
        try:
            while p.micro_done < self.micro_per_epoch and not self._done():
                loss = self._step(batches)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", step=p.global_step)
                self._after_step()
        finally:
            del batches  # its loader workers end now, also when a signal stops the run
            if bar is not None:
                bar.close()
        if p.micro_done >= self.micro_per_epoch:
            self._end_epoch()

    def _step(self, batches) -> float:
        """One optimizer step over ``grad_accum_steps`` micro-batches (fewer at the end of an epoch);
        returns its mean loss."""
        cfg, p = self.cfg, self.progress
        group = min(cfg.grad_accum_steps, self.micro_per_epoch - p.micro_done)
        step_number = p.global_step + 1
        self.optimizer.zero_grad(set_to_none=True)
        losses = [self._micro_step(self._next_samples(batches, step_number), k == group - 1, group, step_number)
                  for k in range(group)]
        self._check_finite([v for v, _, _ in losses], step_number)
        if cfg.clip_grad_norm:
            self._clip_gradients(step_number)
        self.optimizer.step()
        p.global_step += 1
        step_loss = sum(v for v, _, _ in losses) / len(losses)
        if p.loss_first is None:
            p.loss_first = self.dist.mean([step_loss])[0]
        self.window.add(losses)
        return step_loss

    def _next_samples(self, batches, step_number: int) -> list:
        """The next micro-batch; a sample that could not be loaded (on any rank) stops every rank
        with a :class:`DatasetError` naming its file."""
        samples = next(batches)
        problem = self.dist.first_message(next((s["problem"] for s in samples if "problem" in s), None))
        if problem is not None:
            raise DatasetError(f"a training sample could not be loaded at step {step_number}: {problem}")
        return samples

    def _micro_step(self, samples: list, sync: bool, group: int, step_number: int) -> tuple[float, dict, int]:
        """Forward and backward of one micro-batch; gradients are synchronised over the ranks on the
        last micro-batch of a step only."""
        dist = self.dist
        ctx = self.module.no_sync() if (dist.enabled and not self.fsdp and not sync) else nullcontext()
        if self.fsdp:
            self.module.set_requires_gradient_sync(sync)
        with ctx:
            terms = self._forward_loss(samples)
            total = terms.total
            if self.cfg.debug_nonfinite_at_step == step_number:
                total = total * float("nan")
            (total / group).backward()
        self.progress.micro_done += 1
        return float(total.detach()), terms.as_dict(), len(samples)

    def _forward_loss(self, samples: list) -> LossOutput:
        batch = move_batch(collate(samples, self.tokenizer, max_len=self.max_len, mask_rule=self.cfg.mask_rule),
                           self.dist.device, non_blocking=True)
        with autocast(self.dist.device, self.cfg.precision):
            out = self.module(images=batch["images"], images_evf=batch["images_evf"], input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"])
        terms = per_sample_loss(self.loss_fn, out.logits.float(), batch["masks"], out.boundary_weight.float())
        if self.cfg.negatives > 0:  # absent-object samples: the object score learns presence
            presence = presence_loss(out.object_score_logits, batch["masks"])
            terms = dataclasses.replace(terms, total=terms.total + self.cfg.w_presence * presence, presence=presence)
        if not self.cfg.w_grounding:
            return terms
        grounding = grounding_loss(out.prior_logits, batch["masks"])
        return dataclasses.replace(terms, total=terms.total + self.cfg.w_grounding * grounding, grounding=grounding)

    def _check_finite(self, losses: list[float], step_number: int) -> None:
        if self.dist.any(not all(math.isfinite(v) for v in losses)):
            bad = [v for v in losses if not math.isfinite(v)]
            raise NonFiniteLossError(f"non-finite loss ({bad[0] if bad else 'on another rank'}) at step {step_number} "
                                     f"{self._nonfinite_advice()}")

    def _nonfinite_advice(self) -> str:
        """What a non-finite stop leaves and what to do next, as far as the checkpoints on disk allow."""
        return (f"(epoch {self.progress.epoch}); stopped without applying it. {self._on_disk()}. Lower the learning "
                f"rate, enable --clip-grad-norm or check the data, then {self._next_run()}")

    def _clip_gradients(self, step_number: int) -> None:
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.clip_grad_norm)
        self.grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # FSDP: DTensor
        # gradients are all-reduced, so every rank computes the same norm and stops alike
        if not math.isfinite(self.grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm at step {step_number} {self._nonfinite_advice()}")

    def _after_step(self) -> None:
        cfg, p = self.cfg, self.progress
        if p.global_step % cfg.log_every_steps == 0 or self._done():
            self._log_window()
        if cfg.save_every_steps and p.global_step % cfg.save_every_steps == 0:
            self.save("last")

    def _end_epoch(self) -> None:
        p = self.progress
        p.epoch += 1
        p.micro_done = 0
        self.scheduler.step()
        if p.epoch % self.cfg.eval_every_epochs == 0:
            self.evaluate()
            self.last_eval_step = p.global_step
        self.save("last")
        self.write_summary("running")

    def _log_window(self) -> None:
        w, p = self.window, self.progress
        vals = self.dist.mean(w.means())
        p.loss_last = vals[0]
        seconds = time.perf_counter() - w.t0
        row = {
            "step": p.global_step, "epoch": p.epoch, "loss": vals[0], "ce": vals[1], "dice": vals[2],
            "boundary": vals[3], "grounding": vals[4], "lr_fusion": self._lr("fusion"), "lr_base": self._lr("base"),
            "grad_norm": self.grad_norm if self.cfg.clip_grad_norm else "",
            "samples_per_s": w.samples * self.dist.world_size / max(seconds, 1e-9), "seconds": seconds,
        }
        self.log.train(row, p.global_step, with_grad_norm=bool(self.cfg.clip_grad_norm))
        w.reset()

    def _lr(self, name: str) -> float | None:
        for g in self.optimizer.param_groups:
            if g.get("name") == name:
                return float(g["lr"])
        return None

    def close(self) -> None:
        """Leave the process group, dropping the DDP wrapper first. Its reducer holds the group, and
        a group that the reducer's destructor frees waits for gloo's worker threads while holding the
        GIL, which a worker that is finishing the last collective needs: the rank would hang at exit
        (pytorch/pytorch#56297). Freed through the process group registry, the group is destroyed
        with the GIL released."""
        self.module = None
        self.dist.close()
