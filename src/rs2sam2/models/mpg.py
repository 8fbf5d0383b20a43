"""Mask Prompt Generator: a dense pseudo-mask prompt from the union encoder's CLS and patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Attention


class MaskPromptGenerator(nn.Module):
    """``a = Attn(q=cls, k=v=patches)``; ``token = W(cls * a)`` (a product, not a residual);
    ``prior = sigmoid(score(patch * token))`` on the patch grid, resized to the prompt size."""

    def __init__(self, dim: int, num_heads: int, grid: int, out_size: int):
        super().__init__()
        self.grid = grid
        self.out_size = out_size
        self.attn = Attention(dim, num_heads)
        self.token_proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)

    def forward(self, cls: Tensor, patches: Tensor) -> Tensor:
        # cls: (B, 1, C); patches: (B, grid^2, C) -> prior probabilities (B, 1, out, out)
        token = self.token_proj(cls * self.attn(cls, patches, patches))
        prior = torch.sigmoid(self.score(patches * token))  # (B, N, 1)
        prior = prior.transpose(1, 2).reshape(-1, 1, self.grid, self.grid)
        if self.out_size != self.grid:
            # the antialiased kernel has no bfloat16 CPU implementation; the map is tiny, resize in fp32
            prior = F.interpolate(
                prior.float(), size=(self.out_size, self.out_size), mode="bilinear", align_corners=False, antialias=True
            ).to(prior.dtype)
        return prior
