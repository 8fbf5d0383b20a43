"""Georeferenced outputs: masks, probability rasters and GeoJSON polygons, written atomically.

A prediction is made on the pixel grid of the input image. When that image is georeferenced
(a GeoTIFF with a CRS and an affine transform), the outputs here keep exactly the same grid,
so they overlay the source scene in any GIS:

* :func:`write_mask` -- single-band ``uint8`` raster, **255 = foreground, 0 = background**
  (GeoTIFF with the input CRS/transform, or a plain TIFF / PNG without georeference).
* :func:`write_probability` -- single-band ``float32`` raster of per-pixel probabilities.
* :func:`mask_to_geojson` / :func:`write_geojson` -- foreground polygons in the input CRS
  (pixel coordinates when the input has no georeference).

Every file is written through :func:`rs2sam2.fsutil.atomic_write`, so readers never see a
half-written file. ``rasterio`` is imported lazily, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from .fsutil import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover - typing only
    from affine import Affine
    from rasterio.crs import CRS

__all__ = [
    "MASK_FOREGROUND",
    "MASK_BACKGROUND",
    "RasterInfoLike",
    "write_mask",
    "write_probability",
    "mask_to_geojson",
    "write_geojson",
]

#: Value of foreground pixels in every mask written by :func:`write_mask`.
MASK_FOREGROUND = 255
#: Value of background pixels in every mask written by :func:`write_mask`.
MASK_BACKGROUND = 0

_TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_SUFFIXES = (".png",)


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


def _to_crs(crs: Any) -> CRS | None:
    if crs is None or crs == "":
        return None
    from rasterio.crs import CRS

    if isinstance(crs, CRS):
        return crs
    return CRS.from_user_input(crs)


def _to_affine(transform: Any) -> Affine:
    from affine import Affine

    if transform is None:
        return Affine.identity()
    if isinstance(transform, Affine):
        return transform
    coeffs = tuple(float(v) for v in transform)
    if len(coeffs) < 6:
        raise ValueError(f"transform needs 6 affine coefficients, got {len(coeffs)}")
    return Affine(*coeffs[:6])


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
# Raster writers
# --------------------------------------------------------------------------------------------


def _write_tiff(
    tmp: Path,
    band: np.ndarray,
    info: RasterInfoLike | None,
    *,
    predictor: int,
    tags: dict[str, str],
) -> None:
    """Write one band as a (Geo)TIFF with LZW compression and no nodata value."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    height, width = band.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "height": height,
        "width": width,
        "count": 1,
        "dtype": band.dtype.name,
        "compress": "lzw",
        "predictor": predictor,
        "nodata": None,
    }
    if _is_georeferenced(info):
        assert info is not None
        profile["crs"] = _to_crs(info.crs)
        profile["transform"] = _to_affine(info.transform)
    with warnings.catch_warnings():
        # a plain TIFF without CRS/transform is what we want here, not a mistake
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(band, 1)
            dst.update_tags(**tags)


def write_mask(
    path: str | os.PathLike[str],
    mask: np.ndarray,
    info: RasterInfoLike | None = None,
) -> Path:
    """Write a binary mask as a single-band ``uint8`` raster: **255 = foreground, 0 = background**.

    Any non-zero value of ``mask`` (bool, or uint8 0/1 or 0/255, ...) counts as foreground.

    * ``.tif`` / ``.tiff`` and ``info`` georeferenced: a GeoTIFF on exactly the input grid
      (same CRS, transform, width, height), LZW-compressed, nodata unset.
    * ``.tif`` / ``.tiff`` otherwise: the same TIFF without CRS/transform.
    * ``.png``: an 8-bit greyscale PNG (PNG carries no georeference; use ``.tif`` to keep it).

    The file is written atomically (see :func:`atomic_write`).

    Args:
        path: destination; the suffix picks the format.
        mask: ``(H, W)`` array.
        info: the input raster's metadata (e.g. ``imageio.RasterInfo``); when given, ``mask``
            must have shape ``(info.height, info.width)``.

    Returns:
        ``Path(path)``.

    Raises:
        ValueError: wrong mask shape, or an unsupported suffix.
    """
    dest = Path(path)
    arr = np.asarray(mask)
    _check_shape(arr, info, "mask")
    band = np.where(arr != 0, MASK_FOREGROUND, MASK_BACKGROUND).astype(np.uint8)
    suffix = _suffix(dest)
    if suffix in _TIFF_SUFFIXES:
        tags = {"FOREGROUND_VALUE": str(MASK_FOREGROUND), "SOFTWARE": "rs2sam2"}
        with atomic_write(dest) as tmp:
            _write_tiff(tmp, band, info, predictor=2, tags=tags)
    elif suffix in _PNG_SUFFIXES:
        from PIL import Image

        with atomic_write(dest) as tmp:
            Image.fromarray(band).save(tmp, format="PNG", optimize=True)
    else:
        raise ValueError(f"write_mask: unsupported suffix {dest.suffix!r}; use .tif, .tiff or .png")
    return dest


def write_probability(
    path: str | os.PathLike[str],
    prob: np.ndarray,
    info: RasterInfoLike | None = None,
) -> Path:
    """Write a per-pixel probability map.

    * ``.tif`` / ``.tiff``: single-band ``float32`` (Geo)TIFF, values written unchanged
      (georeferenced exactly like :func:`write_mask`; LZW with the floating-point predictor,
      nodata unset).
    * ``.png``: 8-bit greyscale, ``round(clip(prob, 0, 1) * 255)``; NaN becomes 0.

    Args:
        path: destination; the suffix picks the format.
        prob: ``(H, W)`` float array, normally in ``[0, 1]``.
        info: the input raster's metadata; when given, ``prob`` must match its shape.

    Returns:
        ``Path(path)``.
    """
    dest = Path(path)
    arr = np.asarray(prob)
    _check_shape(arr, info, "probability map")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == bool):
        raise ValueError(f"probability map must be numeric, got dtype {arr.dtype}")
    band = arr.astype(np.float32)
    suffix = _suffix(dest)
    if suffix in _TIFF_SUFFIXES:
        with atomic_write(dest) as tmp:
            _write_tiff(tmp, band, info, predictor=3, tags={"SOFTWARE": "rs2sam2"})
    elif suffix in _PNG_SUFFIXES:
        from PIL import Image

        q = np.round(np.clip(np.nan_to_num(band, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
        with atomic_write(dest) as tmp:
            Image.fromarray(q).save(tmp, format="PNG", optimize=True)
    else:
        raise ValueError(
            f"write_probability: unsupported suffix {dest.suffix!r}; use .tif, .tiff or .png"
        )
    return dest


# --------------------------------------------------------------------------------------------
# GeoJSON
# --------------------------------------------------------------------------------------------


def _ring_signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace signed area of a closed ring (positive = counter-clockwise in x/y axes)."""
    pts = np.asarray(ring, dtype=np.float64)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _oriented(ring: Sequence[Sequence[float]], ccw: bool) -> list[list[float]]:
    """Ring as a list of ``[x, y]`` lists, reversed if needed to have the requested winding."""
    coords = [[float(x), float(y)] for x, y in ring]
    if (_ring_signed_area(coords) > 0) != ccw:
        coords.reverse()
    return coords


def _polygon_area(rings: Sequence[Sequence[Sequence[float]]]) -> float:
    """Unsigned area of a polygon: exterior minus holes."""
    if not rings:
        return 0.0
    area = abs(_ring_signed_area(rings[0]))
    for hole in rings[1:]:
        area -= abs(_ring_signed_area(hole))
    return area


def _crs_metadata(crs: CRS | None) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The (legacy) GeoJSON ``crs`` member, and CRS facts for the collection's properties."""
    if crs is None:
        return None, {"crs_wkt": None, "epsg": None}
    epsg = crs.to_epsg()
    props: dict[str, Any] = {"crs_wkt": crs.to_wkt(), "epsg": epsg}
    member = {"type": "name", "properties": {"name": f"EPSG:{epsg}"}} if epsg else None
    return member, props


def _metre_units(crs: CRS | None) -> bool:
    if crs is None or not crs.is_projected:
        return False
    try:
        units = (crs.linear_units or "").lower()
    except Exception:  # pragma: no cover - depends on the PROJ build
        return False
    return units in ("metre", "meter", "m", "metres", "meters")


def mask_to_geojson(
    mask: np.ndarray,
    info: RasterInfoLike | None = None,
    *,
    connectivity: int = 4,
) -> dict[str, Any]:
    """Polygons of the foreground of ``mask`` as a GeoJSON ``FeatureCollection`` (a dict).

    Each 4-connected (or 8-, see ``connectivity``) foreground region becomes one ``Polygon``
    feature with pixel-exact edges (holes included), traced by
    :func:`rasterio.features.shapes`.

    Coordinates are in the input CRS when ``info`` is georeferenced, otherwise in pixel
    coordinates (x = column, y = row, origin at the top-left corner of the image, y down).
    Rings follow the GeoJSON right-hand rule in the coordinate space used (exterior
    counter-clockwise, holes clockwise).

    The collection carries:

    * ``"crs": {"type": "name", "properties": {"name": "EPSG:xxxx"}}`` when the CRS has an EPSG
      code (the GeoJSON 2008 convention GDAL/QGIS read; omitted otherwise);
    * ``"properties"`` with ``crs_wkt``, ``epsg``, ``georeferenced``, ``coordinate_space``
      (``"crs"`` or ``"pixel"``), ``transform`` (6 affine coefficients), ``width``, ``height``,
      ``foreground_px`` and ``num_polygons``.

    Each feature has ``properties = {"value": 1, "area_px": n}`` (``n`` = pixel count of the
    polygon, holes excluded) plus ``"area_m2"`` when the CRS is projected in metres.

    Args:
        mask: ``(H, W)`` array; non-zero = foreground.
        info: the input raster's metadata; when given, ``mask`` must match its shape.
        connectivity: 4 or 8 pixel connectivity of the regions.

    Returns:
        A JSON-serialisable dict.
    """
    from affine import Affine
    from rasterio.features import shapes

    arr = np.asarray(mask)
    _check_shape(arr, info, "mask")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    fg = arr != 0
    georef = _is_georeferenced(info)
    if georef:
        assert info is not None
        transform = _to_affine(info.transform)
        crs = _to_crs(info.crs)
    else:
        transform = Affine.identity()
        crs = None
    pixel_area = abs(transform.determinant)
    if pixel_area == 0:
        raise ValueError(f"degenerate transform (zero pixel area): {tuple(transform)[:6]}")
    metres = _metre_units(crs)

    features: list[dict[str, Any]] = []
    if fg.any():
        source = fg.astype(np.uint8)
        for geom, value in shapes(source, mask=fg, connectivity=connectivity, transform=transform):
            if int(value) != 1 or geom.get("type") != "Polygon":
                continue
            rings = geom["coordinates"]
            coords = [_oriented(rings[0], ccw=True)] + [_oriented(r, ccw=False) for r in rings[1:]]
            area = _polygon_area(coords)
            props: dict[str, Any] = {"value": 1, "area_px": int(round(area / pixel_area))}
            if metres:
                props["area_m2"] = area
            features.append(
                {
                    "type": "Feature",
                    "id": len(features),
                    "geometry": {"type": "Polygon", "coordinates": coords},
                    "properties": props,
                }
            )

    crs_member, crs_props = _crs_metadata(crs)
    fc: dict[str, Any] = {"type": "FeatureCollection"}
    if crs_member is not None:
        fc["crs"] = crs_member
    fc["properties"] = {
        **crs_props,
        "georeferenced": georef,
        "coordinate_space": "crs" if georef else "pixel",
        "transform": [float(v) for v in tuple(transform)[:6]],
        "width": int(arr.shape[1]),
        "height": int(arr.shape[0]),
        "foreground_px": int(fg.sum()),
        "num_polygons": len(features),
    }
    fc["features"] = features
    return fc


def write_geojson(
    path: str | os.PathLike[str], fc: dict[str, Any], *, indent: int | None = None
) -> Path:
    """Atomically write a GeoJSON dict (e.g. from :func:`mask_to_geojson`) as UTF-8 JSON."""
    text = json.dumps(fc, indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")
