"""Tests for rs2sam2.geo: areas of interest, georeferenced masks and probability rasters, atomic writes.
(Polygons and vector files: test_vector.py.)"""

from __future__ import annotations

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
    MASK_NODATA,
    AreaError,
    RasterInfoLike,
    area_of_interest,
    open_grid_writer,
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


# ---------------------------------------------------------------------------------- nodata


def test_mask_and_probability_declare_nodata(tmp_path: Path, info: FakeRasterInfo, two_blobs: np.ndarray) -> None:
    valid = np.ones((H, W), bool)
    valid[:, :5] = False  # a nodata strip crossing the first blob
    out = write_mask(tmp_path / "m.tif", two_blobs, info, valid)
    with rasterio.open(out) as dst:
        assert dst.nodata == MASK_NODATA and dst.tags()["NODATA_VALUE"] == str(MASK_NODATA)
        band = dst.read(1)
        assert (dst.read_masks(1) == 0).sum() == (~valid).sum()
    np.testing.assert_array_equal(band[~valid], MASK_NODATA)
    np.testing.assert_array_equal(band[valid] == 255, two_blobs[valid])
    assert set(np.unique(band[valid]).tolist()) == {0, 255}
    prob = np.full((H, W), 0.25, np.float32)
    with rasterio.open(write_probability(tmp_path / "p.tif", prob, info, valid)) as dst:
        assert np.isnan(dst.nodata)
        got = dst.read(1)
    assert np.isnan(got[~valid]).all() and (got[valid] == 0.25).all()
    # PNG cannot declare nodata: those pixels are background
    with Image.open(write_mask(tmp_path / "m.png", two_blobs, None, valid)) as im:
        arr = np.asarray(im)
    assert (arr[~valid] == 0).all() and ((arr == 255) == (two_blobs & valid)).all()


def test_windowed_writer_equals_whole_write(tmp_path: Path, info: FakeRasterInfo, two_blobs: np.ndarray) -> None:
    from rasterio.windows import Window

    from rs2sam2.geo import mask_band
    from rs2sam2.imageio import RasterInfo

    meta = RasterInfo(600, 700, crs=f"EPSG:{EPSG}", transform=tuple(info.transform)[:6], georeferenced=True,
                      has_nodata=True)
    rng = np.random.default_rng(3)
    mask = rng.random((600, 700)) > 0.7
    valid = np.ones((600, 700), bool)
    valid[500:, :] = False
    dst = open_grid_writer(tmp_path / "w.tif", meta, "mask")
    for r in range(0, 600, 250):
        for c in range(0, 700, 300):
            win = Window(c, r, min(300, 700 - c), min(250, 600 - r))
            sl = (slice(r, r + win.height), slice(c, c + win.width))
            dst.write(mask_band(mask[sl], valid[sl]), 1, window=win)
    dst.close()
    with rasterio.open(tmp_path / "w.tif") as got:
        assert got.profile["tiled"] and got.block_shapes == [(256, 256)]
        assert got.nodata == MASK_NODATA and got.crs.to_epsg() == EPSG and got.transform == info.transform
        np.testing.assert_array_equal(got.read(1), mask_band(mask, valid))


# ---------------------------------------------------------------------------------- areas of interest


def test_window_is_exact_and_checked(info: FakeRasterInfo) -> None:
    assert area_of_interest(info) == ((0, 0, W, H), False)
    assert area_of_interest(info, window=(5, 7, 20, 10)) == ((5, 7, 20, 10), False)
    for bad, words in [((0, 0, 0, 5), "zero size"), ((60, 0, 10, 5), "not inside"), ((-1, 0, 5, 5), "not inside"),
                       ((0, 40, 5, 9), "not inside")]:
        with pytest.raises(AreaError, match=words):
            area_of_interest(info, window=bad)
    with pytest.raises(AreaError, match="not both"):
        area_of_interest(info, window=(0, 0, 1, 1), bbox=(0, 0, 1, 1))


def test_bbox_snaps_outward_to_whole_pixels(info: FakeRasterInfo) -> None:
    # pixel edges: x = ORIGIN_X + 10 * col, y = ORIGIN_Y - 10 * row
    exact = (ORIGIN_X + 30, ORIGIN_Y - 200, ORIGIN_X + 130, ORIGIN_Y - 50)
    assert area_of_interest(info, bbox=exact) == ((3, 5, 10, 15), False)
    inside = (ORIGIN_X + 31, ORIGIN_Y - 199, ORIGIN_X + 129, ORIGIN_Y - 51)  # within the same pixels
    assert area_of_interest(info, bbox=inside) == ((3, 5, 10, 15), False)
    wider = (ORIGIN_X + 29.9, ORIGIN_Y - 200.1, ORIGIN_X + 130.1, ORIGIN_Y - 49.9)  # touches one more pixel
    assert area_of_interest(info, bbox=wider) == ((2, 4, 12, 17), False)
    # beyond the raster: clipped, and said so
    (col, row, w, h), clipped = area_of_interest(info, bbox=(ORIGIN_X - 100, ORIGIN_Y - 50, ORIGIN_X + 50,
                                                             ORIGIN_Y + 100))
    assert (col, row, w, h) == (0, 0, 5, 5) and clipped
    for bad, words in [((ORIGIN_X + 5000, ORIGIN_Y, ORIGIN_X + 6000, ORIGIN_Y + 10), "outside"),
                       ((ORIGIN_X + 50, ORIGIN_Y - 50, ORIGIN_X + 50, ORIGIN_Y - 10), "zero size"),
                       ((ORIGIN_X + 50, ORIGIN_Y - 10, ORIGIN_X + 60, ORIGIN_Y - 50), "zero size")]:
        with pytest.raises(AreaError, match=words):
            area_of_interest(info, bbox=bad)


def test_bbox_in_lon_lat(info: FakeRasterInfo) -> None:
    from rasterio.warp import transform_bounds

    # the lon/lat box of pixels (3..13, 5..20): snapped outward it covers at least those pixels
    box = (ORIGIN_X + 30, ORIGIN_Y - 200, ORIGIN_X + 130, ORIGIN_Y - 50)
    lonlat = transform_bounds(CRS.from_epsg(EPSG), "EPSG:4326", *box)
    (col, row, w, h), _ = area_of_interest(info, bbox=lonlat, bbox_crs="EPSG:4326")
    assert col <= 3 and row <= 5 and col + w >= 13 and row + h >= 20
    assert w <= 12 and h <= 17  # and not more than a pixel of slack each side (the UTM grid is rotated in lon/lat)
    with pytest.raises(AreaError, match="not a CRS"):
        area_of_interest(info, bbox=lonlat, bbox_crs="EPSG:nope")
    plain = FakeRasterInfo(H, W, None, None, 3, "uint8", False)
    with pytest.raises(AreaError, match="has no CRS"):
        area_of_interest(plain, bbox=lonlat, bbox_crs="EPSG:4326")
    # without georeference a bbox is in pixel coordinates
    assert area_of_interest(plain, bbox=(2.5, 3, 10, 8.2)) == ((2, 3, 8, 6), False)
