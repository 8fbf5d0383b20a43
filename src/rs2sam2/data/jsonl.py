"""A plain JSON-lines format for your own data.

One JSON object per line::

    {"image": "images/a.tif", "mask": "masks/a_0.png", "text": "the red car", "split": "train", "id": "a0"}

``image`` is a path, a relative one resolved against the JSONL file's folder. ``mask`` is either such
a path -- pixels with a value above ``mask_threshold`` (default 0: any non-zero value) are
foreground -- or the mask itself, inline, as a COCO segmentation: an RLE ``{"size": [h, w],
"counts": ...}`` (compressed string or uncompressed list) or polygons ``[[x0, y0, x1, y1, ...], ...]``
drawn on the image's grid (see :mod:`rs2sam2.data.segmentation`). ``split`` is optional; ``id`` (the
expression id) defaults to the zero-based line number; ``category`` (optional) names the object's
class for per-category results. Lines with the same image and mask describe the same object and
form one ref.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetError, Ref, ReferringDataset, raster_size, read_mask_file
from .segmentation import decode_segmentation, segmentation_size

__all__ = ["JsonlDataset", "DEFAULT_JSONL_NAME"]

DEFAULT_JSONL_NAME = "data.jsonl"


class JsonlDataset(ReferringDataset):
    """Expressions listed in a JSONL file (see the module docstring).

    ``path`` is the JSONL file, or a folder holding ``data.jsonl``. ``split=None`` keeps every line;
    otherwise only lines whose ``split`` equals it. ``check_files`` reads the header of every image
    and mask file the split names, so a missing file or one that is not an image is a
    :class:`DatasetError` naming it and its line before any sample is loaded. ``strict=False``
    records bad lines in ``self.problems`` instead of raising.
    """

    name = "jsonl"

    def __init__(self, path: str | Path, split: str | None = None, mask_threshold: float = 0,
                 check_files: bool = True, strict: bool = True) -> None:
        super().__init__(split, strict)
        path = Path(path)
        self.path = path / DEFAULT_JSONL_NAME if path.is_dir() else path
        self.mask_threshold = mask_threshold
        if not self.path.is_file():
            raise DatasetError(f"JSONL file not found: {self.path}")
        records, splits_seen = self._read_records()
        self._build(records)
        self._check_not_empty(self.path, splits_seen)
        if check_files:
            self._check_files(records)

    def _check_files(self, records: list[tuple[int, dict]]) -> None:
        """Every image and mask file named by the split exists and is an image (its header is read,
        its pixels are not); the error names the file and the first line naming it."""
        first_line: dict[Path, tuple[int, str]] = {}
        for number, record in records:
            first_line.setdefault((self.path.parent / record["image"]).resolve(), (number, "image"))
            if isinstance(record["mask"], str):
                first_line.setdefault(self._mask_key(record["mask"]), (number, "mask"))
        for file, (number, key) in first_line.items():
            try:
                raster_size(file)
            except FileNotFoundError:
                raise DatasetError(f"{self.path}, line {number + 1}: {key} file not found: {file}") from None
            except DatasetError as exc:
                raise DatasetError(f"{self.path}, line {number + 1}: {key} {file} is not a readable image "
                                   f"({exc.__cause__ or exc})") from exc

    def _read_records(self) -> tuple[list[tuple[int, dict]], list[str]]:
        """``(line_number, record)`` of the lines in the split, and every split seen."""
        records, splits_seen = [], []
        for number, where, record in self._json_objects(self.path):
            missing = [k for k in ("image", "mask", "text") if not record.get(k)]
            if missing:
                self._problem("no_mask" if missing == ["mask"] else "bad_entry", f"{where}: missing {missing}")
                continue
            text = self._text(record["text"], where)
            if text is None:
                continue
            record["text"] = text
            if not isinstance(record["mask"], (str, dict, list)):
                self._problem("bad_entry", f"{where}: 'mask' must be a path, a COCO RLE or polygons")
                continue
            split = record.get("split")
            splits_seen.append(str(split))
            if self.split is None or split == self.split:
                records.append((number, record))
        return records, splits_seen

    def _mask_key(self, mask: Any) -> Path | str:
        """A mask file's resolved path, or an inline mask's canonical JSON text (for grouping)."""
        if isinstance(mask, str):
            return (self.path.parent / mask).resolve()
        return json.dumps(mask, sort_keys=True)

    def _build(self, records: list[tuple[int, dict]]) -> None:
        base = self.path.parent
        by_object: dict[tuple[Path, Path | str], list[tuple[str, str]]] = {}
        first_record: dict[tuple[Path, Path | str], dict] = {}
        seen_ids: dict[str, int] = {}
        for number, record in records:
            expression_id = str(record["id"]) if record.get("id") is not None else str(number)
            if expression_id in seen_ids:
                self._problem("duplicate_id", f"{self.path}, line {number + 1}: id {expression_id!r} already used "
                                              f"on line {seen_ids[expression_id] + 1}")
                continue
            seen_ids[expression_id] = number
            key = ((base / record["image"]).resolve(), self._mask_key(record["mask"]))
            by_object.setdefault(key, []).append((record["text"], expression_id))
            first_record.setdefault(key, record)
        for key, texts in by_object.items():
            image, mask_key = key
            record = first_record[key]
            category = None if record.get("category") is None else str(record["category"])
            if isinstance(mask_key, Path):
                ref_id = (str(mask_key.relative_to(base.resolve())) if mask_key.is_relative_to(base.resolve())
                          else str(mask_key))
                self._add_ref(ref_id, image, mask_key, texts, category=category)
            else:  # inline mask: the ref is named after its first expression
                self._add_ref(texts[0][1], image, record["mask"], texts, category=category)

    def _mask_origin(self, ref: Ref) -> str:
        if isinstance(ref.mask_source, Path):
            return str(ref.mask_source)
        return f"{self.path} (inline mask of ref {ref.ref_id!r})"

    def _mask_size(self, ref: Ref) -> tuple[int, int] | None:
        if isinstance(ref.mask_source, Path):
            return raster_size(ref.mask_source)
        try:
            return segmentation_size(ref.mask_source)
        except ValueError as exc:
            raise DatasetError(f"{self._mask_origin(ref)}: {exc}") from exc

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        if isinstance(ref.mask_source, Path):
            return read_mask_file(ref.mask_source) > self.mask_threshold
        size = self._mask_size(ref) or (height, width)
        try:
            return decode_segmentation(ref.mask_source, *size)
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{self._mask_origin(ref)}: {exc}") from exc
