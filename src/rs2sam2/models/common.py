"""Small building blocks shared by the SAM2 heads, BHFM, the MPG and the decoder guidance."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """``scaled_dot_product_attention(q, k, v, attn_mask=mask)`` for (B, heads, N, head_dim) inputs
    (``mask``: boolean, True where a key may be attended).

    bfloat16 inputs on the CPU (the bf16 inference path) go through :func:`_bf16_cpu_attention`:
    the CPU flash kernel's bf16 variant rounds inside the softmax product, which flips mask pixels
    near the threshold, and on CPUs without AMX it runs no faster than its float32 variant
    (benchmarks/README.md, issue 29). Elsewhere SDPA runs as it is.
    """
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        return _bf16_cpu_attention(q, k, v, mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


#: scores computed at a time by :func:`_bf16_cpu_attention` (elements; 32 MB in bfloat16)
_SCORE_BLOCK = 1 << 24


def _bf16_cpu_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """Attention of bfloat16 inputs as two bf16 matrix products (the CPU's bf16 GEMM rate) around a
    softmax computed in float32 (torch's CPU softmax of bf16).

    The keys are centred first (their mean over the keys subtracted, in float32, then the scale
    folded in): that moves every score of a query by the same amount, which the softmax cancels,
    and the scores it leaves are small, so rounding them to bfloat16 costs little. Queries go in
    blocks so that at most :data:`_SCORE_BLOCK` scores exist at once."""
    kf = k.float()
    k = ((kf - kf.mean(dim=-2, keepdim=True)) * q.shape[-1] ** -0.5).to(torch.bfloat16).transpose(-1, -2)
    if mask is not None:
        mask = mask.logical_not()
    rows = max(1, _SCORE_BLOCK // max(1, k.shape[-1] * q.shape[:-2].numel()))
    outs = []
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], k)
        if mask is not None:
            scores.masked_fill_(mask if mask.shape[-2] == 1 else mask[..., start:start + rows, :], float("-inf"))
        outs.append(torch.matmul(torch.softmax(scores, dim=-1), v))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-2)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections (SAM's layout).

    ``internal_dim = embed_dim // downsample_rate``. It also stands in for the published
    ``nn.MultiheadAttention`` layers (their ``in_proj_weight`` is split into q/k/v by the
    checkpoint loader): the arithmetic is the same.

    ``key_padding_mask`` (B, Nk) is True where a key is *valid* (the SDPA convention).
    """

    def __init__(self, embed_dim: int, num_heads: int, downsample_rate: int = 1, kv_in_dim: int | None = None):
        super().__init__()
        self.num_heads = num_heads
        internal = embed_dim // downsample_rate
        if internal % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide the attention width {internal}")
        kv_in_dim = kv_in_dim or embed_dim
        self.q_proj = nn.Linear(embed_dim, internal)
        self.k_proj = nn.Linear(kv_in_dim, internal)
        self.v_proj = nn.Linear(kv_in_dim, internal)
        self.out_proj = nn.Linear(internal, embed_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, nq, _ = q.shape
        nk = k.shape[1]
        h = self.num_heads
        q = self.q_proj(q).view(b, nq, h, -1).transpose(1, 2)
        k = self.k_proj(k).view(b, nk, h, -1).transpose(1, 2)
        v = self.v_proj(v).view(b, nk, h, -1).transpose(1, 2)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = attention(q, k, v, mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, nq, -1))


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (SAM's ``MLP``)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, act: type[nn.Module] = nn.ReLU):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.act(x)
        return x


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution (same parameters and checkpoint keys as ``nn.Conv2d(in, out, 1)``) computed
    as a linear layer over the channels of the NHWC memory behind an NCHW tensor.

    Its inputs (Hiera's stage outputs and the FPN levels) are NCHW views of channels-last memory;
    PyTorch's CPU convolution falls back to a slow im2col path for those, while the matrix multiply
    reads them as they are. The output is again an NCHW view of channels-last memory.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)


def add_into(x: Tensor, y: Tensor, alpha: float = 1.0) -> Tensor:
    """``x + alpha * y``, written into ``x`` when no autograd graph is being recorded (inference):
    one pass over the activation instead of a new allocation (and, with ``alpha``, instead of two
    passes). ``x`` must be a temporary that nothing else refers to."""
    if torch.is_grad_enabled():
        return torch.add(x, y, alpha=alpha)
    return x.add_(y, alpha=alpha)


def quantize_linear_layers_int8(module: nn.Module) -> None:
    """Replace every ``nn.Linear`` inside ``module`` by a dynamically quantized int8 one, in place:
    int8 weights with one scale per output channel, activations quantized per call; CPU only.

    Uses PyTorch's own dynamic quantization (``torch.ao``), whose x86 / ARM int8 kernels are the
    fast ones in eager mode; it is deprecated upstream, so its deprecation notices are silenced
    here and a PyTorch without it gets a clear error.
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic  # noqa: PLC0415 - may leave PyTorch
    except ImportError as exc:  # removed from a future PyTorch
        raise RuntimeError(f"precision int8 needs torch.ao dynamic quantization, which this PyTorch "
                           f"({torch.__version__}) does not provide") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        quantize_dynamic(module, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)


class PackedLinear(nn.Module):
    """An ``nn.Linear`` whose float32 weight is held in oneDNN's packed layout, for inference on the CPU.

    PyTorch's own CPU linear layer reads its weight in the plain layout at every call; oneDNN's
    product on a weight packed once for it runs the float32 linear layers of the paper preset
    faster on the x86 CPU measured (benchmarks/README.md, issue 29). The packed tensor replaces the
    plain one (no second copy of the weights); the state dict it writes still holds the plain
    ``weight`` (weights are loaded into plain layers), and :func:`unpack_linear_layers` gives the
    ``nn.Linear`` back. Inference only: no gradient reaches
    the weight, and the layer stays a float32 CPU layer (moving or casting it is refused;
    ``RS2SAM2`` unpacks its layers before any move or cast).
    """

    def __init__(self, layer: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), None)
        self.bias = layer.bias

    @property
    def weight(self) -> Tensor:
        """The packed weight (its ``dtype`` and ``shape`` are the plain weight's)."""
        return self.packed

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def unpacked(self) -> nn.Linear:
        """The plain ``nn.Linear`` with the same weights."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        layer.bias = self.bias
        return layer

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0))
        if probe.device.type != "cpu" or probe.dtype != torch.float32:
            raise RuntimeError("packed linear layers are float32 CPU layers: unpack them first "
                               "(RS2SAM2.set_precision does) before moving or casting the model")
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed"


def packed_linear_available() -> bool:
    """Whether this PyTorch has oneDNN's packed linear product (x86 and ARM builds with oneDNN)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def pack_linear_layers(module: nn.Module, freed: Callable[[int], object] | None = None) -> int:
    """Replace every float32 CPU ``nn.Linear`` inside ``module`` by a :class:`PackedLinear`, in
    place; returns how many (none where PyTorch was built without oneDNN). ``freed(nbytes)`` is
    called after each layer with the bytes of the plain weight it let go."""
    if not packed_linear_available():
        return 0
    count = 0
    for name, child in list(module.named_children()):
        if type(child) is nn.Linear and child.weight.dtype == torch.float32 and child.weight.device.type == "cpu":
            nbytes = child.weight.numel() * child.weight.element_size()
            setattr(module, name, PackedLinear(child))
            del child
            count += 1
            if freed is not None:
                freed(nbytes)
        else:
            count += pack_linear_layers(child, freed)
    return count


def unpack_linear_layers(module: nn.Module) -> None:
    """Undo :func:`pack_linear_layers`: every :class:`PackedLinear` inside ``module`` becomes an ``nn.Linear`` again."""
    for name, child in list(module.named_children()):
        if isinstance(child, PackedLinear):
            setattr(module, name, child.unpacked())
        else:
            unpack_linear_layers(child)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel axis of an NCHW tensor (eps 1e-6 as in SAM)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def valid_text_mask(attention_mask: Tensor) -> Tensor:
    """Which text positions are real tokens rather than batch padding.

    The published rule masks unknown tokens in BEiT-3 (``ids != pad`` with pad == unk) but lets
    BHFM and the decoder attend to every position. We mask only trailing padding there: every
    position up to the last unmasked one (the EOS) counts as text. At batch size 1 this is exactly
    the published behaviour; in a batch it stops padding from leaking into the other modules.
    """
    length = attention_mask.shape[1]
    pos = torch.arange(length, device=attention_mask.device)
    last = torch.where(attention_mask.bool(), pos, -1).amax(dim=1, keepdim=True)
    return pos[None, :] <= last


def call_block(block: nn.Module, checkpointed: bool, *args):
    """``block(*args)``; with ``checkpointed`` while autograd records, its activations are not kept
    but recomputed in the backward pass (non-reentrant ``torch.utils.checkpoint``)."""
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(block, *args, use_reentrant=False)
    return block(*args)
