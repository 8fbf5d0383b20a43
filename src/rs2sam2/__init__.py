"""RS2-SAM2: referring segmentation of remote-sensing images (SAM2 + BEiT-3), in plain PyTorch."""

from .config import ModelConfig, get_config
from .models import RS2SAM2, RS2SAM2Output, build_model

__version__ = "0.1.0"

__all__ = ["ModelConfig", "RS2SAM2", "RS2SAM2Output", "build_model", "get_config", "__version__"]
