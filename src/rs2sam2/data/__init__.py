"""Datasets: readers for RRSIS-D, RefSegRS, RISBench and a JSONL format, the sample transform, and
a synthetic-scene generator writing all four layouts.

Every reader returns the same sample dicts (see :mod:`rs2sam2.data.base`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import DatasetError, MaskSizeWarning, Problem, Ref, ReferringDataset, read_mask_file
from .jsonl import JsonlDataset
from .refsegrs import RefSegRS
from .risbench import RISBench
from .rrsisd import RRSISD

__all__ = [
    "DATASETS",
    "DatasetError",
    "JsonlDataset",
    "MaskSizeWarning",
    "Problem",
    "RISBench",
    "RRSISD",
    "Ref",
    "RefSegRS",
    "ReferringDataset",
    "SampleTransform",
    "add_random_boxes",
    "build_dataset",
    "image_to_tensor",
    "read_mask_file",
]

# the transforms need torch; import them on first use so that reading data and generating
# synthetic scenes (``rs2sam2 synth``) stay quick to start
_LAZY = {"SampleTransform", "add_random_boxes", "image_to_tensor"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import transforms  # noqa: PLC0415 - torch only when asked for (quick synth start)

        return getattr(transforms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


DATASETS = {"rrsisd": RRSISD, "refsegrs": RefSegRS, "jsonl": JsonlDataset, "risbench": RISBench}


def build_dataset(name: str, root: str | Path, split: str | None, **kwargs: Any) -> ReferringDataset:
    """Reader ``name`` (rrsisd | refsegrs | jsonl | risbench) on ``root`` for ``split``.

    For ``jsonl``, ``root`` is the JSONL file or a folder holding ``data.jsonl``, and ``split`` may
    be None (every line). Extra keyword arguments go to the reader.
    """
    key = str(name).lower().replace("-", "")
    if key not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if key != "jsonl" and split is None:
        raise DatasetError(f"dataset {name!r} needs a split (train, val or test)")
    return DATASETS[key](root, split, **kwargs)
