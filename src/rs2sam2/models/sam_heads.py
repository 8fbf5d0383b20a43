"""SAM2 prompt encoder and mask decoder (two-way transformer, high-res features, object score)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .bhfm import TextGuidance
from .common import MLP, Attention, LayerNorm2d, PointwiseConv


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of normalised (x, y) coordinates."""

    def __init__(self, num_feats: int):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, num_feats))

    def forward(self, size: int) -> Tensor:
        g = self.positional_encoding_gaussian_matrix
        centers = (torch.arange(size, device=g.device, dtype=g.dtype) + 0.5) / size
        y, x = torch.meshgrid(centers, centers, indexing="ij")
        coords = 2 * torch.stack([x, y], dim=-1) - 1
        proj = 2 * math.pi * (coords @ g)
        return torch.cat([proj.sin(), proj.cos()], dim=-1).permute(2, 0, 1)  # (C, H, W)


class PromptEncoder(nn.Module):
    """Dense (mask) prompt path and the dense positional encoding of SAM2's prompt encoder.

    RS2-SAM2 prompts with text only: a dense pseudo-mask from the MPG and the CLS token as the
    sparse token. The point/box embeddings of SAM2 are kept so that official SAM2 checkpoints and
    released RS2-SAM2 checkpoints load strictly, but nothing here embeds points or boxes.
    """

    def __init__(self, embed_dim: int, embed_size: int, mask_in_chans: int):
        super().__init__()
        self.embed_size = embed_size
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def dense_pe(self) -> Tensor:
        return self.pe_layer(self.embed_size).unsqueeze(0)  # (1, C, h, w)

    def dense_embeddings(self, mask_prompt: Tensor | None, batch_size: int) -> Tensor:
        if mask_prompt is not None:
            return self.mask_downscaling(mask_prompt)
        s = self.embed_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, s, s)


class TwoWayBlock(nn.Module):
    """One block of SAM's two-way transformer: tokens attend to themselves and to the image, the image to the tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, skip_first_layer_pe: bool):
        super().__init__()
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_dim, dim, 2, act=nn.ReLU)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample_rate=2)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer between the prompt tokens and the image embedding."""

    def __init__(self, depth: int, dim: int, num_heads: int, mlp_dim: int):
        super().__init__()
        self.layers = nn.ModuleList(TwoWayBlock(dim, num_heads, mlp_dim, i == 0) for i in range(depth))
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample_rate=2)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: Tensor, image_pe: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        # image, image_pe: (B, N, C); tokens: (B, T, C)
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe)
        queries = queries + self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
        return self.norm_final_attn(queries), keys


class MaskDecoder(nn.Module):
    """SAM2 mask decoder with RS2-SAM2's text guidance on the image embedding.

    Only the first mask token's (single-mask) output is produced; the multimask tokens and their
    hypernetworks stay in the model because they take part in the token self-attention and are
    part of every SAM2 checkpoint.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_dim: int, num_multimask_outputs: int,
                 text_guidance_heads: int | None):
        super().__init__()
        num_mask_tokens = num_multimask_outputs + 1
        self.transformer = TwoWayTransformer(depth, dim, num_heads, mlp_dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.obj_score_token = nn.Embedding(1, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.conv_s0 = PointwiseConv(dim, dim // 8)
        self.conv_s1 = PointwiseConv(dim, dim // 4)
        self.output_hypernetworks_mlps = nn.ModuleList(MLP(dim, dim, dim // 8, 3) for _ in range(num_mask_tokens))
        self.iou_prediction_head = MLP(dim, 256, num_mask_tokens, 3)
        self.pred_obj_score_head = MLP(dim, dim, 1, 3)
        self.text_guidance = TextGuidance(dim, text_guidance_heads) if text_guidance_heads else None

    def forward(
        self,
        image_embed: Tensor,  # (B, C, h, w), no_mem_embed already added
        image_pe: Tensor,  # (1, C, h, w)
        sparse: Tensor,  # (B, T, C)
        dense: Tensor,  # (B, C, h, w)
        high_res: tuple[Tensor, Tensor],  # conv_s0 / conv_s1 outputs: (B, C/8, 4h, 4w), (B, C/4, 2h, 2w)
        text: Tensor,  # (B, L, C)
        text_mask: Tensor,  # (B, L)
    ) -> tuple[Tensor, Tensor, Tensor]:
        b, c, h, w = image_embed.shape
        src = image_embed.flatten(2).transpose(1, 2)  # (B, hw, C)
        pos = image_pe.flatten(2).transpose(1, 2).expand(b, -1, -1)
        if self.text_guidance is not None:
            src = self.text_guidance(src, pos, text, text_mask)
        src = src + dense.flatten(2).transpose(1, 2)

        out_tokens = torch.cat([self.obj_score_token.weight, self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        hs, src = self.transformer(src, pos, tokens)

        src = src.transpose(1, 2).reshape(b, c, h, w)
        dc1, ln1, act1, dc2, act2 = self.output_upscaling
        feat_s0, feat_s1 = high_res
        up = act1(ln1(dc1(src) + feat_s1))
        up = act2(dc2(up) + feat_s0)  # (B, C/8, 4h, 4w)
        hyper = self.output_hypernetworks_mlps[0](hs[:, 2])  # first mask token
        low_res = torch.einsum("bc,bchw->bhw", hyper, up).unsqueeze(1)
        iou = self.iou_prediction_head(hs[:, 1])[:, :1].sigmoid()
        obj_score = self.pred_obj_score_head(hs[:, 0])
        return low_res, iou, obj_score
