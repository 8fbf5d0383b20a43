"""rs2sam2.vector: polygons of a mask, simplify / min-area, GPKG / SHP in the raster CRS, RFC 7946 GeoJSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from rs2sam2.geo import write_mask
from rs2sam2.imageio import RasterInfo
from rs2sam2.vector import (
    check_vector_path,
    geojson_collection,
    polygons,
    simplify_ring,
    write_vector,
)

H, W = 48, 64
PIXEL = 10.0
ORIGIN_X, ORIGIN_Y = 412_340.0, 5_123_460.0
EPSG = 32633
TRANSFORM = Affine(PIXEL, 0.0, ORIGIN_X, 0.0, -PIXEL, ORIGIN_Y)


def _shoelace(ring) -> float:
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _polygon_area(rings) -> float:
    return abs(_shoelace(rings[0])) - sum(abs(_shoelace(r)) for r in rings[1:])


def _lonlat_bounds():
    left, top = ORIGIN_X, ORIGIN_Y
    return transform_bounds(CRS.from_epsg(EPSG), "EPSG:4326", left, top - H * PIXEL, left + W * PIXEL, top)


# --------------------------------------------------------------------------------------------- polygons


def test_polygons_in_crs_with_holes_areas_and_scores(two_blobs: np.ndarray) -> None:
    boxes = []
    polys = polygons(two_blobs, TRANSFORM, score_of=lambda box: boxes.append(box) or box[2] * box[3])
    assert len(polys) == 2
    left, right, bottom, top = ORIGIN_X, ORIGIN_X + W * PIXEL, ORIGIN_Y - H * PIXEL, ORIGIN_Y
    for p in polys:
        for ring in p.rings:
            assert np.all((ring[:, 0] >= left) & (ring[:, 0] <= right))
            assert np.all((ring[:, 1] >= bottom) & (ring[:, 1] <= top))
            assert (ring[0] == ring[-1]).all()  # closed
        assert p.area == pytest.approx(_polygon_area(p.rings)) == pytest.approx(p.area_px * PIXEL * PIXEL)
    by_size = sorted(polys, key=lambda p: p.area_px)
    assert [p.area_px for p in by_size] == [80, 500 - 6]
    assert [len(p.rings) for p in by_size] == [1, 2]  # the hole is an inner ring
    # the score function gets each polygon's pixel bounding box (col, row, width, height)
    assert sorted(boxes) == [(4, 3, 10, 8), (30, 20, 25, 20)]
    assert [p.score for p in by_size] == [80, 500]
    # the small blob's corners, in the CRS
    xy = by_size[0].rings[0]
    assert (xy[:, 0].min(), xy[:, 0].max()) == (ORIGIN_X + 40, ORIGIN_X + 140)
    assert (xy[:, 1].min(), xy[:, 1].max()) == (ORIGIN_Y - 110, ORIGIN_Y - 30)


def test_polygons_from_a_mask_file_equal_those_from_the_array(tmp_path: Path, two_blobs: np.ndarray) -> None:
    info = RasterInfo(H, W, crs=f"EPSG:{EPSG}", transform=tuple(TRANSFORM)[:6], georeferenced=True, has_nodata=True)
    valid = np.ones((H, W), bool)
    valid[:, 50:] = False  # nodata over part of the big blob: never inside a polygon
    path = write_mask(tmp_path / "m.tif", two_blobs & valid, info, valid)
    with rasterio.open(path) as ds:
        from_file = polygons(rasterio.band(ds, 1), ds.transform)
    from_array = polygons(two_blobs & valid, TRANSFORM)
    assert sorted(p.area_px for p in from_file) == sorted(p.area_px for p in from_array) == [80, 400 - 6]
    for a, b in zip(sorted(from_file, key=lambda p: p.area), sorted(from_array, key=lambda p: p.area)):
        assert [r.tolist() for r in a.rings] == [r.tolist() for r in b.rings]
    assert max(r[:, 0].max() for p in from_file for r in p.rings) <= ORIGIN_X + 50 * PIXEL


def test_min_area_and_simplify(two_blobs: np.ndarray) -> None:
    big_only = polygons(two_blobs, TRANSFORM, min_area=100 * PIXEL * PIXEL)
    assert [p.area_px for p in big_only] == [494]
    assert len(polygons(two_blobs, TRANSFORM, min_area=80 * PIXEL * PIXEL)) == 2  # "smaller than" drops
    disc = np.hypot(*np.mgrid[-20:21, -20:21]) <= 18.5
    exact = polygons(disc, TRANSFORM)[0]
    simple = polygons(disc, TRANSFORM, simplify=1.5 * PIXEL)[0]
    assert len(simple.rings[0]) < len(exact.rings[0]) / 3
    assert simple.area_px == exact.area_px  # counted before simplification
    assert simple.area == pytest.approx(exact.area, rel=0.05) and simple.area != exact.area
    # every original vertex stays within the tolerance of the simplified ring
    ring = simple.rings[0]
    a, b = ring[:-1], ring[1:]
    for pt in exact.rings[0]:
        t = np.clip(np.einsum("ij,ij->i", pt - a, b - a) / np.einsum("ij,ij->i", b - a, b - a), 0, 1)
        assert np.hypot(*(pt - (a + t[:, None] * (b - a))).T).min() <= 1.5 * PIXEL + 1e-9
    # the hole of the big blob (2 x 3 pixels) collapses under a 30 m tolerance; the exterior stays
    coarse = polygons(two_blobs, TRANSFORM, simplify=30.0)
    assert sorted(len(p.rings) for p in coarse) == [1, 1]


def test_simplify_ring_unit() -> None:
    square = np.array([[0, 0], [1, 0], [2, 0], [2, 1], [2, 2], [1, 2], [0, 2], [0, 1], [0, 0]], float)
    out = simplify_ring(square, 0.1)
    assert len(out) == 5 and (out[0] == out[-1]).all() and abs(_shoelace(out)) == 4.0
    np.testing.assert_array_equal(simplify_ring(square, 0.0), square)
    assert simplify_ring(np.array([[0, 0], [1, 0], [1, 0.01], [0, 0]], float), 0.5) is None  # collapses


# ---------------------------------------------------------------------------------------------- files


def test_geojson_is_rfc7946(tmp_path: Path, two_blobs: np.ndarray) -> None:
    polys = polygons(two_blobs, TRANSFORM)
    written = write_vector(tmp_path / "m.geojson", polys, f"EPSG:{EPSG}", text="the tanks",
                           properties={"foreground_px": int(two_blobs.sum())})
    assert written == [tmp_path / "m.geojson"]
    fc = json.loads(written[0].read_text())
    assert fc["type"] == "FeatureCollection" and "crs" not in fc
    assert fc["properties"]["coordinate_space"] == "lonlat" and fc["properties"]["source_crs"] == f"EPSG:{EPSG}"
    west, south, east, north = _lonlat_bounds()
    assert len(fc["features"]) == 2
    for f in fc["features"]:
        assert f["geometry"]["type"] == "Polygon"
        assert set(f["properties"]) == {"text", "area", "area_px", "score"} and f["properties"]["text"] == "the tanks"
        rings = f["geometry"]["coordinates"]
        for ring in rings:
            xy = np.asarray(ring)
            assert ring[0] == ring[-1]
            assert np.all((xy[:, 0] >= west - 1e-7) & (xy[:, 0] <= east + 1e-7))
            assert np.all((xy[:, 1] >= south - 1e-7) & (xy[:, 1] <= north + 1e-7))
            assert 13 < xy[:, 0].mean() < 15 and 46 < xy[:, 1].mean() < 47  # UTM 33N near 412 km E, 5123 km N
        assert _shoelace(rings[0]) > 0  # right-hand rule: exterior counter-clockwise
        assert all(_shoelace(r) < 0 for r in rings[1:])  # holes clockwise
        assert f["properties"]["area"] == pytest.approx(f["properties"]["area_px"] * PIXEL * PIXEL)
    assert sorted(len(f["geometry"]["coordinates"]) for f in fc["features"]) == [1, 2]
    # back to the raster's CRS, the rings land on the pixel corners again (7 decimals: about 1 cm)
    from rasterio.warp import transform

    small = min(fc["features"], key=lambda f: f["properties"]["area_px"])
    lon, lat = np.asarray(small["geometry"]["coordinates"][0]).T
    x, y = transform("EPSG:4326", f"EPSG:{EPSG}", lon, lat)
    assert np.abs(np.array(x) - ORIGIN_X - np.round((np.array(x) - ORIGIN_X) / PIXEL) * PIXEL).max() < 0.05
    assert (min(x), max(x)) == pytest.approx((ORIGIN_X + 40, ORIGIN_X + 140), abs=0.05)


def test_geojson_without_georeference_is_in_pixels(two_blobs: np.ndarray) -> None:
    fc = geojson_collection(polygons(two_blobs), None)
    assert "crs" not in fc and fc["properties"]["coordinate_space"] == "pixel"
    for f in fc["features"]:
        xy = np.concatenate([np.asarray(r) for r in f["geometry"]["coordinates"]])
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= W and xy[:, 1].min() >= 0 and xy[:, 1].max() <= H
        assert _polygon_area(f["geometry"]["coordinates"]) == f["properties"]["area_px"]
    small = min(fc["features"], key=lambda f: f["properties"]["area_px"])
    xy = np.asarray(small["geometry"]["coordinates"][0])
    assert (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()) == (4, 14, 3, 11)


def test_empty_mask_and_connectivity() -> None:
    assert polygons(np.zeros((H, W), np.uint8), TRANSFORM) == []
    assert geojson_collection([], f"EPSG:{EPSG}")["features"] == []
    diag = np.zeros((H, W), bool)
    diag[0, 0] = diag[1, 1] = True
    assert len(polygons(diag, TRANSFORM)) == 2
    assert len(polygons(diag, TRANSFORM, connectivity=8)) == 1


@pytest.mark.parametrize("suffix", [".gpkg", ".shp"])
def test_gpkg_and_shp_keep_the_raster_crs(tmp_path: Path, two_blobs: np.ndarray, suffix: str) -> None:
    import pyogrio
    from pyogrio.raw import read

    polys = polygons(two_blobs, TRANSFORM, simplify=0.0)
    written = write_vector(tmp_path / f"tanks{suffix}", polys, f"EPSG:{EPSG}", text="the tanks")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(p.name for p in written)  # nothing else left behind
    if suffix == ".shp":
        assert names == ["tanks.cpg", "tanks.dbf", "tanks.prj", "tanks.shp", "tanks.shx"]
    info = pyogrio.read_info(tmp_path / f"tanks{suffix}")
    assert CRS.from_user_input(info["crs"]).to_epsg() == EPSG and info["features"] == 2
    assert info["geometry_type"] == "Polygon"
    meta, _, geometry, fields = read(tmp_path / f"tanks{suffix}")
    got = dict(zip(meta["fields"], fields))
    assert set(got) == {"text", "area", "area_px", "score"} and set(got["text"]) == {"the tanks"}
    assert sorted(got["area_px"]) == [80, 494]
    np.testing.assert_allclose(sorted(got["area"]), [80 * PIXEL**2, 494 * PIXEL**2])
    left, bottom, right, top = info["total_bounds"]
    assert (left, top) == (ORIGIN_X + 40, ORIGIN_Y - 30) and right == ORIGIN_X + 550 and bottom == ORIGIN_Y - 400


def test_unknown_suffix_and_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"unsupported suffix '\.kml'"):
        check_vector_path(tmp_path / "x.kml")
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"rs2sam2\[gis\]"):
        check_vector_path(tmp_path / "x.gpkg")
    assert check_vector_path(tmp_path / "x.geojson") == "GeoJSON"  # GeoJSON needs no extra
