from .rs2sam2 import RS2SAM2, RS2SAM2Output, build_model

__all__ = ["RS2SAM2", "RS2SAM2Output", "build_model"]
