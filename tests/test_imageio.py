"""rs2sam2.imageio: any raster -> HxWx3 uint8 with the documented band/dtype rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

from rs2sam2.imageio import ImageReadError, RasterInfo, read_image, stretch_to_uint8, to_rgb_uint8


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
