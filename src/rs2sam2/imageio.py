"""Reading images of any common remote-sensing format as 8-bit RGB.

Everything downstream (transforms, the model, the demo) wants an ``H x W x 3`` ``uint8`` array, but
aerial imagery arrives as PNG/JPEG, 8-bit GeoTIFF, 16-bit multispectral GeoTIFF or float rasters.
This module applies one documented conversion to all of them:

* **band count** -- 1 band is replicated to 3; 2 bands: the first band is replicated (the second is
  taken to be alpha, as in PIL's ``LA``); 3 bands are used as they are; 4 or more bands use bands
  ``(1, 2, 3)`` (for most sensors' band order that is not true colour, so pass ``bands``).
  ``bands=(r, g, b)`` overrides the choice; band numbers are **1-based, like GDAL/rasterio**.
* **data type** -- ``uint8`` is kept as is; ``bool`` becomes 0/255; every other type (``uint16``,
  ``int16``, ``float32``...) gets a per-band linear stretch of its 2nd..98th percentile to 0..255.
  Nodata pixels (the raster's nodata value, and NaN/inf) are left out of the percentiles and come
  out as 0. A band whose percentiles coincide (a constant band) comes out as 0.

:func:`read_image` returns the pixels together with a :class:`RasterInfo` carrying the size and,
for GeoTIFFs, the georeferencing, so a predicted mask can be written back on the same grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

__all__ = ["RasterInfo", "ImageReadError", "read_image", "to_rgb_uint8", "stretch_to_uint8"]

# the percentiles of the stretch applied to non-uint8 data
STRETCH_PERCENTILES = (2.0, 98.0)


class ImageReadError(OSError):
    """An image file could not be read or converted; the message names the file."""


@dataclass
class RasterInfo:
    """What :func:`read_image` learned about the file besides its pixels.

    ``crs`` is the CRS as a string (``"EPSG:32633"`` or WKT) and ``transform`` the affine
    pixel-to-world transform as a 6-tuple ``(a, b, c, d, e, f)`` in rasterio/``affine`` order;
    both are ``None`` when the file carries no georeferencing. ``count`` and ``dtype`` describe the
    raster *on disk* (before conversion to RGB uint8).
    """

    height: int
    width: int
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    count: int = 3
    dtype: str = "uint8"
    georeferenced: bool = False


# --------------------------------------------------------------------------------------------
# array conversion
# --------------------------------------------------------------------------------------------


def _default_bands(count: int) -> tuple[int, ...]:
    """1-based band numbers used for an image with ``count`` bands (see module docstring)."""
    if count <= 0:
        raise ValueError("image has no bands")
    if count <= 2:
        return (1,)
    return (1, 2, 3)


def _resolve_bands(count: int, bands: Sequence[int] | None) -> tuple[int, ...]:
    if bands is None:
        return _default_bands(count)
    bands = tuple(int(b) for b in bands)
    if len(bands) not in (1, 3):
        raise ValueError(f"bands must name 1 or 3 bands, got {bands}")
    bad = [b for b in bands if not 1 <= b <= count]
    if bad:
        raise ValueError(f"bands {bad} out of range: the image has {count} band(s) (bands are 1-based)")
    return bands


def stretch_to_uint8(band: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Linearly map one band's 2nd..98th percentile to 0..255 (uint8).

    Nodata pixels (equal to ``nodata``, or not finite) are ignored for the percentiles and set to 0.
    """
    band = np.asarray(band)
    if band.dtype == np.bool_:
        return band.astype(np.uint8) * 255
    values = band.astype(np.float64)
    valid = np.isfinite(values)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    out = np.zeros(band.shape, dtype=np.uint8)
    if not valid.any():
        return out
    lo, hi = np.percentile(values[valid], STRETCH_PERCENTILES)
    if hi <= lo:  # constant band: nothing to stretch
        return out
    scaled = (values - lo) * (255.0 / (hi - lo))
    out[valid] = np.clip(np.rint(scaled[valid]), 0, 255).astype(np.uint8)
    return out


def _bands_to_rgb(stack: Sequence[np.ndarray], nodata: Sequence[float | None]) -> np.ndarray:
    """Stack 1 or 3 selected bands (each HxW) into an HxWx3 uint8 image."""
    converted = []
    for band, nd in zip(stack, nodata):
        band = np.asarray(band)
        converted.append(band if band.dtype == np.uint8 else stretch_to_uint8(band, nd))
    if len(converted) == 1:
        converted = converted * 3
    return np.ascontiguousarray(np.stack(converted, axis=-1))


def _pil_to_array(img: Image.Image) -> np.ndarray:
    """PIL image -> HxW or HxWxC array, resolving palettes and odd modes."""
    if img.mode == "P":  # palette indices mean nothing as intensities
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif img.mode == "1":
        img = img.convert("L")
    return np.asarray(img)


def to_rgb_uint8(
    image: np.ndarray | Image.Image,
    bands: Sequence[int] | None = None,
    nodata: float | None = None,
) -> np.ndarray:
    """Convert a PIL image or a numpy array (HxW or HxWxC, channels last) to HxWx3 uint8 RGB.

    Same rules as :func:`read_image` (see the module docstring); ``bands`` is 1-based.
    """
    arr = _pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3:
        raise ValueError(f"expected an HxW or HxWxC image, got an array of shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty image of shape {arr.shape}")
    chosen = _resolve_bands(arr.shape[2], bands)
    return _bands_to_rgb([arr[:, :, b - 1] for b in chosen], [nodata] * len(chosen))


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _expand_palette(indices: np.ndarray, colormap: dict[int, tuple[int, ...]]) -> list[np.ndarray]:
    """Palette indices (HxW) -> three uint8 bands, through a GDAL colour map {index: (r, g, b, a)}."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, colour in colormap.items():
        if 0 <= index < 256:
            lut[index] = colour[:3]
    rgb = lut[indices.astype(np.uint8)]
    return [rgb[:, :, c] for c in range(3)]


def _read_with_rasterio(path: Path, bands: Sequence[int] | None) -> tuple[np.ndarray, RasterInfo]:
    import rasterio
    from rasterio.enums import ColorInterp
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        # PNG/JPEG have no georeferencing; that is normal, not worth a warning
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.count == 1 and src.colorinterp[0] == ColorInterp.palette and bands is None:
                # palette indices mean nothing as intensities: look the colours up
                stack, nodata = _expand_palette(src.read(1), src.colormap(1)), [None] * 3
            else:
                chosen = _resolve_bands(src.count, bands)
                stack = list(src.read(indexes=list(chosen)))
                nodata = [src.nodatavals[b - 1] for b in chosen]
            crs = src.crs.to_string() if src.crs else None
            affine = src.transform
            georef = crs is not None or not affine.is_identity
            info = RasterInfo(
                height=src.height,
                width=src.width,
                crs=crs,
                transform=tuple(float(v) for v in affine[:6]) if georef else None,
                count=src.count,
                dtype=str(src.dtypes[0]),
                georeferenced=georef,
            )
    return _bands_to_rgb(stack, nodata), info


def _read_with_pil(path: Path, bands: Sequence[int] | None) -> tuple[np.ndarray, RasterInfo]:
    with Image.open(path) as img:
        img.load()
        arr = _pil_to_array(img)
    count = 1 if arr.ndim == 2 else arr.shape[2]
    rgb = to_rgb_uint8(arr, bands)
    info = RasterInfo(height=rgb.shape[0], width=rgb.shape[1], count=count, dtype=str(arr.dtype))
    return rgb, info


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> tuple[np.ndarray, RasterInfo]:
    """Read PNG / JPEG / TIFF / GeoTIFF (anything GDAL or PIL reads) as ``(rgb_uint8, RasterInfo)``.

    ``rgb_uint8`` is ``H x W x 3`` uint8; see the module docstring for the band and dtype rules.
    ``bands`` picks 1 or 3 bands, 1-based (``(4, 3, 2)`` for a false-colour composite).
    Raises :class:`FileNotFoundError` or :class:`ImageReadError`, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    errors: list[str] = []
    for reader in (_read_with_rasterio, _read_with_pil):
        try:
            return reader(path, bands)
        except ValueError as exc:  # bad ``bands`` or a degenerate image: no point trying again
            raise ImageReadError(f"cannot convert image {path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - any reader failure means "try the next one"
            errors.append(f"{reader.__name__.strip('_')}: {exc}")
    raise ImageReadError(f"cannot read image {path} ({'; '.join(errors)})")

