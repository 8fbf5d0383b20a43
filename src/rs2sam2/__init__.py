"""RS2-SAM2: referring segmentation of remote-sensing images (SAM2 + BEiT-3), in plain PyTorch."""

from .checkpoints import (
    CheckpointError,
    init_from_official,
    load_beit3_checkpoint,
    load_official_state_dict,
    load_pretrained,
    load_sam2_checkpoint,
    read_state_dict,
)
from .config import PRESET_NAMES, FusionConfig, ModelConfig, get_config
from .models import RS2SAM2, RS2SAM2Output, build_model
from .text import load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "FusionConfig",
    "ModelConfig",
    "PRESET_NAMES",
    "RS2SAM2",
    "RS2SAM2Output",
    "build_model",
    "get_config",
    "init_from_official",
    "load_beit3_checkpoint",
    "load_official_state_dict",
    "load_pretrained",
    "load_sam2_checkpoint",
    "load_tokenizer",
    "read_state_dict",
    "__version__",
]
