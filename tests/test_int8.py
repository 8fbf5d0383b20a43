"""``precision="int8"`` (CPU): the Hiera MLP layers as dynamically quantized int8 layers keep the masks
of the published fp32 model on >= 99.5% of the pixels of every parity fixture case."""

import numpy as np
import pytest
import torch

import helpers_ckpt as h
import rs2sam2
from parity_weights import FIXTURES, manifest_state_dict
from rs2sam2 import runtime
from rs2sam2.predict import Predictor


def _agreement(model, golden, case) -> float:
    g = lambda k: torch.from_numpy(golden[f"{case}_{k}"])  # noqa: E731
    ids = g("input_ids")
    with torch.inference_mode():
        out = model(g("images").float(), g("images_evf").float(), ids, ids != 3)
    assert out.logits.dtype == torch.float32
    return ((out.logits > 0.5) == (g("pred_masks") > 0.5)).float().mean().item()


@pytest.fixture(scope="module")
def int8_tiny(tiny_published_state_dict):
    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    return model.set_precision("int8")


def test_only_the_block_mlps_are_quantized(int8_tiny):
    block = int8_tiny.image_encoder.trunk.blocks[0]
    quantized = torch.ao.nn.quantized.dynamic.Linear
    assert all(isinstance(layer, quantized) for layer in block.mlp.layers)
    assert type(block.attn.qkv) is torch.nn.Linear and block.attn.qkv.weight.dtype == torch.float32
    assert type(block.mlp_adapter.fc1) is torch.nn.Linear
    assert type(int8_tiny.union_encoder.layers[0].ffn.vision.fc1) is torch.nn.Linear


@pytest.mark.parametrize("case", ["case0", "case1"])
def test_int8_mask_agreement_tiny(int8_tiny, case):
    agree = _agreement(int8_tiny, np.load(FIXTURES / "tiny_golden.npz"), case)
    print(f"{case}: int8 masks agree with fp32 on {agree:.4%} of pixels")
    assert agree >= 0.995


@pytest.mark.slow
def test_int8_mask_agreement_paper():
    model = rs2sam2.build_model("paper").eval()
    rs2sam2.load_official_state_dict(model, manifest_state_dict("paper"))
    agree = _agreement(model.set_precision("int8"), np.load(FIXTURES / "paper_golden.npz"), "case0")
    print(f"paper: int8 masks agree with fp32 on {agree:.4%} of pixels")
    assert agree >= 0.995


def test_int8_cannot_be_undone_and_needs_the_cpu(int8_tiny):
    assert int8_tiny.set_precision("int8") is int8_tiny
    with pytest.raises(ValueError, match="quantized to int8; load its weights again"):
        int8_tiny.set_precision("fp32")
    assert runtime.resolve_precision("int8", "cpu") == "int8"  # never chosen by auto, kept when asked for
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        runtime.resolve_precision("int8", "cuda")


def test_predictor_int8(tmp_path):
    ckpt = h.build_checkpoint(tmp_path / "nano")
    image = h.write_png(tmp_path / "photo.png")
    fp32 = Predictor.from_pretrained(ckpt, precision="fp32").predict(image, "the ship", threshold=0.0)
    q = Predictor.from_pretrained(ckpt, precision="int8")
    assert q.precision == "int8"
    got = q.predict(image, "the ship", threshold=0.0)
    assert got.logits.dtype == np.float32 and got.logits.shape == fp32.logits.shape
    assert 0 < np.abs(got.logits - fp32.logits).max() < 0.01  # quantized (not identical), and close
    assert (got.mask == fp32.mask).mean() > 0.99
