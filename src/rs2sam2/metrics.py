"""Evaluation protocol of the published RS2-SAM2 code (referring segmentation metrics).

Per referring expression the prediction and the target (both at 1024x1024 in the
published protocol; the target resized with nearest neighbour) give pixel counts
``I = |pred & target|`` and ``U = |pred | target|``; ``IoU = I / U``, or 0 when ``U = 0``.
Over all expressions:

* ``Pr@X`` = share of expressions with ``IoU >= X`` (inclusive), X in {0.5, ..., 0.9};
* ``mIoU`` = mean of the per-expression IoU;
* ``oIoU`` = ``sum(I) / sum(U)`` (overall / cumulative IoU);

all reported in percent. The published code binarizes the logits ``x`` by taking the
argmax of ``cat([1 - x, x])``, i.e. foreground iff ``x > 0.5`` (see :func:`binarize`).

**Names across papers.** ``oIoU`` is the cumulative IoU, which papers also call "overall IoU",
"cIoU" or (DiCoR) "gIoU"; SegEarth and RSRefSeg 2 instead use "gIoU" for the mean IoU, ``mIoU``
here. Reports therefore carry ``cIoU`` as an alias of ``oIoU`` and no ``gIoU`` key at all
(:data:`METRIC_NAMES`, :func:`report_metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "PUBLISHED_THRESHOLD",
    "PR_THRESHOLDS",
    "binarize",
    "check_threshold",
    "resize_target_nearest",
    "intersection_union",
    "METRIC_NAMES",
    "ReferringMetrics",
    "per_category",
    "report_metrics",
]

ArrayLike = torch.Tensor | np.ndarray
_A = TypeVar("_A", torch.Tensor, np.ndarray)

#: Logit threshold implied by the published ``argmax(cat([1 - x, x]))`` rule.
PUBLISHED_THRESHOLD = 0.5
#: IoU thresholds of the precision metrics.
PR_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
#: What the report's metric keys mean, and what other papers call them (written into reports).
METRIC_NAMES = {
    "oIoU": "cumulative IoU, sum(I) / sum(U) over all expressions; other papers: 'overall IoU', 'cIoU', "
            "and 'gIoU' in DiCoR",
    "cIoU": "alias of oIoU",
    "mIoU": "mean of the per-expression IoU; SegEarth and RSRefSeg 2 call it 'gIoU'",
    "Pr@X": "percentage of expressions with IoU >= X",
    "gIoU": "not reported: papers use the name for oIoU (DiCoR) or for mIoU (SegEarth, RSRefSeg 2)",
}


def check_threshold(threshold: Any, name: str = "threshold") -> float:
    """``threshold`` as a float; anything but a finite number (NaN and infinities would silently give
    an all-background or all-foreground mask) is a :class:`~rs2sam2.errors.ConfigError` naming ``name``."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(threshold, bool) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number (a logit threshold; {PUBLISHED_THRESHOLD} is the "
                          f"published rule), got {threshold!r}")
    return value


def binarize(logits: _A, threshold: float = PUBLISHED_THRESHOLD) -> _A:
    """Foreground mask from mask logits: ``logits > threshold``.

    With the default 0.5 this is exactly the published rule: the code takes
    ``argmax(cat([1 - x, x]))``, and ``x > 1 - x`` iff ``x > 0.5``; at a tie (x == 0.5)
    argmax picks the first channel, i.e. background, hence the strict inequality. In
    probability terms the cut is sigmoid(0.5) ~ 0.622, not 0.5. Pass ``threshold=0.0``
    for the conventional probability > 0.5 rule.

    Works on torch tensors and numpy arrays; returns a bool array of the same shape.
    """
    return logits > threshold


def _nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    # Pixel-centre sampling, src = floor((dst + 0.5) * n_in / n_out): this is what
    # PIL's Image.resize(NEAREST) (used by the published transforms through
    # torchvision's F.resize on PIL images) and torch's "nearest-exact" compute.
    # Computed in float64 like PIL.
    idx = np.floor((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out)).astype(np.int64)
    return np.clip(idx, 0, n_in - 1)


def resize_target_nearest(mask: _A, size: int | tuple[int, int]) -> _A:
    """Resize a mask (..., H, W) to ``size`` with nearest-neighbour sampling.

    Matches the published target preprocessing (PIL NEAREST on the mask image), which
    samples pixel centres; note that torch's ``F.interpolate(mode="nearest")`` does not
    (it uses ``floor(dst * scale)``) and can differ by one pixel row/column.

    Args:
        mask: torch tensor or numpy array, any dtype, the last two dims are (H, W).
        size: output ``(H, W)``, or one int for a square output.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size!r}")
    if mask.ndim < 2:
        raise ValueError(f"mask must have at least 2 dims (H, W), got shape {tuple(mask.shape)}")
    in_h, in_w = int(mask.shape[-2]), int(mask.shape[-1])
    iy = _nearest_indices(in_h, out_h)
    ix = _nearest_indices(in_w, out_w)
    if isinstance(mask, torch.Tensor):
        ty = torch.from_numpy(iy).to(mask.device)
        tx = torch.from_numpy(ix).to(mask.device)
        return mask.index_select(-2, ty).index_select(-1, tx)
    return np.take(np.take(mask, iy, axis=-2), ix, axis=-1)


def intersection_union(pred: ArrayLike, target: ArrayLike) -> tuple[int, int]:
    """Pixel counts ``(|pred & target|, |pred | target|)`` of two same-shape masks.

    Non-zero values count as foreground. Accepts torch tensors or numpy arrays (mixed is
    fine); sums over all elements, so pass one expression at a time.
    """
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if isinstance(pred, torch.Tensor) or isinstance(target, torch.Tensor):
        p = torch.as_tensor(pred).bool()
        t = torch.as_tensor(target).to(p.device).bool()
        return int((p & t).sum()), int((p | t).sum())
    p_np = np.asarray(pred).astype(bool)
    t_np = np.asarray(target).astype(bool)
    return int(np.logical_and(p_np, t_np).sum()), int(np.logical_or(p_np, t_np).sum())


def _iou(i: int, u: int) -> float:
    # Published rule: IoU = 0 for an empty union (both masks empty).
    return i / u if u > 0 else 0.0


class ReferringMetrics:
    """Accumulates per-expression (I, U) and computes Pr@X, mIoU and oIoU.

    Expression ids must be unique within one accumulator. For distributed evaluation,
    each rank fills its own accumulator, the ranks exchange :meth:`state_dict` (plain
    lists and int64 tensors, e.g. via ``torch.distributed.all_gather_object``), and
    :meth:`from_states` combines them. Merging drops repeated ids, because
    ``DistributedSampler`` pads the last batch by evaluating some samples twice.
    """

    def __init__(self, thresholds: Sequence[float] = PR_THRESHOLDS) -> None:
        self.thresholds = tuple(float(t) for t in thresholds)
        self._ids: list[Hashable] = []
        self._texts: list[str | None] = []
        self._inter: list[int] = []
        self._union: list[int] = []
        self._index: set[Hashable] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def update(self, expression_id: Hashable, intersection: int | torch.Tensor, union: int | torch.Tensor,
               text: str | None = None) -> float:
        """Record one expression; returns its IoU (0..1)."""
        i, u = int(intersection), int(union)
        if i < 0 or u < 0 or i > u:
            raise ValueError(f"invalid counts for {expression_id!r}: I={i}, U={u} (need 0 <= I <= U)")
        if expression_id in self._index:
            raise ValueError(f"expression id {expression_id!r} was already recorded")
        self._index.add(expression_id)
        self._ids.append(expression_id)
        self._texts.append(text)
        self._inter.append(i)
        self._union.append(u)
        return _iou(i, u)

    def update_masks(self, expression_id: Hashable, pred: ArrayLike, target: ArrayLike,
                     text: str | None = None) -> float:
        """Convenience: compute (I, U) of two binary masks and record them."""
        i, u = intersection_union(pred, target)
        return self.update(expression_id, i, u, text=text)

    def ious(self) -> list[float]:
        """Per-expression IoU in recording order (0..1)."""
        return [_iou(i, u) for i, u in zip(self._inter, self._union)]

    def compute(self) -> dict[str, float]:
        """``Pr@X``, ``mIoU``, ``oIoU`` in percent, plus ``num_expressions``.

        ``oIoU`` is 0 when every union is empty (the published code would divide by zero).
        Raises ``ValueError`` when nothing was recorded.
        """
        n = len(self._ids)
        if n == 0:
            raise ValueError("ReferringMetrics.compute() called before any update()")
        ious = self.ious()
        out: dict[str, float] = {}
        for thr in self.thresholds:
            out[f"Pr@{thr:g}"] = 100.0 * sum(1 for v in ious if v >= thr) / n
        out["mIoU"] = 100.0 * math.fsum(ious) / n
        total_i, total_u = sum(self._inter), sum(self._union)
        out["oIoU"] = 100.0 * _iou(total_i, total_u)
        out["num_expressions"] = n
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per expression: ``id, text, I, U, IoU`` (IoU in 0..1), for a CSV."""
        return [
            {"id": eid, "text": "" if txt is None else txt, "I": i, "U": u, "IoU": _iou(i, u)}
            for eid, txt, i, u in zip(self._ids, self._texts, self._inter, self._union)
        ]

    # ----------------------------------------------------------------- distributed
    def state_dict(self) -> dict[str, Any]:
        """Picklable state: ``ids`` and ``texts`` lists, ``intersection``/``union`` int64 tensors."""
        return {
            "ids": list(self._ids),
            "texts": list(self._texts),
            "intersection": torch.tensor(self._inter, dtype=torch.int64),
            "union": torch.tensor(self._union, dtype=torch.int64),
            "thresholds": list(self.thresholds),
        }

    def merge(self, other: ReferringMetrics | dict[str, Any]) -> ReferringMetrics:
        """Add another accumulator (or its state dict) into this one, skipping repeated ids."""
        state = other.state_dict() if isinstance(other, ReferringMetrics) else other
        ids, texts = state["ids"], state["texts"]
        inter = [int(v) for v in torch.as_tensor(state["intersection"]).tolist()]
        union = [int(v) for v in torch.as_tensor(state["union"]).tolist()]
        if not (len(ids) == len(texts) == len(inter) == len(union)):
            raise ValueError("inconsistent metrics state: ids/texts/intersection/union differ in length")
        for eid, txt, i, u in zip(ids, texts, inter, union):
            if eid in self._index:
                continue
            self.update(eid, i, u, text=txt)
        return self

    @classmethod
    def from_states(cls, states: Iterable[dict[str, Any]],
                    thresholds: Sequence[float] | None = None) -> ReferringMetrics:
        """Combine the :meth:`state_dict` of several ranks into one accumulator."""
        states = list(states)
        if thresholds is None:
            thresholds = states[0].get("thresholds", PR_THRESHOLDS) if states else PR_THRESHOLDS
        merged = cls(thresholds)
        for s in states:
            merged.merge(s)
        return merged


def report_metrics(acc: ReferringMetrics) -> dict[str, float]:
    """:meth:`ReferringMetrics.compute` plus ``cIoU``, the alias of ``oIoU`` (:data:`METRIC_NAMES`);
    ``{"num_expressions": 0}`` when nothing was recorded."""
    if not len(acc):
        return {"num_expressions": 0}
    out = acc.compute()
    ordered: dict[str, float] = {}
    for key, value in out.items():
        ordered[key] = value
        if key == "oIoU":
            ordered["cIoU"] = value
    return ordered


def per_category(acc: ReferringMetrics, categories: Mapping[Hashable, str]) -> dict[str, dict[str, float]]:
    """:func:`report_metrics` of each category's expressions, categories in name order.

    ``categories`` maps expression ids to category names; an expression it does not name, or
    names with an empty string, is counted under ``"(none)"``.
    """
    groups: dict[str, ReferringMetrics] = {}
    for row in acc.rows():
        name = categories.get(row["id"]) or "(none)"
        groups.setdefault(name, ReferringMetrics(acc.thresholds)).update(row["id"], row["I"], row["U"])
    return {name: report_metrics(groups[name]) for name in sorted(groups)}
