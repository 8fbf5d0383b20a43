"""What every dataset reader shares: refs, expressions, ``load``, ``plot``.

Vocabulary (as in RefCOCO-style datasets):

* a **ref** is one described object: an image plus the mask of that object;
* an **expression** is one sentence describing a ref; a ref has one or more.

``len(ds)`` counts expressions, and ``ds.load(i)`` returns expression ``i`` as a sample dict with
the fixed keys ``image``, ``mask``, ``text``, ``expression_id`` and ``meta``, whichever reader
produced it. Training draws one random expression per ref per step (``ds.refs`` and
``ds.ref_expressions``); evaluation runs every expression.
"""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..imageio import check_decode_budget, read_image

__all__ = ["DatasetError", "Ref", "ReferringDataset", "read_mask_file"]


class DatasetError(ValueError):
    """A dataset file is missing or malformed; the message names the file."""


@dataclass
class Ref:
    """One described object.

    ``mask_source`` is whatever the reader needs to produce the mask (a mask file path, COCO
    segmentations...); ``expression_indices`` index into ``ReferringDataset.expressions``.
    """

    ref_id: Any
    image_path: Path
    mask_source: Any
    expression_indices: list[int] = field(default_factory=list)


def read_mask_file(path: str | Path) -> np.ndarray:
    """Raw values of a mask image as an HxW array (not yet thresholded).

    Single-band masks are returned as they are; for multi-band masks the maximum over the first
    three bands is used, so a mask drawn in any colour on black still reads as foreground.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"mask file not found: {path}")
    check_decode_budget(path)
    try:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = src.read(indexes=list(range(1, min(src.count, 3) + 1)))
        return data[0] if data.shape[0] == 1 else data.max(axis=0)
    except Exception:  # noqa: BLE001 - fall back to PIL for anything GDAL refuses
        pass
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L") if img.mode in ("P", "1") else img)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"cannot read mask file {path}: {exc}") from exc
    return arr if arr.ndim == 2 else arr[:, :, :3].max(axis=2)


class ReferringDataset:
    """Base class of the readers. Subclasses fill ``self.refs`` / ``self.expressions`` with
    :meth:`_add_ref` and implement :meth:`_read_mask`.

    ``expressions[i] = (ref_index, text, expression_id)``.
    """

    name = "base"

    def __init__(self, split: str | None) -> None:
        self.split = split
        self.refs: list[Ref] = []
        self.expressions: list[tuple[int, str, str]] = []

    # ---- building -----------------------------------------------------------------------------

    def _add_ref(self, ref_id: Any, image_path: Path, mask_source: Any,
                 texts: Sequence[tuple[str, str]]) -> int:
        """Register a ref with its ``(text, expression_id)`` pairs; returns the ref index."""
        ref_index = len(self.refs)
        ref = Ref(ref_id=ref_id, image_path=Path(image_path), mask_source=mask_source)
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
        """Boolean HxW mask of ``ref``; ``height``/``width`` are the image's size."""
        raise NotImplementedError

    def _mask_origin(self, ref: Ref) -> str:
        """Where the mask of ``ref`` comes from, for error messages."""
        return str(ref.mask_source)

    # ---- public API ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.expressions)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.load(i)

    @property
    def num_refs(self) -> int:
        return len(self.refs)

    def ref_expressions(self, ref_index: int) -> list[int]:
        """Indices (into ``expressions`` / ``load``) of the expressions of ref ``ref_index``."""
        return list(self.refs[ref_index].expression_indices)

    def load(self, i: int) -> dict[str, Any]:
        """Expression ``i`` as ``{"image", "mask", "text", "expression_id", "meta"}``.

        ``image`` is HxWx3 uint8 RGB, ``mask`` HxW bool at the image's own resolution.
        """
        if not -len(self) <= i < len(self):
            raise IndexError(f"expression index {i} out of range for {len(self)} expressions")
        ref_index, text, expression_id = self.expressions[i]
        ref = self.refs[ref_index]
        image, _ = read_image(ref.image_path)
        height, width = image.shape[:2]
        mask = self._read_mask(ref, height, width)
        if mask.shape != (height, width):
            raise DatasetError(
                f"{self._mask_origin(ref)}: mask size {mask.shape[0]}x{mask.shape[1]} does not match "
                f"image {ref.image_path} ({height}x{width})")
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
                "dataset": self.name,
                "split": self.split,
            },
        }

    def summary(self) -> dict[str, Any]:
        """Counts for logs: refs, expressions, distinct images."""
        return {
            "dataset": self.name,
            "split": self.split,
            "refs": len(self.refs),
            "expressions": len(self.expressions),
            "images": len({r.image_path for r in self.refs}),
        }

    def plot(self, i: int, path: str | Path, mask: np.ndarray | None = None) -> Path:
        """Save a PNG of expression ``i``: image with the mask in red, the sentence below.

        ``mask`` (HxW bool) replaces the ground truth, e.g. to show a prediction.
        """
        sample = self.load(i)
        overlay = render_overlay(sample["image"], sample["mask"] if mask is None else mask,
                                 f'[{sample["expression_id"]}] {sample["text"]}')
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        overlay.save(path, format="PNG")
        return path

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(split={self.split!r}, refs={len(self.refs)}, "
                f"expressions={len(self.expressions)})")


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def render_overlay(image: np.ndarray, mask: np.ndarray, caption: str,
                   colour: tuple[int, int, int] = (255, 40, 40), alpha: float = 0.45) -> Image.Image:
    """Image with ``mask`` blended in ``colour`` and ``caption`` wrapped on a white band below."""
    base = image.astype(np.float32)
    m = np.asarray(mask, dtype=bool)
    base[m] = (1 - alpha) * base[m] + alpha * np.asarray(colour, np.float32)
    picture = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    width = picture.width
    font_size = max(12, min(24, width // 32))
    font = _font(font_size)
    chars_per_line = max(16, int(width / (0.55 * font_size)))
    lines = textwrap.wrap(caption, chars_per_line) or [""]
    line_height = font_size + 4
    canvas = Image.new("RGB", (width, picture.height + line_height * len(lines) + 8), "white")
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, picture.height + 4 + k * line_height), line, fill="black", font=font)
    return canvas
