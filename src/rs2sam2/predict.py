"""Inference: the :class:`Predictor` API and the ``rs2sam2 predict`` command.

Python::

    from rs2sam2.predict import Predictor

    predictor = Predictor.from_pretrained("checkpoints/rs2sam2-rrsisd")   # our folder or a released one
    pred = predictor.predict("scene.tif", "the storage tank left of the road")
    pred.mask          # (H, W) bool at the image's own resolution
    pred.probability   # (H, W) float32, sigmoid of the logits
    preds = predictor.predict("scene.tif", ["the red car", "the white ship"])   # one batched pass

Command line::

    rs2sam2 predict --checkpoint CKPT --image scene.tif --text "the ship at the top" \\
        --out mask.tif --geojson mask.geojson --overlay overlay.png
    rs2sam2 predict --checkpoint CKPT --batch jobs.csv          # columns image,text,out[,geojson,overlay,prob]

How a prediction is made (the published inference path):

1. the image is read as 8-bit RGB (:mod:`rs2sam2.imageio`: 1 band is replicated, 4+ bands use bands
   1,2,3 unless ``bands`` says otherwise, non-8-bit data gets a per-band 2..98 percentile stretch);
2. it is resized (bilinear, no aspect-ratio preservation) to the SAM2 input (``config.image_size``)
   and to the BEiT-3 input (``config.beit3.img_size``) and ImageNet-normalised -- once, however many
   expressions are asked about it; the expressions then run as one batch;
3. the model's mask logits (at ``image_size``) are resized bilinearly to the image's own height and
   width; ``probability = sigmoid(logits)`` and ``mask = logits > threshold``. The default threshold
   0.5 on the *logit* is the published rule (``argmax([1 - x, x])``; probability about 0.62);
   ``threshold=0`` gives the usual probability > 0.5.

Outputs of the command are written atomically (temporary file + rename), all files of one
expression together, so an interrupted or failed run never leaves half-written files: the mask as a
single-band ``uint8`` raster (255 = object) on exactly the input grid (a GeoTIFF with the input's
CRS, transform and size when the suffix is ``.tif`` and the input is georeferenced; a plain TIFF or
a PNG otherwise), polygons as GeoJSON in the input CRS (pixel coordinates for plain images), an
overlay PNG at input size, and optionally the probability map (float32 TIFF, or 8-bit PNG). Bad
input (unreadable image, empty text, missing checkpoint/tokenizer, unsupported output suffix)
prints one clear message and exits with status 2 before anything is written.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import TOKENIZER_NAMES, CheckpointError, find_tokenizer, load_pretrained
from .imageio import ImageReadError, RasterInfo, read_image, to_rgb_uint8
from .metrics import PUBLISHED_THRESHOLD
from .runtime import PRECISIONS, resolve_precision

__all__ = [
    "PRECISIONS",
    "InputError",
    "Prediction",
    "Predictor",
    "load_image",
    "parse_bands",
    "read_jobs",
    "resolve_device",
    "write_outputs",
    "add_arguments",
    "run",
]

MASK_SUFFIXES = (".tif", ".tiff", ".png")
OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg")
GEOJSON_SUFFIXES = (".geojson", ".json")
JOB_COLUMNS = ("image", "text", "out", "geojson", "overlay", "prob")
REQUIRED_COLUMNS = ("image", "text", "out")


class InputError(ValueError):
    """Bad user input (empty text, unsupported image type or output suffix, malformed batch file)."""


# --------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Prediction:
    """The result for one expression, at the image's own resolution ``(H, W)``.

    Attributes:
        text: the expression.
        logits: ``(H, W)`` float32 mask logits (the model's logits resized bilinearly).
        mask: ``(H, W)`` bool, ``logits > threshold``.
        prior: ``(H, W)`` float32 Mask Prompt Generator prior (probabilities), resized bilinearly;
            ``None`` when the model has no MPG or the prior was not requested.
        threshold: the logit threshold used for ``mask``.
        iou_score: SAM2's predicted IoU of the mask.
        object_score: SAM2's object-presence logit.
        probability: ``(H, W)`` float32 ``sigmoid(logits)`` (computed on first access).
    """

    text: str
    logits: np.ndarray
    mask: np.ndarray
    prior: np.ndarray | None = None
    threshold: float = PUBLISHED_THRESHOLD
    iou_score: float = float("nan")
    object_score: float = float("nan")
    _probability: np.ndarray | None = field(default=None, repr=False)

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

    def __repr__(self) -> str:
        h, w = self.shape
        return (f"Prediction(text={self.text!r}, size={w}x{h}, foreground={self.foreground_pixels} px "
                f"({100 * self.foreground_fraction:.2f}%), threshold={self.threshold}, "
                f"prior={'yes' if self.prior is not None else 'no'})")


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


def load_image(image, bands: Sequence[int] | str | None = None) -> tuple[np.ndarray, RasterInfo | None]:
    """Any supported image -> ``(HxWx3 uint8 RGB, RasterInfo or None)``.

    Paths go through :func:`rs2sam2.imageio.read_image` (GeoTIFFs keep their georeferencing in the
    info); PIL images and numpy arrays (``HxW`` or ``HxWxC``, channels last) through
    :func:`~rs2sam2.imageio.to_rgb_uint8`, with ``info = None``. ``bands`` is 1-based.
    """
    from PIL import Image

    bands = parse_bands(bands) if isinstance(bands, str) else bands
    if isinstance(image, (str, os.PathLike)):
        return read_image(image, bands=bands)  # FileNotFoundError / ImageReadError name the file
    if isinstance(image, Image.Image) or isinstance(image, np.ndarray):
        try:
            return to_rgb_uint8(image, bands=bands), None
        except ValueError as exc:
            raise InputError(f"cannot use this image: {exc}") from exc
    if isinstance(image, torch.Tensor):
        raise InputError("pass images as a path, a PIL image or a numpy array (HxWxC), not a torch tensor")
    raise InputError(f"unsupported image type {type(image).__name__}; pass a path, a PIL image or a numpy array")


def _check_texts(texts: Sequence[Any]) -> list[str]:
    if len(texts) == 0:
        raise InputError("no expression given: pass a text or a non-empty list of texts")
    clean = []
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"expression {i} is a {type(t).__name__}, not a string")
        t = " ".join(t.split())
        if not t:
            which = "the expression" if len(texts) == 1 else f"expression {i}"
            raise InputError(f"{which} is empty: type a sentence that describes the object to segment")
        clean.append(t)
    return clean


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
        self.threshold = float(threshold)
        self.tokenizer = tokenizer
        self.mask_rule = mask_rule
        self.max_len = cfg.beit3.max_text_len if max_len is None else min(int(max_len), cfg.beit3.max_text_len)
        model.eval()
        model.requires_grad_(False)
        if self.precision == "int8":
            model.to(self.device)  # quantized on the CPU, where it runs
        model.set_precision(self.precision).to(self.device)
        self.model = model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = "cpu",
                        precision: str = "auto", tokenizer=None, threshold: float = PUBLISHED_THRESHOLD,
                        image_size: int | None = None, **kwargs) -> Predictor:
        """Load a checkpoint: our ``save_pretrained`` folder, a released RS2-SAM2 folder, or a weights
        file. The tokenizer is ``tokenizer`` (a path or a Tokenizer) or the first of
        ``tokenizer.model``, ``sentencepiece.bpe.model``, ``beit3.spm`` next to the weights.
        ``image_size`` overrides the SAM2 input size of released folders (default 1024).

        Raises :class:`~rs2sam2.CheckpointError` (checkpoint or tokenizer missing/unreadable)."""
        path = Path(path)
        if not path.exists():
            raise CheckpointError(f"checkpoint not found: {path}")
        if tokenizer is None:
            tokenizer = find_tokenizer(path)
            if tokenizer is None:
                folder = path if path.is_dir() else path.parent
                raise CheckpointError(
                    f"no tokenizer found for checkpoint {path}: looked for {', '.join(TOKENIZER_NAMES)} in "
                    f"{folder}; pass the SentencePiece model with --tokenizer (tokenizer= in Python), e.g. "
                    "BEiT-3's beit3.spm for released checkpoints")
        elif isinstance(tokenizer, (str, os.PathLike)) and not Path(tokenizer).is_file():
            raise CheckpointError(f"tokenizer not found: {tokenizer}")
        if isinstance(tokenizer, (str, os.PathLike)):  # checked before the (large) weights are read
            tokenizer = _load_tokenizer(tokenizer)
        model = load_pretrained(path, image_size=image_size)
        return cls(model, tokenizer, device=device, precision=precision, threshold=threshold, **kwargs)

    @property
    def config(self):
        return self.model.config

    # ---------------------------------------------------------------------------------- steps
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

    def predict(self, image, text: str | Sequence[str], *, batch_size: int = 8, threshold: float | None = None,
                bands: Sequence[int] | str | None = None, with_prior: bool = True):
        """Segment ``text`` (one expression or a list) in ``image``.

        Args:
            image: a path (PNG/JPEG/TIFF/GeoTIFF ...), a PIL image, or a numpy array (HxW or HxWxC).
            text: a string -> one :class:`Prediction`; a list of strings -> a list, in order. The
                image is preprocessed once and the expressions run in batches of ``batch_size``.
            batch_size: expressions per forward pass.
            threshold: logit threshold of the masks (default: the predictor's).
            bands: 1-based band choice for multi-band images (e.g. ``(4, 3, 2)``).
            with_prior: also return the MPG prior at full resolution (costs one resize per text).

        Raises:
            InputError: empty text, unsupported image type; FileNotFoundError / ImageReadError: an
            unreadable image file (the message names it).
        """
        single = isinstance(text, str)
        texts = _check_texts([text] if single else list(text))
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        rgb, _ = load_image(image, bands)
        threshold = self.threshold if threshold is None else float(threshold)
        results = self._predict_rgb(rgb, texts, batch_size, threshold, with_prior)
        return results[0] if single else results

    @torch.inference_mode()
    def _predict_rgb(self, rgb: np.ndarray, texts: list[str], batch_size: int, threshold: float,
                     with_prior: bool, inputs: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[Prediction]:
        height, width = rgb.shape[:2]
        image, evf = self.preprocess(rgb) if inputs is None else inputs
        results: list[Prediction] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            ids, mask = self.tokenize(chunk)
            b = len(chunk)
            out = self.model(images=image.expand(b, -1, -1, -1), images_evf=evf.expand(b, -1, -1, -1),
                             input_ids=ids, attention_mask=mask)
            for k, t in enumerate(chunk):
                logits = _resize(out.logits[k:k + 1].float(), height, width)
                prior = None
                if with_prior and out.mask_prompt is not None:
                    prior = _resize(out.mask_prompt[k:k + 1].float(), height, width).clip(0.0, 1.0)
                results.append(Prediction(
                    text=t, logits=logits, mask=logits > threshold, prior=prior, threshold=threshold,
                    iou_score=float(out.iou_scores[k].float().reshape(-1)[0]),
                    object_score=float(out.object_score_logits[k].float().reshape(-1)[0]),
                ))
        return results

    def __repr__(self) -> str:
        return (f"Predictor(model={self.config.name!r}, image_size={self.config.image_size}, device={self.device}, "
                f"precision={self.precision}, threshold={self.threshold})")


def _resize(x: torch.Tensor, height: int, width: int) -> np.ndarray:
    """(1, 1, h, w) float tensor -> (height, width) float32 numpy, bilinear (half-pixel centres)."""
    if tuple(x.shape[-2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x[0, 0].cpu().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# writing results
# --------------------------------------------------------------------------------------------


def _suffix_ok(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise InputError(f"{what} {path}: unsupported suffix {path.suffix or '(none)'!r}; use {', '.join(allowed)}")


def check_output_paths(out=None, geojson=None, overlay=None, prob=None) -> None:
    """Raise :class:`InputError` for output paths whose suffix no writer handles, or folders."""
    for value, allowed, what in ((out, MASK_SUFFIXES, "mask output"), (prob, MASK_SUFFIXES, "probability output"),
                                 (overlay, OVERLAY_SUFFIXES, "overlay output"),
                                 (geojson, GEOJSON_SUFFIXES, "GeoJSON output")):
        if value is None:
            continue
        p = Path(value)
        if p.is_dir():
            raise InputError(f"{what} {p} is a folder; give a file name")
        _suffix_ok(p, allowed, what)


def write_outputs(prediction: Prediction, rgb: np.ndarray, info: RasterInfo | None, *, out=None, geojson=None,
                  overlay=None, prob=None) -> list[Path]:
    """Write the chosen outputs of one prediction, all or nothing.

    ``out``: mask raster (``.tif``: GeoTIFF on the input grid when ``info`` is georeferenced, else a
    plain TIFF; ``.png``); ``geojson``: polygons in the input CRS; ``overlay``: the mask drawn over
    the image at its own size (PNG/JPEG); ``prob``: the probability map (float32 TIFF / 8-bit PNG).
    Every file is first written under a temporary name next to its destination; only when all of
    them are written are they renamed into place. Returns the paths written.
    """
    from .fsutil import atomic_write
    from .geo import mask_to_geojson, write_geojson, write_mask, write_probability
    from .viz import overlay as draw_overlay

    check_output_paths(out, geojson, overlay, prob)
    if info is not None and (info.height, info.width) != prediction.shape:
        raise ValueError(f"prediction {prediction.shape} does not match the raster {(info.height, info.width)}")
    writers = []
    if out is not None:
        writers.append((Path(out), lambda tmp: write_mask(tmp, prediction.mask, info)))
    if prob is not None:
        writers.append((Path(prob), lambda tmp: write_probability(tmp, prediction.probability, info)))
    if geojson is not None:
        writers.append((Path(geojson), lambda tmp: write_geojson(tmp, mask_to_geojson(prediction.mask, info))))
    if overlay is not None:
        def _overlay(tmp: Path, dest: Path = Path(overlay)) -> None:
            img = draw_overlay(rgb, prediction.mask)
            img.save(tmp, format="PNG" if dest.suffix.lower() == ".png" else "JPEG")
        writers.append((Path(overlay), _overlay))
    # nested atomic writes: an exception in any writer removes every temporary file; the renames
    # happen together on the way out
    with contextlib.ExitStack() as stack:
        for dest, write in writers:
            tmp = stack.enter_context(atomic_write(dest))
            write(tmp)
    return [dest for dest, _ in writers]


# --------------------------------------------------------------------------------------------
# batch files
# --------------------------------------------------------------------------------------------


@dataclass
class Job:
    image: Path
    text: str
    out: Path
    geojson: Path | None = None
    overlay: Path | None = None
    prob: Path | None = None
    where: str = ""  # "jobs.csv line 3", for messages

    def outputs(self) -> list[Path]:
        return [p for p in (self.out, self.geojson, self.overlay, self.prob) if p is not None]


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
    ``text``, ``out`` and optionally ``geojson``, ``overlay``, ``prob``. Relative paths are taken
    relative to the batch file's folder."""
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
        jobs.append(Job(image=image, text=text, out=out, geojson=as_path(row.get("geojson")),
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
        if not " ".join(j.text.split()):
            problems.append(f"{prefix}the text is empty: give a sentence that describes the object")
        if not j.image.is_file():
            problems.append(f"{prefix}image file not found: {j.image}")
        try:
            check_output_paths(j.out, j.geojson, j.overlay, j.prob)
        except InputError as exc:
            problems.append(f"{prefix}{exc}")
        for p in j.outputs():
            key = p.resolve()
            if key in images:
                problems.append(f"{prefix}output {p} would overwrite an input image")
            if key in seen:
                problems.append(f"{prefix}output {p} is also written by {seen[key] or 'another output'}")
            seen[key] = j.where or "another output"
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError("\n  ".join([f"{len(problems)} problem(s) with the input:"] + problems[:20]) + more)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "examples:\n"
        "  rs2sam2 predict --checkpoint ckpt/ --image scene.tif --text 'the ship at the top' \\\n"
        "      --out mask.tif --geojson mask.geojson --overlay overlay.png\n"
        "  rs2sam2 predict --checkpoint ckpt/ --batch jobs.csv   # columns image,text,out[,geojson,overlay,prob]\n\n"
        "Masks are uint8 rasters, 255 = object, 0 = background, on exactly the input grid (GeoTIFF with the\n"
        "input CRS/transform for .tif outputs of georeferenced inputs). Exit status 2 on bad input.")
    g = parser.add_argument_group("model")
    g.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="a save_pretrained folder, a released RS2-SAM2 folder, or a weights file")
    g.add_argument("--tokenizer", metavar="SPM",
                   help="SentencePiece model (default: tokenizer.model / sentencepiece.bpe.model / beit3.spm "
                        "next to the checkpoint)")
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
    g.add_argument("--geojson", metavar="OUT.geojson", help="also write the mask's polygons in the input CRS")
    g.add_argument("--overlay", metavar="OUT.png", help="also write the mask drawn over the image (input size)")
    g.add_argument("--prob", metavar="OUT.tif", help="also write the probability map (float32 .tif or 8-bit .png)")
    g = parser.add_argument_group("many predictions")
    g.add_argument("--batch", metavar="FILE",
                   help=".csv (with header) or .jsonl of jobs: image,text,out and optional geojson,overlay,prob; "
                        "relative paths are relative to the batch file")
    g.add_argument("--keep-going", action="store_true",
                   help="in batch mode, go on after a job fails (exit status 2 at the end if any failed)")
    g = parser.add_argument_group("prediction options")
    g.add_argument("--threshold", type=float, default=PUBLISHED_THRESHOLD,
                   help="logit threshold of the mask (default 0.5: the published rule, probability ~0.62; "
                        "0 = probability > 0.5)")
    g.add_argument("--bands", metavar="R,G,B",
                   help="1-based bands to use as RGB (e.g. 4,3,2) or one band (e.g. 1); default: 1,2,3 (1 for "
                        "single-band); non-8-bit data is stretched per band between its 2nd and 98th percentile")
    g.add_argument("--batch-size", type=int, default=8, help="expressions per forward pass (default 8)")
    g.add_argument("--quiet", "-q", action="store_true", help="no progress bar or per-job lines")


def _fail(message: str) -> int:
    print(f"rs2sam2 predict: error: {message}", file=sys.stderr)
    return 2


def _jobs_from_args(args) -> list[Job]:
    single = [n for n in ("image", "text", "out", "geojson", "overlay", "prob") if getattr(args, n, None) is not None]
    if args.batch is not None:
        if single:
            raise InputError(f"--batch cannot be combined with {', '.join('--' + n for n in single)} "
                             "(give those as columns of the batch file)")
        return read_jobs(args.batch)
    missing = [f"--{n}" for n in ("image", "text", "out") if getattr(args, n, None) is None]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (or use --batch FILE)")
    as_path = lambda v: None if v is None else Path(v).expanduser()  # noqa: E731
    return [Job(image=Path(args.image).expanduser(), text=args.text, out=Path(args.out).expanduser(),
                geojson=as_path(args.geojson), overlay=as_path(args.overlay), prob=as_path(args.prob))]


def run(args) -> int:
    from tqdm import tqdm

    try:
        bands = parse_bands(args.bands)
        if args.batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        jobs = _jobs_from_args(args)
        validate_jobs(jobs)
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                              tokenizer=args.tokenizer, threshold=args.threshold,
                                              image_size=args.image_size)
    except (InputError, CheckpointError, FileNotFoundError) as exc:
        return _fail(str(exc))

    # jobs on the same image share one read and one preprocessing; order of first appearance
    groups: dict[Path, list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.image, []).append(j)
    batch_mode = args.batch is not None
    bar = tqdm(total=len(jobs), desc="predict", unit="expr", disable=args.quiet or not batch_mode,
               file=sys.stderr, dynamic_ncols=True)
    failures: list[str] = []
    start = time.perf_counter()
    try:
        for image_path, group in groups.items():
            try:
                rgb, info = read_image(image_path, bands=bands)
            except (ImageReadError, FileNotFoundError) as exc:
                where = ", ".join(j.where for j in group if j.where)
                failures.append(f"{where + ': ' if where else ''}{exc}")
                bar.update(len(group))
                if not args.keep_going:
                    break
                continue
            if info.georeferenced and any(j.out.suffix.lower() == ".png" for j in group) and not args.quiet:
                print(f"rs2sam2 predict: warning: {image_path} is georeferenced but a PNG mask carries no "
                      "georeference; use a .tif output to keep the CRS and transform", file=sys.stderr)
            inputs = predictor.preprocess(rgb)  # once per image, however many expressions
            for start_k in range(0, len(group), args.batch_size):
                chunk = group[start_k:start_k + args.batch_size]
                preds = predictor._predict_rgb(rgb, _check_texts([j.text for j in chunk]), args.batch_size,
                                               predictor.threshold, with_prior=False, inputs=inputs)
                for j, pred in zip(chunk, preds, strict=True):
                    written = write_outputs(pred, rgb, info, out=j.out, geojson=j.geojson, overlay=j.overlay,
                                            prob=j.prob)
                    if not args.quiet:
                        msg = (f"{j.text!r}: {pred.foreground_pixels} px ({100 * pred.foreground_fraction:.2f}%) "
                               f"-> {', '.join(map(str, written))}")
                        tqdm.write(msg, file=sys.stdout) if batch_mode else print(msg)
                    bar.update(1)
    finally:
        bar.close()
    if failures:
        for f in failures:
            print(f"rs2sam2 predict: error: {f}", file=sys.stderr)
        if args.keep_going and batch_mode:
            print(f"rs2sam2 predict: {len(failures)} image(s) failed; the other jobs were written", file=sys.stderr)
        return 2
    if batch_mode and not args.quiet:
        print(f"wrote {len(jobs)} prediction(s) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
