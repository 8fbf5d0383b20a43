"""The :class:`Predictor`: segment what a sentence describes in an image, in memory or to files.

Every way of predicting -- :meth:`Predictor.predict`, :meth:`Predictor.predict_to_file`, the
``rs2sam2 predict`` command and the web app -- goes through one setup path,
:meth:`Predictor.setup`: check the texts, tokenize them once (a text over the token limit is
announced there, once), plan the area (:func:`~rs2sam2.predict.inputs.plan_area`), and collect the
notes a user should see (a bbox clipped to the image, an area read downscaled, tiles larger than
the model input). Then :meth:`Predictor.write` (files) or :meth:`Predictor.predict` (memory) runs
the plan.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..checkpoints import CheckpointError, load_pretrained, locate
from ..data.transforms import image_to_tensor
from ..imageio import Raster, max_pixels
from ..metrics import PUBLISHED_THRESHOLD, check_threshold
from ..results import (
    PREVIEW_SIDE,
    Outputs,
    Prediction,
    SceneResult,
    SceneWriter,
    assemble,
    preview_shape,
    write_prediction,
)
from ..runtime import PRECISIONS, heap_releaser, precision_choice, resolve_device
from ..scene import Decision, iter_scene
from ..text import TextTruncatedWarning, load_tokenizer
from ..tiles import Answer, Plan, iter_pieces
from .inputs import Area, InputError, check_texts, open_image, plan_area

__all__ = ["PRESENCE_THRESHOLD", "Predictor", "Setup"]

#: A scene answer below this presence is empty (``--presence-threshold``; see :mod:`rs2sam2.scene`).
PRESENCE_THRESHOLD = 0.5
#: The mode a plan's outputs are labelled with (``"mode"`` of every polygon).
MODE_OF_PLAN = {"full": "whole", "decimated": "whole", "tiled": "tiles", "scene": "scene"}

#: A progress report: ``True`` for a bar, or a function called with ``(done, total)`` model steps.
Progress = bool | Callable[[int, int], None]


@dataclass
class Setup:
    """What :meth:`Predictor.setup` decided for one raster: the checked texts, the pixel window of
    the area (``region``), the :class:`~rs2sam2.tiles.Plan`, and the notes for the user, each a
    ``(warning category, message)``."""

    texts: list[str]
    region: tuple[int, int, int, int]
    plan: Plan
    notes: list[tuple[type[Warning], str]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)  # a scene plan's, one per text, once it has run

    @property
    def mode(self) -> str:
        return MODE_OF_PLAN[self.plan.mode]

    def steps(self, k: int) -> int:
        """The model inputs text ``k`` was answered from."""
        return 1 + len(self.decisions[k].looks) if self.decisions else self.plan.steps

    def warn(self, stacklevel: int = 2) -> None:
        """Issue the notes as Python warnings."""
        for category, message in self.notes:
            warnings.warn(message, category, stacklevel=stacklevel + 1)


def downscale_message(name: str, plan: Plan, model_size: int) -> str:
    """The note of a decimated read (``plan.mode == "decimated"``)."""
    return (f"{name}: the area of {plan.width} x {plan.height} px was read downscaled "
            f"{plan.downscale:.1f}x to {plan.read_shape[1]} x {plan.read_shape[0]} px for the model "
            f"(input {model_size} px); to work at native resolution use --bbox/--window for a part of it "
            "or --tile SIZE for all of it (bbox=/window=/tile= in Python)")


def shrunk_tile_message(name: str, plan: Plan, model_size: int) -> str:
    """The note of tiles larger than the model input (each is shrunk to it)."""
    side = max(max(t.window[2], t.window[3]) for t in plan.tiles)
    return (f"{name}: tiles of {side} px are shrunk {side / model_size:.1f}x to the model input of {model_size} px; "
            f"use --tile {model_size} (tile={model_size} in Python) to work at native resolution")


@contextlib.contextmanager
def _truncation_announced():
    """Within it, no :class:`~rs2sam2.text.TextTruncatedWarning`: the texts were tokenized once in
    :meth:`Predictor.setup`, which announced any text over the token limit; a tiled run tokenizes once per tile."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        yield


def _load_tokenizer(path: str | os.PathLike):
    try:
        return load_tokenizer(path)
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"cannot load the tokenizer: {exc}") from exc


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
            dynamically quantized int8 layers). ``.precision`` is the one chosen, ``.precision_reason``
            why, in words.
        threshold: default logit threshold of the masks (0.5 = the published rule).
        max_len: token limit per expression, BOS/EOS included (default: the model's position table).
        mask_rule: the tokenizer's attention-mask rule (``"published"``: unknown tokens are hidden
            like padding, as in the published code; ``"clean"``).
        presence_threshold: a scene answer whose presence is below it is empty (see :mod:`rs2sam2.scene`).
        colour_check: a scene answer checks a colour word of the sentence ("the white tank") against
            the pixels of each candidate (:mod:`rs2sam2.colours`); False for imagery whose colours
            are not natural ones (false-colour composites, single bands).
        tile_batch: tiles of ``--mode tiles`` answered together, in one forward pass per batch of
            expressions (memory grows with it; BHFM conditions the image encoder on the text, so only
            tiles with the same sentence share a pass).
    """

    def __init__(self, model: torch.nn.Module, tokenizer, *, device: str | torch.device | None = "cpu",
                 precision: str = "auto", threshold: float = PUBLISHED_THRESHOLD, max_len: int | None = None,
                 mask_rule: str = "published", presence_threshold: float = PRESENCE_THRESHOLD,
                 colour_check: bool = True, tile_batch: int = 1) -> None:
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
            self.precision, self.precision_reason = precision_choice(precision, self.device)
        except ValueError as exc:  # int8 on a GPU
            raise InputError(str(exc)) from None
        self.threshold = check_threshold(threshold)
        if not 0.0 <= presence_threshold <= 1.0:
            raise InputError(f"presence_threshold {presence_threshold}: expected a number in [0, 1]")
        self.presence_threshold = float(presence_threshold)
        self.colour_check = bool(colour_check)
        if int(tile_batch) < 1:
            raise InputError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = int(tile_batch)
        self.tokenizer = tokenizer
        self.mask_rule = mask_rule
        self.max_len = cfg.beit3.text_len(max_len)
        self.source = ""  # where the weights came from (from_pretrained), for provenance
        model.eval()
        model.requires_grad_(False)
        if self.precision == "int8":
            model.to(self.device)  # quantized on the CPU, where it runs
        model.set_precision(self.precision).to(self.device)
        model.pack_linear_weights(heap_releaser())  # on the CPU; elsewhere nothing to pack
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
        predictor = cls(model, tokenizer, device=device, precision=precision, threshold=threshold, **kwargs)
        predictor.source = str(path) if subfolder is None else f"{path}/{subfolder}"
        return predictor

    @property
    def config(self):
        return self.model.config

    @property
    def presence_head(self) -> bool:
        """Whether the checkpoint's object-score head was trained to say that an object is absent
        (``config.presence_head``, set by ``train --negatives P`` with P > 0)."""
        return bool(getattr(self.config, "presence_head", False))

    def preprocess(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """HxWx3 uint8 -> the SAM2 and BEiT-3 inputs, ``(1, 3, S, S)`` and ``(1, 3, s, s)``."""
        cfg = self.config
        image = image_to_tensor(rgb, cfg.image_size).unsqueeze(0)
        evf = image_to_tensor(rgb, cfg.beit3.img_size).unsqueeze(0)
        return (image.to(self.device), evf.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.batch(list(texts), max_len=self.max_len, mask_rule=self.mask_rule)
        return ids.to(self.device), mask.bool().to(self.device)

    def answers(self, rgb: np.ndarray, texts: Sequence[str], batch_size: int = 8,
                with_prior: bool = True) -> list[Answer]:
        """The model's answers for ``texts`` on one model input ``rgb`` (HxWx3 uint8), at the model's
        resolution: the segment function of :func:`rs2sam2.tiles.iter_pieces`."""
        return self.answers_tiles([rgb], texts, batch_size, with_prior)[0]

    @torch.inference_mode()
    def answers_tiles(self, rgbs: Sequence[np.ndarray], texts: Sequence[str], batch_size: int = 8,
                      with_prior: bool = True) -> list[list[Answer]]:
        """:meth:`answers` for several model inputs at once (tiles of one scene): per batch of
        ``batch_size`` expressions, one forward pass holds every input with every expression of the
        batch. Returns one list of answers per input."""
        inputs = [self.preprocess(rgb) for rgb in rgbs]  # once per input, however many expressions
        n = len(inputs)
        results: list[list[Answer]] = [[] for _ in inputs]
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start:start + batch_size])
            ids, mask = self.tokenize(chunk)
            b = len(chunk)
            images = torch.cat([image.expand(b, -1, -1, -1) for image, _ in inputs]) if n > 1 else \
                inputs[0][0].expand(b, -1, -1, -1)
            evf = torch.cat([e.expand(b, -1, -1, -1) for _, e in inputs]) if n > 1 else inputs[0][1].expand(b, -1, -1, -1)
            out = self.model(images=images, images_evf=evf, input_ids=ids.repeat(n, 1), attention_mask=mask.repeat(n, 1))
            for k in range(n * b):
                results[k // b].append(_answer_of(out, k, with_prior))
        return results

    def setup(self, raster: Raster, texts: Sequence[str], area: Area | None = None) -> Setup:
        """The one setup path of every prediction: check ``texts``, tokenize them once (a text over
        the token limit becomes a note), plan ``area`` of ``raster`` and collect the notes."""
        texts = check_texts(texts)
        area = Area() if area is None else area
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TextTruncatedWarning)
            self.tokenize(texts)
        notes = [(w.category, str(w.message)) for w in caught if issubclass(w.category, TextTruncatedWarning)]
        model_size = self.config.image_size
        region, plan, clipped = plan_area(raster.info, area, model_size)
        if clipped:
            notes.append((UserWarning, f"{raster.name}: the bbox reaches beyond the image; it was clipped to the "
                                       f"image (window {' '.join(map(str, region))})"))
        if plan.mode == "decimated":
            notes.append((UserWarning, downscale_message(raster.name, plan, model_size)))
        if plan.mode == "tiled" and any(max(t.window[2], t.window[3]) > model_size for t in plan.tiles):
            notes.append((UserWarning, shrunk_tile_message(raster.name, plan, model_size)))
        return Setup(texts, region, plan, notes)

    def _pieces(self, raster: Raster, setup: Setup, batch_size: int, with_prior: bool, progress: Progress,
                threshold: float):
        texts = setup.texts
        if setup.plan.mode == "scene":
            def answer_some(rgb, some):
                return self.answers(rgb, some, batch_size, with_prior)

            setup.decisions.clear()
            return iter_scene(raster, setup.region, setup.plan, answer_some, texts=texts, threshold=threshold,
                              presence_threshold=self.presence_threshold, presence_head=self.presence_head,
                              model_size=self.config.image_size, colour_check=self.colour_check,
                              progress=progress if callable(progress) else None,
                              decisions=setup.decisions)

        def segment(rgb):
            return self.answers(rgb, texts, batch_size, with_prior)

        def segment_tiles(rgbs):
            return self.answers_tiles(rgbs, texts, batch_size, with_prior)

        return iter_pieces(raster, setup.region, setup.plan, segment, progress=progress, segment_tiles=segment_tiles,
                           tile_batch=self.tile_batch)

    def provenance(self, raster: Raster, setup: Setup, k: int, object_score: float) -> dict:
        """What every polygon of text ``k`` carries: ``mode``, ``presence`` (a scene answer's decision;
        else the sigmoid of the object-score logit), ``image`` and ``checkpoint``."""
        if setup.decisions:
            presence = setup.decisions[k].presence
        else:
            presence = float(1.0 / (1.0 + np.exp(-object_score))) if np.isfinite(object_score) else float("nan")
        return {"presence": presence, "mode": setup.mode, "image": raster.name,
                "checkpoint": self.source or self.config.name}

    def _label(self, raster: Raster, setup: Setup, k: int, result) -> None:
        """Set ``result``'s (a Prediction's or SceneResult's) provenance and scene decision."""
        result.provenance = self.provenance(raster, setup, k, result.object_score)
        result.decision = setup.decisions[k].as_dict() if setup.decisions else None

    def predict(self, image, text: str | Sequence[str], *, batch_size: int = 8, threshold: float | None = None,
                bands: Sequence[int] | str | None = None, with_prior: bool = True, bbox=None, bbox_crs=None,
                window=None, mode: str | None = None, tile: int | None = None, overlap: int | None = None,
                progress: Progress = False):
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
            mode: ``"scene"``, ``"whole"`` or ``"tiles"`` (see :data:`rs2sam2.predict.inputs.MODES`);
                default: a scene answer for areas larger than twice the model input per side, else one
                look at the whole area; ``tile`` alone implies ``"tiles"``.
            tile: the tile size of ``"tiles"``, at native resolution (see :mod:`rs2sam2.tiles`;
                default: the model input).
            overlap: the tiles' overlap in pixels (default ``tile // 8``).
            progress: a progress bar over the tiles, or a function called with ``(done, total)``.

        The result covers the area (the whole image by default) on its own grid (``crs``,
        ``transform`` of the window). An area larger than twice the model input per side gets a
        scene answer (:mod:`rs2sam2.scene`; its report in ``.decision``); with ``mode="whole"`` it
        is read decimated (a warning says by how much). The result lives in memory: for
        areas of more than :func:`rs2sam2.imageio.max_pixels` pixels use :meth:`predict_to_file`.

        Raises:
            InputError: empty text, unsupported image type, bad tiling.
            AreaError: a bbox/window outside the image.
            FileNotFoundError: an image file that does not exist.
            ImageReadError: an unreadable image file (the message names it).
        """
        single = isinstance(text, str)
        texts = check_texts([text] if single else list(text))
        _check_batch_size(batch_size)
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        area = Area.of(bbox=bbox, bbox_crs=bbox_crs, window=window, mode=mode, tile=tile, overlap=overlap)
        with open_image(image, bands) as raster:
            setup = self.setup(raster, texts, area)
            plan = setup.plan
            _check_in_memory(raster.name, plan)
            setup.warn(stacklevel=2)
            info = raster.info.window(*setup.region)
            preview, _ = raster.read(setup.region, out_shape=preview_shape(plan.height, plan.width, PREVIEW_SIDE))
            # closed as the stack unwinds (a stop, an error), so its progress bar ends before any message
            with _truncation_announced(), contextlib.closing(
                    self._pieces(raster, setup, batch_size, with_prior, progress, threshold)) as pieces:
                results = assemble(pieces, texts, info, threshold, tiles=plan.steps, downscale=plan.downscale,
                                   preview=preview)
            for k, pred in enumerate(results):
                pred.tiles = setup.steps(k)
                self._label(raster, setup, k, pred)
        return results[0] if single else results

    def predict_to_file(self, image, text: str | Sequence[str], *, out=None, prob=None, vector=None, overlay=None,
                        simplify: float = 0.0, min_area: float = 0.0, batch_size: int = 8,
                        threshold: float | None = None, bands: Sequence[int] | str | None = None, bbox=None,
                        bbox_crs=None, window=None, mode: str | None = None, tile: int | None = None,
                        overlap: int | None = None, progress: Progress = False, preview_side: int | None = None):
        """Segment ``text`` in ``image`` (the arguments of :meth:`predict`) and write the outputs:
        ``out`` (mask), ``prob``, ``vector`` (``.gpkg``/``.shp``/``.geojson``), ``overlay``. For a
        list of texts, give a list for each output given (one path per text).

        Tiled and decimated predictions are written window by window (memory bounded by a tile;
        masks and probability maps must be ``.tif`` then); others as :meth:`predict` +
        :func:`~rs2sam2.results.write_outputs`. Returns a :class:`~rs2sam2.results.SceneResult`
        (a list for a list of texts)."""
        single = isinstance(text, str)
        texts = check_texts([text] if single else list(text))
        outputs = _outputs_per_text(single, len(texts), out=out, prob=prob, vector=vector, overlay=overlay)
        _check_batch_size(batch_size)
        area = Area.of(bbox=bbox, bbox_crs=bbox_crs, window=window, mode=mode, tile=tile, overlap=overlap)
        with open_image(image, bands) as raster:
            setup = self.setup(raster, texts, area)
            setup.warn(stacklevel=2)
            results = self.write(raster, setup, outputs, threshold=threshold, batch_size=batch_size,
                                 simplify=simplify, min_area=min_area, progress=progress, preview_side=preview_side)
        return results[0] if single else results

    def write(self, raster: Raster, setup: Setup, outputs: Sequence[Outputs], *, threshold: float | None = None,
              batch_size: int = 8, simplify: float = 0.0, min_area: float = 0.0, progress: Progress = False,
              preview_side: int | None = None) -> list[SceneResult]:
        """Run ``setup`` (from :meth:`setup` on the same ``raster``) and write ``outputs`` (one per
        text); every file of the area is renamed into place together at the end. Tiled and decimated
        plans are written window by window (``Outputs`` of ``.tif`` rasters then)."""
        threshold = self.threshold if threshold is None else check_threshold(threshold)
        if setup.plan.mode != "full":
            how = {"tiled": "tile by tile", "decimated": "downscaled", "scene": "as a scene"}[setup.plan.mode]
            for o in outputs:
                o.check_windowed(how)
        with _truncation_announced(), contextlib.closing(
                self._pieces(raster, setup, batch_size, preview_side is not None, progress, threshold)) as pieces:
            if setup.plan.mode == "full":
                return self._write_whole(raster, setup, pieces, outputs, threshold, simplify, min_area,
                                         preview_side)
            return self._write_windows(raster, setup, pieces, outputs, threshold, simplify, min_area,
                                       preview_side)

    def _write_whole(self, raster, setup: Setup, pieces, outputs, threshold, simplify, min_area, preview_side):
        """Write a one-input plan's outputs from the prediction in memory."""
        need_rgb = preview_side is not None or any(o.overlay is not None for o in outputs)
        rgb = raster.read(setup.region)[0] if need_rgb else None
        preds = assemble(pieces, setup.texts, raster.info.window(*setup.region), threshold)
        results = []
        for k, (pred, o) in enumerate(zip(preds, outputs, strict=True)):
            self._label(raster, setup, k, pred)
            written = write_prediction(pred, rgb, o, simplify=simplify, min_area=min_area)
            result = _result_of(pred, written, rgb, preview_side)
            self._label(raster, setup, k, result)
            results.append(result)
        return results

    def _write_windows(self, raster, setup: Setup, pieces, outputs, threshold, simplify, min_area, preview_side):
        """Write a tiled, decimated or scene plan's outputs window by window
        (:class:`~rs2sam2.results.SceneWriter`)."""
        info = raster.info.window(*setup.region)
        with contextlib.ExitStack() as stack:
            writers = [SceneWriter(stack, t, info, threshold, o, simplify=simplify, min_area=min_area)
                       for t, o in zip(setup.texts, outputs, strict=True)]
            for piece in pieces:
                for k, w in enumerate(writers):
                    w.write(piece.window, piece.logits[k], piece.valid, piece.answers[k])
            results = []
            for k, w in enumerate(writers):
                score = max((a.object_score for a in w.answers if np.isfinite(a.object_score)), default=float("nan"))
                results.append(w.finish(raster, setup.region, steps=setup.steps(k), downscale=setup.plan.downscale,
                                        preview_side=preview_side,
                                        provenance=self.provenance(raster, setup, k, score),
                                        decision=setup.decisions[k].as_dict() if setup.decisions else None))
            return results

    def __repr__(self) -> str:
        return (f"Predictor(model={self.config.name!r}, image_size={self.config.image_size}, device={self.device}, "
                f"precision={self.precision}, threshold={self.threshold})")


def _check_in_memory(name: str, plan: Plan) -> None:
    if plan.width * plan.height > max_pixels():
        raise InputError(
            f"{name}: a result of {plan.width} x {plan.height} px would not fit the decode budget "
            f"({max_pixels():,} px) in memory; use Predictor.predict_to_file (written window by window), "
            "or a bbox/window")


def _answer_of(out, k: int, with_prior: bool) -> Answer:
    """Sample ``k`` of a forward pass's outputs as an :class:`Answer` on the CPU."""
    prior = None
    if with_prior and out.mask_prompt is not None:
        prior = out.mask_prompt[k, 0].float().cpu()
    return Answer(logits=out.logits[k, 0].float().cpu(), prior=prior,
                  iou_score=float(out.iou_scores[k].float().reshape(-1)[0]),
                  object_score=float(out.object_score_logits[k].float().reshape(-1)[0]))


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")


def _outputs_per_text(single: bool, n: int, **given) -> list[Outputs]:
    """One checked :class:`Outputs` per text, from one path (one text) or one list of paths per output."""
    if single:
        return [Outputs.of(**given)]
    for name, paths in given.items():
        if paths is not None and (isinstance(paths, (str, os.PathLike)) or len(paths) != n):
            raise InputError(f"{name}: give one path per text ({n} texts)")
    return [Outputs.of(**{name: None if paths is None else paths[k] for name, paths in given.items()})
            for k in range(n)]


def _result_of(pred: Prediction, written: list[Path], rgb: np.ndarray | None, preview_side: int | None) -> SceneResult:
    """A :class:`SceneResult` for an in-memory prediction (with previews shrunk to ``preview_side``)."""
    h, w = pred.shape
    result = SceneResult(pred.text, w, h, pred.foreground_pixels, pred.iou_score, pred.object_score, pred.tiles,
                         pred.downscale, written)
    if preview_side is not None and rgb is not None:
        size = preview_shape(h, w, preview_side)[::-1]
        result.preview = _resized(rgb, size, "rgb")
        result.preview_mask = _resized(pred.mask, size, "mask")
        if pred.prior is not None:
            result.preview_prior = _resized(pred.prior, size, "prior")
    return result


def _resized(a: np.ndarray, size: tuple[int, int], kind: str) -> np.ndarray:
    """An RGB image, mask or prior map resized to ``size`` (width, height) for a preview."""
    if kind == "mask":
        img = Image.fromarray(a.astype(np.uint8) * 255)
    elif kind == "prior":
        img = Image.fromarray(a.astype(np.float32), mode="F")
    else:
        img = Image.fromarray(a)
    if img.size != size:
        img = img.resize(size, Image.Resampling.NEAREST if kind == "mask" else Image.Resampling.BILINEAR)
    out = np.asarray(img)
    return out > 127 if kind == "mask" else out
