"""Georeferenced grids: areas of interest, and mask / probability rasters written on the input grid.

A prediction is made on the pixel grid of the input image, or of a window of it. When the image is
georeferenced (a GeoTIFF with a CRS and an affine transform), the outputs here keep exactly that
grid, so they overlay the source scene in any GIS:

* :func:`area_of_interest` -- a bounding box (in the raster's CRS or another one) or a pixel window
  -> the window of whole pixels that covers it;
* :func:`write_mask` -- single-band ``uint8`` raster, **255 = foreground, 0 = background**, and
  :data:`MASK_NODATA` where the input has no data (declared as the file's nodata value);
* :func:`write_probability` -- single-band ``float32`` raster of per-pixel probabilities (NaN nodata);
* :func:`open_grid_writer` -- the same GeoTIFFs written window by window (tiled, compressed), for
  scenes whose mask does not fit in memory.

Polygons and vector files are :mod:`rs2sam2.vector`'s job. Every file is written through
:func:`rs2sam2.fsutil.atomic_write`, so readers never see a half-written file.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import transform_bounds

from .errors import UserError
from .fsutil import atomic_write

__all__ = [
    "MASK_BACKGROUND",
    "MASK_FOREGROUND",
    "MASK_NODATA",
    "AreaError",
    "RasterInfoLike",
    "area_of_interest",
    "mask_band",
    "open_grid_writer",
    "probability_band",
    "write_mask",
    "write_probability",
]

#: Value of foreground pixels in every mask written by :func:`write_mask`.
MASK_FOREGROUND = 255
#: Value of background pixels in every mask written by :func:`write_mask`.
MASK_BACKGROUND = 0
#: Value of nodata pixels (where the input has no data), declared as the mask file's nodata value;
#: mid-grey in viewers that ignore nodata.
MASK_NODATA = 127

_TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_SUFFIXES = (".png",)
# GeoTIFF blocks of the windowed writer
_BLOCK = 256
# a bounding box edge this close to a pixel edge (in pixels) counts as on it (floating-point slack)
_SNAP_EPS = 1e-6


class AreaError(UserError, ValueError):
    """An area of interest that is empty, outside the raster, or cannot be placed on it."""


# --------------------------------------------------------------------------------------------
# Raster metadata
# --------------------------------------------------------------------------------------------


@runtime_checkable
class RasterInfoLike(Protocol):
    """What this module needs to know about the input raster (``imageio.RasterInfo`` fits).

    ``crs`` may be a :class:`rasterio.crs.CRS`, anything ``CRS.from_user_input`` accepts
    (``"EPSG:32633"``, a WKT string, an EPSG int) or ``None``; ``transform`` may be an
    :class:`affine.Affine` or its first six coefficients ``(a, b, c, d, e, f)``.
    """

    height: int
    width: int
    crs: Any
    transform: Any
    georeferenced: bool


def _is_georeferenced(info: RasterInfoLike | None) -> bool:
    return info is not None and bool(getattr(info, "georeferenced", False))


def _has_nodata(info: RasterInfoLike | None) -> bool:
    return info is not None and bool(getattr(info, "has_nodata", False))


def to_crs(crs: Any) -> CRS | None:
    """``crs`` as a :class:`rasterio.crs.CRS` (None stays None)."""
    if crs is None or crs == "":
        return None

    if isinstance(crs, CRS):
        return crs
    return CRS.from_user_input(crs)


def to_affine(transform: Any) -> Affine:
    """``transform`` as an :class:`affine.Affine` (None: the identity, i.e. pixel coordinates)."""
    if transform is None:
        return Affine.identity()
    if isinstance(transform, Affine):
        return transform
    coeffs = tuple(float(v) for v in transform)
    if len(coeffs) < 6:
        raise ValueError(f"transform needs 6 affine coefficients, got {len(coeffs)}")
    return Affine(*coeffs[:6])


def grid_of(info: RasterInfoLike | None) -> tuple[Affine, CRS | None]:
    """The ``(transform, crs)`` of ``info``: pixel coordinates (identity, None) when not georeferenced."""
    if not _is_georeferenced(info):
        return Affine.identity(), None
    return to_affine(info.transform), to_crs(info.crs)


def _check_shape(array: np.ndarray, info: RasterInfoLike | None, what: str) -> None:
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D (H, W) array, got shape {array.shape}")
    if info is not None:
        expected = (int(info.height), int(info.width))
        if tuple(array.shape) != expected:
            raise ValueError(
                f"{what} shape {tuple(array.shape)} does not match the input raster "
                f"(height, width) = {expected}; predictions must be resampled to the input grid "
                f"before writing"
            )


def _suffix(path: Path) -> str:
    return path.suffix.lower()


# --------------------------------------------------------------------------------------------
# Areas of interest
# --------------------------------------------------------------------------------------------


def area_of_interest(
    info: RasterInfoLike,
    *,
    bbox: Sequence[float] | None = None,
    bbox_crs: Any = None,
    window: Sequence[int] | None = None,
) -> tuple[tuple[int, int, int, int], bool]:
    """The pixel window ``(col_off, row_off, width, height)`` of an area of interest, and whether a
    bounding box had to be clipped to the raster.

    ``window = (col, row, width, height)`` in pixels must lie inside the raster. ``bbox = (minx,
    miny, maxx, maxy)`` is in the raster's CRS, or in ``bbox_crs`` (e.g. ``"EPSG:4326"`` for
    lon/lat; transformed with ``rasterio.warp.transform_bounds``); it is snapped outward to whole
    pixels (the window covers the whole box) and clipped to the raster. Neither: the whole raster.

    Raises :class:`AreaError` (a ``ValueError``) for an empty area, one outside the raster, or a
    box in another CRS on a raster without one.
    """
    if bbox is not None and window is not None:
        raise AreaError("give either a bbox or a window, not both")
    if window is not None:
        return _window_area(window, int(info.width), int(info.height)), False
    if bbox is None:
        return (0, 0, int(info.width), int(info.height)), False
    return _bbox_area(info, bbox, bbox_crs)


def _window_area(window: Sequence[int], width: int, height: int) -> tuple[int, int, int, int]:
    """A ``(col, row, width, height)`` window checked to lie inside a raster of ``width x height``."""
    try:
        col, row, w, h = (int(v) for v in window)
    except (TypeError, ValueError):
        raise AreaError(f"window must be 4 whole numbers COL ROW WIDTH HEIGHT; got {window!r}") from None
    if w <= 0 or h <= 0:
        raise AreaError(f"window {col} {row} {w} {h} has zero size: WIDTH and HEIGHT must be at least 1")
    if col < 0 or row < 0 or col + w > width or row + h > height:
        raise AreaError(f"window {col} {row} {w} {h} (COL ROW WIDTH HEIGHT) is not inside the raster of "
                        f"{width} x {height} pixels")
    return col, row, w, h


def _bbox_area(info: RasterInfoLike, bbox: Sequence[float], bbox_crs: Any) -> tuple[tuple[int, int, int, int], bool]:
    """The pixel window of a bounding box (:func:`area_of_interest`) and whether it was clipped."""
    width, height = int(info.width), int(info.height)
    try:
        minx, miny, maxx, maxy = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise AreaError(f"bbox must be 4 numbers MINX MINY MAXX MAXY; got {bbox!r}") from None
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise AreaError(f"bbox {minx} {miny} {maxx} {maxy} has a value that is not a finite number")
    if not (minx < maxx and miny < maxy):
        raise AreaError(f"bbox {minx:g} {miny:g} {maxx:g} {maxy:g} has zero size: it needs MINX < MAXX and "
                        "MINY < MAXY")
    if getattr(info, "gcps", None):
        raise AreaError("the raster is georeferenced by ground control points, which give no grid for a bbox; "
                        "warp it to one first (gdalwarp -r bilinear in.tif warped.tif), or use a window in pixels")
    transform, crs = grid_of(info)
    if bbox_crs is not None:
        if crs is None:
            raise AreaError(f"the bbox is given in {bbox_crs} but the raster has no CRS; give the bbox in "
                            "pixel coordinates, or use a window")
        try:
            src = to_crs(bbox_crs)
        except Exception as exc:  # noqa: BLE001 - rasterio's CRSError and friends
            raise AreaError(f"bbox CRS {bbox_crs!r} is not a CRS rasterio knows (like EPSG:4326): {exc}") from None
        minx, miny, maxx, maxy = transform_bounds(src, crs, minx, miny, maxx, maxy, densify_pts=21)
    inverse = ~transform
    cols, rows = zip(*(inverse @ (x, y) for x in (minx, maxx) for y in (miny, maxy)))
    c0 = math.floor(min(cols) + _SNAP_EPS)
    c1 = math.ceil(max(cols) - _SNAP_EPS)
    r0 = math.floor(min(rows) + _SNAP_EPS)
    r1 = math.ceil(max(rows) - _SNAP_EPS)
    cc0, cc1, rr0, rr1 = max(c0, 0), min(c1, width), max(r0, 0), min(r1, height)
    if cc1 <= cc0 or rr1 <= rr0:
        raise AreaError(f"bbox {' '.join(f'{v:g}' for v in bbox)} lies outside the raster (pixel columns "
                        f"{c0}..{c1}, rows {r0}..{r1} of a {width} x {height} image)")
    clipped = (cc0, cc1, rr0, rr1) != (c0, c1, r0, r1)
    return (cc0, rr0, cc1 - cc0, rr1 - rr0), clipped


# --------------------------------------------------------------------------------------------
# Raster writers
# --------------------------------------------------------------------------------------------


def mask_band(mask: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A mask as written: uint8, 255 where ``mask`` is non-zero, 0 elsewhere, :data:`MASK_NODATA`
    where ``valid`` is False."""
    band = np.where(np.asarray(mask) != 0, MASK_FOREGROUND, MASK_BACKGROUND).astype(np.uint8)
    if valid is not None:
        band[~np.asarray(valid, dtype=bool)] = MASK_NODATA
    return band


def probability_band(prob: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """A probability map as written: float32, NaN where ``valid`` is False."""
    band = np.asarray(prob).astype(np.float32)  # a copy
    if valid is not None:
        band[~np.asarray(valid, dtype=bool)] = np.nan
    return band


def _profile(height: int, width: int, dtype: str, info: RasterInfoLike | None, *, predictor: int,
             nodata: float | None) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": dtype,
        "compress": "lzw",
        "predictor": predictor,
        "nodata": nodata,
    }
    if _is_georeferenced(info):
        assert info is not None
        profile["crs"] = to_crs(info.crs)
        profile["transform"] = to_affine(info.transform)
    elif getattr(info, "gcps", None):  # georeferenced by ground control points: the mask keeps them

        profile["gcps"] = [GroundControlPoint(row, col, x, y, z) for row, col, x, y, z in info.gcps]
        profile["crs"] = to_crs(info.gcp_crs)
    return profile


def _write_tiff(
    tmp: Path,
    band: np.ndarray,
    info: RasterInfoLike | None,
    *,
    predictor: int,
    tags: dict[str, str],
    nodata: float | None = None,
) -> None:
    """Write one band as a (Geo)TIFF with LZW compression and the given nodata value (or none)."""
    height, width = band.shape
    profile = _profile(height, width, band.dtype.name, info, predictor=predictor, nodata=nodata)
    with warnings.catch_warnings():
        # a plain TIFF without CRS/transform is what we want here, not a mistake
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(band, 1)
            dst.update_tags(**tags)


def _mask_tags(nodata: bool) -> dict[str, str]:
    tags = {"FOREGROUND_VALUE": str(MASK_FOREGROUND), "SOFTWARE": "rs2sam2"}
    if nodata:
        tags["NODATA_VALUE"] = str(MASK_NODATA)
    return tags


def write_mask(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    info: RasterInfoLike | None = None,
    valid: np.ndarray | None = None,
) -> Path:
    """Write a binary mask as a single-band ``uint8`` raster: **255 = foreground, 0 = background**.

    Any non-zero value of ``mask`` (bool, or uint8 0/1 or 0/255, ...) counts as foreground.

    * ``.tif`` / ``.tiff`` and ``info`` georeferenced: a GeoTIFF on exactly the input grid
      (same CRS, transform, width, height), LZW-compressed.
    * ``.tif`` / ``.tiff`` otherwise: the same TIFF without CRS/transform.
    * ``.png``: an 8-bit greyscale PNG (PNG carries no georeference; use ``.tif`` to keep it).

    Nodata: when ``valid`` is given or ``info.has_nodata`` is true, pixels where ``valid`` is False
    are :data:`MASK_NODATA` and TIFFs declare that value as nodata (PNG cannot declare it: those
    pixels are written as background); otherwise no nodata value is declared.

    The file is written atomically (see :func:`atomic_write`).

    Args:
        path: destination; the suffix picks the format.
        mask: ``(H, W)`` array.
        info: the input raster's metadata (e.g. ``imageio.RasterInfo``); when given, ``mask``
            must have shape ``(info.height, info.width)``.
        valid: ``(H, W)`` bool, False where the input has no data.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: wrong mask shape, or an unsupported suffix.
    """
    dest = Path(path)
    arr = np.asarray(mask)
    _check_shape(arr, info, "mask")
    if valid is not None:
        _check_shape(np.asarray(valid), info, "validity mask")
    suffix = _suffix(dest)
    if suffix in _TIFF_SUFFIXES:
        declare = valid is not None or _has_nodata(info)
        with atomic_write(dest) as tmp:
            _write_tiff(tmp, mask_band(arr, valid), info, predictor=2, tags=_mask_tags(declare),
                        nodata=MASK_NODATA if declare else None)
    elif suffix in _PNG_SUFFIXES:
        band = mask_band(arr & np.asarray(valid, dtype=bool) if valid is not None else arr)
        with atomic_write(dest) as tmp:
            Image.fromarray(band).save(tmp, format="PNG", optimize=True)
    else:
        raise ValueError(f"write_mask: unsupported suffix {dest.suffix!r}; use .tif, .tiff or .png")
    return dest


def write_probability(
    path: str | os.PathLike[str],
    prob: np.ndarray,
    info: RasterInfoLike | None = None,
    valid: np.ndarray | None = None,
) -> Path:
    """Write a per-pixel probability map.

    * ``.tif`` / ``.tiff``: single-band ``float32`` (Geo)TIFF, values written unchanged
      (georeferenced exactly like :func:`write_mask`; LZW with the floating-point predictor);
      NaN where ``valid`` is False, declared as nodata when ``valid`` is given or ``info.has_nodata``.
    * ``.png``: 8-bit greyscale, ``round(clip(prob, 0, 1) * 255)``; NaN and nodata become 0.

    Args:
        path: destination; the suffix picks the format.
        prob: ``(H, W)`` float array, normally in ``[0, 1]``.
        info: the input raster's metadata; when given, ``prob`` must match its shape.
        valid: ``(H, W)`` bool, False where the input has no data.

    Returns:
        ``Path(path)``.
    """
    dest = Path(path)
    arr = np.asarray(prob)
    _check_shape(arr, info, "probability map")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise ValueError(f"probability map must be numeric, got dtype {arr.dtype}")
    band = probability_band(arr, valid)
    suffix = _suffix(dest)
    if suffix in _TIFF_SUFFIXES:
        declare = valid is not None or _has_nodata(info)
        with atomic_write(dest) as tmp:
            _write_tiff(tmp, band, info, predictor=3, tags={"SOFTWARE": "rs2sam2"},
                        nodata=float("nan") if declare else None)
    elif suffix in _PNG_SUFFIXES:
        q = np.round(np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
        with atomic_write(dest) as tmp:
            Image.fromarray(q).save(tmp, format="PNG", optimize=True)
    else:
        raise ValueError(
            f"write_probability: unsupported suffix {dest.suffix!r}; use .tif, .tiff or .png"
        )
    return dest


def open_grid_writer(tmp: str | os.PathLike[str], info: RasterInfoLike, kind: str):
    """Open a GeoTIFF on the grid of ``info`` for writing window by window (``dst.write(band, 1,
    window=...)``): ``kind`` ``"mask"`` (uint8, values as :func:`mask_band`) or ``"probability"``
    (float32, as :func:`probability_band`). Tiled in 256 x 256 blocks and LZW-compressed, BigTIFF
    when needed, nodata declared as in :func:`write_mask`. Write it to a temporary path from
    :func:`~rs2sam2.fsutil.atomic_write`; the caller closes the returned dataset."""
    declare = _has_nodata(info)
    if kind == "mask":
        profile = _profile(int(info.height), int(info.width), "uint8", info, predictor=2,
                           nodata=MASK_NODATA if declare else None)
        tags = _mask_tags(declare)
    elif kind == "probability":
        profile = _profile(int(info.height), int(info.width), "float32", info, predictor=3,
                           nodata=float("nan") if declare else None)
        tags = {"SOFTWARE": "rs2sam2"}
    else:
        raise ValueError(f"kind must be 'mask' or 'probability', got {kind!r}")
    tiled = info.height > _BLOCK or info.width > _BLOCK
    if tiled:
        profile.update(tiled=True, blockxsize=_BLOCK, blockysize=_BLOCK, BIGTIFF="IF_SAFER")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dst = rasterio.open(tmp, "w", **profile)
    dst.update_tags(**tags)
    return dst
