"""Mask Prompt Generator: a dense pseudo-mask prompt from the union encoder's CLS and patch tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import Attention


class MaskPromptGenerator(nn.Module):
    """``a = Attn(q=cls, k=v=patches)``; ``token = W(cls * a)`` (a product, not a residual);
    ``prior = sigmoid(score(patch * token))`` on the patch grid, resized to the prompt size.

    :meth:`grid_logits` gives the scores before the sigmoid, one per patch: what a grounding loss
    (:func:`rs2sam2.losses.grounding_loss`) trains, and what :meth:`prompt` turns into the prior."""

    def __init__(self, dim: int, num_heads: int, grid: int, out_size: int):
        super().__init__()
        self.grid = grid
        self.out_size = out_size
        self.attn = Attention(dim, num_heads)
        self.token_proj = nn.Linear(dim, dim)
        self.score = nn.Linear(dim, 1)

    def grid_logits(self, cls: Tensor, patches: Tensor) -> Tensor:
        """cls: (B, 1, C); patches: (B, grid^2, C) -> scores (B, 1, grid, grid) before the sigmoid."""
        token = self.token_proj(cls * self.attn(cls, patches, patches))
        return self.score(patches * token).transpose(1, 2).reshape(-1, 1, self.grid, self.grid)

    def prompt(self, grid_logits: Tensor) -> Tensor:
        """Grid scores -> prior probabilities (B, 1, out, out) at the dense prompt's size."""
        prior = torch.sigmoid(grid_logits)
        if self.out_size != self.grid:
            # the antialiased kernel has no bfloat16 CPU implementation; the map is tiny, resize in fp32
            prior = F.interpolate(
                prior.float(), size=(self.out_size, self.out_size), mode="bilinear", align_corners=False, antialias=True
            ).to(prior.dtype)
        return prior

    def forward(self, cls: Tensor, patches: Tensor) -> Tensor:
        """cls: (B, 1, C); patches: (B, grid^2, C) -> prior probabilities (B, 1, out, out)."""
        return self.prompt(self.grid_logits(cls, patches))
