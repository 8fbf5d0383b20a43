"""Reading images of any common remote-sensing format as 8-bit RGB, whole or by windows.

Everything downstream (transforms, the model, the demo) wants an ``H x W x 3`` ``uint8`` array, but
aerial imagery arrives as PNG/JPEG, 8-bit GeoTIFF, 16-bit multispectral GeoTIFF or float rasters,
and a scene can be far larger than memory. This module applies one documented conversion to all of
them:

* **band count** -- 1 band is replicated to 3; 2 bands: the first band is replicated (the second is
  taken to be alpha, as in PIL's ``LA``); 3 bands are used as they are; 4 or more bands use bands
  ``(1, 2, 3)`` (for most sensors' band order that is not true colour, so pass ``bands``).
  ``bands=(r, g, b)`` overrides the choice; band numbers are **1-based, like GDAL/rasterio**.
* **data type** -- ``uint8`` is kept as is; ``bool`` becomes 0/255; every other type (``uint16``,
  ``int16``, ``float32``...) gets a per-band linear stretch of its 2nd..98th percentile to 0..255.
  Nodata pixels (the raster's nodata value, and NaN/inf) are left out of the percentiles and come
  out as 0. A band whose percentiles coincide (a constant band) comes out as 0. The percentiles are
  computed once per raster over the whole raster (over a decimated copy of at most
  :data:`STATS_MAX_PIXELS` pixels when it is larger), so every window of a scene is stretched alike.
* **nodata** -- a pixel is nodata when the raster says so (its nodata value, its internal mask or an
  alpha band: GDAL's dataset mask; the alpha channel of PNG/GIF/WebP images) or when a floating-point
  band is not finite. :meth:`Raster.read` returns this validity beside the pixels.

Files are read by GDAL (rasterio) by windows, so a scene never has to fit in memory:
:class:`Raster` reads any window at full resolution or a decimated copy (``out_shape``, averaging;
GDAL uses the file's overviews when it has them). Formats that PIL decodes (PNG, JPEG, GIF, BMP,
WebP) are decoded by PIL, whole and strictly: a truncated or corrupt file is an error naming it
(``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` must stay off); GDAL still supplies their georeferencing
(world files).

**Decode budget.** No read decodes more than :func:`max_pixels` pixels (width x height) into memory
at once: the array a read returns, and the smallest piece the file lets a decoder take (a TIFF block
or strip; the whole image for PNG/JPEG and the other PIL formats). It is checked from the header,
before anything is decoded, and raises :class:`DecodeBudgetError` saying how to raise it
(``--max-pixels``, the environment variable ``RS2SAM2_MAX_PIXELS``, or :func:`set_max_pixels`).
The PIL formats also stay under PIL's own limit (``PIL.Image.MAX_IMAGE_PIXELS`` x 2).

:func:`read_image` returns a whole image with a :class:`RasterInfo` carrying the size and, for
GeoTIFFs, the georeferencing, so a predicted mask can be written back on the same grid.
:func:`read_mask` reads a mask file's values (for a threshold, not converted to RGB) the same strict,
budgeted way; :func:`read_info` and :func:`read_size` read only a header. Every image file given to
rs2sam2 (images, masks, predictions) is read through this module, so one rule holds for all of them;
only the mask GeoTIFFs that rs2sam2 itself is writing are read back with rasterio directly.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from PIL import Image, ImageFile
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.io import DatasetReaderBase
from rasterio.windows import Window

from .cliargs import environment_value
from .errors import UserError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DecodeBudgetError",
    "ImageReadError",
    "Raster",
    "RasterInfo",
    "gdal_env",
    "max_pixels",
    "read_image",
    "read_info",
    "read_mask",
    "read_size",
    "set_max_pixels",
    "stretch_to_uint8",
    "to_rgb_uint8",
]

# the percentiles of the stretch applied to non-uint8 data
STRETCH_PERCENTILES = (2.0, 98.0)
#: The stretch's percentiles come from at most this many pixels per band (a decimated copy above it).
STATS_MAX_PIXELS = 2048 * 2048
#: Default decode budget in pixels (width x height) per read; see :func:`max_pixels`.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "RS2SAM2_MAX_PIXELS"
#: GDAL's block cache for our reads and writes (bytes). GDAL's own default is 5% of the machine's
#: memory, which a scene read window by window would fill; a few MB of blocks is all a window needs.
GDAL_CACHE_BYTES = 64 * 2**20
# formats whose pixels PIL decodes (strictly, whole); GDAL only reads their header
_PIL_DRIVERS = frozenset({"PNG", "JPEG", "GIF", "BMP", "WEBP"})

_max_pixels_override: int | None = None


class ImageReadError(UserError, OSError):
    """An image file could not be read or converted; the message names the file."""


class DecodeBudgetError(ImageReadError):
    """Reading would decode more pixels at once than the decode budget allows."""


# --------------------------------------------------------------------------------------------
# the decode budget
# --------------------------------------------------------------------------------------------


def max_pixels() -> int:
    """The decode budget: the most pixels one read may decode into memory at once.

    :func:`set_max_pixels` if called, else the environment variable ``RS2SAM2_MAX_PIXELS``, else
    :data:`DEFAULT_MAX_PIXELS` (10^8: a 10000 x 10000 image, 300 MB as 8-bit RGB)."""
    if _max_pixels_override is not None:
        return _max_pixels_override
    value = environment_value(MAX_PIXELS_ENV)
    return DEFAULT_MAX_PIXELS if value is None else int(value)


def set_max_pixels(n: int | None) -> None:
    """Set the decode budget for this process (``None``: back to the environment / default)."""
    global _max_pixels_override
    if n is not None and int(n) < 1:
        raise ValueError(f"the decode budget must be a positive number of pixels, got {n}")
    _max_pixels_override = None if n is None else int(n)


def _check_budget(width: int, height: int, name: str, what: str) -> None:
    budget = max_pixels()
    if width * height > budget:
        raise DecodeBudgetError(
            f"{name}: {what} {width} x {height} = {width * height:,} pixels at once, over the decode budget of "
            f"{budget:,} pixels; raise it with the environment variable {MAX_PIXELS_ENV}=N (any command), --max-pixels N "
            "(predict, serve) or, in Python, rs2sam2.imageio.set_max_pixels(N) if this machine has the memory for it")


def gdal_env():
    """A ``rasterio.Env`` with a bounded GDAL block cache (:data:`GDAL_CACHE_BYTES`)."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


# --------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------


@dataclass
class RasterInfo:
    """What a reader learned about the file besides its pixels.

    ``crs`` is the CRS as a string (``"EPSG:32633"`` or WKT) and ``transform`` the affine
    pixel-to-world transform as a 6-tuple ``(a, b, c, d, e, f)`` in rasterio/``affine`` order;
    both are ``None`` when the file carries no georeferencing. A raster georeferenced by ground
    control points instead (a scan or an unrectified scene) has ``gcps``, each ``(row, col, x, y,
    z)``, in ``gcp_crs``; masks written on its grid carry them, polygons stay in pixel coordinates.
    ``count`` and ``dtype`` describe the raster *on disk* (before conversion to RGB uint8). ``has_nodata`` says whether some pixels may
    be nodata (a nodata value, an internal mask, an alpha band, or a floating-point band).
    """

    height: int
    width: int
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    count: int = 3
    dtype: str = "uint8"
    georeferenced: bool = False
    has_nodata: bool = False
    gcps: tuple[tuple[float, float, float, float, float], ...] | None = None
    gcp_crs: str | None = None

    def window(self, col_off: int, row_off: int, width: int, height: int) -> RasterInfo:
        """The info of a window of this raster: its size, and its transform (or its ground control
        points) moved to the window's corner."""
        transform = self.transform
        if transform is not None:
            t = Affine(*transform[:6]) @ Affine.translation(col_off, row_off)
            transform = tuple(float(v) for v in t[:6])
        gcps = self.gcps
        if gcps is not None:
            gcps = tuple((row - row_off, col - col_off, x, y, z) for row, col, x, y, z in gcps)
        return replace(self, height=int(height), width=int(width), transform=transform, gcps=gcps)


def describe(info: RasterInfo) -> dict[str, Any]:
    """RasterInfo as a plain dict (for JSON logs and the demo)."""
    return dict(vars(info))


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


def _valid_values(values: np.ndarray, nodata: float | None) -> np.ndarray:
    valid = np.isfinite(values)
    if nodata is not None and not np.isnan(nodata):
        valid &= values != nodata
    return valid


def _percentiles(band: np.ndarray, nodata: float | None) -> tuple[float, float] | None:
    """The stretch's (low, high) percentiles of the valid values, or None when there are none."""
    values = np.asarray(band).astype(np.float64)
    valid = _valid_values(values, nodata)
    if not valid.any():
        return None
    lo, hi = np.percentile(values[valid], STRETCH_PERCENTILES)
    return float(lo), float(hi)


def _apply_stretch(band: np.ndarray, nodata: float | None, limits: tuple[float, float] | None) -> np.ndarray:
    """Map ``limits`` (low, high) of ``band`` linearly to 0..255; nodata and constant bands give 0."""
    values = np.asarray(band).astype(np.float64)
    out = np.zeros(values.shape, dtype=np.uint8)
    if limits is None or limits[1] <= limits[0]:  # no valid pixel, or a constant band
        return out
    lo, hi = limits
    valid = _valid_values(values, nodata)
    scaled = (values - lo) * (255.0 / (hi - lo))
    out[valid] = np.clip(np.rint(scaled[valid]), 0, 255).astype(np.uint8)
    return out


def stretch_to_uint8(band: np.ndarray, nodata: float | None = None) -> np.ndarray:
    """Linearly map one band's 2nd..98th percentile to 0..255 (uint8).

    Nodata pixels (equal to ``nodata``, or not finite) are ignored for the percentiles and set to 0.
    """
    band = np.asarray(band)
    if band.dtype == np.bool_:
        return band.astype(np.uint8) * 255
    return _apply_stretch(band, nodata, _percentiles(band, nodata))


def _bands_to_rgb(stack: Sequence[np.ndarray], nodata: Sequence[float | None],
                  limits: Sequence[tuple[float, float] | None] | None = None) -> np.ndarray:
    """Stack 1 or 3 selected bands (each HxW) into an HxWx3 uint8 image (``limits``: the stretch's
    percentiles per band when already known)."""
    converted = []
    for i, (band, nd) in enumerate(zip(stack, nodata)):
        band = np.asarray(band)
        if band.dtype == np.uint8:
            converted.append(band)
        elif limits is None or band.dtype == np.bool_:
            converted.append(stretch_to_uint8(band, nd))
        else:
            converted.append(_apply_stretch(band, nd, limits[i]))
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


def _pil_alpha(img: Image.Image, arr: np.ndarray) -> np.ndarray | None:
    """Validity from the alpha channel of ``img`` (converted to ``arr``), or None without alpha."""
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if not has_alpha or arr.ndim != 3:
        return None
    return arr[:, :, -1] != 0


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
# rasters, read by windows
# --------------------------------------------------------------------------------------------


def _expand_palette(indices: np.ndarray, colormap: dict[int, tuple[int, ...]]) -> list[np.ndarray]:
    """Palette indices (HxW) -> three uint8 bands, through a GDAL colour map {index: (r, g, b, a)}."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, colour in colormap.items():
        if 0 <= index < 256:
            lut[index] = colour[:3]
    rgb = lut[indices.astype(np.uint8)]
    return [rgb[:, :, c] for c in range(3)]


def _window_tuple(window, width: int, height: int) -> tuple[int, int, int, int]:
    """``(col_off, row_off, width, height)`` of a rasterio Window / 4-tuple / None (the whole raster)."""
    if window is None:
        return 0, 0, width, height
    if hasattr(window, "col_off"):
        return int(window.col_off), int(window.row_off), int(window.width), int(window.height)
    c, r, w, h = (int(v) for v in window)
    return c, r, w, h


def _open_gdal(path: Path):
    """``(dataset, None)`` of ``path`` opened by GDAL, or ``(None, the error)`` when GDAL cannot open it
    (PIL may still read it). Call within :func:`gdal_env`."""
    try:
        with warnings.catch_warnings():
            # PNG/JPEG have no georeferencing; that is normal, not worth a warning
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path), None
    except Exception as exc:  # noqa: BLE001 - PIL may still read it
        return None, exc


def _decode_pil(path: Path, convert, gdal_error: Exception | None = None):
    """``convert(image)`` of the file ``path`` decoded whole and strictly by PIL, under the decode budget.

    The budget is checked from the header before decoding; a truncated or corrupt file raises
    :class:`ImageReadError` naming it (with GDAL's complaint, ``gdal_error``, when GDAL could not
    open it either)."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageReadError(
            f"cannot read {path} safely: PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on in this process, so a "
            "truncated image would be read as if it were whole; turn it off")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own budget decides
            with Image.open(path) as img:
                _check_budget(img.width, img.height, str(path), "decoding this image takes")
                img.load()
                return convert(img)
    except DecodeBudgetError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeBudgetError(f"{path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - truncated, corrupt, or not an image at all
        detail = f"pil: {exc}" + (f"; rasterio: {gdal_error}" if gdal_error is not None else "")
        raise ImageReadError(f"cannot read image {path} ({detail})") from exc


class Raster:
    """An image opened for reading, whole or by windows, as 8-bit RGB plus validity.

    ``image`` is a path, an open ``rasterio`` dataset (not closed by this object), a PIL image or a
    numpy array (``HxW`` or ``HxWxC``, channels last). Paths and datasets are read by windows
    through GDAL (PNG/JPEG/GIF/BMP/WebP files are decoded whole by PIL); PIL images and arrays are
    converted once. ``bands`` are 1-based (see the module docstring).

    Use as a context manager, or call :meth:`close`. Raises :class:`FileNotFoundError` and
    :class:`ImageReadError` (:class:`DecodeBudgetError` included), naming the file.
    """

    def __init__(self, image, bands: Sequence[int] | None = None) -> None:
        self._ds = None
        self._owns_ds = False
        self._rgb: np.ndarray | None = None
        self._valid: np.ndarray | None = None
        self._limits: list[tuple[float, float] | None] | None = None
        self._stack = contextlib.ExitStack()
        try:
            self._open(image, bands)
        except BaseException:
            self.close()
            raise

    # ---- opening ------------------------------------------------------------------------------

    def _open(self, image, bands) -> None:
        if isinstance(image, (str, os.PathLike)):
            path = Path(image)
            self.name = str(path)
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {path}")
            self._stack.enter_context(gdal_env())
            ds, gdal_error = _open_gdal(path)
            if ds is not None and ds.driver not in _PIL_DRIVERS:
                self._ds, self._owns_ds = ds, True
                self._open_dataset(bands)
                return
            header = self._header_info(ds) if ds is not None else {}
            if ds is not None:
                ds.close()
            self._open_pil_file(path, bands, header, gdal_error)
        elif isinstance(image, DatasetReaderBase):
            if image.closed:
                raise ImageReadError(f"the rasterio dataset {image.name} is closed")
            self.name = str(image.name)
            self._stack.enter_context(gdal_env())
            self._ds = image
            self._open_dataset(bands)
        elif isinstance(image, (Image.Image, np.ndarray)):
            self.name = "the image"
            arr = _pil_to_array(image) if isinstance(image, Image.Image) else np.asarray(image)
            valid = _pil_alpha(image, arr) if isinstance(image, Image.Image) else None
            self._set_array(arr, bands, valid, {})
        else:
            raise TypeError(f"unsupported image type {type(image).__name__}; pass a path, an open rasterio "
                            "dataset, a PIL image or a numpy array")

    @staticmethod
    def _header_info(ds) -> dict[str, Any]:
        crs = ds.crs.to_string() if ds.crs else None
        affine = ds.transform
        georef = crs is not None or not affine.is_identity
        points, gcp_crs = ds.gcps if not georef else ([], None)
        return {"crs": crs, "transform": tuple(float(v) for v in affine[:6]) if georef else None,
                "georeferenced": georef,
                "gcps": tuple((p.row, p.col, p.x, p.y, p.z or 0.0) for p in points) or None,
                "gcp_crs": gcp_crs.to_string() if points and gcp_crs else None}

    def _open_dataset(self, bands) -> None:
        ds = self._ds
        for bh, bw in set(ds.block_shapes):
            _check_budget(bw, bh, self.name, "the file is stored in pieces of")
        self._palette = ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette and bands is None
        try:
            self._bands = (1,) if self._palette else _resolve_bands(ds.count, bands)
        except ValueError as exc:
            raise ImageReadError(f"cannot convert image {self.name}: {exc}") from exc
        self._nodata = [ds.nodatavals[b - 1] for b in self._bands]
        dtypes = [ds.dtypes[b - 1] for b in self._bands]
        self._float = any(np.issubdtype(np.dtype(d), np.floating) for d in dtypes)
        self._masked = any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums)
        self._needs_stretch = not self._palette and any(d != "uint8" for d in dtypes)
        self.info = RasterInfo(height=ds.height, width=ds.width, count=ds.count, dtype=str(ds.dtypes[0]),
                               has_nodata=self._masked or self._float, **self._header_info(ds))

    def _open_pil_file(self, path: Path, bands, header: dict[str, Any], gdal_error) -> None:
        def convert(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
            arr = _pil_to_array(img)
            return arr, _pil_alpha(img, arr)

        arr, valid = _decode_pil(path, convert, gdal_error)
        self._set_array(arr, bands, valid, header)

    def _set_array(self, arr: np.ndarray, bands, valid: np.ndarray | None, header: dict[str, Any]) -> None:
        try:
            count = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
            self._rgb = to_rgb_uint8(arr, bands)
        except ValueError as exc:
            raise ImageReadError(f"cannot convert image {self.name}: {exc}") from exc
        if valid is not None and valid.all():
            valid = None
        self._valid = valid
        h, w = self._rgb.shape[:2]
        self.info = RasterInfo(height=h, width=w, count=count, dtype=str(arr.dtype), has_nodata=valid is not None,
                               **header)

    # ---- reading ------------------------------------------------------------------------------

    @property
    def height(self) -> int:
        return self.info.height

    @property
    def width(self) -> int:
        return self.info.width

    def read(self, window=None, out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """``(rgb, valid)`` of ``window`` (a rasterio ``Window`` or ``(col_off, row_off, width,
        height)``; default: everything), at full resolution or decimated to ``out_shape = (height,
        width)`` (pixels averaged; GDAL uses overviews when the file has them).

        ``rgb`` is ``h x w x 3`` uint8; ``valid`` is an ``h x w`` bool array (False = nodata), or
        None when every pixel is valid."""
        col, row, w, h = _window_tuple(window, self.width, self.height)
        if w <= 0 or h <= 0 or col < 0 or row < 0 or col + w > self.width or row + h > self.height:
            raise ValueError(f"window {(col, row, w, h)} is not inside the {self.width} x {self.height} image")
        oh, ow = (h, w) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
        _check_budget(ow, oh, self.name, "this read would decode")
        if self._ds is None:
            return self._read_array(col, row, w, h, oh, ow)
        try:
            return self._read_dataset(col, row, w, h, oh, ow)
        except (ValueError, ImageReadError):
            raise
        except Exception as exc:  # noqa: BLE001 - GDAL read failure: truncated / corrupt data
            raise ImageReadError(f"cannot read image {self.name}: {exc}") from exc

    def read_valid(self, window=None, out_shape: tuple[int, int] | None = None) -> np.ndarray | None:
        """Only the validity of :meth:`read` (None when every pixel is valid), without the pixels
        when the validity does not depend on them."""
        if self._ds is not None and self._float:
            return self.read(window, out_shape)[1]
        col, row, w, h = _window_tuple(window, self.width, self.height)
        oh, ow = (h, w) if out_shape is None else (int(out_shape[0]), int(out_shape[1]))
        if self._ds is None:
            return self._read_array(col, row, w, h, oh, ow)[1]
        return self._dataset_valid(col, row, w, h, oh, ow)

    def _read_array(self, col, row, w, h, oh, ow) -> tuple[np.ndarray, np.ndarray | None]:
        rgb = self._rgb[row:row + h, col:col + w]
        valid = None if self._valid is None else self._valid[row:row + h, col:col + w]
        if (oh, ow) != (h, w):
            rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((ow, oh), Image.Resampling.BOX))
            if valid is not None:
                small = Image.fromarray(valid.astype(np.uint8) * 255).resize((ow, oh), Image.Resampling.NEAREST)
                valid = np.asarray(small) > 127
        return np.ascontiguousarray(rgb), valid

    def _dataset_valid(self, col, row, w, h, oh, ow) -> np.ndarray | None:
        if not self._masked:
            return None
        mask = self._ds.dataset_mask(window=Window(col, row, w, h), out_shape=(oh, ow)) != 0
        return None if mask.all() else mask

    def _read_dataset(self, col, row, w, h, oh, ow) -> tuple[np.ndarray, np.ndarray | None]:
        ds, win = self._ds, Window(col, row, w, h)
        resampling = Resampling.nearest if (oh, ow) == (h, w) or self._palette else Resampling.average
        data = ds.read(indexes=list(self._bands), window=win, out_shape=(len(self._bands), oh, ow),
                       resampling=resampling)
        valid = self._dataset_valid(col, row, w, h, oh, ow)
        if self._float:
            finite = np.isfinite(data).all(axis=0)
            if not finite.all():
                valid = finite if valid is None else valid & finite
        if self._palette:
            return np.ascontiguousarray(np.stack(_expand_palette(data[0], ds.colormap(1)), axis=-1)), valid
        limits = self._stretch_limits() if self._needs_stretch else None
        return _bands_to_rgb(list(data), self._nodata, limits), valid

    def _stretch_limits(self) -> list[tuple[float, float] | None]:
        """Per chosen band, the stretch's percentiles over the whole raster (decimated when large)."""
        if self._limits is None:
            h, w = self.height, self.width
            scale = max(1.0, math.sqrt(h * w / STATS_MAX_PIXELS))
            oh, ow = max(1, int(h / scale)), max(1, int(w / scale))
            data = self._ds.read(indexes=list(self._bands), out_shape=(len(self._bands), oh, ow))
            self._limits = [_percentiles(band, nd) for band, nd in zip(data, self._nodata)]
        return self._limits

    # ---- life cycle ---------------------------------------------------------------------------

    def close(self) -> None:
        if self._ds is not None and self._owns_ds:
            self._ds.close()
        self._ds = None
        self._stack.close()

    def __enter__(self) -> Raster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Raster({self.name!r}, {self.width} x {self.height})"


def read_info(path: str | Path, *, budget: bool = False) -> RasterInfo:
    """The :class:`RasterInfo` of an image file from its header alone (no pixels decoded).

    ``budget=True`` also checks what opening the file for reading checks: that the smallest piece a
    reader decodes at once (a TIFF block or strip; the whole image for PNG/JPEG and the other PIL
    formats) fits the decode budget, else :class:`DecodeBudgetError`. Raises
    :class:`FileNotFoundError` or :class:`ImageReadError`, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    header: dict[str, Any] = {}
    info = None
    with gdal_env():
        ds, _ = _open_gdal(path)
        if ds is not None:
            with ds:
                header = Raster._header_info(ds)
                if ds.driver not in _PIL_DRIVERS:
                    floating = any(np.issubdtype(np.dtype(d), np.floating) for d in ds.dtypes)
                    masked = any(MaskFlags.all_valid not in flags for flags in ds.mask_flag_enums)
                    info = RasterInfo(height=ds.height, width=ds.width, count=ds.count, dtype=str(ds.dtypes[0]),
                                      has_nodata=masked or floating, **header)
                    pieces = set(ds.block_shapes)
    if info is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    alpha = img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info
                    info = RasterInfo(height=img.height, width=img.width, count=len(img.getbands()),
                                      has_nodata=alpha, **header)
        except Image.DecompressionBombError as exc:  # over PIL's own limit (module docstring)
            raise DecodeBudgetError(f"{path}: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - not an image
            raise ImageReadError(f"cannot read image {path} ({exc})") from exc
        if budget:
            _check_budget(info.width, info.height, str(path), "decoding this image takes")
    elif budget:
        for bh, bw in pieces:
            _check_budget(bw, bh, str(path), "the file is stored in pieces of")
    return info


def read_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header alone, quickly: PIL parses the header of
    the common formats without GDAL's heavier open (which :func:`read_info` needs for the
    georeferencing); GDAL reads the rest. Raises :class:`FileNotFoundError` or
    :class:`ImageReadError`, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    with contextlib.suppress(Exception), warnings.catch_warnings():  # when PIL cannot parse it, GDAL may
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # nothing is decoded here
        with Image.open(path) as img:
            return int(img.height), int(img.width)
    with gdal_env():
        ds, gdal_error = _open_gdal(path)
    if ds is None:
        raise ImageReadError(f"cannot read the header of {path}: {gdal_error}")
    with ds:
        return int(ds.height), int(ds.width)


def _mask_from_pil(img: Image.Image) -> np.ndarray:
    """:func:`read_mask`'s values of a decoded PIL image."""
    if img.mode == "P":
        img = img.convert("RGB")  # palette indices mean nothing as intensities: their colours
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr
    colour = [i for i, band in enumerate(img.getbands()) if band not in ("A", "a")][:3]
    return arr[:, :, colour].max(axis=2)


def read_mask(path: str | Path) -> np.ndarray:
    """The values of a mask image file as an ``H x W`` array, for the caller to threshold.

    A single band is returned as stored (a 1-bit PNG as 0/255); a palette image gives its colours;
    several bands give the maximum over the colour bands (at most three, alpha left out), so a mask
    drawn in any colour on black reads as foreground. The file is read whole like
    :func:`read_image`: strictly (a truncated or corrupt file is an error) and under the decode
    budget. Raises :class:`FileNotFoundError` or :class:`ImageReadError`, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    with gdal_env():
        ds, gdal_error = _open_gdal(path)
        if ds is None or ds.driver in _PIL_DRIVERS:
            if ds is not None:
                ds.close()
            return _decode_pil(path, _mask_from_pil, gdal_error)
        with ds:
            _check_budget(ds.width, ds.height, str(path), "reading this mask whole decodes")
            try:
                if ds.count == 1 and ds.colorinterp[0] == ColorInterp.palette:
                    return np.stack(_expand_palette(ds.read(1), ds.colormap(1))).max(axis=0)
                colour = [b for b in range(1, ds.count + 1) if ds.colorinterp[b - 1] != ColorInterp.alpha][:3]
                data = ds.read(indexes=colour or [1])
            except Exception as exc:  # noqa: BLE001 - GDAL read failure: truncated / corrupt data
                raise ImageReadError(f"cannot read mask {path}: {exc}") from exc
    return data[0] if data.shape[0] == 1 else data.max(axis=0)


def read_image(path: str | Path, bands: Sequence[int] | None = None) -> tuple[np.ndarray, RasterInfo]:
    """Read PNG / JPEG / TIFF / GeoTIFF (anything GDAL or PIL reads) whole, as ``(rgb_uint8, RasterInfo)``.

    ``rgb_uint8`` is ``H x W x 3`` uint8; see the module docstring for the band and dtype rules and
    the decode budget. ``bands`` picks 1 or 3 bands, 1-based (``(4, 3, 2)`` for a false-colour
    composite). Raises :class:`FileNotFoundError` or :class:`ImageReadError`, naming the file.
    """
    with Raster(path, bands) as raster:
        rgb, _ = raster.read()
        return rgb, raster.info
