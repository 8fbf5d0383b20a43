"""Model configuration: small dataclasses and a registry of named presets.

Every size in the model (input resolution, channel widths, token grid, head counts) is derived
from one :class:`ModelConfig`, so ``nano``, ``tiny-parity`` and ``paper`` run the same code.

Every config checks its values when it is built (from Python, from a checkpoint's ``config.json`` or a
training config): each field has the type its annotation says (a JSON list is read as a tuple, an
integer where a float is expected as that float), numbers are finite and not negative, counts and
widths at least 1 and each at most its bound in :data:`BOUNDS` (so that a checkpoint's ``config.json``
cannot ask for a model larger than any machine holds), and the input size is one the model can take
(:attr:`ModelConfig.image_size_step`). A bad value raises :class:`~rs2sam2.errors.ConfigError` naming the key, as a dotted path for nested
ones (``hiera.window_spec``), and saying what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from .cliargs import describe_range
from .errors import ConfigError

BHFM_MODES = ("bi", "uni", "linear", "off")
POS_EMBED_INITS = ("normal", "sincos")


@dataclass
class HieraConfig:
    """SAM2 Hiera trunk + FPN neck."""

    embed_dim: int = 144
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 6, 36, 4)
    global_att_blocks: tuple[int, ...] = (23, 33, 43)
    window_spec: tuple[int, ...] = (8, 4, 16, 8)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    dim_mul: float = 2.0
    head_mul: float = 2.0
    drop_path_rate: float = 0.0
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    # the lowest-resolution FPN level is computed (it feeds the top-down path) but not returned
    scalp: int = 1

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.stages) > MAX_STAGES or sum(self.stages) > MAX_BLOCKS:
            raise ConfigError(f"stages: at most {MAX_STAGES} stages of {MAX_BLOCKS} blocks in all, "
                              f"got {list(self.stages)}")
        widest = self.embed_dim * self.dim_mul ** (len(self.stages) - 1)
        most_heads = self.num_heads * self.head_mul ** (len(self.stages) - 1)
        if widest > BOUNDS["embed_dim"] or most_heads > BOUNDS["num_heads"]:
            raise ConfigError(f"dim_mul, head_mul: the last stage would be {widest:g} wide with {most_heads:g} heads; "
                              f"at most {BOUNDS['embed_dim']} and {BOUNDS['num_heads']}")

    @property
    def stage_dims(self) -> list[int]:
        return [int(self.embed_dim * self.dim_mul**i) for i in range(len(self.stages))]


@dataclass
class Beit3Config:
    """BEiT-3 multiway transformer (the union encoder)."""

    embed_dim: int = 1024
    depth: int = 24
    num_heads: int = 16
    ffn_dim: int = 4096
    vocab_size: int = 64010
    img_size: int = 224
    patch_size: int = 16
    max_text_positions: int = 1024
    layernorm_eps: float = 1e-5
    drop_path_rate: float = 0.0
    # how the patch position embeddings start when trained from scratch: "normal" (N(0, 1), as
    # nn.Embedding does) or "sincos" (a 2-D sine-cosine code of the patch's row and column)
    pos_embed_init: str = "normal"

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.pos_embed_init not in POS_EMBED_INITS:
            raise ConfigError(f"pos_embed_init: must be one of {', '.join(POS_EMBED_INITS)}, "
                              f"got {self.pos_embed_init!r}")
        if self.pos_embed_init == "sincos" and self.embed_dim % 4:
            raise ConfigError(f"pos_embed_init: sincos needs an embed_dim divisible by 4, got {self.embed_dim}")

    @property
    def grid_size(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_vision_tokens(self) -> int:  # CLS + patches
        return self.grid_size**2 + 1

    @property
    def max_text_len(self) -> int:
        # the published position tables are indexed from 2 (fairseq style)
        return self.max_text_positions - 2

    def text_len(self, requested: int | None = None) -> int:
        """Tokens per sentence, BOS and EOS included: ``requested`` capped at :attr:`max_text_len`
        (the position table holds no more), or that limit when None."""
        return self.max_text_len if requested is None else min(int(requested), self.max_text_len)


@dataclass
class FusionConfig:
    """The RS2-SAM2 additions and their ablation switches (paper tables)."""

    bhfm: str = "bi"  # bi | uni (vision attends text only) | linear (adapters without text) | off
    adapter_ratio: float = 0.25
    adapter_heads: int = 4
    alpha_t: float = 0.2  # text-state update rate inside the space adapter
    alpha_i: float = 0.5  # scale of the MLP adapter
    mpg: bool = True  # Mask Prompt Generator (dense prompt); off -> SAM2's no-mask embedding
    mpg_heads: int = 8
    text_guidance: bool = True  # post-encoding text guidance in the mask decoder
    guidance_heads: int = 8
    sparse_prompt: bool = True  # CLS token as a sparse prompt token

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.bhfm not in BHFM_MODES:
            raise ConfigError(f"bhfm: must be one of {', '.join(BHFM_MODES)}, got {self.bhfm!r}")


@dataclass
class ModelConfig:
    """Everything that sizes an RS2-SAM2 model: both encoders, the fusion switches and the heads;
    built from a preset name plus overrides by :func:`get_config`."""

    image_size: int = 1024  # SAM2 branch input (square)
    hidden_dim: int = 256  # SAM2 prompt / decoder width
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    mask_in_chans: int = 16
    num_multimask_outputs: int = 3
    hiera: HieraConfig = field(default_factory=HieraConfig)
    beit3: Beit3Config = field(default_factory=Beit3Config)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    name: str = "custom"
    # whether the object-score head (mask_decoder.pred_obj_score_head) was trained to tell a sentence
    # that describes something in the image from one that describes nothing (train --negatives P > 0);
    # False for the published recipe, whose head is untrained: inference then ranks by other evidence
    presence_head: bool = False

    backbone_stride: int = 16

    def __post_init__(self) -> None:
        _check_fields(self)
        if len(self.hiera.window_spec) != len(self.hiera.stages):
            raise ConfigError(f"hiera.window_spec must give one window per stage ({len(self.hiera.stages)}), "
                              f"got {list(self.hiera.window_spec)}")
        step = self.image_size_step
        if self.image_size % step:
            lower = self.image_size // step * step
            nearest = f"{lower} or {lower + step}" if lower else str(step)
            raise ConfigError(
                f"image_size: {self.image_size} is not allowed for this model, which takes a multiple of {step} "
                f"(nearest: {nearest}): the first feature map (1/4 scale) must hold whole "
                f"{self.hiera.window_spec[0]}-pixel windows, {self.hiera.q_pool} poolings must halve it evenly "
                f"and the image embedding has stride {self.backbone_stride}")

    @property
    def image_size_step(self) -> int:
        """The input sizes the model takes are the multiples of this: stride 4 times the first window
        of the trunk (its window position embedding tiles the first feature map), 4 * 2**q_pool (each
        pooling halves the map exactly, so the FPN's top-down sums line up), and the backbone stride."""
        return math.lcm(4 * max(1, self.hiera.window_spec[0]), 4 * 2**self.hiera.q_pool, self.backbone_stride)

    @property
    def embed_size(self) -> int:
        """Side of the lowest-resolution image embedding entering the decoder."""
        return self.image_size // self.backbone_stride

    @property
    def mask_size(self) -> int:
        """Side of the decoder's mask logits and of the dense mask prompt (image_size / 4)."""
        return 4 * self.embed_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, d)


def _from_dict(cls, d: Any):
    """``cls(**d)`` for a mapping read from JSON / YAML; unknown keys are an error naming them."""
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping of {cls.__name__} keys, got {_shown(d)}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(str(k) for k in d if k not in names)
    if unknown:
        raise ConfigError(f"{', '.join(unknown)}: unknown key{'s' if len(unknown) > 1 else ''} "
                          f"(valid keys: {', '.join(names)})")
    return cls(**d)


# fields that may be 0 (every other integer is a count or a width: at least 1)
_MAY_BE_ZERO = {"q_pool", "scalp"}

#: The largest value of every number in a configuration (of each item, for lists), far above the
#: published models' (``paper``: widths 1024 and 4096, 24 layers, 16 heads, vocabulary 64010, input
#: 1024) yet small enough that no single value asks for an absurd model.
BOUNDS: dict[str, float] = {
    # input sizes and strides
    "image_size": 8192, "img_size": 4096, "patch_size": 256, "backbone_stride": 256,
    # widths
    "embed_dim": 8192, "hidden_dim": 8192, "ffn_dim": 65536, "decoder_mlp_dim": 65536, "mask_in_chans": 1024,
    # depths and counts
    "depth": 128, "decoder_depth": 64, "num_multimask_outputs": 16, "q_pool": 8, "scalp": 8,
    "stages": 256, "global_att_blocks": 256, "fpn_top_down_levels": 8,
    # heads
    "num_heads": 256, "decoder_heads": 256, "adapter_heads": 256, "mpg_heads": 256, "guidance_heads": 256,
    # text
    "vocab_size": 500_000, "max_text_positions": 8192,
    # windows
    "window_spec": 1024, "window_pos_embed_bkg_spatial_size": 1024,
    # factors and rates
    "dim_mul": 8.0, "head_mul": 8.0, "adapter_ratio": 16.0, "alpha_t": 100.0, "alpha_i": 100.0,
    "drop_path_rate": 1.0, "layernorm_eps": 1.0,
}
#: at most this many Hiera stages, and blocks in all stages together
MAX_STAGES, MAX_BLOCKS = 8, 256


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else f"{text} ({type(value).__name__})"


def _check_fields(config) -> None:
    """Check every field of a config dataclass against its annotation (module docstring), converting
    lists to tuples, integers to floats and mappings to nested configs in place."""
    hints = _field_types(type(config))
    for f in dataclasses.fields(config):
        setattr(config, f.name, _checked(f.name, getattr(config, f.name), hints[f.name]))


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _checked(name: str, value: Any, kind: Any) -> Any:
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping of {kind.__name__} keys, got {_shown(value)}")
        try:
            return _from_dict(kind, value)
        except ConfigError as exc:
            raise ConfigError(f"{name}.{exc}") from None
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        fixed = None if (len(args) == 2 and args[1] is Ellipsis) else len(args)
        if not isinstance(value, (list, tuple)) or (fixed is not None and len(value) != fixed):
            want = f"{fixed} integers" if fixed is not None else "a list of integers"
            raise ConfigError(f"{name}: expected {want}, got {_shown(value)}")
        for item in value:
            _check_number(name, item, int, minimum=0)
        return tuple(value)
    if kind in (int, float):
        _check_number(name, value, kind, minimum=0 if (kind is float or name in _MAY_BE_ZERO) else 1)
        return float(value) if kind is float else value
    if kind in (bool, str) and not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {'true or false' if kind is bool else 'a string'}, got {_shown(value)}")
    return value


def _check_number(name: str, value: Any, kind: type, minimum: int) -> None:
    ok_type = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    if not ok_type:
        raise ConfigError(f"{name}: expected {'a number' if kind is float else 'an integer'}, got {_shown(value)}")
    maximum = BOUNDS[name]
    if not math.isfinite(value) or not minimum <= value <= maximum:
        raise ConfigError(f"{name}: expected {describe_range(kind, minimum, maximum)}, got {value!r}")


# --- registries of the official backbone sizes ---------------------------------------------------

HIERA_SIZES: dict[str, HieraConfig] = {
    "tiny": HieraConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (8, 4, 14, 7), (7, 7)),
    "small": HieraConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (8, 4, 14, 7), (7, 7)),
    "base_plus": HieraConfig(112, 2, (2, 3, 16, 3), (12, 16, 20), (8, 4, 14, 7), (14, 14)),
    "large": HieraConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}

BEIT3_SIZES: dict[str, Beit3Config] = {
    "base": Beit3Config(embed_dim=768, depth=12, num_heads=12, ffn_dim=3072),
    "large": Beit3Config(),
}


def _preset(name: str) -> ModelConfig:
    if name == "paper":
        return ModelConfig(name=name, hiera=HIERA_SIZES["large"], beit3=BEIT3_SIZES["large"])
    if name == "base":
        return ModelConfig(name=name, hiera=HIERA_SIZES["base_plus"], beit3=BEIT3_SIZES["base"])
    if name == "tiny-parity":
        # SAM2-Hiera-T trunk + BEiT-3-L cut to 2 layers: the configuration of tiny_golden.npz
        return ModelConfig(
            name=name,
            hiera=HIERA_SIZES["tiny"],
            beit3=dataclasses.replace(BEIT3_SIZES["large"], depth=2),
        )
    if name == "nano":
        # a few million parameters at 256x256, trainable from scratch on a CPU (tests and the demo)
        return ModelConfig(
            name=name,
            image_size=256,
            hidden_dim=64,
            decoder_heads=4,
            decoder_mlp_dim=256,
            hiera=HieraConfig(
                embed_dim=32,
                num_heads=1,
                stages=(1, 2, 3, 1),
                global_att_blocks=(5, 6),
                window_spec=(8, 4, 8, 4),
                window_pos_embed_bkg_spatial_size=(8, 8),
            ),
            beit3=Beit3Config(
                embed_dim=128, depth=3, num_heads=4, ffn_dim=512, vocab_size=8192, img_size=128,
                max_text_positions=66,
            ),
            fusion=FusionConfig(adapter_heads=2, mpg_heads=4, guidance_heads=4),
        )
    raise KeyError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")


PRESET_NAMES = ("paper", "base", "tiny-parity", "nano")


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """A preset's config with top-level overrides (``fusion=FusionConfig(bhfm="uni")``, ...)."""
    cfg = _preset(name)
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
