"""Loss: reproduces the published loss values stored in the parity fixtures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rs2sam2.losses import (
    LossOutput,
    RS2SAM2Loss,
    boundary_loss,
    boundary_map,
    dice_loss,
    grounding_cells,
    grounding_loss,
    rs2sam2_loss,
    weighted_cross_entropy,
)

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = [("tiny_golden", "case0"), ("tiny_golden", "case1"), ("paper_golden", "case0")]
_FIELDS = ("pred_masks", "target", "sen_feat", "loss_ce", "loss_dice", "loss_boundary", "loss_total")


@pytest.fixture(scope="module")
def golden() -> dict[tuple[str, str], dict[str, np.ndarray]]:
    out = {}
    for name, case in CASES:
        with np.load(FIXTURES / f"{name}.npz") as data:  # only the loss fields are read
            out[(name, case)] = {f: data[f"{case}_{f}"] for f in _FIELDS}
    return out


@pytest.mark.parametrize("name,case", CASES)
def test_published_loss_matches_golden(golden, name: str, case: str) -> None:
    g = golden[(name, case)]
    logits = torch.from_numpy(g["pred_masks"]).float()
    target = torch.from_numpy(g["target"]).long()
    w = torch.from_numpy(g["sen_feat"]).float()
    out = rs2sam2_loss(logits, target, w)
    for field, value in (("ce", out.ce), ("dice", out.dice), ("boundary", out.boundary), ("total", out.total)):
        expected = float(g[f"loss_{field}"])
        assert value.item() == pytest.approx(expected, rel=1e-5, abs=1e-7), field


def _toy(seed: int = 0, b: int = 2, hw: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, 1, hw, hw, generator=gen) * 3
    target = (torch.rand(b, hw, hw, generator=gen) > 0.6).long()
    w = torch.randn(b, 1, 1, generator=gen)
    return logits, target, w


def test_boundary_map_by_hand() -> None:
    m = torch.tensor([[0, 0, 0], [0, 1, 1], [0, 1, 1]], dtype=torch.float32).view(1, 1, 3, 3)
    expected = torch.tensor([[0, 0, 0], [0, 2, 1], [0, 1, 0]], dtype=torch.float32).view(1, 1, 3, 3)
    assert torch.equal(boundary_map(m), expected)


def test_hard_boundary_gradient_only_to_weight() -> None:
    logits, target, w = _toy()
    logits.requires_grad_(True)
    w.requires_grad_(True)
    loss = boundary_loss(logits, target, w, mode="hard")
    loss.backward()
    assert logits.grad is None or torch.count_nonzero(logits.grad) == 0
    assert w.grad is not None and torch.count_nonzero(w.grad) > 0


def test_soft_boundary_gradient_reaches_logits() -> None:
    logits, target, w = _toy()
    logits.requires_grad_(True)
    w.requires_grad_(True)
    boundary_loss(logits, target, w, mode="soft").backward()
    assert logits.grad is not None and torch.count_nonzero(logits.grad) > 0
    assert w.grad is not None and torch.count_nonzero(w.grad) > 0
    # the full soft loss differs from the hard one only in the boundary term
    hard = rs2sam2_loss(logits.detach(), target, w.detach())
    soft = rs2sam2_loss(logits.detach(), target, w.detach(), boundary="soft")
    assert torch.equal(hard.ce, soft.ce) and torch.equal(hard.dice, soft.dice)


def test_configurable_weights_and_module() -> None:
    logits, target, w = _toy(1)
    parts = rs2sam2_loss(logits, target, w)
    custom = RS2SAM2Loss(w_ce=1.0, w_dice=0.5, w_tbl=0.0)(logits, target, w)
    assert isinstance(custom, LossOutput)
    torch.testing.assert_close(custom.total, parts.ce + 0.5 * parts.dice)
    torch.testing.assert_close(parts.total, 0.9 * parts.ce + 0.1 * parts.dice + 0.2 * parts.boundary)
    assert set(parts.as_dict()) == {"total", "ce", "dice", "boundary", "grounding", "presence"}
    assert parts.as_dict()["grounding"] == 0.0 and parts.as_dict()["presence"] == 0.0
    with pytest.raises(ValueError):
        RS2SAM2Loss(boundary="fuzzy")  # type: ignore[arg-type]


def test_dice_sums_over_batch_and_classes() -> None:
    logits, target, _ = _toy(2, b=3)
    per_sample = sum(dice_loss(logits[i : i + 1], target[i : i + 1]) for i in range(3))
    torch.testing.assert_close(dice_loss(logits, target), per_sample)
    # perfect, confident prediction -> ~0 for each class
    perfect = (target.float() * 40 - 20).unsqueeze(1)
    assert dice_loss(perfect, target).item() < 1e-6


def test_ce_class_weights() -> None:
    logits, target, _ = _toy(3)
    s = torch.cat([1 - logits, logits], 1)
    nll = -torch.log_softmax(s, 1).gather(1, target.unsqueeze(1)).squeeze(1)
    wt = torch.where(target == 1, 1.1, 0.9)
    torch.testing.assert_close(weighted_cross_entropy(logits, target), (wt * nll).sum() / wt.sum())


def test_shape_errors() -> None:
    logits, target, w = _toy()
    with pytest.raises(ValueError):
        rs2sam2_loss(logits[:, 0], target, w)
    with pytest.raises(ValueError):
        rs2sam2_loss(logits, target[:, :-1], w)
    with pytest.raises(ValueError):
        boundary_loss(logits, target, torch.ones(3))


def test_grounding_loss_by_hand_and_its_pointing() -> None:
    """The MPG grounding loss: softmax cross-entropy over the grid cells that hold the target (sharing
    the mass) plus per-cell BCE; lower when the scores peak on the target than elsewhere."""
    target = torch.zeros(2, 16, 16)
    target[0, 0:3, 0:3] = 1  # cell (0, 0) of a 4x4 grid of 4-pixel cells
    target[1, 8:12, 12:16] = 1  # cell (2, 3)
    cells = grounding_cells(target, 4)
    assert cells.shape == (2, 16) and cells[0].nonzero().flatten().tolist() == [0]
    assert cells[1].nonzero().flatten().tolist() == [11]
    logits = torch.randn(2, 1, 4, 4)
    scores = logits.flatten(1)
    by_hand = -(torch.log_softmax(scores, 1) * cells).sum(1).mean() + torch.nn.functional.binary_cross_entropy_with_logits(scores, cells)
    torch.testing.assert_close(grounding_loss(logits, target), by_hand)
    on_target = (cells * 8 - 4).view(2, 1, 4, 4)
    elsewhere = on_target.flip(-1)
    assert grounding_loss(on_target, target) < 0.1 < grounding_loss(elsewhere, target)
    # a target over two cells shares the softmax mass between them
    two = torch.zeros(1, 16, 16)
    two[0, 0:4, 0:8] = 1
    even = torch.zeros(1, 1, 4, 4)
    even[0, 0, 0, :2] = 5.0
    lopsided = even.clone()
    lopsided[0, 0, 0, 1] = -5.0
    assert grounding_loss(even, two) < grounding_loss(lopsided, two)
    logits.requires_grad_(True)
    grounding_loss(logits, target).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="grid_logits"):
        grounding_loss(torch.zeros(2, 4, 4), target)
    with pytest.raises(ValueError, match="target"):
        grounding_loss(logits.detach(), target[0])
