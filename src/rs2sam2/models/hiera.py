"""SAM2 image encoder: the Hiera trunk (with the BHFM adapters in every block) and the FPN neck."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import FusionConfig, HieraConfig
from .bhfm import MLPAdapter, SpaceAdapter
from .common import MLP, PointwiseConv, add_into, attention, call_block, quantize_linear_layers_int8


def window_partition(x: Tensor, ws: int) -> tuple[Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws, ws, C), zero-padding H and W up to multiples of ``ws``."""
    b, h, w, c = x.shape
    ph, pw = (ws - h % ws) % ws, (ws - w % ws) % ws
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // ws, ws, wp // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws, ws, c), (hp, wp)


def window_unpartition(windows: Tensor, ws: int, pad_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`, dropping the padding."""
    hp, wp = pad_hw
    h, w = hw
    b = windows.shape[0] // ((hp // ws) * (wp // ws))
    x = windows.view(b, hp // ws, wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w].contiguous() if (hp > h or wp > w) else x


def _pool(x: Tensor, pool: nn.Module | None) -> Tensor:
    """Max-pool a channels-last map."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Hiera attention; with ``q_pool`` the queries are max-pooled, halving the resolution."""

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None):
        super().__init__()
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # (B, HW, heads, hd)
        if self.q_pool is not None:
            q = _pool(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


class DropPath(nn.Module):
    """Stochastic depth per sample."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.p)
        return x * keep / (1 - self.p)


class HieraBlock(nn.Module):
    """One Hiera block (windowed or global attention, optional pooling) with its two BHFM adapters."""

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        window_size: int,
        q_stride: int | None,
        drop_path: float,
        fusion: FusionConfig,
        text_dim: int,
    ):
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = nn.MaxPool2d(q_stride, q_stride) if q_stride else None
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, 4 * dim_out, dim_out, 2, act=nn.GELU)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)
        self.alpha_i = fusion.alpha_i
        if fusion.bhfm == "off":
            self.space_adapter = self.mlp_adapter = None
        else:
            self.space_adapter = SpaceAdapter(
                dim_out, text_dim, fusion.adapter_ratio, fusion.adapter_heads, fusion.alpha_t, fusion.bhfm
            )
            self.mlp_adapter = MLPAdapter(dim_out, fusion.adapter_ratio)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, H, W, C) residual stream. In the bf16 path (``RS2SAM2.set_precision``) the linear
        # layers hold bfloat16 weights while the residual stream, the norms and the text state stay
        # float32: only matmul inputs are rounded, so errors do not pile up over 48 blocks.
        compute = self.attn.qkv.weight.dtype
        shortcut = x
        x = self.norm1(x).to(compute)
        if self.dim != self.dim_out:
            shortcut = _pool(self.proj(x), self.pool).to(shortcut.dtype)
        ws = self.window_size
        if ws > 0:
            hw = x.shape[1:3]
            x, pad_hw = window_partition(x, ws)
        x = self.attn(x)
        if ws > 0:
            if self.q_stride:
                # windows shrink with the queries; re-derive the padded size at the new resolution
                ws = ws // self.q_stride
                hw = shortcut.shape[1:3]
                pad_hw = tuple(s + (ws - s % ws) % ws for s in hw)
            x = window_unpartition(x, ws, pad_hw, hw)
        if self.space_adapter is not None:
            x, text = self.space_adapter(x, text, text_mask)
        # the attention branch and then the new stream are temporaries of this block: added in place
        x = add_into(self.drop_path(x).to(shortcut.dtype), shortcut)
        h = self.norm2(x).to(compute)
        x = add_into(x, self.drop_path(self.mlp(h)).to(x.dtype))
        if self.mlp_adapter is not None:
            x = add_into(x, self.mlp_adapter(h).to(x.dtype), self.alpha_i)
        return x, text


class PatchEmbed(nn.Module):
    """The 7x7 stride-4 convolution that turns the image into Hiera's first token grid."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=7, stride=4, padding=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)  # (B, H/4, W/4, C)


class Hiera(nn.Module):
    """Hierarchical ViT of SAM2. Returns the output of every stage (NCHW), high to low resolution."""

    def __init__(self, cfg: HieraConfig, fusion: FusionConfig, text_dim: int):
        super().__init__()
        dim, heads = cfg.embed_dim, cfg.num_heads
        depth = sum(cfg.stages)
        self.stage_ends = [sum(cfg.stages[: i + 1]) - 1 for i in range(len(cfg.stages))]
        q_pool_blocks = [e + 1 for e in self.stage_ends[:-1]][: cfg.q_pool]
        self.patch_embed = PatchEmbed(dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *cfg.window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, dim, cfg.window_spec[0], cfg.window_spec[0]))
        self._pos_cache: tuple | None = None
        self.grad_checkpointing = False
        dpr = [cfg.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # stochastic depth ramp
        self.blocks = nn.ModuleList()
        stage = 0
        for i in range(depth):
            dim_out = dim
            # as in SAM2, a stage's first block keeps the previous stage's window size: its
            # queries are pooled, so the windows it writes have the new stage's size
            window = 0 if i in cfg.global_att_blocks else cfg.window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out = int(dim * cfg.dim_mul)
                heads = int(heads * cfg.head_mul)
                stage += 1
            self.blocks.append(
                HieraBlock(dim, dim_out, heads, window, 2 if i in q_pool_blocks else None, dpr[i], fusion, text_dim)
            )
            dim = dim_out

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Recompute the blocks' activations in the backward pass instead of keeping them (less
        memory, one more forward of the blocks). Returns the number of blocks recomputed."""
        self.grad_checkpointing = bool(enable)
        return len(self.blocks) if enable else 0

    def _pos_embed(self, hw: tuple[int, int]) -> Tensor:
        # input-independent: cache it while no gradient can flow into it (inference); the key holds
        # the parameters' version counters, so loading or editing the weights invalidates it
        key = (hw, self.pos_embed._version, self.pos_embed_window._version, self.pos_embed.dtype, self.pos_embed.device)
        cacheable = not (torch.is_grad_enabled() and (self.pos_embed.requires_grad or self.pos_embed_window.requires_grad))
        if not cacheable:
            return self._compute_pos_embed(hw)
        if self._pos_cache is None or self._pos_cache[0] != key:
            # a normal (non-inference) tensor, so it stays usable outside inference_mode too
            with torch.inference_mode(False), torch.no_grad():
                self._pos_cache = (key, self._compute_pos_embed(hw))
        return self._pos_cache[1]

    def _compute_pos_embed(self, hw: tuple[int, int]) -> Tensor:
        pos = F.interpolate(self.pos_embed, size=hw, mode="bicubic")
        reps = [a // b for a, b in zip(pos.shape, self.pos_embed_window.shape)]
        return (pos + self.pos_embed_window.tile(reps)).permute(0, 2, 3, 1)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> list[Tensor]:
        x = self.patch_embed(x.to(self.patch_embed.proj.weight.dtype)).to(self.pos_embed.dtype)
        x = x + self._pos_embed(x.shape[1:3])
        outputs = []
        for i, blk in enumerate(self.blocks):
            x, text = call_block(blk, self.grad_checkpointing, x, text, text_mask)
            if i in self.stage_ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs  # the final text state is not used (as published)


class FpnNeck(nn.Module):
    """1x1 lateral convs to ``d_model``; nearest top-down fusion on ``top_down_levels``."""

    def __init__(self, d_model: int, stage_dims: list[int], top_down_levels: tuple[int, ...], scalp: int):
        super().__init__()
        # convs[0] reads the lowest-resolution stage (SAM2's ordering)
        self.convs = nn.ModuleList(nn.Sequential() for _ in stage_dims)
        for seq, dim in zip(self.convs, reversed(stage_dims)):
            seq.add_module("conv", PointwiseConv(dim, d_model))
        self.top_down_levels = set(top_down_levels)
        self.scalp = scalp

    def forward(self, xs: list[Tensor]) -> list[Tensor]:
        n = len(xs) - 1
        out: list[Tensor] = [None] * len(xs)  # type: ignore[list-item]
        prev = None
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.top_down_levels and prev is not None:
                prev = lateral + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            else:
                prev = lateral
            out[i] = prev
        return out[: len(out) - self.scalp] if self.scalp else out


class ImageEncoder(nn.Module):
    """SAM2's image encoder: the Hiera trunk with BHFM, then the FPN neck (features at strides 4, 8 and 16)."""

    def __init__(self, cfg: HieraConfig, fusion: FusionConfig, d_model: int):
        super().__init__()
        self.trunk = Hiera(cfg, fusion, text_dim=d_model)
        self.neck = FpnNeck(d_model, cfg.stage_dims, cfg.fpn_top_down_levels, cfg.scalp)

    def forward(self, images: Tensor, text: Tensor, text_mask: Tensor) -> list[Tensor]:
        return self.neck(self.trunk(images, text, text_mask))

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Linear layers and convolutions of the trunk in ``dtype``; norms, position embeddings,
        the residual stream, the text state and the neck stay float32."""
        self.float()
        for module in self.trunk.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.to(dtype)

    def quantize_mlps_int8(self) -> None:
        """The two MLP layers of every Hiera block as dynamically quantized int8 layers (CPU).

        They carry about two thirds of the trunk's FLOPs. The attention projections and the BHFM
        adapters stay float32 (quantizing them too flips noticeably more mask pixels), and so does
        everything outside the trunk's MLPs."""
        for block in self.trunk.blocks:
            quantize_linear_layers_int8(block.mlp)
