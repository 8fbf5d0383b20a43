"""Evaluation with the published protocol (``rs2sam2 evaluate``).

Two sources of masks:

* ``--checkpoint CKPT``: a model (our ``save_pretrained`` folder, a training run folder -- its
  ``checkpoints/best``, else ``checkpoints/last`` --, or a released RS2-SAM2 folder / file) predicts
  every expression of the split;
* ``--predictions DIR``: mask images named ``<expression id>.png`` from any method, non-zero =
  foreground (for multi-band PNGs: non-zero in any band). A missing file is an error naming it.

Published protocol ("model resolution", the top-level keys of the report): every expression;
prediction and target at the model's input size S x S (1024 for the paper models); the target is
resized from the original mask with nearest neighbour (pixel centres, :func:`metrics.resize_target_nearest`);
a pixel is foreground when its logit is > ``threshold`` (0.5, the published argmax rule); IoU is 0
when the union is empty. ``Pr@0.5`` .. ``Pr@0.9``, ``oIoU`` and ``mIoU`` in percent, and
``num_expressions``.

The same metrics at each image's original resolution are reported under ``"original_resolution"``:
the S x S logits are resized to the image size with bilinear interpolation (align_corners=False) and
then thresholded; for ``--predictions``, a mask whose size differs from the image is resized with
nearest neighbour. A per-expression CSV (``id, text, I, U, IoU`` at model resolution, then
``I_original, U_original, IoU_original``, then ``category``) is written next to the report as
``<report stem>_per_expression.csv``.

Names across papers (see :mod:`rs2sam2.metrics`): ``oIoU`` is the cumulative IoU ("overall IoU",
"cIoU", DiCoR's "gIoU"); every metrics block also carries it as ``cIoU``; ``mIoU`` is what SegEarth and
RSRefSeg 2 call "gIoU", so no ``gIoU`` key is written. The report's ``metric_names`` says so.

Per category: when the dataset names object categories (RRSIS-D: instances.json; JSONL: a
``category`` field), ``per_category`` holds the same metrics for each category's expressions, at
model resolution and inside ``original_resolution``.

Python use::

    report = evaluate_model(model, build_dataset("rrsisd", root, "test"), tokenizer)
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import CHECKPOINT_HELP, TOKENIZER_HELP, add_hub_arguments, load_pretrained, locate
from .cliargs import number
from .config import BOUNDS
from .data import DATASETS, build_dataset
from .data.collate import check_vocabulary, collate, list_collate, move_batch
from .data.transforms import SampleTransform
from .errors import ConfigError, FileFormatError, MissingFileError
from .fsutil import atomic_write_text, check_writable
from .imageio import ImageReadError, read_mask
from .metrics import (
    METRIC_NAMES,
    PUBLISHED_THRESHOLD,
    ReferringMetrics,
    binarize,
    check_threshold,
    intersection_union,
    per_category,
    report_metrics,
    resize_target_nearest,
)
from .progress import progress_bar
from .runtime import autocast, dist_info, heap_releaser, init_distributed, resolve_device
from .text import load_tokenizer

__all__ = [
    "evaluate_model",
    "evaluate_predictions",
    "write_per_expression_csv",
    "write_report",
    "add_arguments",
    "run",
]

#: upper bounds of the command's numbers: far above any real use, low enough to refuse a typo at once
MAX_BATCH, MAX_WORKERS = 4096, 256
CSV_FIELDS = ("id", "text", "I", "U", "IoU", "I_original", "U_original", "IoU_original", "category")


# --- helpers ---------------------------------------------------------------------------------------


def _shard(indices: Sequence[int], rank: int, world_size: int) -> list[int]:
    """``indices[rank::world_size]``, padded (by repeating from the start) so that every rank gets the
    same count: under FSDP every rank must run the same number of forward passes. Repeated expressions
    are dropped again when the ranks' metrics are merged."""
    indices = list(indices)
    if world_size <= 1:
        return indices
    per_rank = math.ceil(len(indices) / world_size)
    padded = indices + indices[: per_rank * world_size - len(indices)]
    return padded[rank::world_size]


class _TransformedDataset(torch.utils.data.Dataset):
    """Expression index -> transformed sample (the original mask kept for both protocols)."""

    def __init__(self, dataset, indices: Sequence[int], transform) -> None:
        self.dataset, self.indices, self.transform = dataset, list(indices), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        return self.transform(self.dataset.load(self.indices[k]))


def _merge_across_ranks(acc: ReferringMetrics) -> ReferringMetrics:
    rank, world = dist_info()
    if world <= 1:
        return acc
    states: list[Any] = [None] * world
    torch.distributed.all_gather_object(states, acc.state_dict())
    return ReferringMetrics.from_states(states)


def _in_order(acc: ReferringMetrics, ids: Sequence[str]) -> ReferringMetrics:
    rows = {r["id"]: r for r in acc.rows()}
    out = ReferringMetrics(acc.thresholds)
    for eid in ids:
        r = rows.pop(eid, None)
        if r is not None:
            out.update(eid, r["I"], r["U"], text=r["text"])
    for eid, r in rows.items():  # not expected; keep anything left rather than drop it
        out.update(eid, r["I"], r["U"], text=r["text"])
    return out


def _report_from(acc_model: ReferringMetrics, acc_orig: ReferringMetrics | None, threshold: float | None,
                 image_size: int, categories: dict[str, str] | None = None) -> dict[str, Any]:
    report: dict[str, Any] = report_metrics(acc_model)
    if categories is not None:
        report["per_category"] = per_category(acc_model, categories)
    report["metric_names"] = dict(METRIC_NAMES)
    report["protocol"] = {
        "resolution": image_size,
        "target_resize": "nearest (pixel centres)",
        "threshold": threshold,
        "empty_union_iou": 0.0,
    }
    if acc_orig is not None:
        report["original_resolution"] = report_metrics(acc_orig)
        if categories is not None:
            report["original_resolution"]["per_category"] = per_category(acc_orig, categories)
    return report


def write_per_expression_csv(path: str | os.PathLike, acc_model: ReferringMetrics,
                             acc_orig: ReferringMetrics | None = None,
                             categories: dict[str, str] | None = None) -> Path:
    """Write the per-expression CSV (:data:`CSV_FIELDS`, IoU in 0..1; the ``*_original`` columns are
    empty without ``acc_orig``, ``category`` without ``categories``) atomically."""
    orig_rows = {r["id"]: r for r in acc_orig.rows()} if acc_orig is not None else {}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(CSV_FIELDS))
    writer.writeheader()
    for row in acc_model.rows():
        o = orig_rows.get(row["id"])
        writer.writerow({
            "id": row["id"], "text": row["text"], "I": row["I"], "U": row["U"], "IoU": f"{row['IoU']:.6f}",
            "I_original": "" if o is None else o["I"],
            "U_original": "" if o is None else o["U"],
            "IoU_original": "" if o is None else f"{o['IoU']:.6f}",
            "category": (categories or {}).get(row["id"], ""),
        })
    return atomic_write_text(path, buffer.getvalue())


def _progress(iterable: Iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    return progress_bar(iterable, total=total, desc=desc, dynamic_ncols=True, leave=False)


# --- model evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, dataset, tokenizer, *, threshold: float = PUBLISHED_THRESHOLD,
                   batch_size: int = 1, device: str | torch.device | None = None, max_len: int | None = None,
                   mask_rule: str = "published", original_resolution: bool = True, limit: int | None = None,
                   indices: Sequence[int] | None = None, num_workers: int = 0, precision: str = "auto",
                   progress: bool = False, csv_path: str | os.PathLike | None = None,
                   return_metrics: bool = False) -> dict[str, Any]:
    """Run ``model`` on every expression of ``dataset`` and score it with the published protocol.

    Args:
        model: an :class:`~rs2sam2.RS2SAM2` (or an FSDP-sharded one: then every rank must call this).
        dataset: a reader from :func:`rs2sam2.data.build_dataset`.
        tokenizer: the model's :class:`~rs2sam2.text.Tokenizer`.
        threshold: logit threshold (0.5 = published argmax rule; 0.0 = probability > 0.5).
        batch_size: expressions per forward pass.
        device: where to run (default: where the model is).
        max_len: token limit per sentence (default: the model's position table).
        mask_rule: attention-mask rule of the tokenizer (``published`` / ``clean``).
        original_resolution: also score at each image's own size (``"original_resolution"`` key).
        limit: only the first ``limit`` expressions (quick checks; the report says so).
        indices: explicit expression indices (overrides ``limit``).
        num_workers: DataLoader workers for reading and resizing images.
        precision: ``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``bf16`` or ``fp32``.
        progress: show a tqdm bar (rank 0 only).
        csv_path: write the per-expression CSV there (rank 0 only).
        return_metrics: also return the two :class:`ReferringMetrics` under ``"_metrics"``.

    Under ``torch.distributed`` every rank scores a shard and the ranks' counts are merged; every
    rank returns the full report: ``{"Pr@0.5", ..., "Pr@0.9", "mIoU", "oIoU", "cIoU" (= oIoU),
    "num_expressions", "per_category": {...} (when the dataset names categories), "metric_names",
    "protocol", "original_resolution": {...}}``.
    """
    cfg = getattr(model, "module", model).config
    threshold = check_threshold(threshold)
    check_vocabulary(tokenizer, cfg.beit3.vocab_size)
    device = resolve_device(device, model)
    rank, world = dist_info()
    objects = dataset.object_expressions  # absent sentences have no mask to score (rs2sam2.data.base.Ref)
    if indices is None:
        indices = objects if limit is None else objects[:int(limit)]
    transform = SampleTransform(cfg.image_size, cfg.beit3.img_size, train=False, keep_original_mask=True)
    loader = torch.utils.data.DataLoader(
        _TransformedDataset(dataset, _shard(indices, rank, world), transform), batch_size=batch_size,
        shuffle=False, num_workers=num_workers, collate_fn=list_collate)
    acc_model, acc_orig = ReferringMetrics(), (ReferringMetrics() if original_resolution else None)
    start = time.perf_counter()
    batches = _progress(loader, len(loader), "eval", progress and rank == 0)
    encode = functools.partial(collate, tokenizer=tokenizer, max_len=cfg.beit3.text_len(max_len), mask_rule=mask_rule)
    _score_batches(model, batches, encode, device, precision, threshold, acc_model, acc_orig)
    if world > 1:  # merge the ranks' counts, back in dataset order
        order = [dataset.expressions[i][2] for i in indices]
        acc_model = _in_order(_merge_across_ranks(acc_model), order)
        if acc_orig is not None:
            acc_orig = _in_order(_merge_across_ranks(acc_orig), order)
    limited = len(indices) if limit is not None and len(indices) < len(objects) else None
    report = _finish_report(dataset, acc_model, acc_orig, threshold, cfg.image_size, start, limited,
                            csv_path if rank == 0 else None, return_metrics)
    if len(objects) < len(dataset):
        report["absent_expressions_left_out"] = len(dataset) - len(objects)
    return report


def _score_batches(model: torch.nn.Module, batches: Iterable, encode, device: torch.device, precision: str,
                   threshold: float, acc_model: ReferringMetrics, acc_orig: ReferringMetrics | None) -> None:
    """Predict every batch of samples (``encode``: samples -> model inputs) in eval mode and count it
    into the accumulators; the model's training mode comes back afterwards."""
    was_training = model.training
    model.eval()
    seen: set[str] = set()
    try:
        for samples in batches:
            batch = move_batch(encode(samples), device)
            with autocast(device, precision):
                out = model(images=batch["images"], images_evf=batch["images_evf"],
                            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            _score_batch(batch, out.logits.float(), threshold, seen, acc_model, acc_orig)
    finally:
        model.train(was_training)


def _score_batch(batch: dict[str, Any], logits: torch.Tensor, threshold: float, seen: set[str],
                 acc_model: ReferringMetrics, acc_orig: ReferringMetrics | None) -> None:
    """Count the intersection and union of every new expression of ``batch`` at the model's
    resolution (target nearest-resized) and, with ``acc_orig``, at the image's own (logits bilinearly
    resized). Expressions in ``seen`` are padding repeats of a distributed shard and are skipped."""
    size = logits.shape[-1]
    for b, eid in enumerate(batch["expression_ids"]):
        if eid in seen:
            continue
        seen.add(eid)
        mask_orig = batch["masks_orig"][b]
        target = resize_target_nearest(mask_orig, size).to(logits.device)
        i, u = intersection_union(binarize(logits[b, 0], threshold), target)
        acc_model.update(eid, i, u, text=batch["texts"][b])
        if acc_orig is not None:
            h, w = mask_orig.shape
            up = logits[b : b + 1]
            if (h, w) != (size, size):
                up = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)
            i, u = intersection_union(binarize(up[0, 0], threshold), mask_orig.to(logits.device))
            acc_orig.update(eid, i, u, text=batch["texts"][b])


def _finish_report(dataset, acc_model: ReferringMetrics, acc_orig: ReferringMetrics | None,
                   threshold: float | None, size: int, start: float, limited: int | None,
                   csv_path: str | os.PathLike | None, return_metrics: bool) -> dict[str, Any]:
    """The report of a finished evaluation (and its per-expression CSV when ``csv_path`` is given)."""
    categories = dataset.expression_categories()
    report = _report_from(acc_model, acc_orig, threshold, size, categories)
    report["seconds"] = round(time.perf_counter() - start, 3)
    if limited is not None:
        report["protocol"]["limited_to_first"] = limited
    if csv_path is not None:
        write_per_expression_csv(csv_path, acc_model, acc_orig, categories)
    if return_metrics:
        report["_metrics"] = (acc_model, acc_orig)
    return report


# --- predictions folder ----------------------------------------------------------------------------


def _read_prediction(path: Path) -> np.ndarray:
    """A predicted mask file as HxW bool: any non-zero value (:func:`rs2sam2.imageio.read_mask`: read
    strictly, under the decode budget) is the object."""
    return read_mask(path) != 0


def evaluate_predictions(
    predictions: str | os.PathLike,
    dataset,
    *,
    image_size: int = 1024,
    original_resolution: bool = True,
    limit: int | None = None,
    progress: bool = False,
    csv_path: str | os.PathLike | None = None,
    return_metrics: bool = False,
) -> dict[str, Any]:
    """Score mask images ``<expression id>.png`` in ``predictions`` against ``dataset``.

    Model-resolution protocol: prediction and target are both resized to ``image_size`` with nearest
    neighbour (pixel centres). Original resolution: the prediction is compared with the original mask,
    nearest-resized to the image size first if it differs. Raises :class:`~rs2sam2.errors.MissingFileError`
    (a ``FileNotFoundError``) naming the missing files before scoring anything, and
    :class:`~rs2sam2.errors.FileFormatError` naming a prediction that is not an image.
    """
    folder = Path(predictions)
    if not folder.is_dir():
        raise MissingFileError(f"predictions folder not found: {folder}")
    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    ids = [dataset.expressions[i][2] for i in range(n)]
    missing = [f"{eid}.png" for eid in ids if not (folder / f"{eid}.png").is_file()]
    if missing:
        shown = ", ".join(str(folder / m) for m in missing[:10])
        more = f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""
        raise MissingFileError(f"{len(missing)} prediction file(s) missing: {shown}{more}")
    acc_model, acc_orig = ReferringMetrics(), (ReferringMetrics() if original_resolution else None)
    start = time.perf_counter()
    for i in _progress(range(n), n, "eval", progress):
        sample = dataset.load(i)
        eid, text, target = sample["expression_id"], sample["text"], sample["mask"]
        path = folder / f"{eid}.png"
        try:
            pred = _read_prediction(path)
        except ImageReadError as exc:  # the message names the file
            raise FileFormatError(f"prediction file: {exc}") from exc
        i_, u_ = intersection_union(resize_target_nearest(pred, image_size), resize_target_nearest(target, image_size))
        acc_model.update(eid, i_, u_, text=text)
        if acc_orig is not None:
            p = pred if pred.shape == target.shape else resize_target_nearest(pred, target.shape)
            i_, u_ = intersection_union(p, target)
            acc_orig.update(eid, i_, u_, text=text)
    report = _finish_report(dataset, acc_model, acc_orig, None, image_size, start,
                            n if limit is not None and n < len(dataset) else None, csv_path, return_metrics)
    report["protocol"]["prediction_resize"] = "nearest (pixel centres)"
    return report


# --- checkpoints and reports -----------------------------------------------------------------------


def per_expression_csv_path(report_path: str | os.PathLike) -> Path:
    report_path = Path(report_path)
    return report_path.with_name(f"{report_path.stem}_per_expression.csv")


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON (atomically)."""
    clean = {k: v for k, v in report.items() if not k.startswith("_")}
    return atomic_write_text(path, json.dumps(clean, indent=2, default=str) + "\n")


def format_table(report: dict[str, Any]) -> str:
    """The console summary: both resolutions, then one line per category (model resolution)."""
    keys = [k for k in report if k.startswith("Pr@")] + ["oIoU", "mIoU"]
    lines = []
    for title, block in (("model resolution", report), ("original resolution", report.get("original_resolution"))):
        if not block or not block.get("num_expressions"):
            continue
        vals = "  ".join(f"{k} {block[k]:6.2f}" for k in keys if k in block)
        lines.append(f"{title:>20}: {vals}  (n={block['num_expressions']})")
    if report.get("per_category"):
        lines.append("per category (model resolution; oIoU is also called cIoU):")
        for name, block in report["per_category"].items():
            vals = "  ".join(f"{k} {block[k]:6.2f}" for k in keys if k in block)
            lines.append(f"{name[:20]:>20}: {vals}  (n={block['num_expressions']})")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 evaluate``."""
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help=CHECKPOINT_HELP)
    src.add_argument("--predictions", help="folder of <expression id>.png masks (non-zero = foreground)")
    add_hub_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset root (for jsonl: the .jsonl file or its folder)")
    parser.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    parser.add_argument("--split", default="test", help="split to evaluate (default: test; jsonl: 'all' = every line)")
    parser.add_argument("--out", required=True, help="report JSON path; the per-expression CSV goes next to it")
    parser.add_argument("--threshold", type=number(float), default=PUBLISHED_THRESHOLD,
                        help="logit threshold (default 0.5 = the published argmax rule)")
    parser.add_argument("--batch-size", type=number(int, low=1, high=MAX_BATCH), default=1)
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto = bf16 autocast on CUDA, fp32 on CPU")
    parser.add_argument("--image-size", type=number(int, low=1, high=BOUNDS["image_size"]), default=None,
                        help="protocol resolution for --predictions (default 1024); for --checkpoint, run the "
                             "model at this input size instead of its own")
    parser.add_argument("--num-workers", type=number(int, low=0, high=MAX_WORKERS), default=0)
    parser.add_argument("--limit", type=number(int, low=1), default=None, help="only the first N expressions (quick checks)")
    parser.add_argument("--mask-rule", default="published", choices=("published", "clean"))
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """``rs2sam2 evaluate``: score a checkpoint (every torchrun rank a share) or a folder of masks, write the report."""
    d = None
    if args.checkpoint:  # under torchrun the ranks share the expressions
        try:
            d = init_distributed(args.device)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if d.enabled:
            args.device = str(d.device)
    try:
        return _run(args)
    finally:
        if d is not None:
            d.close()


def _check_arguments(args: argparse.Namespace) -> None:
    """The arguments that the parser cannot check alone, before anything is read (the ranges are
    checked as they are parsed, :func:`add_arguments`): a bad one is a ConfigError naming it; an --out
    that cannot be written an OutputError (so an evaluation is never lost to an unwritable report)."""
    if args.predictions and (args.subfolder or args.revision):
        raise ConfigError("--subfolder and --revision go with --checkpoint, not --predictions")
    for flag, path in (("--data", args.data), ("--predictions", args.predictions), ("--tokenizer", args.tokenizer)):
        if path is not None and not Path(path).exists():
            raise MissingFileError(f"{flag} {path}: no such file or folder")
    check_writable(args.out, "--out")
    check_writable(per_expression_csv_path(args.out), "the per-expression CSV")


def _run(args: argparse.Namespace) -> int:
    """Evaluate as ``args`` says. Every user error (bad argument, dataset, checkpoint, prediction) is
    raised as such and reported by :func:`rs2sam2.cli.main` (exit status 2); nothing is written then."""
    _check_arguments(args)
    rank, _ = dist_info()
    split = None if (args.dataset == "jsonl" and args.split in ("all", "none")) else args.split
    dataset = build_dataset(args.dataset, args.data, split)
    csv_path = per_expression_csv_path(args.out)
    source: dict[str, Any]
    if args.predictions:
        report = evaluate_predictions(
            args.predictions, dataset, image_size=args.image_size or 1024, limit=args.limit,
            progress=not args.no_progress, csv_path=csv_path,
        )
        source = {"predictions": str(Path(args.predictions).resolve())}
    else:
        located = locate(args.checkpoint, subfolder=args.subfolder, revision=args.revision)
        ckpt, tok_path = located.path, located.tokenizer_file(args.tokenizer)
        tokenizer = load_tokenizer(tok_path)
        model = load_pretrained(ckpt, image_size=args.image_size)
        device = resolve_device(args.device)
        model.to(device)
        model.pack_linear_weights(heap_releaser())  # on the CPU, where evaluation computes in float32
        report = evaluate_model(
            model, dataset, tokenizer, threshold=args.threshold, batch_size=args.batch_size, device=device,
            mask_rule=args.mask_rule, limit=args.limit, num_workers=args.num_workers,
            precision=args.precision, progress=not args.no_progress, csv_path=csv_path,
        )
        source = {"checkpoint": str(Path(ckpt).resolve()), "tokenizer": str(Path(tok_path).resolve()),
                  "model": model.config.name, "device": str(device), "precision": args.precision}
    report = {
        "dataset": args.dataset, "split": args.split, "data": str(Path(args.data).resolve()), **source, **report,
        "per_expression_csv": csv_path.name,
    }
    if rank == 0:
        write_report(report, args.out)
        print(format_table(report))
        print(f"report: {args.out}  per-expression: {csv_path}")
    return 0
