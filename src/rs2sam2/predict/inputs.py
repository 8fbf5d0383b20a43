"""The inputs of a prediction, checked: the image (any supported type, band choice), the texts, and
the area -- where in the raster to look and how to read it (:class:`Area`, :func:`plan_area`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import UserError
from ..geo import area_of_interest
from ..imageio import ImageReadError, Raster, RasterInfo
from ..text import normalize_text
from ..tiles import Plan, plan_region

__all__ = ["MODES", "Area", "InputError", "check_texts", "open_image", "parse_bands", "plan_area"]

#: How an area is read: ``scene`` (a scene answer: a global look, native looks where it points, one
#: answer; :mod:`rs2sam2.scene`), ``whole`` (one model input, decimated when large), ``tiles`` (every
#: tile at native resolution answers on its own). ``None`` (the default) picks ``scene``, which reads
#: areas up to twice the model input per side whole, as ``whole`` does.
MODES = ("scene", "whole", "tiles")


class InputError(UserError, ValueError):
    """Bad user input (empty text, unsupported image type or output suffix, malformed batch file)."""


def parse_bands(spec: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` / ``(4, 3, 2)`` / ``"1"`` -> a tuple of 1 or 3 one-based band numbers (or None)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        try:
            bands = tuple(int(p) for p in spec.replace(" ", "").split(","))
        except ValueError:
            raise InputError(f"--bands must be 1 or 3 comma-separated band numbers like 4,3,2; got {spec!r}") from None
    else:
        bands = tuple(int(b) for b in spec)
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        raise InputError(f"bands must be 1 or 3 band numbers, counted from 1 (like 4,3,2); got {spec!r}")
    return bands


def open_image(image, bands: Sequence[int] | str | None = None):
    """Any supported image -> an open :class:`~rs2sam2.imageio.Raster` (a context manager): a path,
    an open rasterio dataset (left open), a PIL image, a numpy array (``HxW`` or ``HxWxC``, channels
    last), or a Raster (left open).
    ``bands`` is 1-based. Raises :class:`InputError` for other types,
    FileNotFoundError / ImageReadError naming the file."""
    bands = parse_bands(bands) if isinstance(bands, str) else bands
    if isinstance(image, torch.Tensor):
        raise InputError("pass images as a path, a PIL image or a numpy array (HxWxC), not a torch tensor")
    if isinstance(image, Raster):  # already open: the caller closes it
        if bands is not None:
            raise InputError("bands are chosen when a Raster is opened, not later")
        return contextlib.nullcontext(image)
    try:
        return Raster(image, bands=bands)
    except TypeError as exc:
        raise InputError(str(exc)) from None
    except ImageReadError as exc:
        if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
            raise
        raise InputError(f"cannot use this image: {exc}") from exc


def check_texts(texts: Sequence[Any]) -> list[str]:
    """The expressions, normalized; :class:`InputError` for none, a non-string or an empty one."""
    if len(texts) == 0:
        raise InputError("no expression given: pass a text or a non-empty list of texts")
    clean = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"expression {i} is a {type(t).__name__}, not a string")
        t = normalize_text(t)
        if not t:
            which = "the expression" if len(texts) == 1 else f"expression {i}"
            raise InputError(f"{which} is empty: type a sentence that describes the object to segment")
        clean.append(t)
    return clean


@dataclass(frozen=True)
class Area:
    """Where in a raster to predict and how to read it, checked (:meth:`of`).

    ``bbox`` (in the raster's CRS, or ``bbox_crs``) or ``window`` (pixels) limit the area; ``mode``
    is one of :data:`MODES` or None (automatic); ``tile``/``overlap`` are the tiles of ``"tiles"``
    (``tile`` None: the model's input size; ``overlap`` None: an eighth of the tile)."""

    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: str | None = None
    window: tuple[int, int, int, int] | None = None
    mode: str | None = None
    tile: int | None = None
    overlap: int | None = None

    @classmethod
    def of(cls, *, bbox=None, bbox_crs=None, window=None, mode: str | None = None, tile: int | None = None,
           overlap: int | None = None) -> Area:
        """A checked area; ``tile`` alone implies ``mode="tiles"``."""
        if bbox is not None and window is not None:
            raise InputError("give --bbox or --window, not both")
        if bbox_crs is not None and bbox is None:
            raise InputError("--bbox-crs needs --bbox MINX MINY MAXX MAXY")
        if mode is not None and mode not in MODES:
            raise InputError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if tile is not None and mode is None:
            mode = "tiles"
        if mode != "tiles" and tile is not None:
            raise InputError(f"--tile {tile} describes the tiles of --mode tiles, not of --mode {mode}")
        if mode != "tiles" and overlap not in (None, 0):
            raise InputError("--overlap needs --tile SIZE or --mode tiles (the overlap is between tiles)")
        _check_tiling(tile, overlap)
        return cls(bbox=None if bbox is None else tuple(bbox), bbox_crs=bbox_crs,
                   window=None if window is None else tuple(window), mode=mode,
                   tile=None if tile is None else int(tile), overlap=None if overlap is None else int(overlap))

    def tiling(self, model_size: int) -> tuple[int, int]:
        """``(tile, overlap)`` of the tiles mode: the tile defaults to the model input, the overlap to an eighth."""
        tile = model_size if self.tile is None else self.tile
        overlap = tile // 8 if self.overlap is None else self.overlap
        _check_tiling(tile, overlap)
        return tile, overlap


def _check_tiling(tile: int | None, overlap: int | None) -> None:
    if tile is not None and tile < 16:
        raise InputError(f"--tile {tile}: give a tile size of at least 16 pixels")
    if overlap is not None and overlap < 0:
        raise InputError(f"--overlap {overlap}: the overlap must be 0 or more pixels")
    if tile is not None and overlap is not None and tile <= overlap:
        raise InputError(f"--tile {tile} must be larger than --overlap {overlap} (tiles step by tile - overlap)")


def plan_area(info: RasterInfo, area: Area, model_size: int) -> tuple[tuple[int, int, int, int], Plan, bool]:
    """``(region, plan, clipped)``: the pixel window of ``area`` in the raster ``info`` describes,
    how it is read for a model of ``model_size`` input pixels, and whether a bbox was clipped."""
    region, clipped = area_of_interest(info, bbox=area.bbox, bbox_crs=area.bbox_crs, window=area.window)
    if area.mode == "tiles":
        tile, overlap = area.tiling(model_size)
        return region, plan_region(region[2], region[3], model_size, tile, overlap), clipped
    scene = area.mode in (None, "scene")
    return region, plan_region(region[2], region[3], model_size, scene=scene), clipped
