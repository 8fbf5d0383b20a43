"""RRSIS-D reader (RefCOCO-style layout).

On disk (``ROOT`` is what the published code calls the refer data root)::

    ROOT/rrsisd/instances.json            COCO-like: images (id, file_name, height, width) and
                                          annotations (id, image_id, segmentation)
    ROOT/rrsisd/refs(unc).p               pickle: list of refs {ref_id, ann_id, image_id, split,
                                          sentences: [{raw, sent, sent_id}], sent_ids}
    ROOT/images/rrsisd/JPEGImages/<file_name>

Segmentations may be COCO RLE (``counts`` as a compressed string or an uncompressed list), a list
of RLEs, or polygons. **Union rule**: when a segmentation has several parts (several polygons or
RLEs), or a ref names several annotations (``ann_id`` a list), the mask is their union -- the
published loader sums the decoded parts and keeps pixels > 0, which is the same thing.

The text of an expression is the sentence's ``raw`` field, as in the published loader (``sent``,
the lower-cased tokenised form, is used when ``raw`` is missing). The expression id is ``sent_id``.
"""

from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from .base import DatasetError, Ref, ReferringDataset

__all__ = ["RRSISD", "load_refs_pickle", "decode_segmentation"]


class _BuiltinsOnlyUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global except a few plain container/scalar types.

    A pickle can name any importable callable and have it called while loading, i.e. run code.
    ``refs(unc).p`` only holds dicts, lists, strings and numbers, which pickle stores with opcodes
    that need no globals at all; the allow-list below covers the rare explicit references to
    builtin types, and anything else (a class, ``os.system``...) is rejected before it runs.
    """

    _ALLOWED = {
        ("builtins", name)
        for name in ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "int", "float",
                     "bool", "complex", "bytearray")
    } | {("collections", "OrderedDict"), ("__builtin__", "unicode"), ("__builtin__", "long")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a refs pickle")


def load_refs_pickle(path: str | Path) -> list[dict]:
    """Load ``refs(unc).p`` safely: only builtin containers, strings and numbers are accepted.

    Uses :mod:`pickle` with a restricted Unpickler whose ``find_class`` allows no global but plain
    builtin types, so loading cannot execute code. Python 2 pickles (the original RefCOCO tools)
    are read with their byte strings decoded as UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"refs file not found: {path}")
    try:
        with open(path, "rb") as fh:
            refs = _BuiltinsOnlyUnpickler(fh, encoding="utf-8", errors="replace").load()
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise DatasetError(f"cannot read refs pickle {path}: {exc}") from exc
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DatasetError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}")
    return refs


def _to_rles(segmentation: Any, height: int, width: int) -> list[dict]:
    """Every part of a COCO segmentation as a compressed RLE."""
    if isinstance(segmentation, dict):
        parts = [segmentation]
    elif isinstance(segmentation, list) and segmentation:
        if all(isinstance(p, (int, float)) for p in segmentation):
            parts = [[float(v) for v in segmentation]]  # one flat polygon
        else:
            parts = segmentation
    else:
        raise ValueError("empty or unrecognised segmentation")

    rles: list[dict] = []
    polygons: list[list[float]] = []
    for part in parts:
        if isinstance(part, dict):
            if "counts" not in part or "size" not in part:
                raise ValueError("RLE without 'counts'/'size'")
            if list(part["size"]) != [height, width]:
                raise ValueError(f"RLE size {list(part['size'])} differs from the image's {[height, width]}")
            counts = part["counts"]
            if isinstance(counts, list):  # uncompressed RLE: let pycocotools compress it
                rles.append(coco_mask.frPyObjects(part, height, width))
            else:
                rles.append({"size": [height, width],
                             "counts": counts.encode("ascii") if isinstance(counts, str) else counts})
        elif isinstance(part, (list, tuple)):
            if len(part) < 6 or len(part) % 2:
                raise ValueError(f"polygon with {len(part)} coordinates (needs an even number >= 6)")
            polygons.append([float(v) for v in part])
        else:
            raise ValueError(f"unrecognised segmentation part of type {type(part).__name__}")
    if polygons:
        rles.extend(coco_mask.frPyObjects(polygons, height, width))
    return rles


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """COCO segmentation (RLE, list of RLEs or polygons) -> HxW bool, the union of its parts."""
    rles = _to_rles(segmentation, height, width)
    merged = coco_mask.merge(rles, intersect=False) if len(rles) > 1 else rles[0]
    with warnings.catch_warnings():
        # pycocotools' Cython decoder trips numpy 2's copy-keyword DeprecationWarning on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        return coco_mask.decode(merged).astype(bool)


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc


class RRSISD(ReferringDataset):
    """RRSIS-D referring segmentation data, one ref per annotated object.

    ``root`` is the folder holding ``rrsisd/`` and ``images/``. ``text_field`` picks the sentence
    field (``"raw"`` as published, or ``"sent"``). ``check_files`` verifies at construction that
    every image of the split exists, so a broken download fails now rather than mid-epoch.
    """

    name = "rrsisd"

    def __init__(self, root: str | Path, split: str = "train", text_field: str = "raw",
                 check_files: bool = True) -> None:
        super().__init__(split)
        self.root = Path(root)
        self.instances_path = self.root / "rrsisd" / "instances.json"
        self.refs_path = self.root / "rrsisd" / "refs(unc).p"
        self.image_dir = self.root / "images" / "rrsisd" / "JPEGImages"
        self.text_field = text_field

        images, annotations = self._read_instances()
        raw_refs = load_refs_pickle(self.refs_path)
        self._build(raw_refs, images, annotations)
        self._check_not_empty(self.refs_path, [str(r.get("split")) for r in raw_refs])
        if check_files:
            missing = sorted({str(r.image_path) for r in self.refs if not r.image_path.is_file()})
            if missing:
                raise DatasetError(f"{len(missing)} image(s) of split {split!r} listed in "
                                   f"{self.instances_path} are missing, e.g. {missing[0]}")

    # ---- reading ------------------------------------------------------------------------------

    def _read_instances(self) -> tuple[dict[Any, dict], dict[Any, dict]]:
        data = _load_json(self.instances_path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetError(f"{self.instances_path}: expected a dict with 'images' and 'annotations'")
        images: dict[Any, dict] = {}
        for k, img in enumerate(data["images"]):
            missing = [key for key in ("id", "file_name", "height", "width") if key not in img]
            if missing:
                raise DatasetError(f"{self.instances_path}: images[{k}] lacks {missing}")
            images[img["id"]] = img
        annotations: dict[Any, dict] = {}
        for k, ann in enumerate(data["annotations"]):
            missing = [key for key in ("id", "image_id", "segmentation") if key not in ann]
            if missing:
                raise DatasetError(f"{self.instances_path}: annotations[{k}] lacks {missing}")
            annotations[ann["id"]] = ann
        return images, annotations

    def _sentences(self, raw_ref: dict) -> list[tuple[str, str]]:
        sentences = raw_ref.get("sentences") or []
        sent_ids = raw_ref.get("sent_ids") or []
        texts = []
        for k, sentence in enumerate(sentences):
            text = sentence.get(self.text_field) or sentence.get("raw") or sentence.get("sent")
            sent_id = sentence.get("sent_id", sent_ids[k] if k < len(sent_ids) else None)
            if not text or sent_id is None:
                raise DatasetError(f"{self.refs_path}: ref {raw_ref.get('ref_id')!r} sentence {k} "
                                   "lacks text or sent_id")
            texts.append((str(text).strip(), str(sent_id)))
        if not texts:
            raise DatasetError(f"{self.refs_path}: ref {raw_ref.get('ref_id')!r} has no sentences")
        return texts

    def _build(self, raw_refs: list[dict], images: dict, annotations: dict) -> None:
        for raw in raw_refs:
            if raw.get("split") != self.split:
                continue
            for key in ("ref_id", "ann_id", "image_id", "sentences"):
                if key not in raw:
                    raise DatasetError(f"{self.refs_path}: a ref lacks {key!r}: {raw!r:.200}")
            image = images.get(raw["image_id"])
            if image is None:
                raise DatasetError(f"{self.refs_path}: ref {raw['ref_id']!r} names image_id "
                                   f"{raw['image_id']!r}, absent from {self.instances_path}")
            ann_ids = raw["ann_id"] if isinstance(raw["ann_id"], (list, tuple)) else [raw["ann_id"]]
            anns = []
            for ann_id in ann_ids:
                if ann_id not in annotations:
                    raise DatasetError(f"{self.refs_path}: ref {raw['ref_id']!r} names ann_id "
                                       f"{ann_id!r}, absent from {self.instances_path}")
                anns.append(annotations[ann_id])
            source = {"segmentations": [a["segmentation"] for a in anns], "ann_ids": list(ann_ids),
                      "height": int(image["height"]), "width": int(image["width"])}
            self._add_ref(raw["ref_id"], self.image_dir / image["file_name"], source,
                          self._sentences(raw))

    def _mask_origin(self, ref: Ref) -> str:
        return f"{self.instances_path} (annotation(s) {ref.mask_source['ann_ids']})"

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        src = ref.mask_source
        if (src["height"], src["width"]) != (height, width):
            raise DatasetError(f"{self.instances_path}: image {ref.image_path} is {height}x{width} "
                               f"but instances.json says {src['height']}x{src['width']}")
        mask = np.zeros((height, width), dtype=bool)
        for ann_id, segmentation in zip(src["ann_ids"], src["segmentations"]):
            try:
                mask |= decode_segmentation(segmentation, height, width)
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{self.instances_path}: annotation {ann_id!r}: {exc}") from exc
        return mask
