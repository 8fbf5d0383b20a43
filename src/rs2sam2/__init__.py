"""RS2-SAM2: referring segmentation of remote-sensing images (SAM2 + BEiT-3), in plain PyTorch."""

import importlib

from .checkpoints import (
    CheckpointError,
    init_from_official,
    load_beit3_checkpoint,
    load_official_state_dict,
    load_pretrained,
    load_sam2_checkpoint,
    read_state_dict,
    save_pretrained,
)
from .config import PRESET_NAMES, FusionConfig, ModelConfig, get_config
from .models import RS2SAM2, RS2SAM2Output, build_model
from .text import load_tokenizer

__version__ = "0.1.0"

_LAZY = {"Predictor": "predict", "Prediction": "predict"}


def __getattr__(name: str):
    # the predictor pulls in raster I/O; import it only when asked for
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'rs2sam2' has no attribute {name!r}")

__all__ = [
    "CheckpointError",
    "FusionConfig",
    "ModelConfig",
    "PRESET_NAMES",
    "Prediction",
    "Predictor",
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
    "save_pretrained",
    "__version__",
]
