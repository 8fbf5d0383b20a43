"""A plain JSON-lines format for your own data.

One JSON object per line::

    {"image": "images/a.tif", "mask": "masks/a_0.png", "text": "the red car", "split": "train", "id": "a0"}

``image`` and ``mask`` are paths, relative ones resolved against the JSONL file's folder; ``split``
is optional; ``id`` (the expression id) defaults to the zero-based line number. Mask pixels with a
value above ``mask_threshold`` (default 0: any non-zero value) are foreground. Lines with the same
image and mask describe the same object and form one ref.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import DatasetError, Ref, ReferringDataset, read_mask_file

__all__ = ["JsonlDataset", "DEFAULT_JSONL_NAME"]

DEFAULT_JSONL_NAME = "data.jsonl"


class JsonlDataset(ReferringDataset):
    """Expressions listed in a JSONL file (see the module docstring).

    ``path`` is the JSONL file, or a folder holding ``data.jsonl``. ``split=None`` keeps every line;
    otherwise only lines whose ``split`` equals it.
    """

    name = "jsonl"

    def __init__(self, path: str | Path, split: str | None = None, mask_threshold: float = 0,
                 check_files: bool = True) -> None:
        super().__init__(split)
        path = Path(path)
        self.path = path / DEFAULT_JSONL_NAME if path.is_dir() else path
        self.mask_threshold = mask_threshold
        if not self.path.is_file():
            raise DatasetError(f"JSONL file not found: {self.path}")
        records, splits_seen = self._read_records()
        self._build(records)
        self._check_not_empty(self.path, splits_seen)
        if check_files:
            for ref in self.refs:
                for file in (ref.image_path, ref.mask_source):
                    if not file.is_file():
                        raise DatasetError(f"{self.path}: file not found: {file}")

    def _read_records(self) -> tuple[list[tuple[int, dict]], list[str]]:
        """``(line_number, record)`` of the lines in the split, and every split seen."""
        records, splits_seen = [], []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise DatasetError(f"{self.path}: not UTF-8 text ({exc})") from exc
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            where = f"{self.path}, line {number + 1}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{where}: expected a JSON object")
            missing = [k for k in ("image", "mask", "text") if not record.get(k)]
            if missing:
                raise DatasetError(f"{where}: missing {missing}")
            if not isinstance(record["text"], str):
                raise DatasetError(f"{where}: 'text' must be a string")
            split = record.get("split")
            splits_seen.append(str(split))
            if self.split is None or split == self.split:
                records.append((number, record))
        return records, splits_seen

    def _build(self, records: list[tuple[int, dict]]) -> None:
        base = self.path.parent
        by_object: dict[tuple[Path, Path], list[tuple[str, str]]] = {}
        seen_ids: dict[str, int] = {}
        for number, record in records:
            expression_id = str(record["id"]) if record.get("id") is not None else str(number)
            if expression_id in seen_ids:
                raise DatasetError(f"{self.path}, line {number + 1}: id {expression_id!r} already used "
                                   f"on line {seen_ids[expression_id] + 1}")
            seen_ids[expression_id] = number
            key = ((base / record["image"]).resolve(), (base / record["mask"]).resolve())
            by_object.setdefault(key, []).append((record["text"].strip(), expression_id))
        for (image, mask), texts in by_object.items():
            ref_id = str(mask.relative_to(base.resolve())) if mask.is_relative_to(base.resolve()) else str(mask)
            self._add_ref(ref_id, image, mask, texts)

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        return read_mask_file(ref.mask_source) > self.mask_threshold
