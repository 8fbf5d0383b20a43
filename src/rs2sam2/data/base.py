"""What every dataset reader shares: refs, expressions, ``load``, ``plot``.

Vocabulary (as in RefCOCO-style datasets):

* a **ref** is one described object: an image plus the mask of that object;
* an **expression** is one sentence describing a ref; a ref has one or more.

``len(ds)`` counts expressions, and ``ds.load(i)`` returns expression ``i`` as a sample dict with
the fixed keys ``image``, ``mask``, ``text``, ``expression_id`` and ``meta``, whichever reader
produced it. Training draws one random expression per ref per step (``ds.refs`` and
``ds.ref_expressions``); evaluation runs every expression.

**Mask size rule.** A mask whose size differs from its image's by a few pixels (at most
:data:`MASK_SIZE_TOLERANCE` of each side, and at least one pixel: RRSIS-D has 800x801 and 800x787
images annotated at 800x800) is resized to the image with nearest neighbour (pixel centres). The
published pipelines resize image and mask separately to the square network input, i.e. they stretch
the mask over the image; resizing it to the image keeps that correspondence for both evaluation
resolutions. Each such image is announced once with a :class:`MaskSizeWarning` that counts them
(``ds.resized_masks`` lists them). A larger difference means the wrong mask: :class:`DatasetError`.

**Strict and lenient reading.** By default (``strict=True``) a reader raises :class:`DatasetError` on
the first bad entry. With ``strict=False`` it records the entry in ``ds.problems`` (a
:class:`Problem` with a ``kind`` such as ``"duplicate_id"`` or ``"no_mask"``), leaves it out and goes
on, so that ``rs2sam2 check-data`` can list every problem at once.
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..imageio import ImageReadError, read_image, read_mask, read_size
from ..text import normalize_text
from ..viz import caption_below, overlay, save

__all__ = [
    "DatasetError",
    "MASK_SIZE_TOLERANCE",
    "MaskSizeWarning",
    "Problem",
    "Ref",
    "ReferringDataset",
    "mask_size_fits",
    "raster_size",
    "read_mask_file",
]

#: Largest difference between a mask's side and its image's that the mask size rule absorbs, as a
#: fraction of the image side (at least one pixel is always allowed).
MASK_SIZE_TOLERANCE = 0.03


class DatasetError(UserError, ValueError):
    """A dataset file is missing or malformed; the message names the file."""


class MaskSizeWarning(UserWarning):
    """A mask was resized to its image because their sizes differ by a few pixels."""


@dataclass(frozen=True)
class Problem:
    """One bad entry found while reading a dataset leniently: ``kind`` names the class of problem
    (``bad_entry``, ``duplicate_id``, ``missing_image``, ``no_mask``...), ``message`` says where."""

    kind: str
    message: str


def mask_size_fits(mask_size: Sequence[int], image_size: Sequence[int]) -> bool:
    """Whether the mask size rule applies: every side within :data:`MASK_SIZE_TOLERANCE` of the image's."""
    return all(abs(int(m) - int(i)) <= max(1, round(MASK_SIZE_TOLERANCE * int(i)))
               for m, i in zip(mask_size, image_size))


def raster_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header, without decoding the pixels
    (:func:`rs2sam2.imageio.read_size`).

    Raises ``FileNotFoundError`` when there is no such file and :class:`DatasetError` when the
    header cannot be read.
    """
    try:
        return read_size(path)
    except ImageReadError as exc:
        raise DatasetError(str(exc)) from exc


@dataclass
class Ref:
    """One described object.

    ``mask_source`` is whatever the reader needs to produce the mask (a mask file path, COCO
    segmentations...); ``expression_indices`` index into ``ReferringDataset.expressions``.
    ``absent``: the dataset says its sentences describe nothing in the image (an empty target, as
    the generator's absent sentences, ``synth --absent``): such refs are not training samples of
    their own but the absent sentences ``train --negatives`` draws for their image, and
    evaluation leaves them out of the mask metrics.
    """

    ref_id: Any
    image_path: Path
    mask_source: Any
    expression_indices: list[int] = field(default_factory=list)
    category: str | None = None
    absent: bool = False


def read_mask_file(path: str | Path) -> np.ndarray:
    """Raw values of a mask image as an HxW array (not yet thresholded).

    Single-band masks are returned as they are; for multi-band masks the maximum over the colour
    bands is used, so a mask drawn in any colour on black still reads as foreground. Read by
    :func:`rs2sam2.imageio.read_mask`, the same strict reading as the images: a truncated or corrupt
    mask, or one over the decode budget, raises :class:`DatasetError` naming the file.
    """
    try:
        return read_mask(path)
    except FileNotFoundError:
        raise DatasetError(f"mask file not found: {path}") from None
    except ImageReadError as exc:  # the message names the file (and how to raise the decode budget)
        raise DatasetError(f"mask file: {exc}") from exc


class ReferringDataset:
    """Base class of the readers. Subclasses fill ``self.refs`` / ``self.expressions`` with
    :meth:`_add_ref` and implement :meth:`_read_mask` (and :meth:`_mask_size` when the mask's size
    is known without decoding it).

    ``expressions[i] = (ref_index, text, expression_id)``.
    """

    name = "base"

    def __init__(self, split: str | None, strict: bool = True) -> None:
        self.split = split
        self.strict = strict
        self.refs: list[Ref] = []
        self.expressions: list[tuple[int, str, str]] = []
        self.problems: list[Problem] = []
        self.resized_masks: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}
        self._images: OrderedDict[Path, np.ndarray] = OrderedDict()  # decoded images, see cache_images
        self._images_limit = self._images_bytes = 0

    # ---- building -----------------------------------------------------------------------------

    def _problem(self, kind: str, message: str, fatal: bool = True) -> None:
        """A bad entry: raise when strict (and ``fatal``), else record it in ``self.problems``."""
        if self.strict and fatal:
            raise DatasetError(message)
        if not self.strict:
            self.problems.append(Problem(kind, message))

    def _text_lines(self, path: Path) -> list[tuple[int, str]]:
        """``(zero-based line number, line)`` of the non-blank lines of a UTF-8 text file."""
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{path}: not UTF-8 text ({exc})") from exc
        return [(number, line) for number, line in enumerate(lines) if line.strip()]

    def _json_objects(self, path: Path) -> list[tuple[int, str, dict]]:
        """``(line number, "<path>, line <n>", object)`` of the lines of a JSON-lines file; a line
        that is not a JSON object is a ``bad_entry`` problem."""
        out = []
        for number, line in self._text_lines(path):
            where = f"{path}, line {number + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                self._problem("bad_entry", f"{where}: not valid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                self._problem("bad_entry", f"{where}: expected a JSON object")
                continue
            out.append((number, where, record))
        return out

    def _text(self, value: Any, where: str, key: str = "text") -> str | None:
        """A sentence as read (:func:`rs2sam2.text.normalize_text`), or None after reporting a
        ``bad_entry`` problem when it is not a string or has no visible character."""
        if not isinstance(value, str):
            self._problem("bad_entry", f"{where}: {key!r} must be a non-empty string, got {type(value).__name__}")
            return None
        text = normalize_text(value)
        if not text:
            self._problem("bad_entry", f"{where}: {key!r} must be a non-empty string; {value!r} has no visible "
                                       "character (only spaces or zero-width characters)")
            return None
        return text

    def _add_ref(self, ref_id: Any, image_path: Path, mask_source: Any,
                 texts: Sequence[tuple[str, str]], category: str | None = None, absent: bool = False) -> int:
        """Register a ref with its ``(text, expression_id)`` pairs; returns the ref index."""
        ref_index = len(self.refs)
        ref = Ref(ref_id=ref_id, image_path=Path(image_path), mask_source=mask_source, category=category,
                  absent=absent)
        for text, expression_id in texts:
            ref.expression_indices.append(len(self.expressions))
            self.expressions.append((ref_index, text, str(expression_id)))
        self.refs.append(ref)
        return ref_index

    def _check_not_empty(self, source: Path, available: Sequence[str] = ()) -> None:
        if not self.expressions:
            have = f" (splits present: {', '.join(sorted(set(available)))})" if available else ""
            raise DatasetError(f"{source}: no entries for split {self.split!r}{have}")

    # ---- subclass hook ------------------------------------------------------------------------

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        """Boolean mask of ``ref`` at its own size; ``height``/``width`` are the image's size, the
        grid of masks that have none of their own (polygons)."""
        raise NotImplementedError

    def _mask_size(self, ref: Ref) -> tuple[int, int] | None:
        """The mask's ``(height, width)`` without decoding it; None when it is drawn on the image."""
        return None

    def _mask_origin(self, ref: Ref) -> str:
        """Where the mask of ``ref`` comes from, for error messages."""
        return str(ref.mask_source)

    def _fit_mask(self, ref: Ref, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """The mask size rule (module docstring): resize a nearly matching mask to the image, with a
        counted warning; anything further off is an error."""
        if not mask_size_fits(mask.shape, (height, width)):
            raise DatasetError(
                f"{self._mask_origin(ref)}: mask size {mask.shape[0]}x{mask.shape[1]} does not match "
                f"image {ref.image_path} ({height}x{width})")
        key = str(ref.image_path)
        if key not in self.resized_masks:
            self.resized_masks[key] = ((int(mask.shape[0]), int(mask.shape[1])), (height, width))
            warnings.warn(
                f"{self.name} {self.split or 'all'}: image {ref.image_path} is {height}x{width} but its mask "
                f"{mask.shape[0]}x{mask.shape[1]}; the mask is resized to the image (nearest neighbour). "
                f"Images of this split so treated: {len(self.resized_masks)}", MaskSizeWarning, stacklevel=3)
        from ..metrics import resize_target_nearest  # noqa: PLC0415 - metrics needs torch; reading data does not

        return resize_target_nearest(mask, (height, width))

    # ---- public API ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.load(i)

    @property
    def num_refs(self) -> int:
        return len(self.refs)

    @property
    def object_refs(self) -> list[int]:
        """Indices of the refs whose sentences describe an object (every ref but the absent ones)."""
        return [i for i, ref in enumerate(self.refs) if not ref.absent]

    @property
    def object_expressions(self) -> list[int]:
        """Indices of the expressions of :attr:`object_refs` (what the mask metrics score)."""
        return [i for i, (r, _, _) in enumerate(self.expressions) if not self.refs[r].absent]

    def ref_expressions(self, ref_index: int) -> list[int]:
        """Indices (into ``expressions`` / ``load``) of the expressions of ref ``ref_index``."""
        return list(self.refs[ref_index].expression_indices)

    def mask_size(self, ref_index: int) -> tuple[int, int] | None:
        """``(height, width)`` of ref ``ref_index``'s mask as stored, read without decoding it (from
        the annotation, the RLE or the mask file's header); None for masks drawn on the image's grid.
        A missing mask file raises ``FileNotFoundError``."""
        return self._mask_size(self.refs[ref_index])

    def ref_mask(self, ref_index: int, height: int, width: int) -> np.ndarray:
        """Boolean mask of ref ``ref_index`` at its stored size (before the mask size rule);
        ``height`` x ``width`` is the grid for masks without a size of their own."""
        return self._read_mask(self.refs[ref_index], height, width).astype(bool, copy=False)

    def expression_categories(self) -> dict[str, str] | None:
        """``{expression_id: category}`` when the dataset names object categories, else None."""
        if all(ref.category is None for ref in self.refs):
            return None
        return {eid: self.refs[r].category or "" for r, _, eid in self.expressions}

    def cache_images(self, max_bytes: int) -> None:
        """Keep up to ``max_bytes`` of decoded images in memory (0: none), the least recently used
        dropped first. Training reads each image many times (one per expression of it, every epoch);
        the cache spares decoding it again. Cached images are returned read-only."""
        self._images.clear()
        self._images_limit, self._images_bytes = int(max_bytes), 0

    def _read_image(self, path: Path) -> np.ndarray:
        image = self._images.get(path)
        if image is not None:
            self._images.move_to_end(path)
            return image
        image, _ = read_image(path)
        if self._images_limit and image.nbytes <= self._images_limit:
            image.setflags(write=False)
            self._images[path] = image
            self._images_bytes += image.nbytes
            while self._images_bytes > self._images_limit:
                self._images_bytes -= self._images.popitem(last=False)[1].nbytes
        return image

    def load(self, i: int) -> dict[str, Any]:
        """Expression ``i`` as ``{"image", "mask", "text", "expression_id", "meta"}``.

        ``image`` is HxWx3 uint8 RGB, ``mask`` HxW bool at the image's own resolution.
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"expression index {i} out of range for {len(self)} expressions")
        ref_index, text, expression_id = self.expressions[i]
        ref = self.refs[ref_index]
        try:
            image = self._read_image(ref.image_path)
        except (ImageReadError, FileNotFoundError) as exc:  # the message names the file
            raise DatasetError(f"{self.name} {self.split or 'all'}, expression {expression_id!r}: {exc}") from exc
        height, width = image.shape[:2]
        mask = self._read_mask(ref, height, width)
        if mask.shape != (height, width):
            mask = self._fit_mask(ref, mask, height, width)
        return {
            "image": image,
            "mask": mask.astype(bool, copy=False),
            "text": text,
            "expression_id": expression_id,
            "meta": {
                "image_path": str(ref.image_path),
                "orig_size": (height, width),
                "ref_id": ref.ref_id,
                "ref_index": ref_index,
                "category": ref.category,
                "dataset": self.name,
                "split": self.split,
            },
        }

    def summary(self) -> dict[str, Any]:
        """Counts for reports such as ``rs2sam2 check-data``: refs, expressions, distinct images."""
        return {
            "dataset": self.name,
            "split": self.split,
            "refs": len(self.refs),
            "expressions": len(self.expressions),
            "images": len({r.image_path for r in self.refs}),
        }

    def plot(self, i: int, path: str | Path, mask: np.ndarray | None = None) -> Path:
        """Save a picture of expression ``i`` (format from the suffix: ``.png``): the image with the
        mask in red, the sentence below. ``mask`` (HxW bool) replaces the ground truth, e.g. to show
        a prediction.
        """
        sample = self.load(i)
        picture = overlay(sample["image"], sample["mask"] if mask is None else mask, alpha=0.45)
        return save(caption_below(picture, f'[{sample["expression_id"]}] {sample["text"]}'), path)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, refs={len(self.refs)}, "
                f"expressions={len(self.expressions)})")
