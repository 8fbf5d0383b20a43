"""Tests for rs2sam2.geo: georeferenced masks, probability rasters, GeoJSON and atomic writes."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.crs import CRS

from rs2sam2 import geo
from rs2sam2.geo import (
    MASK_FOREGROUND,
    RasterInfoLike,
    mask_to_geojson,
    write_geojson,
    write_mask,
    write_probability,
)

H, W = 48, 64
PIXEL = 10.0  # metres
ORIGIN_X, ORIGIN_Y = 412_340.0, 5_123_460.0  # top-left corner, UTM 33N
EPSG = 32633


@dataclass
class FakeRasterInfo:
    """Stand-in for imageio.RasterInfo (same attributes)."""

    height: int
    width: int
    crs: Any
    transform: Any
    count: int
    dtype: str
    georeferenced: bool


def _info_from_file(path: Path) -> FakeRasterInfo:
    with rasterio.open(path) as src:
        return FakeRasterInfo(
            height=src.height,
            width=src.width,
            crs=src.crs,
            transform=src.transform,
            count=src.count,
            dtype=src.dtypes[0],
            georeferenced=src.crs is not None,
        )


@pytest.fixture()
def geotiff(tmp_path: Path) -> Path:
    """A 4-band uint16 GeoTIFF in EPSG:32633 with 10 m pixels and an offset origin."""
    path = tmp_path / "scene.tif"
    transform = Affine(PIXEL, 0.0, ORIGIN_X, 0.0, -PIXEL, ORIGIN_Y)
    data = np.random.default_rng(0).integers(0, 4000, size=(4, H, W), dtype=np.uint16)
    with rasterio.open(
        path, "w", driver="GTiff", height=H, width=W, count=4, dtype="uint16",
        crs=CRS.from_epsg(EPSG), transform=transform,
    ) as dst:
        dst.write(data)
    return path


@pytest.fixture()
def info(geotiff: Path) -> FakeRasterInfo:
    return _info_from_file(geotiff)


@pytest.fixture()
def two_blobs() -> np.ndarray:
    """Two separate foreground blobs; the second has a 2x3 hole."""
    m = np.zeros((H, W), dtype=bool)
    m[3:11, 4:14] = True  # 80 px
    m[20:40, 30:55] = True  # 500 px
    m[25:27, 40:43] = False  # hole: 6 px
    return m


def _shoelace(ring: list[list[float]]) -> float:
    pts = np.asarray(ring, dtype=np.float64)
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _polygon_area(rings: list[list[list[float]]]) -> float:
    return abs(_shoelace(rings[0])) - sum(abs(_shoelace(r)) for r in rings[1:])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ---------------------------------------------------------------------------------- write_mask


def test_fake_info_satisfies_protocol(info: FakeRasterInfo) -> None:
    assert isinstance(info, RasterInfoLike)


def test_write_mask_geotiff_keeps_input_grid(
    tmp_path: Path, geotiff: Path, info: FakeRasterInfo, two_blobs: np.ndarray
) -> None:
    out = write_mask(tmp_path / "out" / "mask.tif", two_blobs, info)
    assert out == tmp_path / "out" / "mask.tif" and out.is_file()
    with rasterio.open(geotiff) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.crs.to_epsg() == EPSG
        assert dst.transform == src.transform
        assert (dst.width, dst.height) == (src.width, src.height)
        assert dst.count == 1
        assert dst.dtypes[0] == "uint8"
        assert dst.nodata is None
        assert dst.compression is not None and dst.compression.value.upper() == "LZW"
        assert dst.tags()["FOREGROUND_VALUE"] == "255"
        band = dst.read(1)
    assert set(np.unique(band).tolist()) == {0, MASK_FOREGROUND}
    np.testing.assert_array_equal(band == MASK_FOREGROUND, two_blobs)


@pytest.mark.parametrize("scale", [1, 255])
def test_write_mask_accepts_uint8_masks(
    tmp_path: Path, info: FakeRasterInfo, two_blobs: np.ndarray, scale: int
) -> None:
    out = write_mask(tmp_path / "m.tiff", two_blobs.astype(np.uint8) * scale, info)
    with rasterio.open(out) as dst:
        np.testing.assert_array_equal(dst.read(1), two_blobs.astype(np.uint8) * 255)


def test_write_mask_without_georeference_gives_png(tmp_path: Path, two_blobs: np.ndarray) -> None:
    plain = FakeRasterInfo(H, W, None, Affine.identity(), 3, "uint8", georeferenced=False)
    for i, meta in enumerate((None, plain)):
        out = write_mask(tmp_path / f"mask{i}.png", two_blobs, meta)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(out) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (W, H)
            arr = np.asarray(im)
        np.testing.assert_array_equal(arr == 255, two_blobs)
        assert set(np.unique(arr).tolist()) == {0, 255}


def test_write_mask_plain_tiff_has_no_crs(tmp_path: Path, two_blobs: np.ndarray) -> None:
    out = write_mask(tmp_path / "plain.tif", two_blobs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NotGeoreferencedWarning on open is expected
        with rasterio.open(out) as dst:
            assert dst.crs is None
            assert dst.transform == Affine.identity()
            np.testing.assert_array_equal(dst.read(1) == 255, two_blobs)


def test_write_mask_wrong_shape_is_a_clear_error(
    tmp_path: Path, info: FakeRasterInfo, two_blobs: np.ndarray
) -> None:
    with pytest.raises(ValueError, match=r"\(47, 64\).*\(48, 64\)"):
        write_mask(tmp_path / "bad.tif", two_blobs[:-1], info)
    with pytest.raises(ValueError, match="2-D"):
        write_mask(tmp_path / "bad.tif", np.zeros((1, H, W), bool), info)
    with pytest.raises(ValueError, match="suffix"):
        write_mask(tmp_path / "bad.jpg", two_blobs, info)
    assert list(tmp_path.glob("bad*")) == []


def test_write_mask_failure_mid_write_leaves_nothing(
    tmp_path: Path, info: FakeRasterInfo, two_blobs: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_writer(tmp: Path, band: np.ndarray, *args: Any, **kwargs: Any) -> None:
        tmp.write_bytes(b"II*\x00 half a tiff")
        raise OSError("disk full")

    monkeypatch.setattr(geo, "_write_tiff", broken_writer)
    with pytest.raises(OSError, match="disk full"):
        write_mask(tmp_path / "out" / "mask.tif", two_blobs, info)
    assert list((tmp_path / "out").iterdir()) == []


def test_write_mask_with_transform_tuple_and_crs_string(
    tmp_path: Path, two_blobs: np.ndarray
) -> None:
    meta = FakeRasterInfo(
        H, W, f"EPSG:{EPSG}", (PIXEL, 0.0, ORIGIN_X, 0.0, -PIXEL, ORIGIN_Y), 4, "uint16", True
    )
    out = write_mask(tmp_path / "m.tif", two_blobs, meta)
    with rasterio.open(out) as dst:
        assert dst.crs.to_epsg() == EPSG
        assert dst.transform == Affine(PIXEL, 0.0, ORIGIN_X, 0.0, -PIXEL, ORIGIN_Y)


def test_write_mask_with_imageio_reader(
    tmp_path: Path, geotiff: Path, two_blobs: np.ndarray
) -> None:
    """Integration with the project's reader, when it exists."""
    imageio = pytest.importorskip("rs2sam2.imageio")
    rgb, meta = imageio.read_image(geotiff)
    assert rgb.shape[:2] == (H, W)
    out = write_mask(tmp_path / "m.tif", two_blobs, meta)
    with rasterio.open(geotiff) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform


# --------------------------------------------------------------------------- write_probability


def test_write_probability_geotiff_and_png(tmp_path: Path, info: FakeRasterInfo) -> None:
    prob = np.random.default_rng(1).random((H, W)).astype(np.float32)
    out = write_probability(tmp_path / "p.tif", prob, info)
    with rasterio.open(out) as dst:
        assert dst.dtypes[0] == "float32" and dst.count == 1
        assert dst.crs.to_epsg() == EPSG and dst.transform == info.transform
        np.testing.assert_array_equal(dst.read(1), prob)
    png = write_probability(tmp_path / "p.png", prob)
    with Image.open(png) as im:
        assert im.size == (W, H)
        np.testing.assert_array_equal(np.asarray(im), np.round(prob * 255).astype(np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        write_probability(tmp_path / "q.tif", prob[:, :-2], info)


# ------------------------------------------------------------------------------------- GeoJSON


def test_geojson_two_polygons_in_crs(
    tmp_path: Path, geotiff: Path, info: FakeRasterInfo, two_blobs: np.ndarray
) -> None:
    fc = mask_to_geojson(two_blobs, info)
    assert fc["type"] == "FeatureCollection"
    assert fc["crs"] == {"type": "name", "properties": {"name": f"EPSG:{EPSG}"}}
    assert fc["properties"]["epsg"] == EPSG
    assert CRS.from_wkt(fc["properties"]["crs_wkt"]).to_epsg() == EPSG
    assert fc["properties"]["coordinate_space"] == "crs"
    feats = fc["features"]
    assert len(feats) == 2

    with rasterio.open(geotiff) as src:
        left, bottom, right, top = src.bounds
    pixel_area = PIXEL * PIXEL
    expected_px = sorted([80, 500 - 6])
    got_px = []
    for f in feats:
        assert f["geometry"]["type"] == "Polygon"
        assert f["properties"]["value"] == 1
        rings = f["geometry"]["coordinates"]
        for ring in rings:
            xy = np.asarray(ring)
            assert np.all((xy[:, 0] >= left) & (xy[:, 0] <= right))
            assert np.all((xy[:, 1] >= bottom) & (xy[:, 1] <= top))
            assert ring[0] == ring[-1]  # closed
        assert _shoelace(rings[0]) > 0  # exterior counter-clockwise (right-hand rule)
        area = _polygon_area(rings)
        assert area == pytest.approx(f["properties"]["area_px"] * pixel_area)
        assert f["properties"]["area_m2"] == pytest.approx(area)
        got_px.append(f["properties"]["area_px"])
    assert sorted(got_px) == expected_px
    assert sum(got_px) == int(two_blobs.sum()) == fc["properties"]["foreground_px"]
    # the holed blob keeps its hole as an inner ring
    assert sorted(len(f["geometry"]["coordinates"]) for f in feats) == [1, 2]

    out = write_geojson(tmp_path / "mask.geojson", fc)
    assert json.loads(out.read_text()) == fc
    assert _leftovers(tmp_path) == []


def test_geojson_pixel_coordinates_without_georeference(two_blobs: np.ndarray) -> None:
    fc = mask_to_geojson(two_blobs)
    assert "crs" not in fc
    assert fc["properties"]["coordinate_space"] == "pixel"
    assert fc["properties"]["epsg"] is None
    assert len(fc["features"]) == 2
    for f in fc["features"]:
        xy = np.concatenate([np.asarray(r) for r in f["geometry"]["coordinates"]])
        assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= W
        assert xy[:, 1].min() >= 0 and xy[:, 1].max() <= H
        assert _polygon_area(f["geometry"]["coordinates"]) == f["properties"]["area_px"]
        assert "area_m2" not in f["properties"]
    small = min(fc["features"], key=lambda f: f["properties"]["area_px"])
    xy = np.asarray(small["geometry"]["coordinates"][0])
    assert (xy[:, 0].min(), xy[:, 0].max(), xy[:, 1].min(), xy[:, 1].max()) == (4, 14, 3, 11)


def test_geojson_empty_mask_and_connectivity(info: FakeRasterInfo) -> None:
    fc = mask_to_geojson(np.zeros((H, W), np.uint8), info)
    assert fc["features"] == [] and fc["properties"]["num_polygons"] == 0
    diag = np.zeros((H, W), bool)
    diag[0, 0] = diag[1, 1] = True
    assert len(mask_to_geojson(diag, info)["features"]) == 2
    assert len(mask_to_geojson(diag, info, connectivity=8)["features"]) == 1
    with pytest.raises(ValueError, match="does not match"):
        mask_to_geojson(diag[:10], info)
