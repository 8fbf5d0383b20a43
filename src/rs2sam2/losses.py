"""Training loss of RS2-SAM2: cross-entropy + Dice + text-guided boundary loss (TBL).

The published code scores a pixel with the two-"class" tensor ``s = cat([1 - x, x], dim=1)``
built from the single-channel mask logits ``x`` (B,1,H,W), and computes

    total = w_ce * CE(s, target; class weights [0.9, 1.1])
          + w_dice * Dice(softmax(s), one_hot(target))
          + w_tbl * TBL(x, target, w)

with ``w_ce = 0.9, w_dice = 0.1, w_tbl = 0.2`` (the paper writes lambda_ce = 1).

* **CE**: ``F.cross_entropy`` with class weights, i.e. the weighted mean
  ``sum(weight[t] * nll) / sum(weight[t])`` over all pixels of the batch.
* **Dice**: for every sample ``b`` and class ``c``, over the spatial dimensions,
  ``1 - (2 * sum(p*t) + 1e-6) / (sum(p) + sum(t) + 1e-6)``; the (B, 2) values are
  **summed** (not averaged) over batch and classes. Hence the term is ~1 for a
  mediocre prediction (background dice ~0.9, foreground dice ~0.1) and grows with B.
* **TBL**: boundary maps ``|m[y] - m[y-1]| + |m[x] - m[x-1]|`` (zero in the first
  row/column) of the thresholded prediction ``sigmoid(x) > 0.5`` (i.e. ``x > 0``; note
  this differs from the evaluation rule ``x > 0.5``) and of the target, both multiplied
  by the predicted boundary weight ``w`` (one scalar per sample), compared with MSE
  (mean over all elements). Thresholding blocks the gradient to ``x``; only ``w`` learns
  from this term ("hard", published). ``boundary="soft"`` uses ``sigmoid(x)`` instead,
  so the term also trains the mask.

**Grounding** (not in the published code; ``w_grounding`` of a training config, 0 by default):
:func:`grounding_loss` trains the Mask Prompt Generator's patch-grid scores to point at the
referred object. Trained from scratch, the union encoder otherwise learns to localise the target
far too slowly for the MPG prior to help (benchmarks/README.md, issue 14).

**Presence** (not in the published code; only when a run trains with absent-object samples,
``train --negatives P`` with P > 0): :func:`presence_loss`, a binary cross-entropy of SAM2's
object-score logit against whether the sample's target has any pixel, so that the score tells a
sentence that describes something in the image from one that describes nothing. The mask terms
above apply to absent samples too, with their empty target.

Batch quirk of the published code: it multiplies the (B,1,H,W) maps by ``w`` of shape
(B,1,1), which broadcasts to (B,B,H,W) when B > 1 (every sample's map weighted by every
sample's ``w``). It trained with one sample per GPU, where the two readings agree; this
module uses the per-sample reading (``w`` viewed as (B,1,1,1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "LossOutput",
    "RS2SAM2Loss",
    "two_channel_scores",
    "weighted_cross_entropy",
    "dice_loss",
    "boundary_map",
    "boundary_loss",
    "rs2sam2_loss",
    "grounding_cells",
    "grounding_loss",
    "presence_loss",
    "presence_targets",
]

BoundaryMode = Literal["hard", "soft"]

CE_CLASS_WEIGHTS = (0.9, 1.1)
DICE_SMOOTH = 1e-6


@dataclass
class LossOutput:
    """Loss terms. ``total`` is the weighted sum; the others are unweighted (``grounding``,
    ``presence``: 0 when the run has no such term)."""

    total: torch.Tensor
    ce: torch.Tensor
    dice: torch.Tensor
    boundary: torch.Tensor
    grounding: torch.Tensor | float = 0.0
    presence: torch.Tensor | float = 0.0

    def as_dict(self) -> dict[str, float]:
        """Detached Python floats, for logging."""
        return {k: float(torch.as_tensor(getattr(self, k)).detach())
                for k in ("total", "ce", "dice", "boundary", "grounding", "presence")}


def _check_inputs(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(f"logits must have shape (B,1,H,W), got {tuple(logits.shape)}")
    if target.dim() != 3 or target.shape[0] != logits.shape[0] or target.shape[1:] != logits.shape[2:]:
        raise ValueError(
            f"target must have shape (B,H,W) = {(logits.shape[0], *logits.shape[2:])}, got {tuple(target.shape)}"
        )


def two_channel_scores(logits: torch.Tensor) -> torch.Tensor:
    """The published two-"class" score ``cat([1 - x, x], dim=1)`` of (B,1,H,W) logits."""
    return torch.cat([1.0 - logits, logits], dim=1)


def weighted_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, class_weights: tuple[float, float] = CE_CLASS_WEIGHTS
) -> torch.Tensor:
    """Class-weighted CE on ``cat([1-x, x])`` against a 0/1 (B,H,W) target (weighted mean)."""
    _check_inputs(logits, target)
    scores = two_channel_scores(logits.float())
    weight = torch.tensor(class_weights, dtype=scores.dtype, device=scores.device)
    return F.cross_entropy(scores, target.long(), weight=weight)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = DICE_SMOOTH) -> torch.Tensor:
    """Published Dice loss: per sample and class, summed over batch and both classes."""
    _check_inputs(logits, target)
    probs = two_channel_scores(logits.float()).softmax(dim=1)  # (B,2,H,W)
    t = target.long()
    one_hot = torch.stack([(t == 0), (t == 1)], dim=1).to(probs.dtype)
    inter = (probs * one_hot).sum(dim=(2, 3))
    denom = probs.sum(dim=(2, 3)) + one_hot.sum(dim=(2, 3))
    per_sample_class = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    return per_sample_class.sum()


def boundary_map(mask: torch.Tensor) -> torch.Tensor:
    """``|m[y]-m[y-1]| + |m[x]-m[x-1]|`` of a (B,1,H,W) map, zero in the first row / column."""
    dy = F.pad((mask[:, :, 1:, :] - mask[:, :, :-1, :]).abs(), (0, 0, 1, 0))
    dx = F.pad((mask[:, :, :, 1:] - mask[:, :, :, :-1]).abs(), (1, 0, 0, 0))
    return dy + dx


def boundary_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    boundary_weight: torch.Tensor,
    mode: BoundaryMode = "hard",
) -> torch.Tensor:
    """Text-guided boundary loss (TBL).

    Args:
        logits: (B,1,H,W) mask logits.
        target: (B,H,W) 0/1 mask.
        boundary_weight: the predicted weight ``w``; B values in any shape (e.g. (B,1,1)).
        mode: ``"hard"`` (published: ``sigmoid(x) > 0.5``, no gradient to ``logits``) or
            ``"soft"`` (``sigmoid(x)``, differentiable w.r.t. ``logits``).
    """
    _check_inputs(logits, target)
    b = logits.shape[0]
    if boundary_weight.numel() != b:
        raise ValueError(f"boundary_weight must hold one value per sample ({b}), got shape {tuple(boundary_weight.shape)}")
    w = boundary_weight.float().reshape(b, 1, 1, 1)
    if mode == "hard":
        pred = (torch.sigmoid(logits.float()) > 0.5).float()
    elif mode == "soft":
        pred = torch.sigmoid(logits.float())
    else:
        raise ValueError(f"boundary mode must be 'hard' or 'soft', got {mode!r}")
    tgt = target.float().unsqueeze(1)
    return F.mse_loss(boundary_map(pred) * w, boundary_map(tgt) * w)


def rs2sam2_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    boundary_weight: torch.Tensor,
    w_ce: float = 0.9,
    w_dice: float = 0.1,
    w_tbl: float = 0.2,
    boundary: BoundaryMode = "hard",
    class_weights: tuple[float, float] = CE_CLASS_WEIGHTS,
) -> LossOutput:
    """The full RS2-SAM2 loss (defaults = published code). See the module docstring."""
    ce = weighted_cross_entropy(logits, target, class_weights)
    dice = dice_loss(logits, target)
    tbl = boundary_loss(logits, target, boundary_weight, mode=boundary)
    total = w_ce * ce + w_dice * dice + w_tbl * tbl
    return LossOutput(total=total, ce=ce, dice=dice, boundary=tbl)


def grounding_cells(target: torch.Tensor, grid: int) -> torch.Tensor:
    """(B,H,W) 0/1 masks -> (B, grid*grid): 1 where a cell of the patch grid holds a target pixel."""
    return F.adaptive_max_pool2d(target.float().unsqueeze(1), (grid, grid)).flatten(1)


def grounding_loss(grid_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pointing loss of the MPG's patch-grid scores (B,1,g,g) against (B,H,W) 0/1 target masks.

    The sum of two terms, with the target's cells those that hold a target pixel
    (:func:`grounding_cells`): a cross-entropy of the softmax over all cells against the target's
    cells (which share the probability mass), so that they become the highest of the image whatever
    their absolute level; and a binary cross-entropy per cell, which keeps the sigmoid of the scores
    (the prior the decoder reads) near 1 on the target and near 0 elsewhere. Both are means over the
    batch; an empty target adds only the second term."""
    if grid_logits.dim() != 4 or grid_logits.shape[1] != 1 or grid_logits.shape[2] != grid_logits.shape[3]:
        raise ValueError(f"grid_logits must have shape (B,1,g,g), got {tuple(grid_logits.shape)}")
    if target.dim() != 3 or target.shape[0] != grid_logits.shape[0]:
        raise ValueError(f"target must have shape (B,H,W) with B = {grid_logits.shape[0]}, got {tuple(target.shape)}")
    scores = grid_logits.float().flatten(1)
    cells = grounding_cells(target, grid_logits.shape[-1])
    share = cells / cells.sum(dim=1, keepdim=True).clamp(min=1.0)
    pointing = -(F.log_softmax(scores, dim=1) * share).sum(dim=1).mean()
    return pointing + F.binary_cross_entropy_with_logits(scores, cells)


def presence_targets(target: torch.Tensor) -> torch.Tensor:
    """(B,H,W) 0/1 masks -> (B,) floats: 1 where the target has a pixel (the object is there), else 0."""
    return target.flatten(1).any(dim=1).float()


def presence_loss(object_score_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy (mean over the batch) of the object-score logits, (B,1) or (B,), against
    :func:`presence_targets` of the (B,H,W) targets: 1 for a sample whose object is in the image, 0
    for an absent-object sample (empty target)."""
    logits = object_score_logits.float().reshape(-1)
    if logits.shape[0] != target.shape[0]:
        raise ValueError(f"object_score_logits must hold one logit per sample ({target.shape[0]}), "
                         f"got shape {tuple(object_score_logits.shape)}")
    return F.binary_cross_entropy_with_logits(logits, presence_targets(target))


class RS2SAM2Loss(torch.nn.Module):
    """Module wrapper around :func:`rs2sam2_loss` with configurable weights."""

    def __init__(
        self,
        w_ce: float = 0.9,
        w_dice: float = 0.1,
        w_tbl: float = 0.2,
        boundary: BoundaryMode = "hard",
        class_weights: tuple[float, float] = CE_CLASS_WEIGHTS,
    ) -> None:
        super().__init__()
        if boundary not in ("hard", "soft"):
            raise ValueError(f"boundary must be 'hard' or 'soft', got {boundary!r}")
        self.w_ce = float(w_ce)
        self.w_dice = float(w_dice)
        self.w_tbl = float(w_tbl)
        self.boundary: BoundaryMode = boundary
        self.class_weights = (float(class_weights[0]), float(class_weights[1]))

    def forward(self, logits: torch.Tensor, target: torch.Tensor, boundary_weight: torch.Tensor) -> LossOutput:
        return rs2sam2_loss(
            logits,
            target,
            boundary_weight,
            w_ce=self.w_ce,
            w_dice=self.w_dice,
            w_tbl=self.w_tbl,
            boundary=self.boundary,
            class_weights=self.class_weights,
        )

    def extra_repr(self) -> str:
        return f"w_ce={self.w_ce}, w_dice={self.w_dice}, w_tbl={self.w_tbl}, boundary={self.boundary!r}"
