"""Linear layers on oneDNN-packed weights (the CPU inference path): the same products as the plain
layers, the GELU of an MLP taken into its hidden layers' products, and the plain layers back."""

import pytest
import torch
from torch import nn

from rs2sam2.models.common import MLP, PackedLinear, pack_linear_layers, packed_linear_available, unpack_linear_layers

pytestmark = pytest.mark.skipif(not packed_linear_available(), reason="this PyTorch has no oneDNN")


def _mlp(act, dtype):
    torch.manual_seed(0)
    return MLP(24, 96, 16, 3, act=act).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mlp_gelu_moves_into_the_packed_hidden_layers_and_back(dtype):
    if not packed_linear_available(dtype):
        pytest.skip(f"oneDNN computes no packed {dtype} product on this CPU")
    mlp = _mlp(nn.GELU, dtype)
    x = torch.randn(5, 7, 24).to(dtype)
    state = {k: v.clone() for k, v in mlp.state_dict().items()}
    with torch.inference_mode():
        plain = mlp(x)
        assert pack_linear_layers(mlp) == 3
        assert [layer.activation for layer in mlp.layers] == ["gelu", "gelu", "none"]
        assert isinstance(mlp.act, nn.Identity)
        packed = mlp(x)
        # the same products; bfloat16 outputs may differ by their rounding step
        tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(packed.float(), plain.float(), **tol)
        assert all(torch.equal(v, state[k]) for k, v in mlp.state_dict().items())
        unpack_linear_layers(mlp)
        assert type(mlp.act) is nn.GELU and all(type(layer) is nn.Linear for layer in mlp.layers)
        assert torch.equal(mlp(x), plain)


def test_other_activations_stay_outside_the_product():
    for act in (nn.ReLU, lambda: nn.GELU(approximate="tanh")):
        mlp = _mlp(act, torch.float32)
        x = torch.randn(4, 24)
        with torch.inference_mode():
            plain = mlp(x)
            pack_linear_layers(mlp)
            assert all(layer.activation == "none" for layer in mlp.layers)
            assert not isinstance(mlp.act, nn.Identity)
            torch.testing.assert_close(mlp(x), plain, atol=1e-5, rtol=1e-5)


def test_gelu_is_fused_only_when_every_hidden_layer_is_packed():
    mlp = _mlp(nn.GELU, torch.float32)
    mlp.layers[1] = mlp.layers[1].to(torch.float16)  # a dtype with no packed product
    pack_linear_layers(mlp)
    assert [type(layer) for layer in mlp.layers] == [PackedLinear, nn.Linear, PackedLinear]
    assert all(layer.activation == "none" for layer in (mlp.layers[0], mlp.layers[2]))
    assert type(mlp.act) is nn.GELU


def test_packed_layers_refuse_a_cast_or_move():
    layer = PackedLinear(nn.Linear(8, 8))
    layer.to("cpu")  # no change: allowed
    with pytest.raises(RuntimeError, match="unpack them first"):
        layer.to(torch.bfloat16)
    if packed_linear_available(torch.bfloat16):
        bf16 = PackedLinear(nn.Linear(8, 8).to(torch.bfloat16))
        bf16.to("cpu")
        with pytest.raises(RuntimeError, match="unpack them first"):
            bf16.float()


def test_training_mode_gives_the_plain_layers_back():
    """Packed weights get no gradient: a model put back into training mode trains plain layers
    (the training-step benchmark builds its model the way inference does)."""
    import rs2sam2
    from rs2sam2.benchmark import build_random_model

    model = build_random_model("nano", "fp32", "cpu")
    assert any(isinstance(m, PackedLinear) for m in model.modules())
    model.eval()  # staying in inference keeps them
    assert any(isinstance(m, PackedLinear) for m in model.modules())
    model.train()
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    assert isinstance(model, rs2sam2.RS2SAM2)
    layer = model.image_encoder.trunk.blocks[0].mlp.layers[0]
    assert type(layer) is nn.Linear and layer.weight.requires_grad
    assert type(model.image_encoder.trunk.blocks[0].mlp.act) is nn.GELU


def test_layers_off_the_cpu_stay_plain():
    with torch.device("meta"):
        mlp = MLP(24, 96, 16, 3, act=nn.GELU)
    assert pack_linear_layers(mlp) == 0
    assert all(type(layer) is nn.Linear for layer in mlp.layers) and type(mlp.act) is nn.GELU
