"""Reading checkpoints safely and mapping official key layouts onto our module names.

Loading is always: read the file without executing pickled code -> detect the layout -> rewrite
keys into our names -> check every key and shape -> ``load_state_dict(strict=True)``.

Layouts understood:

* **released RS2-SAM2** (``mm_extractor.beit3.*``, ``visual_model.*``, ``text_hidden_fcs.*`` ...:
  the keys of ``paper_manifest.json``), from ``model.safetensors``, ``pytorch_model.bin`` (also
  sharded with an index) or a ``save_pretrained`` folder;
* **official SAM2 / SAM2.1** image checkpoints (``{"model": {"image_encoder.*", "sam_*"...}}``) and
  **official BEiT-3** checkpoints (``{"model": {"beit3.*"}}``), which initialise parts of the model;
* **ours** (``save_pretrained`` folders: ``config.json`` + ``model.safetensors``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor

from .config import BEIT3_SIZES, HIERA_SIZES, FusionConfig, ModelConfig, get_config
from .fsutil import atomic_write, atomic_write_bytes, atomic_write_text

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


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says which keys/file."""


@dataclass
class LoadReport:
    """What a load did: the layout found, keys dropped on purpose, and model keys left untouched."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = sorted({k.split(".")[0] for k in self.newly_initialised})
        return (
            f"{self.layout}: loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} unused published keys, "
            f"{len(self.newly_initialised)} model tensors newly initialised"
            + (f" (in {', '.join(parts)})" if parts else "")
        )


# --- reading files ------------------------------------------------------------------------------


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` or a torch pickle (``weights_only=True``), a sharded
    checkpoint (``*.index.json``) or a folder holding one of those. Unwraps ``{"model": ...}`` /
    ``{"state_dict": ...}`` / ``{"module": ...}`` containers."""
    path = Path(path)
    if path.is_dir():
        path = _weights_file_in(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.name.endswith(".index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (ValueError, KeyError) as e:
            raise CheckpointError(f"{path}: not a valid shard index ({e})") from e
        sd: dict[str, Tensor] = {}
        for shard in shards:
            sd.update(read_state_dict(path.parent / shard))
        return sd
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error type for malformed headers
            raise CheckpointError(f"{path}: cannot read safetensors file ({e}); is it truncated?") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated zips and refused pickles
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(
            f"{path}: cannot load as a weights-only torch checkpoint ({msg}). Files are loaded with "
            "weights_only=True, so pickles that would execute code are refused; truncated files fail too."
        ) from e
    return unwrap_state_dict(obj, str(path))


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, Tensor]:
    for key in ("model", "state_dict", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{source}: expected a mapping of parameter names to tensors")
    return dict(obj)


def _weights_file_in(folder: Path) -> Path:
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json"):
        if (folder / name).exists():
            return folder / name
    raise CheckpointError(
        f"{folder}: no weights found (expected model.safetensors, pytorch_model.bin or a shard index)"
    )


# --- layouts ------------------------------------------------------------------------------------


def detect_layout(keys) -> str:
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


def _is_ignored(key: str) -> bool:
    return key.startswith(IGNORED_PUBLISHED_PREFIXES)


def convert_published_state_dict(sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Published RS2-SAM2 names -> ours. ``nn.MultiheadAttention`` in-projections are split into
    q/k/v. Returns (converted dict, ignored published keys)."""
    out: dict[str, Tensor] = {}
    ignored = []
    for key, value in sd.items():
        if _is_ignored(key):
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


def _check_and_load(model: torch.nn.Module, sd: dict[str, Tensor], layout: str, ignored: list[str],
                    partial: bool) -> LoadReport:
    own = model.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    wrong = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items() if k in own and v.shape != own[k].shape
    )
    problems = []
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if missing and not partial:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if wrong:
        problems.append(f"wrongly shaped keys ({len(wrong)}): {_short(wrong)}")
    if problems:
        raise CheckpointError(
            f"{layout} checkpoint does not fit this model ({getattr(model, 'config', None) and model.config.name}): "
            + "; ".join(problems)
        )
    if partial:
        merged = dict(own)
        merged.update({k: v.to(own[k].dtype) for k, v in sd.items()})
        model.load_state_dict(merged, strict=True)
    else:
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return LoadReport(layout, loaded=sorted(sd), ignored=ignored, newly_initialised=missing if partial else [])


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def load_official_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Load a complete RS2-SAM2 state dict, in the released (published) layout or ours.

    Every model key must be present and every checkpoint key used, except the documented
    :data:`IGNORED_PUBLISHED_PREFIXES`; shapes must match. Errors name the offending keys.
    """
    state_dict = unwrap_state_dict(state_dict)
    layout = detect_layout(state_dict)
    if layout == "rs2sam2-published":
        sd, ignored = convert_published_state_dict(state_dict)
    elif layout == "rs2sam2":
        sd, ignored = dict(state_dict), []
    else:
        raise CheckpointError(
            f"this is a {layout} checkpoint, which initialises only part of RS2-SAM2: use "
            f"load_{layout}_checkpoint (or init_from_official) instead"
        )
    return _check_and_load(model, sd, layout, ignored, partial=False)


def load_sam2_checkpoint(model: torch.nn.Module, source) -> LoadReport:
    """Initialise the SAM2 parts (image encoder, prompt encoder, mask decoder, ``no_mem_embed``) from
    an official SAM2 / SAM2.1 checkpoint (``sam2_hiera_large.pt`` etc.). The BHFM adapters, the
    decoder's text guidance and everything outside SAM2 stay as initialised (listed in the report)."""
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else unwrap_state_dict(source)
    if detect_layout(sd) != "sam2":
        raise CheckpointError(f"{source if isinstance(source, (str, os.PathLike)) else 'state dict'}: not a SAM2 checkpoint")
    published = {f"visual_model.{k}": v for k, v in sd.items()}
    converted, ignored = convert_published_state_dict(published)
    return _check_and_load(model, converted, "sam2", ignored, partial=True)


def load_beit3_checkpoint(model: torch.nn.Module, source) -> LoadReport:
    """Initialise the union encoder from an official BEiT-3 checkpoint (``beit3_large_patch16_224.pth``,
    keys ``beit3.*``). Keys outside ``beit3.`` (task heads of fine-tuned checkpoints) are reported
    as ignored."""
    sd = read_state_dict(source) if isinstance(source, (str, os.PathLike)) else unwrap_state_dict(source)
    if detect_layout(sd) != "beit3":
        raise CheckpointError(f"{source if isinstance(source, (str, os.PathLike)) else 'state dict'}: not a BEiT-3 checkpoint")
    heads = [k for k in sd if not k.startswith("beit3.")]
    published = {f"mm_extractor.{k}": v for k, v in sd.items() if k.startswith("beit3.")}
    converted, ignored = convert_published_state_dict(published)
    return _check_and_load(model, converted, "beit3", ignored + heads, partial=True)


# --- inferring the configuration from weights ---------------------------------------------------


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
    import dataclasses

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


# --- folders: save_pretrained / from_pretrained -------------------------------------------------

CONFIG_MARKER = "rs2sam2_config"
TOKENIZER_NAMES = ("tokenizer.model", "sentencepiece.bpe.model", "beit3.spm")


def save_pretrained(model, folder: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Write ``model`` as ``config.json`` + ``model.safetensors`` (+ ``tokenizer.model``) into ``folder``."""
    return save_state_dict(model.state_dict(), model.config, folder, tokenizer_path)


def save_state_dict(state_dict: Mapping[str, Tensor], config: ModelConfig, folder: str | os.PathLike,
                    tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Write a state dict of our layout with its ``config`` as a ``save_pretrained`` folder.

    Training saves gathered (FSDP) state dicts through this without a model at hand. Files are
    written to temporary names and renamed, so an interrupted save never leaves a half-written
    checkpoint behind under the final names."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    with atomic_write(folder / "model.safetensors") as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    cfg = {CONFIG_MARKER: config.to_dict(), "library": "rs2sam2"}
    atomic_write_text(folder / "config.json", json.dumps(cfg, indent=2))
    if tokenizer_path is not None:
        atomic_write_bytes(folder / "tokenizer.model", Path(tokenizer_path).read_bytes())
    return folder


def find_tokenizer(folder: str | os.PathLike) -> Path | None:
    folder = Path(folder)
    if folder.is_file():
        folder = folder.parent
    return next((folder / n for n in TOKENIZER_NAMES if (folder / n).exists()), None)


def load_pretrained(path: str | os.PathLike, image_size: int | None = None):
    """Build and load a model from our folder, a released RS2-SAM2 folder, or a single weights file."""
    from .models import RS2SAM2

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    cfg = None
    config_file = (path if path.is_dir() else path.parent) / "config.json"
    if config_file.exists():
        try:
            raw = json.loads(config_file.read_text())
        except ValueError as e:
            raise CheckpointError(f"{config_file}: invalid JSON ({e})") from e
        if CONFIG_MARKER in raw:
            cfg = ModelConfig.from_dict(raw[CONFIG_MARKER])
            if image_size is not None:
                cfg.image_size = image_size
    sd = read_state_dict(path)
    if cfg is None:  # a released folder: its config.json does not say which SAM2 size was used
        cfg = infer_config(sd, image_size=image_size or 1024)
    model = RS2SAM2(cfg)
    load_official_state_dict(model, sd)
    return model


def init_from_official(preset: str | ModelConfig = "paper", sam2: str | None = None, beit3: str | None = None):
    """A model ready for training from the official SAM2 and BEiT-3 checkpoints (the published init).
    Returns (model, [reports])."""
    from .models import RS2SAM2

    cfg = get_config(preset) if isinstance(preset, str) else preset
    model = RS2SAM2(cfg)
    reports = []
    if sam2:
        reports.append(load_sam2_checkpoint(model, sam2))
    if beit3:
        reports.append(load_beit3_checkpoint(model, beit3))
    return model, reports
