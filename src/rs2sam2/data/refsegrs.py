"""RefSegRS reader.

On disk::

    ROOT/images/<id>.tif
    ROOT/masks/<id>.tif                   foreground = value > 50 (as the published loader)
    ROOT/output_phrase_{train,val,test}.txt   one "<id> <expression>" per line

The expression id is the zero-based line number in the split file, as a string ("17").

The published loader treats every line as its own ref (one sentence each). That is the default
here too; ``group_by_id=True`` instead gathers the lines that share an ``<id>`` -- they share the
mask, so they describe the same object -- into one ref with several expressions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetError, Ref, ReferringDataset, raster_size, read_mask_file

__all__ = ["RefSegRS"]

MASK_THRESHOLD = 50
_EXTENSIONS = (".tif", ".tiff", ".TIF", ".png", ".jpg")


def _find(folder: Path, stem: str) -> Path:
    """``folder/<stem>.tif``, or the same stem with another common extension."""
    for ext in _EXTENSIONS:
        candidate = folder / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return folder / f"{stem}.tif"  # reported as missing by the caller


class RefSegRS(ReferringDataset):
    """RefSegRS referring segmentation data.

    ``check_files`` verifies at construction that every image and mask of the split exists;
    ``strict=False`` records malformed lines in ``self.problems`` instead of raising.
    """

    name = "refsegrs"

    def __init__(self, root: str | Path, split: str = "train", group_by_id: bool = False,
                 check_files: bool = True, strict: bool = True) -> None:
        super().__init__(split, strict)
        self.root = Path(root)
        self.phrase_path = self.root / f"output_phrase_{split}.txt"
        if not self.phrase_path.is_file():
            present = sorted(p.name for p in self.root.glob("output_phrase_*.txt")) if self.root.is_dir() else []
            raise DatasetError(f"split file not found: {self.phrase_path}"
                               + (f" (present: {', '.join(present)})" if present else ""))
        entries = self._read_lines()
        self._build(entries, group_by_id)
        self._check_not_empty(self.phrase_path)
        if check_files:
            for ref in self.refs:
                for path in (ref.image_path, ref.mask_source):
                    if not path.is_file():
                        raise DatasetError(f"{self.phrase_path}: file for id {ref.ref_id!r} not found: {path}")

    def _read_lines(self) -> list[tuple[int, str, str]]:
        """``(line_number, id, expression)`` for every non-blank line."""
        entries = []
        for number, line in self._text_lines(self.phrase_path):
            where = f"{self.phrase_path}, line {number + 1}"
            parts = line.strip().split(maxsplit=1)
            if len(parts) != 2:
                self._problem("bad_entry", f"{where}: expected '<id> <expression>', got {line!r}")
                continue
            text = self._text(parts[1], where, key="expression")
            if text is not None:
                entries.append((number, parts[0], text))
        return entries

    def _build(self, entries: list[tuple[int, str, str]], group_by_id: bool) -> None:
        image_dir, mask_dir = self.root / "images", self.root / "masks"
        if not group_by_id:
            for number, stem, text in entries:
                self._add_ref(stem, _find(image_dir, stem), _find(mask_dir, stem), [(text, str(number))])
            return
        grouped: dict[str, list[tuple[str, str]]] = {}
        for number, stem, text in entries:
            grouped.setdefault(stem, []).append((text, str(number)))
        for stem, texts in grouped.items():
            self._add_ref(stem, _find(image_dir, stem), _find(mask_dir, stem), texts)

    def _mask_size(self, ref: Ref) -> tuple[int, int]:
        return raster_size(ref.mask_source)

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        return read_mask_file(ref.mask_source) > MASK_THRESHOLD
