"""rs2sam2.imageio: any raster -> HxWx3 uint8 with the documented band/dtype rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from rs2sam2.imageio import (
    ImageReadError,
    RasterInfo,
    read_image,
    stretch_to_uint8,
    to_rgb_uint8,
)


def _write_tif(path, data, dtype, crs=None, transform=None, nodata=None):
    count, height, width = data.shape
    profile = dict(driver="GTiff", height=height, width=width, count=count, dtype=dtype)
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    if nodata is not None:
        profile["nodata"] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # plain TIFFs are the point here
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data.astype(dtype))


@pytest.fixture
def geotiff16(tmp_path):
    """A 4-band uint16 GeoTIFF: band b holds a ramp times b, nodata 0 in the first row."""
    height, width = 20, 30
    ramp = np.arange(1, height * width + 1, dtype=np.float64).reshape(height, width)
    data = np.stack([ramp * (b + 1) for b in range(4)])
    data[:, 0, :] = 0  # nodata row
    path = tmp_path / "ms16.tif"
    _write_tif(path, data, "uint16", crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 4100000), nodata=0)
    return path, data


def test_geotiff_16bit_4band(geotiff16):
    path, data = geotiff16
    rgb, info = read_image(path)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert isinstance(info, RasterInfo)
    assert (info.height, info.width, info.count, info.dtype) == (20, 30, 4, "uint16")
    assert info.georeferenced and info.crs == "EPSG:32633"
    assert info.transform == pytest.approx((10.0, 0.0, 500000.0, 0.0, -10.0, 4100000.0))
    # default bands (1, 2, 3), each stretched from its 2nd..98th percentile of the valid pixels
    for c in range(3):
        valid = data[c][1:]
        lo, hi = np.percentile(valid, [2, 98])
        expect = np.clip(np.rint((data[c].astype(float) - lo) * 255 / (hi - lo)), 0, 255)
        expect[0] = 0  # nodata pixels come out black
        np.testing.assert_array_equal(rgb[:, :, c], expect.astype(np.uint8))
    assert rgb[1:].min() == 0 and rgb.max() == 255
    assert (rgb[0] == 0).all()


def test_band_override_is_one_based(geotiff16):
    path, data = geotiff16
    rgb, _ = read_image(path, bands=(4, 3, 2))
    default, _ = read_image(path)
    # band 4 is band 1 times 4: after the stretch they look the same, so compare with band 4 directly
    np.testing.assert_array_equal(rgb[:, :, 0], stretch_to_uint8(data[3], nodata=0))
    np.testing.assert_array_equal(rgb[:, :, 2], default[:, :, 1])
    with pytest.raises(ImageReadError, match="ms16.tif"):
        read_image(path, bands=(5, 1, 1))


def test_one_band_uint8_replicated(tmp_path):
    band = np.random.default_rng(0).integers(0, 256, (1, 12, 17)).astype(np.uint8)
    path = tmp_path / "gray.tif"
    _write_tif(path, band, "uint8")
    rgb, info = read_image(path)
    assert rgb.shape == (12, 17, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, :, c], band[0])  # uint8 kept as is
    assert info.count == 1 and not info.georeferenced
    assert info.crs is None and info.transform is None


def test_png_jpeg_and_rgba(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (9, 11, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out, info = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out, rgb)
    assert not info.georeferenced and info.count == 3

    rgba = np.concatenate([rgb, np.full((9, 11, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png")[0], rgb)

    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    out, _ = read_image(tmp_path / "c.jpg")
    assert out.shape == (9, 11, 3) and out.dtype == np.uint8


def test_palette_png_gives_colours(tmp_path):
    img = Image.new("P", (4, 3))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([1] * 6 + [2] * 6)
    img.save(tmp_path / "p.png")
    out, _ = read_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[2, 3]) == (0, 0, 255)


def test_float_with_nan(tmp_path):
    data = np.linspace(-1, 1, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8)
    data[:, 0, 0] = np.nan
    path = tmp_path / "f.tif"
    _write_tif(path, data, "float32")
    rgb, info = read_image(path)
    assert info.dtype == "float32" and info.count == 2
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb.max() == 255 and (rgb[:, :, 0] == rgb[:, :, 1]).all()  # 2 bands: band 1 replicated


def test_to_rgb_uint8_arrays_and_pil():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(to_rgb_uint8(gray), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(to_rgb_uint8(Image.fromarray(gray)), np.repeat(gray[:, :, None], 3, axis=2))
    four = np.random.default_rng(2).integers(0, 256, (5, 6, 4)).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(four), four[:, :, :3])
    np.testing.assert_array_equal(to_rgb_uint8(four, bands=(4, 4, 4))[:, :, 1], four[:, :, 3])
    wide = (np.arange(100, dtype=np.uint16) * 600).reshape(10, 10)
    out = to_rgb_uint8(wide)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert to_rgb_uint8(np.eye(3, dtype=bool))[1, 1].tolist() == [255, 255, 255]
    assert (to_rgb_uint8(np.full((4, 4), 1000, np.uint16)) == 0).all()  # constant band
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 3, 4, 5)))


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tif"):
        read_image(tmp_path / "nope.tif")
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="broken.tif"):
        read_image(bad)


# --------------------------------------------------------------------------------------------
# windows, decimation, nodata, opened datasets
# --------------------------------------------------------------------------------------------


def test_windows_and_decimated_reads(tmp_path):
    from rs2sam2.imageio import Raster

    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (3, 300, 500)).astype(np.uint8)
    path = tmp_path / "t.tif"
    with rasterio.open(path, "w", driver="GTiff", width=500, height=300, count=3, dtype="uint8", tiled=True,
                       blockxsize=128, blockysize=128, crs="EPSG:32633",
                       transform=Affine(2, 0, 400000, 0, -2, 5000000)) as dst:
        dst.write(data)
    full, _ = read_image(path)
    with Raster(path) as r:
        part, valid = r.read((120, 40, 200, 100))
        assert valid is None and part.shape == (100, 200, 3)
        np.testing.assert_array_equal(part, full[40:140, 120:320])
        small, _ = r.read(out_shape=(30, 50))  # averaging 10 x 10 blocks
        expect = full.reshape(30, 10, 50, 10, 3).mean(axis=(1, 3))
        assert np.abs(small.astype(float) - expect).max() <= 1
        info = r.info.window(120, 40, 200, 100)
        assert (info.width, info.height) == (200, 100)
        assert info.transform == pytest.approx((2, 0, 400240, 0, -2, 4999920))
        with pytest.raises(ValueError, match="not inside"):
            r.read((450, 0, 100, 10))
    # an open rasterio dataset is read the same way and left open
    with rasterio.open(path) as ds:
        with Raster(ds) as r:
            np.testing.assert_array_equal(r.read((120, 40, 200, 100))[0], part)
        assert not ds.closed


def test_stretch_is_scene_wide_in_every_window(geotiff16):
    from rs2sam2.imageio import Raster

    path, _ = geotiff16
    full, _ = read_image(path)
    with Raster(path) as r:
        part, valid = r.read((5, 3, 10, 9))
    np.testing.assert_array_equal(part, full[3:12, 5:15])


def test_validity_from_nodata_alpha_and_nan(tmp_path, geotiff16):
    from rs2sam2.imageio import Raster

    path, _ = geotiff16
    with Raster(path) as r:
        assert r.info.has_nodata
        _, valid = r.read()
        assert valid is not None and not valid[0].any() and valid[1:].all()  # nodata row 0 (all bands 0)
    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[2:, :, 3] = 255  # transparent top rows
    Image.fromarray(rgba).save(tmp_path / "a.png")
    with Raster(tmp_path / "a.png") as r:
        rgb, valid = r.read()
        assert r.info.has_nodata and (rgb == 90).all()
        np.testing.assert_array_equal(valid, rgba[..., 3] > 0)
    data = np.ones((1, 5, 5), np.float32)
    data[0, 1, 1] = np.nan
    _write_tif(tmp_path / "f.tif", data, "float32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with Raster(tmp_path / "f.tif") as r:
            _, valid = r.read()
    assert valid.sum() == 24 and not valid[1, 1]


def test_truncated_and_corrupt_images_are_errors_naming_the_file(tmp_path):
    from PIL import ImageFile

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (120, 160, 3)).astype(np.uint8)
    for fmt in ("png", "jpg"):
        Image.fromarray(img).save(tmp_path / f"whole.{fmt}")
        data = (tmp_path / f"whole.{fmt}").read_bytes()
        (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageReadError, match=rf"cut\.{fmt}.*truncated"):
            read_image(tmp_path / f"cut.{fmt}")
    _write_tif(tmp_path / "whole.tif", img.transpose(2, 0, 1), "uint8")
    data = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.tif"):
        read_image(tmp_path / "cut.tif")
    # reading a truncated file as if it were whole must never be switched on behind our back
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with pytest.raises(ImageReadError, match="LOAD_TRUNCATED_IMAGES"):
            read_image(tmp_path / "whole.png")
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def test_decode_budget_is_checked_from_the_header(tmp_path, monkeypatch):
    from rs2sam2.imageio import (
        DecodeBudgetError,
        Raster,
        max_pixels,
        read_info,
        set_max_pixels,
    )

    Image.fromarray(np.zeros((100, 120, 3), np.uint8)).save(tmp_path / "p.png")
    tif = tmp_path / "t.tif"
    grid = dict(crs="EPSG:32633", transform=Affine(1, 0, 500000, 0, -1, 0))
    with rasterio.open(tif, "w", driver="GTiff", width=400, height=300, count=1, dtype="uint8", tiled=True,
                       blockxsize=64, blockysize=64, **grid) as dst:
        dst.write(np.zeros((1, 300, 400), np.uint8))
    strip = tmp_path / "strip.tif"  # one strip of the whole image: any read decodes all of it
    with rasterio.open(strip, "w", driver="GTiff", width=400, height=300, count=1, dtype="uint8",
                       blockysize=300, compress="deflate", **grid) as dst:
        dst.write(np.zeros((1, 300, 400), np.uint8))
    assert max_pixels() == 100_000_000
    monkeypatch.setenv("RS2SAM2_MAX_PIXELS", "10000")
    assert max_pixels() == 10_000
    calls = []
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1))  # nothing may be decoded
    with pytest.raises(DecodeBudgetError, match=r"p\.png.*120 x 100 = 12,000 pixels.*RS2SAM2_MAX_PIXELS.*--max-pixels"):
        read_image(tmp_path / "p.png")
    with pytest.raises(DecodeBudgetError, match="p.png"):
        read_info(tmp_path / "p.png", budget=True)
    assert calls == []
    monkeypatch.undo()
    set_max_pixels(10_000)
    try:
        with Raster(tif) as r:  # blocks of 64 x 64 fit: windows of the scene can be read
            assert r.read((0, 0, 100, 100))[0].shape == (100, 100, 3)
            assert r.read(out_shape=(50, 60))[0].shape == (50, 60, 3)
            with pytest.raises(DecodeBudgetError, match=r"t\.tif: this read would decode 400 x 300"):
                r.read()
        with pytest.raises(DecodeBudgetError, match=r"strip\.tif: the file is stored in pieces of 400 x 300"):
            Raster(strip)
        set_max_pixels(None)
        assert read_image(strip)[0].shape == (300, 400, 3)
    finally:
        set_max_pixels(None)
