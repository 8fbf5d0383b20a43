"""Polygons of a mask, and vector files (GeoPackage, Shapefile, RFC 7946 GeoJSON).

:func:`polygons` traces the foreground of a mask -- an array, or the band of a mask file read by
GDAL scanline by scanline, so a scene-sized mask never has to be in memory -- into one polygon per
4-connected region (``rasterio.features.shapes``: pixel-exact edges, holes as inner rings), in the
raster's CRS. Each polygon carries:

* ``area`` -- in the CRS's square units (square metres for a metric CRS; square pixels without
  georeference), of the polygon as written (after simplification);
* ``area_px`` -- the number of pixels it covers (before simplification);
* ``score`` -- the model's confidence in the mask the polygon comes from: SAM2's predicted IoU
  (with tiles, the highest among the tiles whose cores the polygon touches).

``min_area`` (square CRS units) drops polygons whose pixel-exact area is smaller; ``simplify``
(CRS units) simplifies every ring with the Douglas-Peucker algorithm (our own implementation, ring
by ring: a ring keeps the vertices needed to stay within the tolerance of the original; a ring
that collapses to fewer than three corners is dropped, and so is a polygon whose exterior does).
Rings are simplified independently, so neighbouring polygons may no longer share edges exactly.

:func:`write_vector` picks the format by suffix:

* ``.gpkg`` / ``.shp`` -- in the raster's CRS, written with pyogrio (``pip install 'rs2sam2[gis]'``);
* ``.geojson`` / ``.json`` -- RFC 7946: WGS 84 longitude/latitude (EPSG:4326), exteriors
  counter-clockwise and holes clockwise (right-hand rule), no ``crs`` member, geometries that cross
  the antimeridian cut there, coordinates rounded to 7 decimals (about 1 cm). A raster without a CRS
  has no lon/lat, and ``properties.coordinate_space`` says what its GeoJSON holds instead: ``"map"``
  when it has a transform (its map coordinates, in a CRS the file does not name), ``"pixel"`` when it
  has none (x = column, y = row from the top-left corner).

A Shapefile is several files (``.shp``, ``.shx``, ``.dbf``, ``.prj``, ``.cpg``...); writing one
replaces them together, and removes those of an earlier Shapefile of the same name that the new one
does not have: a stale ``.prj`` would give the new file the old CRS.

Attributes of every feature: ``text`` (the expression), ``area``, ``area_px``, ``score``. GeoJSON
collections also carry a foreign ``properties`` member describing the source grid.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import shapes
from rasterio.warp import transform_geom

from .extras import require
from .fsutil import atomic_write, atomic_write_text, work_folder
from .geo import MASK_FOREGROUND, to_affine, to_crs

__all__ = ["SHAPEFILE_PARTS", "VECTOR_SUFFIXES", "Polygon", "check_vector_path", "geojson_collection",
           "polygons", "sidecars_replaced", "simplify_ring", "write_vector"]

#: Output suffix -> OGR driver.
VECTOR_SUFFIXES = {".gpkg": "GPKG", ".shp": "ESRI Shapefile", ".geojson": "GeoJSON", ".json": "GeoJSON"}
#: The files of a Shapefile besides ``.shp`` (attributes, index, projection, encoding, indexes, metadata).
SHAPEFILE_PARTS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml")
# RFC 7946 coordinates: 7 decimals of a degree are about 1 cm
LONLAT_DECIMALS = 7


@dataclass
class Polygon:
    """One traced polygon: ``rings[0]`` the exterior, then the holes, each an ``(N, 2)`` closed array
    of ``(x, y)`` in the source CRS (or pixel coordinates)."""

    rings: list[np.ndarray]
    area: float
    area_px: int
    score: float = float("nan")


# --------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace signed area of a closed ring (positive = counter-clockwise in x/y axes)."""
    if len(ring) < 3:
        return 0.0
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _rings_area(rings: Sequence[np.ndarray]) -> float:
    if not rings:
        return 0.0
    return abs(_signed_area(rings[0])) - sum(abs(_signed_area(r)) for r in rings[1:])


def _oriented(ring: Sequence[Sequence[float]], ccw: bool) -> np.ndarray:
    pts = np.asarray(ring, dtype=np.float64)
    if (_signed_area(pts) > 0) != ccw:
        pts = pts[::-1]
    return pts


def _keep_douglas_peucker(pts: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on an open polyline: which points to keep (first and last always)."""
    n = len(pts)
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, n - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        a, b = pts[i], pts[j]
        inner = pts[i + 1:j]
        ab = b - a
        length2 = float(ab @ ab)
        if length2 == 0.0:
            dist = np.hypot(*(inner - a).T)
        else:  # distance to the segment a-b
            t = np.clip(((inner - a) @ ab) / length2, 0.0, 1.0)
            dist = np.hypot(*(inner - (a + t[:, None] * ab)).T)
        k = int(np.argmax(dist))
        if dist[k] > tolerance:
            keep[i + 1 + k] = True
            stack.extend(((i, i + 1 + k), (i + 1 + k, j)))
    return keep


def simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray | None:
    """Douglas-Peucker simplification of a closed ring, or None when it collapses (fewer than 3
    corners, or no area). The ring is split at its first vertex and the vertex farthest from it,
    and each half is simplified."""
    ring = np.asarray(ring, dtype=np.float64)
    if tolerance <= 0:
        return ring
    pts = ring[:-1]
    if len(pts) < 3:
        return None
    far = int(np.argmax(np.hypot(*(pts - pts[0]).T)))
    first = pts[:far + 1]
    second = np.vstack([pts[far:], pts[:1]])
    a = first[_keep_douglas_peucker(first, tolerance)]
    b = second[_keep_douglas_peucker(second, tolerance)]
    out = np.vstack([a, b[1:]])  # b ends with pts[0]: the ring is closed
    if len(out) < 4 or _signed_area(out) == 0.0:
        return None
    return out


def _simplify(rings: list[np.ndarray], tolerance: float) -> list[np.ndarray] | None:
    if tolerance <= 0:
        return rings
    exterior = simplify_ring(rings[0], tolerance)
    if exterior is None:
        return None
    holes = [h for h in (simplify_ring(r, tolerance) for r in rings[1:]) if h is not None]
    return [exterior, *holes]


# --------------------------------------------------------------------------------------------
# tracing
# --------------------------------------------------------------------------------------------


def _pixel_box(ring: np.ndarray, transform, height: int, width: int) -> tuple[int, int, int, int]:
    """The ``(col, row, width, height)`` pixel window that holds a ring (clipped to the grid)."""
    cols, rows = (~transform) @ (ring[:, 0], ring[:, 1])
    c0, c1 = max(int(np.floor(cols.min() + 1e-6)), 0), min(int(np.ceil(cols.max() - 1e-6)), width)
    r0, r1 = max(int(np.floor(rows.min() + 1e-6)), 0), min(int(np.ceil(rows.max() - 1e-6)), height)
    return c0, r0, c1 - c0, r1 - r0


def polygons(
    source,
    transform: Any = None,
    *,
    simplify: float = 0.0,
    min_area: float = 0.0,
    score_of: Callable[[tuple[int, int, int, int]], float] | None = None,
    connectivity: int = 4,
) -> list[Polygon]:
    """Trace the foreground of ``source`` into :class:`Polygon` s (see the module docstring).

    Args:
        source: an ``(H, W)`` array (non-zero = foreground) or a ``rasterio`` Band of a mask file
            written by :func:`rs2sam2.geo.write_mask` (255 = foreground), read scanline by scanline.
        transform: pixel-to-CRS affine (None: pixel coordinates).
        simplify: Douglas-Peucker tolerance in CRS units (0: pixel-exact edges).
        min_area: polygons whose pixel-exact area (CRS units squared) is below this are dropped.
        score_of: ``(col, row, width, height)`` pixel window of a polygon -> its ``score``.
        connectivity: 4 or 8 pixel connectivity of the regions.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    if simplify < 0 or min_area < 0:
        raise ValueError(f"simplify and min_area must be >= 0, got {simplify} and {min_area}")
    transform = to_affine(transform)
    pixel_area = abs(transform.determinant)
    if pixel_area == 0:
        raise ValueError(f"degenerate transform (zero pixel area): {tuple(transform)[:6]}")
    if isinstance(source, np.ndarray):
        fg = source != 0
        height, width = fg.shape
        if not fg.any():
            return []
        traced: Iterator = shapes(fg.astype(np.uint8), mask=fg, connectivity=connectivity, transform=transform)
        wanted = 1
    else:  # a Band: GDAL polygonizes from the file, keeping only finished polygons in memory
        height, width = source.ds.height, source.ds.width
        traced = shapes(source, mask=source, connectivity=connectivity, transform=transform)
        wanted = MASK_FOREGROUND
    out: list[Polygon] = []
    for geom, value in traced:
        if int(value) != wanted or geom.get("type") != "Polygon":
            continue
        rings = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
        exact = _rings_area(rings)
        if exact < min_area:
            continue
        score = float("nan") if score_of is None else float(score_of(_pixel_box(rings[0], transform, height, width)))
        kept = _simplify(rings, simplify)
        if kept is None:
            continue
        out.append(Polygon(rings=kept, area=_rings_area(kept), area_px=int(round(exact / pixel_area)), score=score))
    return out


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def check_vector_path(path: str | os.PathLike) -> str:
    """The OGR driver for ``path``'s suffix; ``ValueError`` for an unknown suffix, and
    :class:`~rs2sam2.extras.MissingExtraError` naming the extra when GPKG/SHP is asked for without pyogrio."""
    suffix = Path(path).suffix.lower()
    if suffix not in VECTOR_SUFFIXES:
        raise ValueError(f"vector output {path}: unsupported suffix {suffix or '(none)'!r}; use "
                         f"{', '.join(VECTOR_SUFFIXES)}")
    driver = VECTOR_SUFFIXES[suffix]
    if driver != "GeoJSON":
        require("pyogrio", f"writing {suffix} files")  # MissingExtraError (an ImportError) naming [gis]
    return driver


def _clean(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _round_coords(coords, decimals: int):
    if isinstance(coords, (list, tuple)) and coords and isinstance(coords[0], (int, float)):
        return [round(float(v), decimals) for v in coords]
    return [_round_coords(c, decimals) for c in coords]


def _orient_geometry(geom: dict[str, Any]) -> dict[str, Any]:
    """Right-hand rule: exteriors counter-clockwise, holes clockwise (Polygon or MultiPolygon)."""
    def polygon(rings):
        return [_oriented(rings[0], ccw=True).tolist()] + [_oriented(r, ccw=False).tolist() for r in rings[1:]]

    if geom["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": polygon(geom["coordinates"])}
    return {"type": geom["type"], "coordinates": [polygon(p) for p in geom["coordinates"]]}


def geojson_collection(polys: Sequence[Polygon], crs: Any = None, *, text: str = "",
                       properties: dict[str, Any] | None = None, transform: Any = None,
                       fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """An RFC 7946 ``FeatureCollection`` (a dict) of ``polys`` given in ``crs`` (None: coordinates
    kept as they are: map units when ``transform``, the grid's, is not the identity, else pixels);
    ``properties`` become the collection's foreign ``properties``; ``fields`` (e.g. the provenance
    of a prediction) are added to every feature's properties."""
    src = to_crs(crs)
    geoms = [{"type": "Polygon", "coordinates": [r.tolist() for r in p.rings]} for p in polys]
    if src is not None and geoms:
        geoms = [_orient_geometry(g) for g in
                 transform_geom(src, "EPSG:4326", geoms, antimeridian_cutting=True)]
        geoms = [{"type": g["type"], "coordinates": _round_coords(g["coordinates"], LONLAT_DECIMALS)}
                 for g in geoms]
    else:
        geoms = [_orient_geometry(g) for g in geoms]
    features = [{"type": "Feature", "id": i, "geometry": g,
                 "properties": {"text": text, "area": _clean(p.area), "area_px": p.area_px, "score": _clean(p.score),
                                **_clean_fields(fields)}}
                for i, (p, g) in enumerate(zip(polys, geoms))]
    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    space = "lonlat" if src is not None else "pixel" if to_affine(transform).is_identity else "map"
    meta = {"coordinate_space": space,
            "source_crs": None if src is None else (f"EPSG:{src.to_epsg()}" if src.to_epsg() else src.to_wkt()),
            "num_polygons": len(features)}
    fc["properties"] = {**meta, **(properties or {})}
    return fc


def _wkb_polygon(rings: Sequence[np.ndarray]) -> bytes:
    parts = [struct.pack("<BII", 1, 3, len(rings))]  # little endian, Polygon, ring count
    for ring in rings:
        pts = np.ascontiguousarray(ring, dtype="<f8")
        parts.append(struct.pack("<I", len(pts)) + pts.tobytes())
    return b"".join(parts)


def _clean_fields(fields: dict[str, Any] | None) -> dict[str, Any]:
    return {k: _clean(v) if isinstance(v, float) else v for k, v in (fields or {}).items()}


def _write_ogr(tmp: Path, polys: Sequence[Polygon], crs, text: str, driver: str,
               extra: dict[str, Any] | None = None) -> None:
    write = require("pyogrio.raw", f"writing {tmp.suffix} files").write
    geometry = np.array([_wkb_polygon(p.rings) for p in polys] or [], dtype=object)
    fields = {
        "text": np.array([text] * len(polys), dtype=object),
        "area": np.array([p.area for p in polys], dtype=np.float64),
        "area_px": np.array([p.area_px for p in polys], dtype=np.int64),
        "score": np.array([p.score for p in polys], dtype=np.float64),
    }
    for name, value in (extra or {}).items():  # the same value in every row (a Shapefile field name: <= 10 chars)
        kind = np.float64 if isinstance(value, float) else object
        fields[name] = np.array([value if kind is np.float64 or value is None else str(value)] * len(polys),
                                dtype=kind)
    src = to_crs(crs)
    write(str(tmp), geometry, list(fields.values()), list(fields), geometry_type="Polygon", driver=driver,
          crs=None if src is None else src.to_wkt(), layer=tmp.stem)


def write_vector(path: str | os.PathLike, polys: Sequence[Polygon], crs: Any = None, *, text: str = "",
                 properties: dict[str, Any] | None = None, transform: Any = None,
                 fields: dict[str, Any] | None = None) -> list[Path]:
    """Write ``polys`` (in ``crs``; ``transform``: the grid's, which tells map from pixel
    coordinates without a CRS) to ``path``, the format chosen by its suffix (see the module
    docstring), atomically: every file appears whole or not at all. ``fields`` (names of at most 10
    characters, string or float values) are added to every polygon. Returns the files written (a
    Shapefile is several)."""
    dest = Path(path)
    driver = check_vector_path(dest)
    if driver == "GeoJSON":
        fc = geojson_collection(polys, crs, text=text, properties=properties, transform=transform, fields=fields)
        atomic_write_text(dest, json.dumps(fc, ensure_ascii=False, allow_nan=False) + "\n")
        return [dest]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with work_folder(dest.parent, prefix=f".{dest.name}.", suffix=".tmp") as work:
        _write_ogr(work / f"{dest.stem}{dest.suffix.lower()}", polys, crs, text, driver, fields)
        made = sorted(work.iterdir())
        finals = [dest.with_suffix(f.suffix) for f in made]
        # every file renamed into place together on the way out (a Shapefile is .shp, .shx, .dbf, .prj, .cpg)
        with contextlib.ExitStack() as stack:
            stack.enter_context(sidecars_replaced(dest, finals))  # last on the way out: after the renames
            for f, final in zip(made, finals):
                os.replace(f, stack.enter_context(atomic_write(final)))
        return finals


@contextlib.contextmanager
def sidecars_replaced(dest: Path, written: Sequence[Path]) -> Iterator[None]:
    """When the block succeeds and ``dest`` is a Shapefile: remove the parts of an earlier Shapefile
    named like it (:data:`SHAPEFILE_PARTS`, in any letter case) that are not among ``written``."""
    yield
    if dest.suffix.lower() != ".shp":
        return
    keep = {p.name for p in written}
    stale = {(dest.stem + part).lower() for part in SHAPEFILE_PARTS}
    for entry in dest.parent.iterdir():
        if entry.name.lower() in stale and entry.name not in keep:
            entry.unlink(missing_ok=True)
