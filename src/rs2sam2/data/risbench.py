"""RISBench reader, in the JSON-lines layout RSRefSeg 2 distributes it in.

On disk::

    ROOT/risbench_{train,val,test}.jsonl   one expression per line:
        {"split": "test", "image_id": "test_1_0.png", "file_name": "test_1_0.png",
         "sent": "the ship closest to the top edge of the image",
         "segmentation": {"size": [512, 512], "counts": "..."}}
    ROOT/images/<file_name>

``segmentation`` is the object's mask as a COCO RLE (``counts`` a compressed string, or an
uncompressed list); the mask has the size the RLE states, and the base class's mask size rule
applies when the image differs from it by a few pixels. The expression id is the zero-based line
number in the split file, as a string ("17"). Lines with the same ``file_name`` and the same
segmentation describe the same object and form one ref (its ``ref_id`` is the first line's
``image_id``). The file decides the split; a line whose ``split`` field says otherwise is kept and,
when reading leniently, reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .base import DatasetError, Ref, ReferringDataset
from .segmentation import decode_segmentation

__all__ = ["RISBench", "risbench_split_path"]


def risbench_split_path(root: str | Path, split: str) -> Path:
    """``ROOT/risbench_<split>.jsonl``."""
    return Path(root) / f"risbench_{split}.jsonl"


class RISBench(ReferringDataset):
    """RISBench referring segmentation data (see the module docstring).

    ``check_files`` verifies at construction that every image of the split exists; ``strict=False``
    records bad lines in ``self.problems`` instead of raising.
    """

    name = "risbench"

    def __init__(self, root: str | Path, split: str = "train", check_files: bool = True,
                 strict: bool = True) -> None:
        super().__init__(split, strict)
        self.root = Path(root)
        self.path = risbench_split_path(self.root, split)
        self.image_dir = self.root / "images"
        if not self.path.is_file():
            present = sorted(p.name for p in self.root.glob("risbench_*.jsonl")) if self.root.is_dir() else []
            raise DatasetError(f"split file not found: {self.path}"
                               + (f" (present: {', '.join(present)})" if present else ""))
        self._build(self._read_lines())
        self._check_not_empty(self.path)
        if check_files:
            missing = sorted({str(r.image_path) for r in self.refs if not r.image_path.is_file()})
            if missing:
                raise DatasetError(f"{len(missing)} image(s) named in {self.path} are missing, e.g. {missing[0]}")

    def _valid(self, record: dict, where: str) -> bool:
        """Whether a parsed line is usable; reports what is wrong with it otherwise."""
        if not record.get("segmentation"):
            self._problem("no_mask", f"{where}: no 'segmentation'")
            return False
        if not isinstance(record.get("file_name"), str) or not record["file_name"].strip():
            self._problem("bad_entry", f"{where}: 'file_name' must be a non-empty string")
            return False
        text = self._text(record.get("sent"), where, key="sent")
        if text is None:
            return False
        record["sent"] = text
        seg = record["segmentation"]
        size = seg.get("size") if isinstance(seg, dict) else None
        if (not isinstance(seg, dict) or "counts" not in seg or not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and v > 0 for v in size)):
            self._problem("bad_entry", f"{where}: 'segmentation' must be a COCO RLE "
                                       "{'size': [height, width], 'counts': ...}")
            return False
        if record.get("split") not in (None, self.split):
            self._problem("bad_entry", f"{where}: 'split' is {record['split']!r} in the file of split "
                                       f"{self.split!r} (the file decides)", fatal=False)
        return True

    def _read_lines(self) -> list[tuple[int, dict]]:
        """``(line_number, record)`` of every usable line."""
        return [(number, record) for number, where, record in self._json_objects(self.path)
                if self._valid(record, where)]

    def _build(self, records: list[tuple[int, dict]]) -> None:
        by_object: dict[tuple[str, str], list[tuple[str, str]]] = {}
        first: dict[tuple[str, str], dict] = {}
        for number, record in records:
            key = (record["file_name"], json.dumps(record["segmentation"], sort_keys=True))
            by_object.setdefault(key, []).append((record["sent"], str(number)))
            first.setdefault(key, record)
        for key, texts in by_object.items():
            record = first[key]
            self._add_ref(str(record.get("image_id", record["file_name"])), self.image_dir / record["file_name"],
                          record["segmentation"], texts)

    def _mask_origin(self, ref: Ref) -> str:
        return f"{self.path} (segmentation of {ref.ref_id!r})"

    def _mask_size(self, ref: Ref) -> tuple[int, int]:
        height, width = ref.mask_source["size"]
        return int(height), int(width)

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        try:
            return decode_segmentation(ref.mask_source, *self._mask_size(ref))
        except (ValueError, TypeError) as exc:
            raise DatasetError(f"{self._mask_origin(ref)}: {exc}") from exc
