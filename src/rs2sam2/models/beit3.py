"""BEiT-3 multiway transformer: the union (image + text) encoder of RS2-SAM2.

Tokens are ``[CLS, patch tokens, text tokens]``. Attention is joint over all tokens, while layer
norms, projections and FFNs are per modality ("experts"): image tokens use the ``vision`` expert,
text tokens the ``text`` expert. Pre-LN with sub-LN inside attention and FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Beit3Config
from .common import attention, call_block


def sincos_2d(grid: int, dim: int) -> Tensor:
    """A 2-D sine-cosine position code, (grid*grid, dim) in row-major patch order, of unit RMS like an
    ``nn.Embedding``'s N(0, 1) start: a quarter of the channels each for sin and cos of the column
    and of the row, at frequencies from 1 down to 1/100 per patch. Trained from scratch, the patch
    embeddings then start ordered left to right and top to bottom, which position words need."""
    if dim % 4:
        raise ValueError(f"a 2-D sine-cosine code needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    freq = 100.0 ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    x, y = cols.reshape(-1, 1) * freq, rows.reshape(-1, 1) * freq
    return (torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1) * 2**0.5).float()


class Multiway(nn.Module):
    """Apply ``vision`` to the first ``split`` tokens and ``text`` to the rest."""

    def __init__(self, vision: nn.Module, text: nn.Module):
        super().__init__()
        self.vision = vision
        self.text = text

    def forward(self, x: Tensor, split: int) -> Tensor:
        return torch.cat([self.vision(x[:, :split]), self.text(x[:, split:])], dim=1)


def _multiway(make) -> Multiway:
    return Multiway(make(), make())


class FeedForward(nn.Module):
    """The feed-forward network of one modality expert: a GELU MLP with a LayerNorm between its layers (sub-LN)."""

    def __init__(self, dim: int, hidden: int, eps: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)  # sub-LN
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x))))


class Beit3Layer(nn.Module):
    """One multiway encoder layer: shared self-attention over image and text tokens, a feed-forward expert per modality."""

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        d, eps = cfg.embed_dim, cfg.layernorm_eps
        self.num_heads = cfg.num_heads
        self.attn_norm = _multiway(lambda: nn.LayerNorm(d, eps=eps))
        self.q_proj = _multiway(lambda: nn.Linear(d, d))
        self.k_proj = _multiway(lambda: nn.Linear(d, d))
        self.v_proj = _multiway(lambda: nn.Linear(d, d))
        self.inner_norm = _multiway(lambda: nn.LayerNorm(d, eps=eps))  # sub-LN before out-proj
        self.out_proj = _multiway(lambda: nn.Linear(d, d))
        self.ffn_norm = _multiway(lambda: nn.LayerNorm(d, eps=eps))
        self.ffn = _multiway(lambda: FeedForward(d, cfg.ffn_dim, eps))

    def forward(self, x: Tensor, split: int, key_mask: Tensor) -> Tensor:
        # x: residual stream (float32); the projections may hold bfloat16 weights (set_compute_dtype)
        b, n, d = x.shape
        hd = d // self.num_heads
        compute = self.q_proj.vision.weight.dtype
        h = self.attn_norm(x, split).to(compute)
        q, k, v = (p(h, split).view(b, n, self.num_heads, hd).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        a = attention(q, k, v, key_mask[:, None, None, :])
        a = a.transpose(1, 2).reshape(b, n, d)
        x = x + self.out_proj(self.inner_norm(a, split), split).to(x.dtype)
        return x + self.ffn(self.ffn_norm(x, split).to(compute), split).to(x.dtype)


class VisionEmbed(nn.Module):
    """Patch embedding of the image with the CLS token in front."""

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x).flatten(2).transpose(1, 2)
        # Through view, the token's gradient gets the parameter's own strides; without it, a batch of
        # one hands the parameter a slice of the whole sequence's gradient (strides of [CLS, patches,
        # text]), which DDP's gradient buckets report as "grad strides do not match bucket view strides".
        cls = self.cls_token.view(1, 1, -1).to(x.dtype)
        return torch.cat([cls.expand(x.shape[0], -1, -1), x], dim=1)


class Beit3Encoder(nn.Module):
    """Union encoder. ``forward`` returns (B, 1 + grid^2 + L, embed_dim): [CLS, patches, text]."""

    POS_OFFSET = 2  # both position tables are indexed from 2 (fairseq convention)

    def __init__(self, cfg: Beit3Config):
        super().__init__()
        self.cfg = cfg
        self.text_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.vision_embed = VisionEmbed(cfg)
        self.pos_embed_vision = nn.Embedding(cfg.num_vision_tokens + self.POS_OFFSET, cfg.embed_dim)
        self.pos_embed_text = nn.Embedding(cfg.max_text_positions, cfg.embed_dim)
        if cfg.pos_embed_init == "sincos":
            with torch.no_grad():
                o = self.POS_OFFSET + 1  # the patches' rows follow the CLS token's
                self.pos_embed_vision.weight[o : o + cfg.grid_size**2] = sincos_2d(cfg.grid_size, cfg.embed_dim)
        self.layers = nn.ModuleList(Beit3Layer(cfg) for _ in range(cfg.depth))
        self.final_norm = _multiway(lambda: nn.LayerNorm(cfg.embed_dim, eps=cfg.layernorm_eps))
        self.grad_checkpointing = False

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        cfg = self.cfg
        if images.shape[-2:] != (cfg.img_size, cfg.img_size):
            raise ValueError(f"images_evf must be {cfg.img_size}x{cfg.img_size}, got {tuple(images.shape[-2:])}")
        length = input_ids.shape[1]
        if length > cfg.max_text_len:
            raise ValueError(f"text has {length} tokens; the position table allows at most {cfg.max_text_len}")
        # The range check reads the ids back to the host: skipped where that would break a compiled graph.
        checkable = not input_ids.is_meta and not torch.compiler.is_compiling()
        if checkable and (int(input_ids.max()) >= cfg.vocab_size or int(input_ids.min()) < 0):
            raise ValueError(f"input_ids must lie in [0, {cfg.vocab_size}) for this model's vocabulary")
        o = self.POS_OFFSET
        dtype = self.pos_embed_vision.weight.dtype
        v = self.vision_embed(images.to(self.vision_embed.proj.weight.dtype)).to(dtype)
        v = v + self.pos_embed_vision.weight[o : o + cfg.num_vision_tokens]
        t = self.text_embed(input_ids).to(dtype) + self.pos_embed_text.weight[o : o + length]
        x = torch.cat([v, t], dim=1)
        split = v.shape[1]
        key_mask = torch.cat([attention_mask.new_ones(x.shape[0], split), attention_mask], dim=1).bool()
        x = x * key_mask.unsqueeze(-1).to(x.dtype)  # masked tokens start from zero, as published
        for layer in self.layers:
            x = call_block(layer, self.grad_checkpointing, x, split, key_mask)
        return self.final_norm(x, split)

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Recompute the layers' activations in the backward pass instead of keeping them (less
        memory, one more forward of the layers). Returns the number of layers recomputed."""
        self.grad_checkpointing = bool(enable)
        return len(self.layers) if enable else 0

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Projections, FFNs, the sub-LNs between them and the token embeddings in ``dtype``; the
        residual stream, its pre-norms, the position tables and the final norm stay float32."""
        self.float()
        self.text_embed.to(dtype)
        self.vision_embed.proj.to(dtype)
        for layer in self.layers:
            for part in (layer.q_proj, layer.k_proj, layer.v_proj, layer.inner_norm, layer.out_proj, layer.ffn):
                part.to(dtype)
