"""bf16 inference keeps the masks: agreement with the published fp32 masks on the parity fixtures."""

import numpy as np
import pytest
import torch

import rs2sam2
from conftest import DEVICE
from parity_weights import FIXTURES
from rs2sam2.models.common import packed_linear_available


@pytest.fixture(scope="module")
def bf16_tiny(tiny_published_state_dict):
    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    return model.set_precision("bf16").to(DEVICE)


def test_bf16_weights_are_cast_once(bf16_tiny):
    trunk = bf16_tiny.image_encoder.trunk
    assert trunk.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert trunk.blocks[0].norm1.weight.dtype == torch.float32  # norms stay fp32
    assert bf16_tiny.union_encoder.layers[0].ffn.text.fc1.weight.dtype == torch.bfloat16
    assert bf16_tiny.mask_decoder.transformer.layers[0].self_attn.q_proj.weight.dtype == torch.float32


@pytest.fixture(scope="module")
def bf16_tiny_packed(tiny_published_state_dict):
    """The Predictor's CPU path: bf16, linear weights in oneDNN's packed layout."""
    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    model.set_precision("bf16")
    if DEVICE != "cpu" or not packed_linear_available(torch.bfloat16):
        pytest.skip("packed bf16 linear weights are a CPU path of oneDNN on CPUs that compute bf16")
    model.pack_linear_weights()
    return model


@pytest.mark.parametrize("case", ["case0", "case1"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "packed"])
def test_bf16_mask_agreement(request, packed, case):
    bf16_tiny = request.getfixturevalue("bf16_tiny_packed" if packed else "bf16_tiny")
    golden = np.load(FIXTURES / "tiny_golden.npz")
    g = lambda k: torch.from_numpy(golden[f"{case}_{k}"]).to(DEVICE)  # noqa: E731
    ids = g("input_ids")
    with torch.inference_mode():
        out = bf16_tiny(g("images").float(), g("images_evf").float(), ids, ids != 3)
    assert out.logits.dtype == torch.float32
    agree = ((out.logits > 0.5) == (g("pred_masks") > 0.5)).float().mean().item()
    print(f"{case}: bf16 masks agree with fp32 on {agree:.4%} of pixels")
    assert agree >= 0.995


@pytest.mark.parametrize("masked", [None, "keys", "queries and keys"])
def test_bf16_cpu_attention_matches_float32_and_its_blocks(masked, monkeypatch):
    """bf16 attention on the CPU (two bf16 products, keys centred) stays close to float32 SDPA on the
    same inputs, also when every key shares a large offset; computed in blocks of queries it is the same."""
    from rs2sam2.models import common

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 16, generator=g) for _ in range(3))
    k = k + 8 * torch.randn(1, 1, 1, 16, generator=g)  # a shared offset: large raw scores
    q, k, v = q.bfloat16(), k.bfloat16(), v.bfloat16()
    mask = None
    if masked == "keys":
        mask = (torch.arange(40) < 33).view(1, 1, 1, 40).expand(2, 1, 1, 40)
    elif masked == "queries and keys":  # query i attends keys 0..i
        mask = torch.ones(40, 40, dtype=torch.bool).tril().expand(2, 3, 40, 40)
    reference = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    whole = common.attention(q, k, v, mask)
    assert whole.dtype == torch.bfloat16
    assert (whole.float() - reference).abs().max().item() < 0.015  # 0.04 with the raw keys
    monkeypatch.setattr(common, "_SCORE_BLOCK", 7 * 40 * 6)  # 7 queries per block: 6 blocks, the last short
    assert torch.equal(common.attention(q, k, v, mask), whole)
