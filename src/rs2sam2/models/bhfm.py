"""Bidirectional Hierarchical Fusion Module (BHFM) and the decoder's post-encoding text guidance.

Every Hiera block carries two adapters, both sized on the block's output width ``D`` with a
bottleneck ``h = int(ratio * D)``:

* :class:`SpaceAdapter` sits on the attention output (after window un-partitioning, before the
  residual add). Image tokens attend to the text and the text state attends back to the image;
  the text state ``t`` (B, L, text_dim) flows from block to block.
* :class:`MLPAdapter` runs beside the block's MLP on the same normalised input and is added with
  weight ``alpha_i``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .common import Attention, add_into


class SpaceAdapter(nn.Module):
    """``x + fc2(z)`` where ``z = GELU(fc1(x))`` is fused with the text.

    mode ``bi``: z attends to the text, then the text attends to z and the text state moves
    ``t <- (1 - alpha_t) t + alpha_t * text_out(...)``; ``uni``: only z attends to the text
    (the text state is left as it is); ``linear``: a plain bottleneck adapter without text.
    """

    def __init__(self, dim: int, text_dim: int, ratio: float, num_heads: int, alpha_t: float, mode: str):
        super().__init__()
        hidden = int(dim * ratio)
        self.mode = mode
        self.alpha_t = alpha_t
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        if mode in ("bi", "uni"):
            self.text_in = nn.Linear(text_dim, hidden)
            self.attend_text = Attention(hidden, num_heads)  # image queries, text keys
        if mode == "bi":
            self.attend_image = Attention(hidden, num_heads)  # text queries, image keys
            self.text_out = nn.Linear(hidden, text_dim)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> tuple[Tensor, Tensor]:
        # x: (B, H, W, D); text: (B, L, text_dim); text_mask: (B, L) True = real token
        b, h, w, _ = x.shape
        z = self.act(self.fc1(x)).reshape(b, h * w, -1)
        if self.mode in ("bi", "uni"):
            t = self.text_in(text.to(z.dtype))
            z = add_into(z, self.attend_text(z, t, t, text_mask))
            if self.mode == "bi":
                t = t + self.attend_image(t, z, z)
                # the text state keeps its own (float32) precision across blocks
                text = (1.0 - self.alpha_t) * text + self.alpha_t * self.text_out(t).to(text.dtype)
        return add_into(self.fc2(z).reshape(b, h, w, -1), x), text


class MLPAdapter(nn.Module):
    """Bottleneck adapter without a skip connection (the block adds ``alpha_i`` times its output)."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TextGuidance(nn.Module):
    """Post-encoding guidance: ``e * Attn(q=e + pe, k=v=text)``, a multiplicative text gate on the
    decoder's image embedding (an elementwise product, not a residual sum)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.attn = Attention(dim, num_heads)

    def forward(self, embed: Tensor, pos: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        # embed, pos: (B, N, C); text: (B, L, C)
        return embed * self.attn(embed + pos, text, text, text_mask)
