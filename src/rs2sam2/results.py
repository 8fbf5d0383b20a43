"""Prediction results: the in-memory :class:`Prediction`, and the files of a prediction.

A :class:`Prediction` holds one expression's answer on a grid -- the image's, or a window's -- with
that grid's CRS and transform, so it can be saved, traced into polygons and plotted on its own.

Files are written in one of two ways, always atomically and all together (temporary files renamed
into place only when every output of the expression is written):

* :func:`write_outputs` -- from a :class:`Prediction` in memory (any mask format, overlay at full size);
* :class:`SceneWriter` -- window by window while the scene is predicted (``tiles``/decimated
  regions): the mask and probability GeoTIFFs receive each window as it comes, polygons are traced
  from the finished mask file by GDAL, and the overlay is drawn on a copy of at most
  :data:`OVERLAY_MAX_SIDE` pixels per side. Memory is bounded by a window, not by the scene; masks and
  probability maps must be GeoTIFFs then (PNG has no windowed writer).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import UserError
from .extras import require
from .fsutil import atomic_write, work_folder
from .geo import mask_band, open_grid_writer, probability_band, write_mask, write_probability
from .imageio import RasterInfo, gdal_env
from .metrics import PUBLISHED_THRESHOLD
from .tiles import Answer, Piece, upsample_window
from .vector import check_vector_path, polygons, sidecars_replaced, write_vector
from .viz import overlay as draw_overlay

__all__ = [
    "MASK_SUFFIXES",
    "Outputs",
    "OVERLAY_MAX_SIDE",
    "OVERLAY_SUFFIXES",
    "Prediction",
    "SceneResult",
    "SceneWriter",
    "assemble",
    "check_output_paths",
    "write_outputs",
]

MASK_SUFFIXES = (".tif", ".tiff", ".png")
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg")
#: Overlays of larger areas are drawn on a copy shrunk to this many pixels on the longer side.
OVERLAY_MAX_SIDE = 4096
# _repr_png_ draws on a copy of the input at most this large
PREVIEW_SIDE = 512


# --------------------------------------------------------------------------------------------
# the in-memory result
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Prediction:
    """The result for one expression on a grid of ``(H, W)`` pixels: the image's own, or the window's
    (``bbox``/``window``), at full resolution.

    Attributes:
        text: the expression.
        logits: ``(H, W)`` float32 mask logits (the model's logits resized bilinearly).
        mask: ``(H, W)`` bool, ``logits > threshold`` where the input has data (False on nodata).
        prior: ``(H, W)`` float32 Mask Prompt Generator prior (probabilities), resized bilinearly;
            ``None`` when the model has no MPG or the prior was not requested.
        threshold: the logit threshold used for ``mask``.
        iou_score: SAM2's predicted IoU of the mask (tiles: the largest over the tiles).
        object_score: SAM2's object-presence logit (tiles: the largest over the tiles).
        crs: the grid's CRS (``"EPSG:32633"`` or WKT), None without georeference.
        transform: the grid's affine transform ``(a, b, c, d, e, f)`` (of the window when one was
            used), None without georeference (pixel coordinates).
        valid: ``(H, W)`` bool, False where the input has no data; None when every pixel has data.
        has_nodata: whether the input can mark pixels as nodata (saved masks then declare a nodata value).
        tiles: how many model inputs the result was assembled from (1 without tiles).
        provenance: what every polygon written carries besides its text and score: ``mode``
            (scene, whole or tiles), ``presence``, ``image``, ``checkpoint``.
        decision: a scene answer's report (where it looked, what it kept; see
            :class:`rs2sam2.scene.Decision`), None for other modes.
        downscale: how many times (per side) the input was shrunk for the model beyond its usual
            resize (1.0 unless a large area was read decimated).
        probability: ``(H, W)`` float32 ``sigmoid(logits)`` (computed on first access).
    """

    text: str
    logits: np.ndarray
    mask: np.ndarray
    prior: np.ndarray | None = None
    threshold: float = PUBLISHED_THRESHOLD
    iou_score: float = float("nan")
    object_score: float = float("nan")
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    valid: np.ndarray | None = None
    has_nodata: bool = False
    tiles: int = 1
    downscale: float = 1.0
    preview: np.ndarray | None = field(default=None, repr=False)  # the input, at most PREVIEW_SIDE px
    scores: PieceScores | None = field(default=None, repr=False)  # per answered window, for polygons
    provenance: dict[str, Any] = field(default_factory=dict, repr=False)
    decision: dict[str, Any] | None = field(default=None, repr=False)
    _probability: np.ndarray | None = field(default=None, repr=False)
    gcps: tuple | None = field(default=None, repr=False)  # ground control points of the grid (RasterInfo)
    gcp_crs: str | None = None

    @property
    def probability(self) -> np.ndarray:
        if self._probability is None:
            self._probability = (1.0 / (1.0 + np.exp(-self.logits.astype(np.float64)))).astype(np.float32)
        return self._probability

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mask.shape)  # type: ignore[return-value]

    @property
    def foreground_pixels(self) -> int:
        return int(self.mask.sum())

    @property
    def foreground_fraction(self) -> float:
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform is not None

    @property
    def info(self) -> RasterInfo:
        """The grid as a :class:`~rs2sam2.imageio.RasterInfo` (for the writers of :mod:`rs2sam2.geo`)."""
        h, w = self.shape
        return RasterInfo(height=h, width=w, crs=self.crs, transform=self.transform, count=1,
                          georeferenced=self.georeferenced, has_nodata=self.has_nodata, gcps=self.gcps,
                          gcp_crs=self.gcp_crs)

    # ---- files ------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """Write the mask: ``.tif`` (a GeoTIFF on this grid when georeferenced; 255 = object, 0 =
        background, nodata declared where the input has none) or ``.png``."""
        return write_mask(path, self.mask, self.info, self.valid)

    def save_probability(self, path: str | os.PathLike) -> Path:
        """Write the probability map (``.tif`` float32 with NaN nodata, or 8-bit ``.png``)."""
        return write_probability(path, self.probability, self.info, self.valid)

    def polygons(self, simplify: float = 0.0, min_area: float = 0.0) -> list:
        """The mask's polygons in this grid's CRS (:class:`rs2sam2.vector.Polygon`; pixel
        coordinates without georeference), with area and score (the predicted IoU)."""
        score_of = self.scores if self.scores is not None else (lambda box: self.iou_score)
        return polygons(self.mask, self.transform, simplify=simplify, min_area=min_area, score_of=score_of)

    def to_vector(self, path: str | os.PathLike, simplify: float = 0.0, min_area: float = 0.0) -> list[Path]:
        """Write the polygons: ``.gpkg`` / ``.shp`` in this grid's CRS, ``.geojson`` as RFC 7946
        (lon/lat). Returns the files written."""
        return write_vector(path, self.polygons(simplify, min_area), self.crs, text=self.text,
                            properties=_grid_properties(self.info, self.foreground_pixels), transform=self.transform,
                            fields=self.provenance)

    # ---- pictures ---------------------------------------------------------------------------

    def overlay(self, image: np.ndarray | None = None):
        """The mask drawn over ``image`` (HxWx3 uint8 on this grid), or over the stored preview of
        the input (shrunk), as a PIL image."""
        if image is not None:
            return draw_overlay(image, self.mask)
        base = self.preview if self.preview is not None else np.zeros((*self.shape, 3), np.uint8)
        return draw_overlay(base, _shrink_mask(self.mask, base.shape[:2]))

    def plot(self, ax=None, image: np.ndarray | None = None, **imshow_kwargs):
        """Draw the mask over the input (or ``image``) with matplotlib, on ``ax`` or a new figure, in CRS
        coordinates when georeferenced. Needs matplotlib (``pip install 'rs2sam2[plot]'``).

        Returns:
            The matplotlib ``Axes`` drawn on. A notebook shows its figure; a script calls
            ``matplotlib.pyplot.show()`` or ``savefig(...)`` to see or keep it.
        """
        plt = require("matplotlib.pyplot", "Prediction.plot")
        if ax is None:
            _, ax = plt.subplots()
        h, w = self.shape
        t = self.transform
        if t is not None and t[1] == 0 and t[3] == 0:  # north-up: extent in CRS units
            extent = (t[2], t[2] + t[0] * w, t[5] + t[4] * h, t[5])
        else:
            extent = (0, w, h, 0)
        ax.imshow(np.asarray(self.overlay(image)), extent=extent, **imshow_kwargs)
        ax.set_title(f"{self.text!r}: {self.foreground_pixels} px", fontsize=9)
        if self.crs is not None:
            ax.set_xlabel(self.crs if len(self.crs) < 40 else "CRS x")
        return ax

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.overlay().save(buf, format="PNG")
        return buf.getvalue()

    def __repr__(self) -> str:
        h, w = self.shape
        extra = f", tiles={self.tiles}" if self.tiles > 1 else ""
        extra += f", downscale={self.downscale:.1f}x" if self.downscale > 1 else ""
        extra += f", crs={self.crs}" if self.crs and len(self.crs) < 40 else ""
        return (f"Prediction(text={self.text!r}, size={w}x{h}, foreground={self.foreground_pixels} px "
                f"({100 * self.foreground_fraction:.2f}%), threshold={self.threshold}, "
                f"prior={'yes' if self.prior is not None else 'no'}{extra})")


def _shrink_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if tuple(mask.shape) == tuple(shape):
        return mask
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.Resampling.NEAREST)
    return np.asarray(img) > 127


def preview_shape(height: int, width: int, side: int) -> tuple[int, int]:
    scale = max(1.0, max(height, width) / side)
    return max(1, round(height / scale)), max(1, round(width / scale))


def _largest_finite(values: Iterable[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return max(finite) if finite else float("nan")


class PieceScores:
    """The model's predicted IoU for each window of the output grid it answered (a tile's core, or
    the whole grid); a polygon's score is the best among the windows its bounding box touches."""

    def __init__(self) -> None:
        self._windows: list[tuple[int, int, int, int]] = []
        self._scores: list[float] = []

    def add(self, window, score: float) -> None:
        self._windows.append(tuple(int(v) for v in window))
        self._scores.append(float(score))

    def __call__(self, box: tuple[int, int, int, int]) -> float:
        if not self._windows:
            return float("nan")
        w = np.asarray(self._windows)
        c, r, bw, bh = box
        hit = (w[:, 0] < c + bw) & (c < w[:, 0] + w[:, 2]) & (w[:, 1] < r + bh) & (r < w[:, 1] + w[:, 3])
        return _largest_finite(np.asarray(self._scores)[hit].tolist())


def assemble(pieces: Iterable[Piece], texts: Sequence[str], info: RasterInfo, threshold: float, *,
             tiles: int = 1, downscale: float = 1.0, preview: np.ndarray | None = None) -> list[Prediction]:
    """Build one :class:`Prediction` per text from the pieces of a plan (on the grid ``info``)."""
    h, w = info.height, info.width
    logits: list[np.ndarray | None] = [None] * len(texts)
    priors: list[np.ndarray | None] = [None] * len(texts)
    valid: np.ndarray | None = None
    answers: list[list[Answer]] = [[] for _ in texts]
    scores = [PieceScores() for _ in texts]
    for piece in pieces:
        c, r, pw, ph = piece.window
        whole = (pw, ph) == (w, h)
        if piece.valid is not None and valid is None:
            valid = piece.valid if whole else np.ones((h, w), dtype=bool)
        if piece.valid is not None and not whole:
            valid[r:r + ph, c:c + pw] = piece.valid
        for k in range(len(texts)):
            answers[k].append(piece.answers[k])
            scores[k].add(piece.window, piece.answers[k].iou_score)
            if whole:
                logits[k], priors[k] = piece.logits[k], piece.priors[k]
                continue
            if logits[k] is None:
                logits[k] = np.empty((h, w), np.float32)
                priors[k] = None if piece.priors[k] is None else np.empty((h, w), np.float32)
            logits[k][r:r + ph, c:c + pw] = piece.logits[k]
            if priors[k] is not None:
                priors[k][r:r + ph, c:c + pw] = piece.priors[k]
    out = []
    for k, text in enumerate(texts):
        mask = logits[k] > threshold
        if valid is not None:
            mask &= valid
        out.append(Prediction(
            text=text, logits=logits[k], mask=mask, prior=priors[k], threshold=threshold,
            iou_score=_largest_finite(a.iou_score for a in answers[k]),
            object_score=_largest_finite(a.object_score for a in answers[k]),
            crs=info.crs, transform=info.transform, valid=valid, has_nodata=info.has_nodata, tiles=tiles,
            downscale=downscale, preview=preview, scores=scores[k], gcps=info.gcps, gcp_crs=info.gcp_crs))
    return out


def _grid_properties(info: RasterInfo, foreground_px: int) -> dict[str, Any]:
    return {"width": int(info.width), "height": int(info.height), "foreground_px": int(foreground_px),
            "transform": None if info.transform is None else [float(v) for v in info.transform[:6]]}


# --------------------------------------------------------------------------------------------
# writing a Prediction
# --------------------------------------------------------------------------------------------


class OutputPathError(UserError, ValueError):
    """An output path that no writer can take (wrong suffix, a folder, an unwritable place)."""


def _writable_folder(path: Path, what: str) -> None:
    """Raise :class:`OutputPathError` unless ``path``'s folder exists (or can be made) and is writable."""
    folder = path.parent
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputPathError(f"{what} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputPathError(f"{what} {path}: the folder {probe} is not writable")


def check_output_paths(*, out=None, overlay=None, prob=None, vector=None) -> None:
    """Raise :class:`OutputPathError` for output paths whose suffix no writer handles, folders,
    or places that cannot be written; ``MissingExtraError`` naming the extra for GPKG/SHP without pyogrio."""
    for value, allowed, what in ((out, MASK_SUFFIXES, "mask output"), (prob, MASK_SUFFIXES, "probability output"),
                                 (overlay, OVERLAY_SUFFIXES, "overlay output"), (vector, None, "vector output")):
        if value is None:
            continue
        p = Path(value)
        if p.is_dir():
            raise OutputPathError(f"{what} {p} is a folder; give a file name")
        if allowed is None:
            try:
                check_vector_path(p)
            except ValueError as exc:
                raise OutputPathError(str(exc)) from None
        elif p.suffix.lower() not in allowed:
            raise OutputPathError(f"{what} {p}: unsupported suffix {p.suffix or '(none)'!r}; use {', '.join(allowed)}")
        _writable_folder(p, what)


def _as_path(value) -> Path | None:
    return None if value is None else Path(value).expanduser()


@dataclass(frozen=True)
class Outputs:
    """The files of one expression's prediction, checked: the mask raster, the probability map, the
    polygons and the overlay (each optional). Make one with :meth:`of`, which resolves the
    ``geojson`` alias of ``vector`` and checks every path (:func:`check_output_paths`)."""

    mask: Path | None = None
    prob: Path | None = None
    vector: Path | None = None
    overlay: Path | None = None

    @classmethod
    def of(cls, *, out=None, prob=None, vector=None, geojson=None, overlay=None) -> Outputs:
        """Checked outputs; ``geojson`` is an alias of ``vector`` (give one of them)."""
        if vector is not None and geojson is not None:
            raise OutputPathError("give the polygons' path once: --geojson (geojson) is an alias of --vector (vector)")
        outputs = cls(mask=_as_path(out), prob=_as_path(prob), vector=_as_path(vector if vector is not None else geojson),
                      overlay=_as_path(overlay))
        check_output_paths(out=outputs.mask, overlay=outputs.overlay, prob=outputs.prob, vector=outputs.vector)
        return outputs

    def paths(self) -> list[Path]:
        """Every path given, in the order mask, vector, overlay, probability."""
        return [p for p in (self.mask, self.vector, self.overlay, self.prob) if p is not None]

    def check_windowed(self, how: str) -> None:
        """Raise :class:`OutputPathError` when a raster output cannot be written window by window (a PNG):
        ``how`` says why the prediction is written that way ("tile by tile", "downscaled", ...)."""
        for p, flag in ((self.mask, "--out"), (self.prob, "--prob")):
            if p is not None and p.suffix.lower() == ".png":
                raise OutputPathError(f"{flag} {p}: the area is predicted {how} and written window by window, "
                                      "which needs a GeoTIFF; use .tif")


def write_outputs(prediction: Prediction, rgb: np.ndarray | None, info: RasterInfo | None = None, *, out=None,
                  geojson=None, overlay=None, prob=None, vector=None, simplify: float = 0.0,
                  min_area: float = 0.0) -> list[Path]:
    """Write the chosen outputs of one prediction, all or nothing.

    ``out``: mask raster (``.tif``: GeoTIFF on the prediction's grid when georeferenced, else a
    plain TIFF; ``.png``); ``vector`` (``geojson`` is an alias): polygons, the format by suffix (see
    :mod:`rs2sam2.vector`); ``overlay``: the mask drawn over ``rgb`` at its own size (PNG/JPEG);
    ``prob``: the probability map (float32 TIFF / 8-bit PNG). Every file is first written under a
    temporary name next to its destination; only when all of them are written are they renamed
    into place. ``info``, when given, must describe the prediction's grid. Returns the paths written.
    """
    outputs = Outputs.of(out=out, prob=prob, vector=vector, geojson=geojson, overlay=overlay)
    if info is not None and (info.height, info.width) != prediction.shape:
        raise ValueError(f"prediction {prediction.shape} does not match the raster {(info.height, info.width)}")
    return write_prediction(prediction, rgb, outputs, simplify=simplify, min_area=min_area)


def write_prediction(prediction: Prediction, rgb: np.ndarray | None, outputs: Outputs, *, simplify: float = 0.0,
                     min_area: float = 0.0) -> list[Path]:
    """:func:`write_outputs` for checked :class:`Outputs`."""
    grid = prediction.info
    writers = []
    if outputs.mask is not None:
        writers.append((outputs.mask, lambda tmp: write_mask(tmp, prediction.mask, grid, prediction.valid)))
    if outputs.prob is not None:
        writers.append((outputs.prob, lambda tmp: write_probability(tmp, prediction.probability, grid,
                                                                    prediction.valid)))
    polys = None if outputs.vector is None else prediction.polygons(simplify, min_area)
    if outputs.overlay is not None:
        if rgb is None:
            raise ValueError("an overlay needs the image (rgb)")

        def _overlay(tmp: Path, dest: Path = outputs.overlay) -> None:
            img = draw_overlay(rgb, prediction.mask)
            img.save(tmp, format="PNG" if dest.suffix.lower() == ".png" else "JPEG")
        writers.append((outputs.overlay, _overlay))
    # nested atomic writes: an exception in any writer removes every temporary file; the renames
    # happen together on the way out
    written: list[Path] = []
    with contextlib.ExitStack() as stack:
        for dest, write in writers:
            tmp = stack.enter_context(atomic_write(dest))
            write(tmp)
            written.append(dest)
        if polys is not None:
            written.extend(_write_vector_in(stack, outputs.vector, polys, grid.crs, prediction.text,
                                            _grid_properties(grid, prediction.foreground_pixels),
                                            prediction.provenance))
    return written


def _write_vector_in(stack: contextlib.ExitStack, dest: Path, polys, crs, text: str,
                     properties: dict[str, Any], fields: dict[str, Any]) -> list[Path]:
    """Write the vector file(s) to temporary names whose renames join ``stack``'s (all together)."""
    folder = _created_folder(dest.parent)
    work = stack.enter_context(work_folder(folder, prefix=f".{dest.name}."))
    made = write_vector(work / dest.name, polys, crs, text=text, properties=properties,
                        transform=properties["transform"], fields=fields)
    finals = [dest.with_name(p.name) for p in made]
    stack.enter_context(sidecars_replaced(dest, finals))  # after the renames below, on success only
    for p, final in zip(made, finals):
        os.replace(p, stack.enter_context(atomic_write(final)))
    return finals


def _created_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --------------------------------------------------------------------------------------------
# writing window by window
# --------------------------------------------------------------------------------------------


@dataclass
class SceneResult:
    """What :class:`SceneWriter` wrote for one expression."""

    text: str
    width: int
    height: int
    foreground_px: int
    iou_score: float
    object_score: float
    tiles: int
    downscale: float
    written: list[Path]
    preview: np.ndarray | None = field(default=None, repr=False)  # the input, shrunk (preview_side)
    preview_mask: np.ndarray | None = field(default=None, repr=False)
    preview_prior: np.ndarray | None = field(default=None, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict)  # mode, presence, image, checkpoint
    decision: dict[str, Any] | None = None  # a scene answer's report (rs2sam2.scene.Decision)

    @property
    def foreground_fraction(self) -> float:
        return self.foreground_px / max(1, self.width * self.height)


class SceneWriter:
    """The outputs of one expression, written window by window (see the module docstring).

    Temporary files are entered into ``stack``; the caller closes it when every writer of the
    image has finished (the renames then happen together), or on an error (every temporary file
    is removed). Call :meth:`write` for every piece, then :meth:`finish`.
    """

    def __init__(self, stack: contextlib.ExitStack, text: str, info: RasterInfo, threshold: float,
                 outputs: Outputs, *, simplify: float = 0.0, min_area: float = 0.0) -> None:
        outputs.check_windowed("in windows")
        out, prob = outputs.mask, outputs.prob
        self.stack, self.text, self.info, self.threshold = stack, text, info, float(threshold)
        self.out, self.prob, self.vector, self.overlay = out, prob, outputs.vector, outputs.overlay
        self.simplify, self.min_area = simplify, min_area
        self.foreground_px = 0
        self.answers: list[Answer] = []
        self.scores = PieceScores()
        if out is not None:
            self._mask_tmp = stack.enter_context(atomic_write(out))
        else:  # the polygons and the overlay are made from the mask file
            self._mask_tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rs2sam2-"))) / "mask.tif"
        self._mask = stack.enter_context(contextlib.closing(open_grid_writer(self._mask_tmp, info, "mask")))
        self._prob = None
        if prob is not None:
            self._prob = stack.enter_context(contextlib.closing(open_grid_writer(
                stack.enter_context(atomic_write(prob)), info, "probability")))

    def write(self, window, logits: np.ndarray, valid: np.ndarray | None, answer: Answer) -> None:
        from rasterio.windows import Window  # noqa: PLC0415 -- rasterio is heavy; only windowed writes need it


        mask = logits > self.threshold
        if valid is not None:
            mask &= valid
        self.foreground_px += int(mask.sum())
        win = Window(*window)
        self._mask.write(mask_band(mask, valid), 1, window=win)
        if self._prob is not None:
            prob = (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)
            self._prob.write(probability_band(prob, valid), 1, window=win)
        self.answers.append(answer)
        self.scores.add(window, answer.iou_score)

    def finish(self, raster, region, *, steps: int, downscale: float, preview_side: int | None = None,
               provenance: dict[str, Any] | None = None, decision: dict[str, Any] | None = None) -> SceneResult:
        """Close the rasters, trace the polygons, draw the overlay (all still under temporary names)."""
        import rasterio  # noqa: PLC0415 -- rasterio is heavy; only windowed writes need it

        written = [Path(p) for p in (self.out, self.prob) if p is not None]
        self._mask.close()
        if self._prob is not None:
            self._prob.close()
        result = SceneResult(self.text, self.info.width, self.info.height, self.foreground_px,
                             _largest_finite(a.iou_score for a in self.answers),
                             _largest_finite(a.object_score for a in self.answers),
                             steps, downscale, written, provenance=provenance or {}, decision=decision)
        with gdal_env(), rasterio.open(self._mask_tmp) as mask_ds:
            if self.vector is not None:
                written.extend(self._write_vector(mask_ds, result.provenance))
            sides = [s for s in (preview_side, OVERLAY_MAX_SIDE if self.overlay is not None else None) if s]
            for side in sorted(set(sides)):
                shape = preview_shape(self.info.height, self.info.width, side)
                rgb, _ = raster.read(region, out_shape=shape)
                small = mask_ds.read(1, out_shape=shape) == 255
                if side == preview_side:
                    result.preview, result.preview_mask = rgb, small
                    one_look = steps == 1 or decision is not None  # the prior of one input, or the global look
                    if one_look and self.answers and self.answers[0].prior is not None:
                        result.preview_prior = np.clip(upsample_window(self.answers[0].prior, *shape), 0, 1)
                if self.overlay is not None and side == OVERLAY_MAX_SIDE:
                    written.append(self._write_overlay(rgb, small))
        return result

    def _write_vector(self, mask_ds, fields: dict[str, Any]) -> list[Path]:
        import rasterio  # noqa: PLC0415 -- rasterio is heavy; only windowed writes need it

        polys = polygons(rasterio.band(mask_ds, 1), self.info.transform, simplify=self.simplify,
                         min_area=self.min_area, score_of=self.scores)
        return _write_vector_in(self.stack, Path(self.vector), polys, self.info.crs, self.text,
                                _grid_properties(self.info, self.foreground_px), fields)

    def _write_overlay(self, rgb: np.ndarray, mask: np.ndarray) -> Path:
        dest = Path(self.overlay)
        tmp = self.stack.enter_context(atomic_write(dest))
        draw_overlay(rgb, mask).save(tmp, format="PNG" if dest.suffix.lower() == ".png" else "JPEG")
        return dest
