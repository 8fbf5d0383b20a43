"""Parity with the published implementation: weights rebuilt from the manifests, loaded through the
public loader, every intermediate of the golden files compared so a failure names the stage."""

import numpy as np
import pytest
import torch

import rs2sam2
from conftest import DEVICE
from parity_weights import FIXTURES, manifest_state_dict
from rs2sam2.models.common import PackedLinear

# golden field -> how to read ours off the output object
STAGES = {
    "beit3_encoder_out": lambda o: o.union_features,
    "sparse_text_embed": lambda o: o.sparse_prompt,
    "decoder_text_feat": lambda o: o.text_features,
    "mask_prompt_256": lambda o: o.mask_prompt,
    "high_res_0": lambda o: o.high_res_features[0],
    "high_res_1": lambda o: o.high_res_features[1],
    "decoder_image_embed": lambda o: o.image_embed,
    "low_res_masks": lambda o: o.low_res_logits,
    "pred_masks": lambda o: o.logits,
    "sen_feat": lambda o: o.boundary_weight,
}


def run_case(model, golden, case):
    g = lambda k: torch.from_numpy(golden[f"{case}_{k}"])  # noqa: E731
    ids = g("input_ids").to(DEVICE)
    with torch.no_grad():
        out = model(g("images").float().to(DEVICE), g("images_evf").float().to(DEVICE), ids, ids != 3,
                    return_intermediates=True)
    return _to_cpu(out), g


def _to_cpu(out):
    for name in out.keys():
        value = getattr(out, name)
        setattr(out, name, tuple(v.cpu() for v in value) if isinstance(value, tuple) else value.cpu())
    return out


def check_case(model, golden, case):
    out, g = run_case(model, golden, case)
    for field, get in STAGES.items():
        if f"{case}_{field}" not in golden:
            continue
        ref = g(field)
        ours = get(out).reshape(ref.shape)
        # fields stored as float16 are only known to half precision: allow their rounding step
        rtol = 2.0**-10 if ref.dtype == torch.float16 else 0.0
        torch.testing.assert_close(ours, ref.float(), atol=1e-3, rtol=rtol, msg=lambda m: f"{case} stage {field}: {m}")
    logits, ref = out.logits, g("pred_masks")
    agree = ((logits > 0.5) == (ref > 0.5)).float().mean().item()
    assert agree >= 0.9999, f"{case}: binarised masks agree on {agree:.6f} of pixels"


@pytest.mark.parametrize("case", ["case0", "case1"])
def test_tiny_parity(tiny_parity_model, case):
    golden = np.load(FIXTURES / "tiny_golden.npz")
    check_case(tiny_parity_model, golden, case)


@pytest.mark.slow
def test_paper_parity():
    model = rs2sam2.build_model("paper").eval()
    report = rs2sam2.load_official_state_dict(model, manifest_state_dict("paper"))
    assert not report.newly_initialised
    check_case(model.to(DEVICE), np.load(FIXTURES / "paper_golden.npz"), "case0")


@pytest.mark.skipif(DEVICE != "cpu", reason="packed linear weights are a CPU inference path")
def test_tiny_parity_with_packed_linear_weights(tiny_published_state_dict):
    """The Predictor's CPU path (linear weights in oneDNN's packed layout) meets the same goldens;
    set_precision gives the plain layers back, with the same state dict."""
    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    packed = model.pack_linear_weights()
    if packed == 0:
        pytest.skip("this PyTorch has no oneDNN")
    assert packed == sum(1 for m in model.modules() if isinstance(m, PackedLinear))
    golden = np.load(FIXTURES / "tiny_golden.npz")
    for case in ("case0", "case1"):
        check_case(model, golden, case)
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="unpack them first"):
        next(m for m in model.modules() if isinstance(m, PackedLinear)).to(torch.bfloat16)
    model.to("cpu")  # a move or a cast gives the plain layers back, with the same weights
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())
    model.pack_linear_weights()
    model.set_precision("fp32")
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
