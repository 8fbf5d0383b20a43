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
    and the scores it leaves are small, so rounding them to bfloat16 costs little. The centred keys
    are written contiguous, so the product reads their transpose without another copy. Queries go
    in blocks so that at most :data:`_SCORE_BLOCK` scores exist at once."""
    kf = k.float()
    centred = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    torch.mul(kf.sub_(kf.mean(dim=-2, keepdim=True)), q.shape[-1] ** -0.5, out=centred)
    keys = centred.transpose(-1, -2)
    if mask is not None:
        mask = mask.logical_not()
    rows = max(1, _SCORE_BLOCK // max(1, k.shape[-2] * q.shape[:-2].numel()))
    outs = []
    for start in range(0, q.shape[-2], rows):
        scores = torch.matmul(q[..., start:start + rows, :], keys)
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

    def exact_gelu(self) -> bool:
        """Whether the activation is the exact (erf) GELU, which a packed product can apply as
        it writes its output (:func:`pack_linear_layers`)."""
        return type(self.act) is nn.GELU and self.act.approximate == "none"


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
    """An ``nn.Linear`` whose weight is held in oneDNN's packed layout, for inference on the CPU.

    PyTorch's own CPU linear layer reads its weight in the plain layout at every call (and in
    bfloat16 first copies the bias into the output); oneDNN's product on a weight packed once for
    it, with the bias (and an exact GELU, ``activation="gelu"``) applied as it writes the output,
    runs the linear layers of the paper preset faster on the x86 CPU measured, in float32 and in
    bfloat16 (benchmarks/README.md, issue 29). The packed tensor replaces the plain one (no second
    copy of the weights); the state dict it writes still holds the plain ``weight`` (weights are
    loaded into plain layers), and :meth:`unpacked` gives the ``nn.Linear`` back. Inference only:
    no gradient reaches the weight, and the layer stays a CPU layer in its dtype (moving or
    casting it is refused; ``RS2SAM2`` unpacks its layers before any move or cast).
    """

    def __init__(self, layer: nn.Linear, activation: str = "none"):
        super().__init__()
        if activation not in ("none", "gelu"):
            raise ValueError(f"activation must be 'none' or 'gelu', got {activation!r}")
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.activation = activation
        self.packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), None)
        self.weight_requires_grad = layer.weight.requires_grad  # for the plain layer given back
        self.bias = layer.bias

    @property
    def weight(self) -> Tensor:
        """The packed weight (its ``dtype`` and ``shape`` are the plain weight's)."""
        return self.packed

    def forward(self, x: Tensor) -> Tensor:
        # "none" as the GELU's algorithm: the exact (erf) GELU of nn.GELU()
        algorithm = "none" if self.activation == "gelu" else ""
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, self.activation, [], algorithm)

    def unpacked(self) -> nn.Linear:
        """The plain ``nn.Linear`` with the same weights (without the activation)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        layer.weight = nn.Parameter(self.packed.to_dense(), requires_grad=self.weight_requires_grad)
        layer.bias = self.bias
        return layer

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0, dtype=self.packed.dtype))
        if probe.device.type != "cpu" or probe.dtype != self.packed.dtype:
            raise RuntimeError("packed linear layers are CPU layers in their dtype: unpack them first "
                               "(RS2SAM2.set_precision does) before moving or casting the model")
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.packed.to_dense()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def extra_repr(self) -> str:
        act = f", activation={self.activation}" if self.activation != "none" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}{act}, packed"


def packed_linear_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this PyTorch has oneDNN's packed linear product in ``dtype`` (float32: x86 and ARM
    builds with oneDNN; bfloat16: where oneDNN computes it on this CPU, which it refuses on CPUs
    without AVX-512 or bf16 instructions; no other dtype). Checked once per dtype with a small product."""
    if dtype not in _packing:
        _packing[dtype] = _try_packed_product(dtype)
    return _packing[dtype]


_packing: dict[torch.dtype, bool] = {}


def _try_packed_product(dtype: torch.dtype) -> bool:
    if dtype not in (torch.float32, torch.bfloat16):
        return False
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.float32:
        return True
    try:
        layer = PackedLinear(nn.Linear(16, 16, dtype=dtype))
        with torch.no_grad():
            layer(torch.zeros(2, 16, dtype=dtype))
    except RuntimeError:  # oneDNN: "... bf16 path needs the cpu support avx512bw, avx512vl and avx512dq"
        return False
    return True


def pack_linear_layers(module: nn.Module, freed: Callable[[int], object] | None = None) -> int:
    """Replace every float32 or bfloat16 CPU ``nn.Linear`` inside ``module`` by a
    :class:`PackedLinear`, in place (each dtype where :func:`packed_linear_available`); the hidden
    layers of an :class:`MLP` with an exact GELU take the GELU into their product. Returns how
    many layers were packed. ``freed(nbytes)`` is called after each layer with the bytes of the
    plain weight it let go."""
    if isinstance(module, MLP):
        return _pack_mlp(module, freed)
    count = 0
    for name in [name for name, _ in module.named_children()]:
        if _packable(getattr(module, name)):
            _pack_into(module, name, "none", freed)
            count += 1
        else:
            count += pack_linear_layers(getattr(module, name), freed)
    return count


def _packable(layer: nn.Module) -> bool:
    return type(layer) is nn.Linear and layer.weight.device.type == "cpu" and packed_linear_available(layer.weight.dtype)


def _pack_mlp(mlp: MLP, freed: Callable[[int], object] | None) -> int:
    # the GELU moves into the hidden layers' products only if every one of them is packed
    last = len(mlp.layers) - 1
    fuse = mlp.exact_gelu() and all(_packable(layer) for layer in list(mlp.layers)[:last])
    count = 0
    for i in range(len(mlp.layers)):
        if _packable(mlp.layers[i]):
            _pack_into(mlp.layers, str(i), "gelu" if fuse and i < last else "none", freed)
            count += 1
        else:
            count += pack_linear_layers(mlp.layers[i], freed)
    if fuse and last > 0:
        mlp.act = nn.Identity()  # the hidden layers apply it
    return count


def _pack_into(parent: nn.Module, name: str, activation: str, freed: Callable[[int], object] | None) -> None:
    layer = getattr(parent, name)
    nbytes = layer.weight.numel() * layer.weight.element_size()
    setattr(parent, name, PackedLinear(layer, activation))
    del layer  # the plain weight's last reference
    if freed is not None:
        freed(nbytes)


def unpack_linear_layers(module: nn.Module) -> None:
    """Undo :func:`pack_linear_layers`: every :class:`PackedLinear` inside ``module`` becomes an
    ``nn.Linear`` again, and an MLP whose layers applied the GELU applies it again itself."""
    if isinstance(module, MLP) and any(getattr(layer, "activation", "none") == "gelu" for layer in module.layers):
        module.act = nn.GELU()
    for name in [name for name, _ in module.named_children()]:
        child = getattr(module, name)
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
