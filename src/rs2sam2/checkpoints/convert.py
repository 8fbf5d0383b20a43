"""Published and official key layouts -> our module names, and the model configuration a state dict implies.

Pure functions on ``{name: tensor}`` mappings: nothing here reads files or builds a model, so the
mapping can be checked on shapes alone (``torch.empty(..., device="meta")``).

Layouts understood:

* **released RS2-SAM2** (``mm_extractor.beit3.*``, ``visual_model.*``, ``text_hidden_fcs.*`` ...:
  the keys of ``paper_manifest.json``);
* **official SAM2 / SAM2.1** image checkpoints (``image_encoder.*``, ``sam_*``) and **official
  BEiT-3** checkpoints (``beit3.*``), which initialise parts of the model;
* **ours** (``union_encoder.*``, ``mask_decoder.*`` ...), which needs no mapping.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from torch import Tensor

from ..config import BEIT3_SIZES, HIERA_SIZES, FusionConfig, ModelConfig
from ..errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says which keys/file."""


# Published keys that no forward pass of RS2-SAM2 uses. They are dropped on purpose, and only these:
# the SAM2 video-memory modules, the published model's unused ``meo_linear``, SAM2.1's extra video
# embeddings, and BEiT-3's masked-image-modelling token.
IGNORED_PUBLISHED_PREFIXES = (
    "visual_model.memory_attention.",
    "visual_model.memory_encoder.",
    "visual_model.maskmem_tpos_enc",
    "visual_model.no_mem_pos_enc",
    "visual_model.no_obj_ptr",
    "visual_model.mask_downsample.",
    "visual_model.obj_ptr_proj.",
    "visual_model.obj_ptr_tpos_proj.",  # SAM2.1
    "visual_model.no_obj_embed_spatial",  # SAM2.1
    "meo_linear.",
    "mm_extractor.beit3.vision_embed.mask_token",
)

# (published pattern, our replacement), applied in order to every key. Regexes keep it one table.
_MW = {"A": "vision", "B": "text"}
_KEY_RULES: list[tuple[str, str]] = [
    # BEiT-3 union encoder
    (r"^mm_extractor\.beit3\.encoder\.embed_positions\.A\.", "union_encoder.pos_embed_vision."),
    (r"^mm_extractor\.beit3\.encoder\.embed_positions\.B\.", "union_encoder.pos_embed_text."),
    (r"^mm_extractor\.beit3\.encoder\.layer_norm\.([AB])\.", r"union_encoder.final_norm.\1."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.self_attn\.inner_attn_ln\.([AB])\.",
     r"union_encoder.layers.\1.inner_norm.\2."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.self_attn\.(\w_proj|out_proj)\.([AB])\.",
     r"union_encoder.layers.\1.\2.\3."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.([AB])\.",
     r"union_encoder.layers.\1.attn_norm.\2."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.final_layer_norm\.([AB])\.", r"union_encoder.layers.\1.ffn_norm.\2."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.ffn\.([AB])\.ffn_layernorm\.", r"union_encoder.layers.\1.ffn.\2.norm."),
    (r"^mm_extractor\.beit3\.encoder\.layers\.(\d+)\.ffn\.([AB])\.", r"union_encoder.layers.\1.ffn.\2."),
    (r"^mm_extractor\.beit3\.", "union_encoder."),
    # SAM2 image encoder with the BHFM adapters
    (r"\.MLP_Adapter\.D_fc", ".mlp_adapter.fc"),
    (r"\.Space_Adapter\.D_fc", ".space_adapter.fc"),
    (r"\.Space_Adapter\.text_in_linear\.", ".space_adapter.text_in."),
    (r"\.Space_Adapter\.text_out_linear\.", ".space_adapter.text_out."),
    (r"\.Space_Adapter\.vlfusion_module\.multihead_attn\.", ".space_adapter.attend_text."),
    (r"\.Space_Adapter\.lvfusion_module\.multihead_attn\.", ".space_adapter.attend_image."),
    (r"^visual_model\.image_encoder\.", "image_encoder."),
    (r"^visual_model\.sam_prompt_encoder\.", "prompt_encoder."),
    (r"^visual_model\.sam_mask_decoder\.vlfusion_module\.multihead_attn\.", "mask_decoder.text_guidance.attn."),
    (r"^visual_model\.sam_mask_decoder\.", "mask_decoder."),
    (r"^visual_model\.no_mem_embed$", "no_mem_embed"),
    # heads on the union encoder
    (r"^text_hidden_fcs\.0\.", "sparse_prompt."),
    (r"^text_feat_linear\.", "text_proj."),
    (r"^vmtoken\.multihead_attn\.", "mpg.attn."),
    (r"^mask_linear\.", "mpg.token_proj."),
    (r"^mask_product\.", "mpg.score."),
    (r"^text2one_linear\.", "boundary_head."),
]
_COMPILED = [(re.compile(p), r) for p, r in _KEY_RULES]


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, Tensor]:
    """The ``{name: tensor}`` mapping inside ``{"model": ...}`` / ``{"state_dict": ...}`` /
    ``{"module": ...}`` containers (or ``obj`` itself); anything else is a :class:`CheckpointError`."""
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a mapping of parameter names to tensors")
    return dict(obj)


def detect_layout(keys) -> str:
    """``"rs2sam2-published"``, ``"rs2sam2"`` (ours), ``"beit3"`` or ``"sam2"``, from the key names."""
    keys = list(keys)
    if any(k.startswith(("mm_extractor.", "visual_model.")) for k in keys):
        return "rs2sam2-published"
    if any(k.startswith(("union_encoder.", "mask_decoder.")) for k in keys):
        return "rs2sam2"
    if any(k.startswith("beit3.") for k in keys):
        return "beit3"
    if any(k.startswith(("image_encoder.trunk.", "sam_mask_decoder.")) for k in keys):
        return "sam2"
    raise CheckpointError("unrecognised checkpoint layout (neither RS2-SAM2, SAM2 nor BEiT-3 keys)")


def convert_published_state_dict(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Published RS2-SAM2 names -> ours. ``nn.MultiheadAttention`` in-projections are split into
    q/k/v. Returns (converted dict, ignored published keys)."""
    out: dict[str, Tensor] = {}
    ignored = []
    for key, value in sd.items():
        if key.startswith(IGNORED_PUBLISHED_PREFIXES):
            ignored.append(key)
            continue
        new = key
        for pattern, repl in _COMPILED:
            new = pattern.sub(repl, new)
        new = re.sub(r"\.([AB])\.", lambda m: f".{_MW[m.group(1)]}.", new)
        if new.endswith(("in_proj_weight", "in_proj_bias")):
            base, kind = new.rsplit(".", 1)
            suffix = "weight" if kind == "in_proj_weight" else "bias"
            if value.shape[0] % 3:
                raise CheckpointError(f"{key}: in-projection of shape {tuple(value.shape)} is not 3 stacked blocks")
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{base}.{name}.{suffix}"] = chunk
        else:
            out[new] = value
    return out, ignored


def convert_sam2_state_dict(sd: Mapping[str, Tensor], source: str = "state dict") -> tuple[dict[str, Tensor], list[str]]:
    """An official SAM2 / SAM2.1 image checkpoint -> our names of the SAM2 parts (the published model
    nests the same keys under ``visual_model.``). Returns (converted dict, ignored keys)."""
    if detect_layout(sd) != "sam2":
        raise CheckpointError(f"{source}: not a SAM2 checkpoint")
    return convert_published_state_dict({f"visual_model.{k}": v for k, v in sd.items()})


def convert_beit3_state_dict(sd: Mapping[str, Tensor], source: str = "state dict") -> tuple[dict[str, Tensor], list[str]]:
    """An official BEiT-3 checkpoint (``beit3.*``) -> our union-encoder names. Keys outside ``beit3.``
    (task heads of fine-tuned checkpoints) are returned among the ignored keys."""
    if detect_layout(sd) != "beit3":
        raise CheckpointError(f"{source}: not a BEiT-3 checkpoint")
    heads = [k for k in sd if not k.startswith("beit3.")]
    converted, ignored = convert_published_state_dict(
        {f"mm_extractor.{k}": v for k, v in sd.items() if k.startswith("beit3.")})
    return converted, ignored + heads


def infer_config(state_dict: Mapping[str, Tensor], image_size: int = 1024) -> ModelConfig:
    """Model config from a full RS2-SAM2 state dict (published layout or ours).

    The released ``config.json`` does not record the SAM2 size, so it is read off the shapes: the
    Hiera width and block count pick the SAM2 size; the BEiT-3 width and depth pick the union
    encoder; the presence of adapter / MPG / guidance / sparse-prompt keys sets the ablation
    switches. The input resolution is not stored in the weights (SAM2's position embedding is
    interpolated), so it is an argument (1024 for the released models).
    """
    state_dict = unwrap_state_dict(state_dict)
    sd = convert_published_state_dict(state_dict)[0] if detect_layout(state_dict) == "rs2sam2-published" else state_dict
    try:
        embed_dim = sd["image_encoder.trunk.pos_embed"].shape[1]
        n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"image_encoder\.trunk\.blocks\.(\d+)\.", k)))
        beit_dim = sd["union_encoder.text_embed.weight"].shape[1]
        vocab = sd["union_encoder.text_embed.weight"].shape[0]
        beit_depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"union_encoder\.layers\.(\d+)\.", k)))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"cannot infer the model configuration from these weights (missing {e})") from e
    hiera = next((h for h in HIERA_SIZES.values() if h.embed_dim == embed_dim and sum(h.stages) == n_blocks), None)
    if hiera is None:
        raise CheckpointError(f"no SAM2 size has embed_dim {embed_dim} and {n_blocks} blocks")
    beit = next((b for b in BEIT3_SIZES.values() if b.embed_dim == beit_dim), None)
    if beit is None:
        raise CheckpointError(f"no BEiT-3 size has width {beit_dim}")
    has = lambda prefix: any(k.startswith(prefix) for k in sd)  # noqa: E731
    if not has("image_encoder.trunk.blocks.0.space_adapter."):
        bhfm = "off"
    elif has("image_encoder.trunk.blocks.0.space_adapter.attend_image."):
        bhfm = "bi"
    elif has("image_encoder.trunk.blocks.0.space_adapter.attend_text."):
        bhfm = "uni"
    else:
        bhfm = "linear"
    fusion = FusionConfig(
        bhfm=bhfm, mpg=has("mpg."), text_guidance=has("mask_decoder.text_guidance."), sparse_prompt=has("sparse_prompt.")
    )
    name = {("large", 1024, 24): "paper", ("base_plus", 768, 12): "base", ("tiny", 1024, 2): "tiny-parity"}.get(
        (next(k for k, v in HIERA_SIZES.items() if v is hiera), beit_dim, beit_depth), "custom"
    )
    return ModelConfig(
        name=name,
        image_size=image_size,
        hiera=hiera,
        beit3=dataclasses.replace(beit, depth=beit_depth, vocab_size=vocab),
        fusion=fusion,
    )
