"""The assembled RS2-SAM2 model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, get_config
from .beit3 import Beit3Encoder
from .common import pack_linear_layers, unpack_linear_layers, valid_text_mask
from .hiera import ImageEncoder
from .mpg import MaskPromptGenerator
from .sam_heads import MaskDecoder, PromptEncoder


@dataclass
class RS2SAM2Output:
    """Forward outputs; also indexable like a dict (``out["logits"]``)."""

    logits: Tensor  # (B, 1, H, W) mask logits at the SAM2 input resolution
    low_res_logits: Tensor  # (B, 1, H/4, W/4) decoder logits
    mask_prompt: Tensor | None  # (B, 1, H/4, W/4) MPG prior (probabilities) after resizing
    boundary_weight: Tensor  # (B,) text-guided boundary weight
    iou_scores: Tensor  # (B, 1) SAM2's predicted IoU of the mask
    object_score_logits: Tensor  # (B, 1) SAM2's object-presence logit
    prior_logits: Tensor | None = None  # (B, 1, grid, grid) MPG scores on the BEiT-3 patch grid, before the sigmoid
    # only with return_intermediates=True (used to localise parity failures):
    union_features: Tensor | None = None  # (B, 1 + grid^2 + L, D) BEiT-3 output
    sparse_prompt: Tensor | None = None  # (B, 1, C)
    text_features: Tensor | None = None  # (B, L, C) projected text tokens
    image_embed: Tensor | None = None  # (B, C, h, w) decoder input (no_mem_embed added)
    high_res_features: tuple[Tensor, Tensor] | None = None

    def __getitem__(self, key: str):
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


class RS2SAM2(nn.Module):
    """SAM2 image path with BHFM + BEiT-3 union encoder + MPG + text-guided decoder.

    Submodules (our names; ``rs2sam2.checkpoints.convert`` maps the published ones onto them):
    ``union_encoder`` (BEiT-3), ``text_proj``, ``sparse_prompt``, ``mpg``, ``boundary_head``,
    ``image_encoder`` (Hiera + BHFM adapters + FPN), ``prompt_encoder``, ``mask_decoder``,
    ``no_mem_embed``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c, fusion = config.hidden_dim, config.fusion
        d = config.beit3.embed_dim
        self.union_encoder = Beit3Encoder(config.beit3)
        self.text_proj = nn.Linear(d, c)
        self.sparse_prompt = (
            nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, c)) if fusion.sparse_prompt else None
        )
        self.mpg = (
            MaskPromptGenerator(d, fusion.mpg_heads, config.beit3.grid_size, config.mask_size) if fusion.mpg else None
        )
        self.boundary_head = nn.Linear(c, 1)
        self.image_encoder = ImageEncoder(config.hiera, fusion, c)
        self.prompt_encoder = PromptEncoder(c, config.embed_size, config.mask_in_chans)
        self.mask_decoder = MaskDecoder(
            c, config.decoder_depth, config.decoder_heads, config.decoder_mlp_dim, config.num_multimask_outputs,
            fusion.guidance_heads if fusion.text_guidance else None,
        )
        # SAM2 adds this learned "no memory" embedding to the lowest-resolution features of a frame
        # without memory; a still image is such a frame
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))

    def set_precision(self, precision: str) -> RS2SAM2:
        """Cast weights once for inference: ``fp32``; ``bf16``: the linear layers and convolutions
        of the Hiera trunk and of BEiT-3 (over 99% of the FLOPs and of the weights) hold bfloat16
        weights, while residual streams, their norms, the text state, the prompt path and the mask
        decoder stay float32 (rounding those flips mask pixels near the threshold); ``int8`` (CPU,
        inference only): the MLP layers of the Hiera blocks are replaced by dynamically quantized
        int8 layers, the rest stays float32. ``int8`` cannot be undone: load the weights again."""
        if precision not in ("fp32", "bf16", "int8"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'int8', got {precision!r}")
        if getattr(self, "_int8", False):
            if precision == "int8":
                return self
            raise ValueError(f"this model was quantized to int8; load its weights again to run it in {precision}")
        if precision == "int8" and self.device.type != "cpu":
            raise ValueError(f"precision int8 runs on the CPU only; the model is on {self.device}")
        self.float()
        if precision == "bf16":
            self.image_encoder.set_compute_dtype(torch.bfloat16)
            self.union_encoder.set_compute_dtype(torch.bfloat16)
        elif precision == "int8":
            self.image_encoder.quantize_mlps_int8()
            self._int8 = True
        return self

    def pack_linear_weights(self, freed: Callable[[int], object] | None = None) -> int:
        """CPU inference: the float32 and bfloat16 linear layers on the CPU hold their weights in
        oneDNN's packed layout (:class:`~rs2sam2.models.common.PackedLinear`; the same products,
        faster on the x86 CPU measured); layers on another device stay as they are (returns 0
        there). Call it once the model is on its device in its precision;
        :meth:`set_precision`, any move or cast (``.to()``, ``.float()``...) and ``.train()`` give
        the plain layers back first. ``freed(nbytes)`` hears of each plain weight let go
        (``rs2sam2.runtime.heap_releaser``). Returns the number of layers packed."""
        return pack_linear_layers(self, freed)

    def _apply(self, fn, recurse=True):
        unpack_linear_layers(self)  # a move or cast works on plain layers
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> RS2SAM2:
        if mode:
            unpack_linear_layers(self)  # packed weights are for inference: no gradient reaches them
        return super().train(mode)

    def set_grad_checkpointing(self, enable: bool = True) -> int:
        """Activation checkpointing of every Hiera block and BEiT-3 layer (see their
        ``set_grad_checkpointing``); parameter names are unchanged. Returns the number of blocks."""
        hiera = self.image_encoder.trunk.set_grad_checkpointing(enable)
        return hiera + self.union_encoder.set_grad_checkpointing(enable)

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.no_mem_embed.dtype

    def pointing_logits(self, images_evf: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The MPG's scores on BEiT-3's patch grid (B, 1, grid, grid), before the sigmoid, from the union
        encoder alone (no image encoder): what the grounding warm-up trains and what probes read."""
        union = self.union_encoder(images_evf, input_ids, attention_mask)
        return self.mpg.grid_logits(union[:, :1], union[:, 1:self.config.beit3.num_vision_tokens])

    def forward(
        self,
        images: Tensor,
        images_evf: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        return_intermediates: bool = False,
    ) -> RS2SAM2Output:
        """images: (B, 3, S, S) normalised SAM2 input; images_evf: (B, 3, s, s) BEiT-3 input;
        input_ids: (B, L); attention_mask: (B, L), True/1 where BEiT-3 may attend."""
        cfg = self.config
        if images.shape[-2:] != (cfg.image_size, cfg.image_size):
            raise ValueError(f"images must be {cfg.image_size}x{cfg.image_size}, got {tuple(images.shape[-2:])}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        b = images.shape[0]
        union = self.union_encoder(images_evf, input_ids, attention_mask)
        nv = cfg.beit3.num_vision_tokens
        cls, patches, text = union[:, :1], union[:, 1:nv], union[:, nv:]
        text_feat = self.text_proj(text)
        text_mask = valid_text_mask(attention_mask)
        sparse = self.sparse_prompt(cls) if self.sparse_prompt is not None else text_feat.new_zeros(b, 0, cfg.hidden_dim)
        prior_logits = self.mpg.grid_logits(cls, patches) if self.mpg is not None else None
        prior = self.mpg.prompt(prior_logits) if prior_logits is not None else None

        fpn = self.image_encoder(images, text_feat, text_mask)
        dec = self.mask_decoder
        high_res = (dec.conv_s0(fpn[0]), dec.conv_s1(fpn[1]))
        image_embed = fpn[2] + self.no_mem_embed.view(1, -1, 1, 1)
        dense = self.prompt_encoder.dense_embeddings(prior, b)
        low_res, iou, obj = dec(
            image_embed, self.prompt_encoder.dense_pe(), sparse, dense, high_res, text_feat, text_mask
        )
        logits = F.interpolate(low_res, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
        boundary_weight = self.boundary_head(text_feat[:, 0]).squeeze(-1)
        out = RS2SAM2Output(logits, low_res, prior, boundary_weight, iou, obj, prior_logits)
        if return_intermediates:
            out.union_features, out.sparse_prompt, out.text_features = union, sparse, text_feat
            out.image_embed, out.high_res_features = image_embed, high_res
        return out


def build_model(name_or_config: str | ModelConfig = "paper", **overrides) -> RS2SAM2:
    """Build an RS2-SAM2 model from a preset name (``paper``, ``base``, ``tiny-parity``, ``nano``)
    or a :class:`ModelConfig`. Weights are randomly initialised; load checkpoints with
    :func:`rs2sam2.load_official_state_dict` or :func:`rs2sam2.load_pretrained`."""
    cfg = get_config(name_or_config, **overrides) if isinstance(name_or_config, str) else name_or_config
    return RS2SAM2(cfg)
