"""COCO segmentations -- RLE (compressed or not), lists of RLEs, polygons -- to boolean masks.

Shared by the readers whose masks are stored inline (RRSIS-D's instances.json, RISBench and JSONL
lines). **Union rule**: a segmentation with several parts (polygons or RLEs) is the union of them.
An RLE carries its own size; a polygon is drawn on the grid it is given.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

__all__ = ["decode_segmentation", "segmentation_size"]


def _parts(segmentation: Any) -> list:
    """The parts of a segmentation: RLE dicts and polygons (flat coordinate lists)."""
    if isinstance(segmentation, dict):
        return [segmentation]
    if isinstance(segmentation, list) and segmentation:
        if all(isinstance(p, (int, float)) for p in segmentation):
            return [[float(v) for v in segmentation]]  # one flat polygon
        return segmentation
    raise ValueError("empty or unrecognised segmentation")


def segmentation_size(segmentation: Any) -> tuple[int, int] | None:
    """``(height, width)`` an RLE part states, or None when every part is a polygon (polygons have
    no size of their own: they are drawn on the image's grid)."""
    for part in _parts(segmentation):
        if isinstance(part, dict):
            size = part.get("size")
            if not isinstance(size, (list, tuple)) or len(size) != 2:
                raise ValueError(f"RLE 'size' must be [height, width], got {size!r}")
            return int(size[0]), int(size[1])
    return None


def _to_rles(segmentation: Any, height: int, width: int) -> list[dict]:
    """Every part of a COCO segmentation as a compressed RLE of size ``height`` x ``width``."""
    rles: list[dict] = []
    polygons: list[list[float]] = []
    for part in _parts(segmentation):
        if isinstance(part, dict):
            if "counts" not in part or "size" not in part:
                raise ValueError("RLE without 'counts'/'size'")
            if list(part["size"]) != [height, width]:
                raise ValueError(f"RLE size {list(part['size'])} differs from the image size given with it, "
                                 f"{[height, width]}")
            counts = part["counts"]
            if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it
                rles.append(coco_mask.frPyObjects(part, height, width))
            else:
                rles.append({"size": [height, width],
                             "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
        elif isinstance(part, (list, tuple)):
            if len(part) < 6 or len(part) % 2:
                raise ValueError(f"polygon with {len(part)} coordinates (needs an even number >= 6)")
            polygons.append([float(v) for v in part])
        else:
            raise ValueError(f"unrecognised segmentation part of type {type(part).__name__}")
    if polygons:
        rles.extend(coco_mask.frPyObjects(polygons, height, width))
    return rles


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (RLE, list of RLEs or polygons) -> HxW bool, the union of its parts."""
    rles = _to_rles(segmentation, height, width)
    merged = coco_mask.merge(rles, intersect=False) if len(rles) > 1 else rles[0]
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips numpy 2's copy-keyword DeprecationWarning on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(merged).astype(bool)
