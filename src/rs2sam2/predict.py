"""Inference: the :class:`Predictor` API and the ``rs2sam2 predict`` command.

Python::

    from rs2sam2.predict import Predictor

    predictor = Predictor.from_pretrained("checkpoints/rs2sam2-rrsisd")   # our folder or a released one
    pred = predictor.predict("scene.tif", "the storage tank left of the road")
    pred.mask          # (H, W) bool at the image's own resolution
    pred.probability   # (H, W) float32, sigmoid of the logits
    pred.save("mask.tif"); pred.to_vector("tanks.gpkg")    # on the image's grid, in its CRS
    preds = predictor.predict("scene.tif", ["the red car", "the white ship"])   # one batched pass
    pred = predictor.predict("scene.tif", "the ship", bbox=(500100, 5199800, 500300, 5200000))
    predictor.predict_to_file("big.tif", "the white storage tanks", out="tanks.tif", tile=1024)

Command line::

    rs2sam2 predict --checkpoint CKPT --image scene.tif --text "the ship at the top" \\
        --out mask.tif --vector mask.gpkg --overlay overlay.png
    rs2sam2 predict --checkpoint CKPT --image big.tif --text "the white tanks" --out tanks.tif --tile 1024
    rs2sam2 predict --checkpoint CKPT --batch jobs.csv          # columns image,text,out[,vector,overlay,prob]

How a prediction is made (the published inference path):

1. the image -- or the area of interest, ``bbox``/``window`` (:func:`rs2sam2.geo.area_of_interest`) --
   is read as 8-bit RGB (:mod:`rs2sam2.imageio`: 1 band is replicated, 4+ bands use bands 1,2,3
   unless ``bands`` says otherwise, non-8-bit data gets a per-band 2..98 percentile stretch);
2. it is resized (bilinear, no aspect-ratio preservation) to the SAM2 input (``config.image_size``)
   and to the BEiT-3 input (``config.beit3.img_size``) and ImageNet-normalised -- once, however many
   expressions are asked about it; the expressions then run as one batch;
3. the model's mask logits (at ``image_size``) are resized bilinearly to the image's own height and
   width; ``probability = sigmoid(logits)`` and ``mask = logits > threshold`` where the input has
   data. The default threshold 0.5 on the *logit* is the published rule (``argmax([1 - x, x])``;
   probability about 0.62); ``threshold=0`` gives the usual probability > 0.5.

Large areas (:mod:`rs2sam2.tiles`): with ``tile``, the area is cut into overlapping tiles at native
resolution, each one model input, merged by the nearest-centre rule; without it, an area whose
longer side exceeds twice the model input is read as a decimated copy (a warning says by how much)
and its mask is resized back to the full grid window by window.

Outputs of the command are written atomically (temporary file + rename), all files of one
expression together, so an interrupted or failed run never leaves half-written files: the mask as a
single-band ``uint8`` raster (255 = object, 0 = background, nodata where the input has none) on
exactly the grid of the image or area (a GeoTIFF with its CRS, transform and size when the suffix is
``.tif`` and the input is georeferenced; a plain TIFF or a PNG otherwise), polygons in a vector file
(:mod:`rs2sam2.vector`: GeoPackage / Shapefile in the input CRS, RFC 7946 GeoJSON in lon/lat), an
overlay image, and optionally the probability map (float32 TIFF, or 8-bit PNG). Tiled and decimated
predictions are written window by window (:class:`rs2sam2.results.SceneWriter`), so memory stays
bounded by a tile. Bad input (an image that is missing, unreadable in its header or over the decode
budget, empty text, missing checkpoint/tokenizer, unsupported output suffix, an area outside the
image) prints one clear message and exits with status 2 before anything is written: every job's
inputs and outputs, and every image's header, are checked before the first job runs (with
``--keep-going``, an image whose header is bad is skipped and reported instead). An image whose
pixels turn out corrupt after a whole header (a PNG cut short in its pixel data) fails when its turn
comes: the jobs of the images before it keep their complete outputs, its own jobs write nothing, and
the later images are not run (``--keep-going``: they are, and the exit status is still 2).

Under ``torchrun``, ``--batch`` shares the images among the ranks (a gloo group from
:func:`rs2sam2.runtime.init_distributed`): each image's jobs run on one rank only.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoints import CHECKPOINT_HELP, TOKENIZER_HELP, CheckpointError, add_hub_arguments, load_pretrained, locate
from .errors import ConfigError, UserError
from .geo import AreaError, area_of_interest
from .imageio import (
    DEFAULT_MAX_PIXELS,
    MAX_PIXELS_ENV,
    ImageReadError,
    Raster,
    RasterInfo,
    max_pixels,
    read_info,
)
from .metrics import PUBLISHED_THRESHOLD, check_threshold
from .results import (
    OVERLAY_MAX_SIDE,
    PREVIEW_SIDE,
    OutputPathError,
    Prediction,
    SceneResult,
    SceneWriter,
    assemble,
    check_output_paths,
    preview_shape,
    write_outputs,
)
from .runtime import PRECISIONS, resolve_precision
from .text import TextTruncatedWarning, normalize_text, text_preview
from .tiles import Answer, Plan, iter_pieces, plan_region

__all__ = [
    "PRECISIONS",
    "InputError",
    "Prediction",
    "Predictor",
    "SceneResult",
    "add_arguments",
    "open_image",
    "parse_bands",
    "read_jobs",
    "resolve_device",
    "run",
    "write_outputs",
]

JOB_COLUMNS = ("image", "text", "out", "vector", "geojson", "overlay", "prob")
REQUIRED_COLUMNS = ("image", "text", "out")


class InputError(UserError, ValueError):
    """Bad user input (empty text, unsupported image type or output suffix, malformed batch file)."""


# errors that are the user's to fix: one message, exit status 2
_USER_ERRORS = (InputError, OutputPathError, AreaError, CheckpointError, FileNotFoundError, ImportError)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def parse_bands(spec: str | Sequence[int] | None) -> tuple[int, ...] | None:
    """``"4,3,2"`` / ``(4, 3, 2)`` / ``"1"`` -> a tuple of 1 or 3 one-based band numbers (or None)."""
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        try:
            bands = tuple(int(p) for p in spec.replace(" ", "").split(","))
        except ValueError:
            raise InputError(f"--bands must be 1 or 3 comma-separated band numbers like 4,3,2; got {spec!r}") from None
    else:
        bands = tuple(int(b) for b in spec)
    if len(bands) not in (1, 3) or any(b < 1 for b in bands):
        raise InputError(f"bands must be 1 or 3 band numbers, counted from 1 (like 4,3,2); got {spec!r}")
    return bands


def open_image(image, bands: Sequence[int] | str | None = None):
    """Any supported image -> an open :class:`~rs2sam2.imageio.Raster` (a context manager): a path,
    an open rasterio dataset (left open), a PIL image, a numpy array (``HxW`` or ``HxWxC``, channels
    last), or a Raster (left open).
    ``bands`` is 1-based. Raises :class:`InputError` for other types,
    FileNotFoundError / ImageReadError naming the file."""
    bands = parse_bands(bands) if isinstance(bands, str) else bands
    if isinstance(image, torch.Tensor):
        raise InputError("pass images as a path, a PIL image or a numpy array (HxWxC), not a torch tensor")
    if isinstance(image, Raster):  # already open: the caller closes it
        if bands is not None:
            raise InputError("bands are chosen when a Raster is opened, not later")
        return contextlib.nullcontext(image)
    try:
        return Raster(image, bands=bands)
    except TypeError as exc:
        raise InputError(str(exc)) from None
    except ImageReadError as exc:
        if isinstance(image, (str, os.PathLike)) or hasattr(image, "read"):
            raise
        raise InputError(f"cannot use this image: {exc}") from exc


def _check_texts(texts: Sequence[Any]) -> list[str]:
    if len(texts) == 0:
        raise InputError("no expression given: pass a text or a non-empty list of texts")
    clean = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"expression {i} is a {type(t).__name__}, not a string")
        t = normalize_text(t)
        if not t:
            which = "the expression" if len(texts) == 1 else f"expression {i}"
            raise InputError(f"{which} is empty: type a sentence that describes the object to segment")
        clean.append(t)
    return clean


def check_tiling(tile: int | None, overlap: int | None) -> tuple[int | None, int]:
    """``(tile, overlap)`` checked; the default overlap is an eighth of the tile."""
    if tile is None:
        if overlap not in (None, 0):
            raise InputError("--overlap needs --tile SIZE (the overlap is between tiles)")
        return None, 0
    tile = int(tile)
    overlap = tile // 8 if overlap is None else int(overlap)
    if tile < 16:
        raise InputError(f"--tile {tile}: give a tile size of at least 16 pixels")
    if overlap < 0:
        raise InputError(f"--overlap {overlap}: the overlap must be 0 or more pixels")
    if tile <= overlap:
        raise InputError(f"--tile {tile} must be larger than --overlap {overlap} (tiles step by tile - overlap)")
    return tile, overlap


@contextlib.contextmanager
def _truncation_announced():
    """Within it, no :class:`~rs2sam2.text.TextTruncatedWarning`: the texts were tokenized once before
    the run, which warned about any text over the token limit; a tiled run tokenizes once per tile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        yield


def downscale_message(name: str, plan: Plan, model_size: int) -> str:
    """The warning for a decimated read (``plan.mode == "decimated"``)."""
    return (f"{name}: the area of {plan.width} x {plan.height} px was read downscaled "
            f"{plan.downscale:.1f}x to {plan.read_shape[1]} x {plan.read_shape[0]} px for the model "
            f"(input {model_size} px); to work at native resolution use --bbox/--window for a part of it "
            "or --tile SIZE for all of it (bbox=/window=/tile= in Python)")

def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None``/``"auto"``: the model's device when one is given,
    else CUDA when available, else the CPU. Asking for CUDA without it raises :class:`InputError`."""
    if device is None or str(device) == "auto":
        if model is not None:
            param = next(model.parameters(), None)
            if param is not None:
                return param.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {str(device)!r} requested but CUDA is not available; use --device cpu")
    return dev


def _load_tokenizer(path: str | os.PathLike):
    from .text import load_tokenizer

    try:
        return load_tokenizer(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer: {exc}") from exc


# --------------------------------------------------------------------------------------------
# the predictor
# --------------------------------------------------------------------------------------------


class Predictor:
    """Segment what a sentence describes in an image, at the image's own resolution.

    Args:
        model: an :class:`~rs2sam2.RS2SAM2` (its weights are cast/moved in place).
        tokenizer: a :class:`~rs2sam2.text.Tokenizer` or the path of a SentencePiece model.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ... or ``"auto"`` (CUDA when available).
        precision: ``"auto"`` (bf16 where the device multiplies bf16 faster than fp32: a CUDA GPU,
            a CPU with AMX / AVX512-BF16; fp32 elsewhere), ``"fp32"`` or ``"bf16"``
            (``RS2SAM2.set_precision``: the heavy linear layers hold bfloat16 weights, cast once;
            outputs are float32) or ``"int8"`` (CPU only: the image encoder's MLP layers run as
            dynamically quantized int8 layers). ``.precision`` is the one chosen.
        threshold: default logit threshold of the masks (0.5 = the published rule).
        max_len: token limit per expression, BOS/EOS included (default: the model's position table).
        mask_rule: the tokenizer's attention-mask rule (``"published"``: unknown tokens are hidden
            like padding, as in the published code; ``"clean"``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, device: str | torch.device | None = "cpu",
                 precision: str = "auto", threshold: float = PUBLISHED_THRESHOLD, max_len: int | None = None,
                 mask_rule: str = "published") -> None:
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(tokenizer)
        cfg = model.config
        if len(tokenizer) > cfg.beit3.vocab_size:
            raise CheckpointError(
                f"tokenizer {getattr(tokenizer, 'source', '')!r} has {len(tokenizer)} ids but the model embeds "
                f"only {cfg.beit3.vocab_size}: use the tokenizer the model was trained with")
        self.device = resolve_device(device)
        try:
            self.precision = resolve_precision(precision, self.device)
        except ValueError as exc:  # int8 on a GPU
            raise InputError(str(exc)) from None
        self.threshold = check_threshold(threshold)
        self.tokenizer = tokenizer
        self.mask_rule = mask_rule
        self.max_len = cfg.beit3.text_len(max_len)
        model.eval()
        model.requires_grad_(False)
        if self.precision == "int8":
            model.to(self.device)  # quantized on the CPU, where it runs
        model.set_precision(self.precision).to(self.device)
        self.model = model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu",
                        precision: str = "auto", tokenizer=None, threshold: float = PUBLISHED_THRESHOLD,
                        image_size: int | None = None, subfolder: str | None = None, revision: str | None = None,
                        **kwargs) -> Predictor:
        """Load a checkpoint: our ``save_pretrained`` folder, a training run folder, a released RS2-SAM2
        folder, a weights file, or a Hugging Face Hub id with ``subfolder`` and ``revision`` (see
        :func:`rs2sam2.checkpoints.locate`). The tokenizer is ``tokenizer`` (a path or a Tokenizer) or
        the one saved with the checkpoint. ``image_size`` overrides the SAM2 input size of released
        folders (default 1024).

        Raises :class:`~rs2sam2.CheckpointError` (checkpoint or tokenizer missing/unreadable)."""
        located = locate(path, subfolder=subfolder, revision=revision)
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):  # before the (large) weights are read
            tokenizer = _load_tokenizer(located.tokenizer_file(tokenizer))
        model = load_pretrained(located.path, image_size=image_size)
        return cls(model, tokenizer, device=device, precision=precision, threshold=threshold, **kwargs)

    @property
    def config(self):
        return self.model.config

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """HxWx3 uint8 -> the SAM2 and BEiT-3 inputs, ``(1, 3, S, S)`` and ``(1, 3, s, s)``."""
        from .data.transforms import image_to_tensor

        cfg = self.config
        image = image_to_tensor(rgb, cfg.image_size).unsqueeze(0)
        evf = image_to_tensor(rgb, cfg.beit3.img_size).unsqueeze(0)
        return (image.to(self.device), evf.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.batch(list(texts), max_len=self.max_len, mask_rule=self.mask_rule)
        return ids.to(self.device), mask.bool().to(self.device)

    @torch.inference_mode()
    def answers(self, rgb: np.ndarray, texts: Sequence[str], batch_size: int = 8,
                with_prior: bool = True) -> list[Answer]:
        """The model's answers for ``texts`` on one model input ``rgb`` (HxWx3 uint8), at the model's
        resolution: the segment function of :func:`rs2sam2.tiles.iter_pieces`."""
        image, evf = self.preprocess(rgb)  # once, however many expressions
        results: list[Answer] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            ids, mask = self.tokenize(chunk)
            b = len(chunk)
            out = self.model(images=image.expand(b, -1, -1, -1), images_evf=evf.expand(b, -1, -1, -1),
                             input_ids=ids, attention_mask=mask)
            for k in range(b):
                prior = None
                if with_prior and out.mask_prompt is not None:
                    prior = out.mask_prompt[k, 0].float().cpu()
                results.append(Answer(
                    logits=out.logits[k, 0].float().cpu(), prior=prior,
                    iou_score=float(out.iou_scores[k].float().reshape(-1)[0]),
                    object_score=float(out.object_score_logits[k].float().reshape(-1)[0]),
                ))
        return results

    def plan(self, raster: Raster, *, bbox=None, bbox_crs=None, window=None, tile: int | None = None,
             overlap: int | None = None) -> tuple[tuple[int, int, int, int], Plan]:
        """The area of interest of ``raster`` (a pixel window) and how it will be predicted."""
        tile, overlap = check_tiling(tile, overlap)
        region, clipped = area_of_interest(raster.info, bbox=bbox, bbox_crs=bbox_crs, window=window)
        if clipped:
            warnings.warn(f"{raster.name}: the bbox reaches beyond the image; it was clipped to the image "
                          f"(window {' '.join(map(str, region))})", stacklevel=3)
        return region, plan_region(region[2], region[3], self.config.image_size, tile, overlap)

    def predict(self, image, text: str | Sequence[str], *, batch_size: int = 8, threshold: float | None = None,
                bands: Sequence[int] | str | None = None, with_prior: bool = True, bbox=None, bbox_crs=None,
                window=None, tile: int | None = None, overlap: int | None = None, progress: bool = False):
        """Segment ``text`` (one expression or a list) in ``image``, in memory.

        Args:
            image: a path (PNG/JPEG/TIFF/GeoTIFF ...), an open rasterio dataset, a PIL image, or a
                numpy array (HxW or HxWxC).
            text: a string -> one :class:`Prediction`; a list of strings -> a list, in order. The
                image is preprocessed once and the expressions run in batches of ``batch_size``.
            batch_size: expressions per forward pass.
            threshold: logit threshold of the masks (default: the predictor's).
            bands: 1-based band choice for multi-band images (e.g. ``(4, 3, 2)``).
            with_prior: also return the MPG prior at full resolution (costs one resize per text).
            bbox: ``(minx, miny, maxx, maxy)`` area of interest in the image's CRS (or ``bbox_crs``,
                e.g. ``"EPSG:4326"``), snapped outward to whole pixels; only that window is read.
            window: ``(col, row, width, height)`` area of interest in pixels.
            tile: predict the area tile by tile, tiles of ``tile`` pixels at native resolution (see
                :mod:`rs2sam2.tiles`).
            overlap: the tiles' overlap in pixels (default ``tile // 8``).
            progress: a progress bar over the tiles.

        The result covers the area (the whole image by default) on its own grid (``crs``,
        ``transform`` of the window). An area larger than twice the model input per side without
        ``tile`` is read decimated (a warning says by how much). The result lives in memory: for
        areas of more than :func:`rs2sam2.imageio.max_pixels` pixels use :meth:`predict_to_file`.

        Raises:
            InputError: empty text, unsupported image type, bad tiling.
            AreaError: a bbox/window outside the image.
            FileNotFoundError: an image file that does not exist.
            ImageReadError: an unreadable image file (the message names it).
        """
        single = isinstance(text, str)
        texts = _check_texts([text] if single else list(text))
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        self.tokenize(texts)  # a text over the token limit warns here, once, not once per tile
        with open_image(image, bands) as raster, _truncation_announced():
            region, plan = self.plan(raster, bbox=bbox, bbox_crs=bbox_crs, window=window, tile=tile, overlap=overlap)
            if plan.width * plan.height > max_pixels():
                raise InputError(
                    f"{raster.name}: a result of {plan.width} x {plan.height} px would not fit the decode budget "
                    f"({max_pixels():,} px) in memory; use Predictor.predict_to_file (written window by window), "
                    "or a bbox/window")
            if plan.mode == "decimated":
                warnings.warn(downscale_message(raster.name, plan, self.config.image_size), stacklevel=2)
            info = raster.info.window(*region)
            preview, _ = raster.read(region, out_shape=preview_shape(plan.height, plan.width, PREVIEW_SIDE))
            pieces = iter_pieces(raster, region, plan, lambda rgb: self.answers(rgb, texts, batch_size, with_prior),
                                 progress=progress)
            results = assemble(pieces, texts, info, threshold, tiles=plan.steps, downscale=plan.downscale,
                               preview=preview)
        return results[0] if single else results

    def predict_to_file(self, image, text: str | Sequence[str], *, out=None, prob=None, vector=None, overlay=None,
                        simplify: float = 0.0, min_area: float = 0.0, batch_size: int = 8,
                        threshold: float | None = None, bands: Sequence[int] | str | None = None, bbox=None,
                        bbox_crs=None, window=None, tile: int | None = None, overlap: int | None = None,
                        progress: bool = False, preview_side: int | None = None):
        """Segment ``text`` in ``image`` (the arguments of :meth:`predict`) and write the outputs:
        ``out`` (mask), ``prob``, ``vector`` (``.gpkg``/``.shp``/``.geojson``), ``overlay``. For a
        list of texts, give a list for each output given (one path per text).

        Tiled and decimated predictions are written window by window (memory bounded by a tile;
        masks and probability maps must be ``.tif`` then); others as :meth:`predict` +
        :func:`~rs2sam2.results.write_outputs`. Returns a :class:`~rs2sam2.results.SceneResult`
        (a list for a list of texts)."""
        single = isinstance(text, str)
        texts = _check_texts([text] if single else list(text))
        given = {"out": out, "prob": prob, "vector": vector, "overlay": overlay}
        if single:
            outputs = [given]
        else:
            for name, paths in given.items():
                if paths is not None and (isinstance(paths, (str, os.PathLike)) or len(paths) != len(texts)):
                    raise InputError(f"{name}: give one path per text ({len(texts)} texts)")
            outputs = [{name: None if paths is None else paths[k] for name, paths in given.items()}
                       for k in range(len(texts))]
        for o in outputs:
            check_output_paths(o["out"], None, o["overlay"], o["prob"], o["vector"])
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        self.tokenize(texts)  # a text over the token limit warns here, once, not once per tile
        with open_image(image, bands) as raster, _truncation_announced():
            region, plan = self.plan(raster, bbox=bbox, bbox_crs=bbox_crs, window=window, tile=tile, overlap=overlap)
            if plan.mode == "decimated":
                warnings.warn(downscale_message(raster.name, plan, self.config.image_size), stacklevel=2)
            results = self._write_area(raster, region, plan, texts, outputs, threshold=threshold,
                                       batch_size=batch_size, simplify=simplify, min_area=min_area, progress=progress,
                                       preview_side=preview_side)
        return results[0] if single else results

    def _write_area(self, raster: Raster, region, plan: Plan, texts: list[str], outputs: list[dict[str, Any]], *,
                    threshold: float, batch_size: int, simplify: float, min_area: float, progress: bool,
                    preview_side: int | None) -> list[SceneResult]:
        """Predict ``texts`` on ``region`` of ``raster`` by ``plan`` and write ``outputs`` (one dict of
        paths per text); every file of the area is renamed into place together at the end."""
        info = raster.info.window(*region)

        def segment(rgb):
            return self.answers(rgb, texts, batch_size, with_prior=preview_side is not None)

        pieces = iter_pieces(raster, region, plan, segment, progress=progress)
        if plan.mode == "full":
            need_rgb = preview_side is not None or any(o["overlay"] is not None for o in outputs)
            rgb = raster.read(region)[0] if need_rgb else None
            preds = assemble(pieces, texts, info, threshold)
            results = []
            for pred, o in zip(preds, outputs, strict=True):
                written = write_outputs(pred, rgb, None, out=o["out"], overlay=o["overlay"], prob=o["prob"],
                                        vector=o["vector"], simplify=simplify, min_area=min_area)
                results.append(_result_of(pred, written, rgb, preview_side))
            return results
        with contextlib.ExitStack() as stack:
            writers = [SceneWriter(stack, t, info, threshold, simplify=simplify, min_area=min_area, **o)
                       for t, o in zip(texts, outputs, strict=True)]
            for piece in pieces:
                for k, w in enumerate(writers):
                    w.write(piece.window, piece.logits[k], piece.valid, piece.answers[k])
            return [w.finish(raster, region, steps=plan.steps, downscale=plan.downscale, preview_side=preview_side)
                    for w in writers]

    def __repr__(self) -> str:
        return (f"Predictor(model={self.config.name!r}, image_size={self.config.image_size}, device={self.device}, "
                f"precision={self.precision}, threshold={self.threshold})")


def _result_of(pred: Prediction, written: list[Path], rgb: np.ndarray | None, preview_side: int | None) -> SceneResult:
    """A :class:`SceneResult` for an in-memory prediction (with previews shrunk to ``preview_side``)."""
    from PIL import Image

    h, w = pred.shape
    result = SceneResult(pred.text, w, h, pred.foreground_pixels, pred.iou_score, pred.object_score, pred.tiles,
                         pred.downscale, written)
    if preview_side is not None and rgb is not None:
        size = preview_shape(h, w, preview_side)[::-1]
        img = Image.fromarray(rgb)
        result.preview = np.asarray(img.resize(size, Image.Resampling.BILINEAR) if img.size != size else img)
        m = Image.fromarray(pred.mask.astype(np.uint8) * 255)
        result.preview_mask = np.asarray(m.resize(size, Image.Resampling.NEAREST) if m.size != size else m) > 127
        if pred.prior is not None:
            p = Image.fromarray(pred.prior.astype(np.float32), mode="F")
            result.preview_prior = np.asarray(p.resize(size, Image.Resampling.BILINEAR) if p.size != size else p)
    return result


# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    image: Path
    text: str
    out: Path
    vector: Path | None = None
    overlay: Path | None = None
    prob: Path | None = None
    where: str = ""  # "jobs.csv line 3", for messages

    def outputs(self) -> list[Path]:
        return [p for p in (self.out, self.vector, self.overlay, self.prob) if p is not None]


def _rows_csv(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise InputError(f"{path}: empty batch file (expected a header line: image,text,out)")
        names = [n.strip() for n in reader.fieldnames]
        _check_columns(names, path)
        reader.fieldnames = names
        for row in reader:
            if None in row:  # more cells than header names
                raise InputError(f"{path} line {reader.line_num}: more cells than columns in the header "
                                 "(quote texts that contain commas)")
            if not any((v or "").strip() for v in row.values()):
                continue
            yield reader.line_num, row


def _rows_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path} line {n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} line {n}: expected a JSON object with keys image, text, out")
            _check_columns(list(row), path, n)
            yield n, row


def _check_columns(names: list[str], path: Path, line: int | None = None) -> None:
    where = f"{path}" + (f" line {line}" if line else "")
    unknown = [n for n in names if n not in JOB_COLUMNS]
    if unknown:
        raise InputError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"the columns are {', '.join(JOB_COLUMNS)}")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)} (required: image, text, out)")


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Read a batch file (``.csv`` with a header, or ``.jsonl``): one job per row with ``image``,
    ``text``, ``out`` and optionally ``vector`` (or its alias ``geojson``), ``overlay``, ``prob``.
    Relative paths are taken relative to the batch file's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"batch file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _rows_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _rows_jsonl(path)
    else:
        raise InputError(f"batch file {path}: use a .csv (header image,text,out,...) or a .jsonl file")
    base = path.parent

    def as_path(value) -> Path | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        p = Path(str(value).strip()).expanduser()
        return p if p.is_absolute() else base / p

    jobs = []
    for line, row in rows:
        where = f"{path.name} line {line}"
        text = row.get("text")
        if not isinstance(text, str):
            raise InputError(f"{where}: the text must be a string")
        image, out = as_path(row.get("image")), as_path(row.get("out"))
        if image is None or out is None:
            raise InputError(f"{where}: image and out are required")
        vector, alias = as_path(row.get("vector")), as_path(row.get("geojson"))
        if vector is not None and alias is not None:
            raise InputError(f"{where}: give vector or geojson, not both (geojson is an alias of vector)")
        jobs.append(Job(image=image, text=text, out=out, vector=vector or alias,
                        overlay=as_path(row.get("overlay")), prob=as_path(row.get("prob")), where=where))
    if not jobs:
        raise InputError(f"batch file {path} has no rows")
    return jobs


def validate_jobs(jobs: Sequence[Job]) -> None:
    """Every problem that can be found without running the model, reported together."""
    problems = []
    images = {j.image.resolve() for j in jobs}
    seen: dict[Path, str] = {}
    for j in jobs:
        prefix = f"{j.where}: " if j.where else ""
        if not normalize_text(j.text):
            problems.append(f"{prefix}the text is empty: give a sentence that describes the object")
        if not j.image.is_file():
            problems.append(f"{prefix}image file not found: {j.image}")
        try:
            check_output_paths(j.out, None, j.overlay, j.prob, j.vector)
        except (OutputPathError, ImportError) as exc:
            problems.append(f"{prefix}{exc}")
        for p in j.outputs():
            key = p.resolve()
            if key in images:
                problems.append(f"{prefix}output {p} would overwrite an input image")
            if key in seen:
                problems.append(f"{prefix}output {p} is also written by {seen[key] or 'another output'}")
            seen[key] = j.where or "another output"
    _raise_problems(problems)


def _raise_problems(problems: Sequence[str]) -> None:
    """One :class:`InputError` listing ``problems`` (the first 20), if there are any."""
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError("\n  ".join([f"{len(problems)} problem(s) with the input:"] + list(problems[:20])) + more)


def _read_headers(jobs: Sequence[Job]) -> tuple[dict[Path, RasterInfo], dict[Path, str]]:
    """The header of every image of ``jobs``, read before the first job runs (no pixels are decoded):
    ``(infos, problems)``, ``problems`` holding the message of each image that is not an image, is cut
    short in its header, or is over the decode budget (missing images are left to
    :func:`validate_jobs`). An image whose pixels turn out corrupt after a whole header fails only
    when its turn comes."""
    infos: dict[Path, RasterInfo] = {}
    problems: dict[Path, str] = {}
    for image in dict.fromkeys(j.image for j in jobs):
        if not image.is_file():
            continue
        try:
            infos[image] = read_info(image, budget=True)
        except ImageReadError as exc:
            where = ", ".join(j.where for j in jobs if j.image == image and j.where)
            problems[image] = f"{where + ': ' if where else ''}{exc}"
    return infos, problems


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 predict``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  rs2sam2 predict --checkpoint ckpt/ --image scene.tif --text 'the ship at the top' \\\n"
        "      --out mask.tif --vector mask.gpkg --overlay overlay.png\n"
        "  rs2sam2 predict --checkpoint ckpt/ --image big.tif --text 'the white storage tanks' \\\n"
        "      --out tanks.tif --vector tanks.gpkg --tile 1024 --overlap 128\n"
        "  rs2sam2 predict --checkpoint ckpt/ --image big.tif --text 'the ship' --out ship.tif \\\n"
        "      --bbox 12.30 45.42 12.33 45.44 --bbox-crs EPSG:4326\n"
        "  rs2sam2 predict --checkpoint ckpt/ --batch jobs.csv   # columns image,text,out[,vector,overlay,prob]\n\n"
        "Masks are uint8 rasters, 255 = object, 0 = background (127 = nodata where the input has none), on\n"
        "exactly the grid of the image or area (GeoTIFF with the input CRS for .tif outputs of georeferenced\n"
        "inputs). With --tile, position words refer to each tile's frame. Exit status 2 on bad input.")
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help=CHECKPOINT_HELP)
    add_hub_arguments(g)
    g.add_argument("--tokenizer", metavar="SPM", help=TOKENIZER_HELP)
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default: bf16 where the device multiplies bf16 faster than fp32, else fp32), fp32, "
                        "bf16, or int8 (CPU: int8 MLP layers in the image encoder)")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="override the SAM2 input size (default: the one the checkpoint records; 1024 for "
                        "released folders)")
    g = parser.add_argument_group("one prediction")
    g.add_argument("--image", metavar="IN", help="PNG / JPEG / TIFF / GeoTIFF (any size, 8/16-bit, 1..N bands)")
    g.add_argument("--text", metavar="TEXT", help="the referring expression")
    g.add_argument("--out", metavar="MASK", help="mask raster: .tif (GeoTIFF for georeferenced inputs) or .png")
    g.add_argument("--vector", metavar="OUT", help="also write the mask's polygons: .gpkg or .shp (input CRS; "
                   "needs pip install 'rs2sam2[gis]'), .geojson (RFC 7946: lon/lat)")
    g.add_argument("--geojson", metavar="OUT.geojson", help="an alias of --vector")
    g.add_argument("--overlay", metavar="OUT.png", help="also write the mask drawn over the image (input size, "
                   f"at most {OVERLAY_MAX_SIDE} px per side for larger areas)")
    g.add_argument("--prob", metavar="OUT.tif", help="also write the probability map (float32 .tif or 8-bit .png)")
    g = parser.add_argument_group("many predictions")
    g.add_argument("--batch", metavar="FILE",
                   help=".csv (with header) or .jsonl of jobs: image,text,out and optional vector (or geojson), "
                        "overlay, prob; relative paths are relative to the batch file. Under torchrun the images "
                        "are shared among the ranks")
    g.add_argument("--keep-going", action="store_true",
                   help="in batch mode, go on after a job fails (exit status 2 at the end if any failed)")
    g = parser.add_argument_group("area of interest and tiles")
    g.add_argument("--bbox", nargs=4, type=float, metavar=("MINX", "MINY", "MAXX", "MAXY"),
                   help="predict only this box, in the image's CRS (or --bbox-crs); snapped outward to whole "
                        "pixels; the mask covers exactly that window")
    g.add_argument("--bbox-crs", metavar="CRS", help="the CRS of --bbox, e.g. EPSG:4326 for lon/lat")
    g.add_argument("--window", nargs=4, type=int, metavar=("COL", "ROW", "WIDTH", "HEIGHT"),
                   help="predict only this window, in pixels")
    g.add_argument("--tile", type=int, metavar="SIZE",
                   help="predict tile by tile at native resolution (SIZE x SIZE pixels), merged into one mask; "
                        "memory stays bounded by a tile")
    g.add_argument("--overlap", type=int, metavar="PX",
                   help="overlap of neighbouring tiles in pixels (default: SIZE // 8); each output pixel comes "
                        "from the tile whose centre is nearest")
    g = parser.add_argument_group("prediction options")
    g.add_argument("--threshold", type=float, default=PUBLISHED_THRESHOLD,
                   help="logit threshold of the mask (default 0.5: the published rule, probability ~0.62; "
                        "0 = probability > 0.5)")
    g.add_argument("--bands", metavar="R,G,B",
                   help="1-based bands to use as RGB (e.g. 4,3,2) or one band (e.g. 1); default: 1,2,3 (1 for "
                        "single-band); non-8-bit data is stretched per band between its 2nd and 98th percentile")
    g.add_argument("--simplify", type=float, default=0.0, metavar="TOL",
                   help="simplify the polygons (Douglas-Peucker) with this tolerance in CRS units (default 0)")
    g.add_argument("--min-area", type=float, default=0.0, metavar="A",
                   help="drop polygons smaller than A square CRS units (default 0)")
    g.add_argument("--max-pixels", type=int, metavar="N",
                   help="decode budget: the most pixels decoded into memory at once (default "
                        f"{DEFAULT_MAX_PIXELS:,}, or the environment variable {MAX_PIXELS_ENV})")
    g.add_argument("--batch-size", type=int, default=8, help="expressions per forward pass (default 8)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-job lines")


def _fail(message: str) -> int:
    print(f"rs2sam2 predict: error: {message}", file=sys.stderr)
    return 2


def _jobs_from_args(args) -> list[Job]:
    single = [n for n in ("image", "text", "out", "vector", "geojson", "overlay", "prob")
              if getattr(args, n, None) is not None]
    if args.batch is not None:
        if single:
            raise InputError(f"--batch cannot be combined with {', '.join('--' + n for n in single)} "
                             "(give those as columns of the batch file)")
        return read_jobs(args.batch)
    missing = [f"--{n}" for n in ("image", "text", "out") if getattr(args, n, None) is None]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (or use --batch FILE)")
    if args.vector is not None and args.geojson is not None:
        raise InputError("give --vector or --geojson, not both (--geojson is an alias of --vector)")
    as_path = lambda v: None if v is None else Path(v).expanduser()  # noqa: E731
    return [Job(image=Path(args.image).expanduser(), text=args.text, out=Path(args.out).expanduser(),
                vector=as_path(args.vector if args.vector is not None else args.geojson),
                overlay=as_path(args.overlay), prob=as_path(args.prob))]


def _options(args) -> dict[str, Any]:
    """The area, tiling and vector options, checked."""
    tile, overlap = check_tiling(args.tile, args.overlap)
    if args.bbox is not None and args.window is not None:
        raise InputError("give --bbox or --window, not both")
    if args.bbox_crs is not None and args.bbox is None:
        raise InputError("--bbox-crs needs --bbox MINX MINY MAXX MAXY")
    for name in ("simplify", "min_area"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"--{name.replace('_', '-')} {value}: expected a number >= 0 (CRS units)")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise InputError(f"--max-pixels {args.max_pixels}: expected a positive number of pixels")
    return {"bbox": args.bbox, "bbox_crs": args.bbox_crs, "window": args.window, "tile": tile, "overlap": overlap}


def _check_areas(jobs: Sequence[Job], infos: dict[Path, RasterInfo], options: dict[str, Any],
                 model_size: int) -> None:
    """Before anything is written: the area of interest of every image whose header reads
    (``infos``), and the outputs its plan can write."""
    problems = []
    for image, info in infos.items():
        try:
            region, _ = area_of_interest(info, bbox=options["bbox"], bbox_crs=options["bbox_crs"],
                                         window=options["window"])
        except AreaError as exc:
            problems.append(f"{image}: {exc}")
            continue
        plan = plan_region(region[2], region[3], model_size, options["tile"], options["overlap"])
        if plan.mode == "full":
            continue
        for j in jobs:
            for p, flag in ((j.out, "--out"), (j.prob, "--prob")):
                if j.image == image and p is not None and p.suffix.lower() == ".png":
                    problems.append(f"{j.where + ': ' if j.where else ''}{flag} {p}: {image} is predicted "
                                    f"{'tile by tile' if plan.mode == 'tiled' else 'downscaled'} and written window "
                                    "by window, which needs a GeoTIFF; use .tif")
    _raise_problems(problems)


def run(args) -> int:
    """``rs2sam2 predict``: one image or a batch file (shared among torchrun ranks); exit status 0, or 2 on bad input."""
    from tqdm import tqdm

    from .imageio import set_max_pixels
    from .runtime import init_distributed, launch_ranks

    try:
        rank, world = launch_ranks()
    except ConfigError as exc:
        return _fail(str(exc))
    lead = rank == 0
    try:
        bands = parse_bands(args.bands)
        if args.batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        options = _options(args)
        set_max_pixels(args.max_pixels)
        jobs = _jobs_from_args(args)
        validate_jobs(jobs)
        batch_mode = args.batch is not None
        infos, unreadable = _read_headers(jobs)
        if unreadable and not (batch_mode and args.keep_going):
            _raise_problems(list(unreadable.values()))
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                              tokenizer=args.tokenizer, threshold=args.threshold,
                                              image_size=args.image_size, subfolder=args.subfolder,
                                              revision=args.revision)
        _check_areas(jobs, infos, options, predictor.config.image_size)
    except _USER_ERRORS as exc:
        return _fail(str(exc)) if lead else 2

    # jobs on the same image share one read and one preprocessing; order of first appearance
    groups: dict[Path, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.image, []).append(j)
    d = init_distributed("cpu")  # the ranks agree on the outcome over gloo, wherever the model runs
    mine = list(groups.items())[d.rank::d.world_size]
    who = f"[rank {rank}] " if world > 1 else ""
    bar = tqdm(total=sum(len(g) for _, g in mine), desc=f"{who}predict", unit="expr",
               disable=args.quiet or not batch_mode, file=sys.stderr, dynamic_ncols=True)
    say = (lambda msg: tqdm.write(msg, file=sys.stdout)) if batch_mode else print  # noqa: E731
    failures: list[str] = []
    start = time.perf_counter()
    try:
        for image_path, group in mine:
            if image_path in unreadable:  # --keep-going: its header was found bad before the run
                failures.append(unreadable[image_path])
                bar.update(len(group))
                continue
            try:
                results = _predict_group(predictor, image_path, group, bands, options, args)
            except (ImageReadError, FileNotFoundError, OSError) as exc:
                where = ", ".join(j.where for j in group if j.where)
                failures.append(f"{where + ': ' if where else ''}{exc}")
                bar.update(len(group))
                if not args.keep_going:
                    break
                continue
            for j, r in zip(group, results, strict=True):
                if not args.quiet:
                    say(f"{who}{text_preview(j.text)!r}: {r.foreground_px} px ({100 * r.foreground_fraction:.2f}%) "
                        f"-> {', '.join(map(str, r.written))}")
                bar.update(1)
    finally:
        bar.close()
    for f in failures:
        print(f"rs2sam2 predict: error: {who}{f}", file=sys.stderr)
    failed = d.any(bool(failures))
    d.close()
    if failed:
        if failures and args.keep_going and batch_mode:
            print(f"rs2sam2 predict: {who}{len(failures)} image(s) failed; the other jobs were written",
                  file=sys.stderr)
        return 2
    if batch_mode and not args.quiet:
        print(f"{who}wrote {sum(len(g) for _, g in mine)} prediction(s) in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
    return 0


def _predict_group(predictor: Predictor, image_path: Path, group: list[Job], bands, options: dict[str, Any],
                   args) -> list[SceneResult]:
    """All jobs of one image: read it (or its area) once, write every job's outputs."""
    texts = _check_texts([j.text for j in group])
    with open_image(image_path, bands) as raster:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predictor.tokenize(texts)  # a text over the token limit is announced here, once, before the run
            region, plan = predictor.plan(raster, bbox=options["bbox"], bbox_crs=options["bbox_crs"],
                                          window=options["window"], tile=options["tile"], overlap=options["overlap"])
        notes = [str(w.message) for w in caught]
        if plan.mode == "decimated":
            notes.append(downscale_message(str(image_path), plan, predictor.config.image_size))
        if raster.info.georeferenced and any(j.out.suffix.lower() == ".png" for j in group):
            notes.append(f"{image_path} is georeferenced but a PNG mask carries no georeference; use a .tif "
                         "output to keep the CRS and transform")
        if not args.quiet:
            for note in notes:
                print(f"rs2sam2 predict: warning: {note}", file=sys.stderr)
        outputs = [{"out": j.out, "prob": j.prob, "vector": j.vector, "overlay": j.overlay} for j in group]
        with _truncation_announced():
            return predictor._write_area(raster, region, plan, texts, outputs, threshold=predictor.threshold,
                                         batch_size=args.batch_size, simplify=args.simplify,
                                         min_area=args.min_area, progress=not args.quiet and plan.mode == "tiled",
                                         preview_side=None)
