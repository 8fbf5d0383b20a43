"""Published freeze policy, unreachable parameters and the two learning-rate groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rs2sam2 import build_model
from rs2sam2.checkpoints import IGNORED_PUBLISHED_PREFIXES, convert_published_state_dict
from rs2sam2.config import FusionConfig
from rs2sam2.losses import RS2SAM2Loss
from rs2sam2.train.policy import (
    freeze_published,
    freeze_unreachable,
    is_fusion_parameter,
    param_groups,
    per_sample_loss,
    unreachable_parameter_names,
)

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
PUBLISHED_FUSION = ("vlfusion_module", "lvfusion_module", "text_in_linear", "text_out_linear", "MLP_Adapter",
                    "Space_Adapter", "mask_linear", "mask_product", "vmtoken")


def _numel(model, predicate) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if predicate(n))


def _expected_counts(model) -> dict[str, tuple[int, int]]:
    """Trainable / total per part, computed from the policy's definition (independently of train.py)."""
    cfg = model.config
    last = sum(cfg.hiera.stages) - 1
    dead_adapter = (f"image_encoder.trunk.blocks.{last}.space_adapter.attend_image.",
                    f"image_encoder.trunk.blocks.{last}.space_adapter.text_out.")
    dead_decoder = ("mask_decoder.iou_prediction_head.", "mask_decoder.pred_obj_score_head.") + tuple(
        f"mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3))
    dead_prompt = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
                   "prompt_encoder.no_mask_embed.")
    out = {}
    for part in ("union_encoder", "text_proj", "sparse_prompt", "mpg", "boundary_head", "image_encoder",
                 "prompt_encoder", "mask_decoder", "no_mem_embed"):
        total = _numel(model, lambda n: n.split(".")[0] == part)
        out[part] = (total, total)
    adapters = _numel(model, lambda n: n.startswith("image_encoder.")
                      and (".space_adapter." in n or ".mlp_adapter." in n) and not n.startswith(dead_adapter))
    out["image_encoder"] = (adapters, out["image_encoder"][1])
    out["mask_decoder"] = (out["mask_decoder"][1] - _numel(model, lambda n: n.startswith(dead_decoder)),
                           out["mask_decoder"][1])
    out["prompt_encoder"] = (out["prompt_encoder"][1] - _numel(model, lambda n: n.startswith(dead_prompt)),
                             out["prompt_encoder"][1])
    return out


@pytest.mark.parametrize("preset", ["nano", "tiny-parity", "paper"])
def test_published_freeze_counts_per_part(preset, monkeypatch):
    linspace = torch.linspace  # Hiera's drop-path schedule calls .tolist(): keep that one tensor on the CPU
    monkeypatch.setattr(torch, "linspace", lambda *a, **k: linspace(*a, **{**k, "device": "cpu"}))
    with torch.device("meta"):  # shapes only: even the 927M-parameter paper model builds instantly
        model = build_model(preset)
    counts = freeze_published(model)
    expected = _expected_counts(model)
    for part, (trainable, total) in expected.items():
        assert counts[part] == {"trainable": trainable, "total": total}, part
    # the whole image encoder outside the adapters is frozen, everything else (reachable) trains
    for n, p in model.named_parameters():
        if n.startswith("image_encoder.") and ".space_adapter." not in n and ".mlp_adapter." not in n:
            assert not p.requires_grad, n
        if n.startswith(("union_encoder.", "text_proj.", "sparse_prompt.", "mpg.", "boundary_head.",
                         "mask_decoder.text_guidance.", "mask_decoder.transformer.",
                         "prompt_encoder.mask_downscaling.")):
            assert p.requires_grad, n
    assert counts["total"]["total"] == sum(p.numel() for p in model.parameters())
    if preset == "paper":
        # sanity of the documented numbers: ~927M parameters, the frozen Hiera-L trunk ~212M
        assert 900e6 < counts["total"]["total"] < 950e6
        frozen = counts["total"]["total"] - counts["total"]["trainable"]
        assert 200e6 < frozen < 240e6


def test_nano_trainable_counts_are_stable():
    """Exact numbers for the nano preset (guards accidental changes of the policy or the model)."""
    model = build_model("nano")
    counts = freeze_published(model)
    exp = _expected_counts(model)
    assert counts["image_encoder"]["trainable"] == exp["image_encoder"][0] > 0
    assert counts["image_encoder"]["trainable"] < counts["image_encoder"]["total"]
    assert counts["union_encoder"]["trainable"] == counts["union_encoder"]["total"]


def _backward(model, batch=2, seed=0):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=g)
    evf = torch.randn(batch, 3, cfg.beit3.img_size, cfg.beit3.img_size, generator=g)
    ids = torch.randint(4, cfg.beit3.vocab_size, (batch, 7), generator=g)
    target = (torch.rand(batch, cfg.image_size, cfg.image_size, generator=g) > 0.7).float()
    out = model(images, evf, ids, torch.ones_like(ids, dtype=torch.bool))
    per_sample_loss(RS2SAM2Loss(boundary="soft"), out.logits, target, out.boundary_weight).total.backward()


@pytest.mark.parametrize(
    "fusion",
    [FusionConfig(), FusionConfig(bhfm="uni"), FusionConfig(bhfm="linear", mpg=False),
     FusionConfig(bhfm="off", text_guidance=False, sparse_prompt=False)],
    ids=["published", "uni", "linear-nompg", "off"],
)
def test_unreachable_parameters_are_exactly_those_without_gradient(fusion):
    """Every parameter named unreachable gets no gradient, every other one gets one -- so after
    freezing them, DDP without find_unused_parameters sees a gradient for every trainable parameter."""
    torch.manual_seed(0)
    model = build_model("nano", image_size=128, fusion=fusion)
    _backward(model)
    no_grad = {n for n, p in model.named_parameters() if p.grad is None}
    assert no_grad == set(unreachable_parameter_names(model))


def test_after_freeze_every_trainable_parameter_receives_a_gradient():
    torch.manual_seed(0)
    model = build_model("nano", image_size=128)
    frozen = freeze_unreachable(model)
    assert any("iou_prediction_head" in n for n in frozen)
    assert "prompt_encoder.no_mask_embed.weight" in frozen  # the MPG supplies the dense prompt
    _backward(model)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    freeze_published(model)
    model.zero_grad(set_to_none=True)
    _backward(model, seed=1)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # frozen parameters receive no gradient
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)


def test_param_groups_split_fusion_and_base():
    model = build_model("nano")
    freeze_published(model)
    groups = param_groups(model, lr=5e-5, lr_fusion=1e-4, weight_decay=0.01)
    assert [g["name"] for g in groups] == ["fusion", "base"]
    assert groups[0]["lr"] == 1e-4 and groups[1]["lr"] == 5e-5
    assert all(g["weight_decay"] == 0.01 for g in groups)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    names = {id(p): n for n, p in model.named_parameters()}
    fusion_names = [names[id(p)] for p in groups[0]["params"]]
    assert any(".space_adapter." in n for n in fusion_names)
    assert any(".mlp_adapter." in n for n in fusion_names)
    assert any(n.startswith("mpg.") for n in fusion_names)
    assert any(n.startswith("mask_decoder.text_guidance.") for n in fusion_names)
    base_names = [names[id(p)] for p in groups[1]["params"]]
    assert not any(is_fusion_parameter(n) for n in base_names)
    assert any(n.startswith("union_encoder.") for n in base_names)


def test_fusion_group_matches_the_published_name_rule():
    """Our lr-group rule on our names == the published rule (vlfusion_module, MLP_Adapter, vmtoken...)
    on the published names, key by key over the whole paper model."""
    entries = json.loads((FIXTURES / "paper_manifest.json").read_text())
    checked = 0
    for e in entries:
        key = e["key"]
        if key.startswith(IGNORED_PUBLISHED_PREFIXES):
            continue
        converted, _ = convert_published_state_dict({key: torch.empty(e["shape"], device="meta")})
        published = any(m in key for m in PUBLISHED_FUSION)
        for ours in converted:
            assert is_fusion_parameter(ours) == published, (key, ours)
            checked += 1
    assert checked > 1000


def test_trainable_parameter_counts_totals():
    from rs2sam2.checkpoints import parameter_counts

    model = build_model("nano")
    counts = parameter_counts(model)
    assert counts["total"]["trainable"] == counts["total"]["total"] == sum(p.numel() for p in model.parameters())
