"""The RS2-SAM2 network; one file per part (Hiera + BHFM, BEiT-3, MPG, SAM heads) and the assembly."""

from .rs2sam2 import RS2SAM2, RS2SAM2Output, build_model

__all__ = ["RS2SAM2", "RS2SAM2Output", "build_model"]
