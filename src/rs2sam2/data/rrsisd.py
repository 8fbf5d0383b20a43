"""RRSIS-D reader (RefCOCO-style layout).

On disk (``ROOT`` is what the published code calls the refer data root)::

    ROOT/rrsisd/instances.json            COCO-like: images (id, file_name, height, width) and
                                          annotations (id, image_id, segmentation)
    ROOT/rrsisd/refs(unc).p               pickle: list of refs {ref_id, ann_id, image_id, split,
                                          sentences: [{raw, sent, sent_id}], sent_ids}
    ROOT/images/rrsisd/JPEGImages/<file_name>

Segmentations may be COCO RLE (``counts`` as a compressed string or an uncompressed list), a list
of RLEs, or polygons (decoded by :mod:`rs2sam2.data.segmentation`). **Union rule**: when a segmentation has several parts (several polygons or
RLEs), or a ref names several annotations (``ann_id`` a list), the mask is their union -- the
published loader sums the decoded parts and keeps pixels > 0, which is the same thing.

The text of an expression is the sentence's ``raw`` field, as in the published loader (``sent``,
the lower-cased tokenised form, is used when ``raw`` is missing). The expression id is ``sent_id``.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .base import DatasetError, Ref, ReferringDataset
from .segmentation import decode_segmentation

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
    ``strict=False`` records bad entries in ``self.problems`` instead of raising (see
    :mod:`rs2sam2.data.base`).

    A mask has the size instances.json gives its image (RLE parts must state the same size); when
    the image file itself differs by a few pixels, the base class's mask size rule applies. Each
    ref's category is the name (instances.json ``categories``) of its annotation's ``category_id``,
    else of the ref's own ``category_id``, else the id itself; a ref over annotations of several
    categories gets their names joined with "+".
    """

    name = "rrsisd"

    def __init__(self, root: str | Path, split: str = "train", text_field: str = "raw",
                 check_files: bool = True, strict: bool = True) -> None:
        super().__init__(split, strict)
        self.root = Path(root)
        self.instances_path = self.root / "rrsisd" / "instances.json"
        self.refs_path = self.root / "rrsisd" / "refs(unc).p"
        self.image_dir = self.root / "images" / "rrsisd" / "JPEGImages"
        self.text_field = text_field

        images, annotations, categories = self._read_instances()
        raw_refs = load_refs_pickle(self.refs_path)
        self._build(raw_refs, images, annotations, categories)
        self._check_not_empty(self.refs_path, [str(r.get("split")) for r in raw_refs])
        if check_files:
            missing = sorted({str(r.image_path) for r in self.refs if not r.image_path.is_file()})
            if missing:
                raise DatasetError(f"{len(missing)} image(s) of split {split!r} listed in "
                                   f"{self.instances_path} are missing, e.g. {missing[0]}")

    # ---- reading ------------------------------------------------------------------------------

    def _index(self, entries: Any, section: str, required: tuple[str, ...]) -> dict[Any, dict]:
        """``{id: entry}`` of an instances.json list; an id given twice keeps its first entry (a
        conflicting repeat is an error when strict)."""
        out: dict[Any, dict] = {}
        for k, entry in enumerate(entries):
            missing = [key for key in required if key not in entry]
            if missing:
                self._problem("bad_entry", f"{self.instances_path}: {section}[{k}] lacks {missing}")
                continue
            first = out.get(entry["id"])
            if first is not None:
                self._problem("duplicate_id", f"{self.instances_path}: {section}[{k}] repeats id {entry['id']!r}",
                              fatal=first != entry)
                continue
            out[entry["id"]] = entry
        return out

    def _read_instances(self) -> tuple[dict[Any, dict], dict[Any, dict], dict[Any, str]]:
        data = _load_json(self.instances_path)
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise DatasetError(f"{self.instances_path}: expected a dict with 'images' and 'annotations'")
        images = self._index(data["images"], "images", ("id", "file_name", "height", "width"))
        annotations = self._index(data["annotations"], "annotations", ("id", "image_id", "segmentation"))
        categories = {c["id"]: str(c.get("name", c["id"])) for c in data.get("categories") or []
                      if isinstance(c, dict) and "id" in c}
        return images, annotations, categories

    def _sentences(self, raw_ref: dict, seen: dict[str, Any]) -> list[tuple[str, str]]:
        """``(text, sent_id)`` of a ref; ``seen`` maps the split's sent_ids so far to their ref_id."""
        sentences = raw_ref.get("sentences") or []
        sent_ids = raw_ref.get("sent_ids") or []
        texts = []
        for k, sentence in enumerate(sentences):
            text = sentence.get(self.text_field) or sentence.get("raw") or sentence.get("sent")
            sent_id = sentence.get("sent_id", sent_ids[k] if k < len(sent_ids) else None)
            where = f"{self.refs_path}: ref {raw_ref.get('ref_id')!r} sentence {k}"
            if not text or sent_id is None:
                self._problem("bad_entry", f"{where} lacks text or sent_id")
                continue
            text = self._text(text, where)
            if text is None:
                continue
            if str(sent_id) in seen:
                self._problem("duplicate_id", f"{self.refs_path}: sent_id {sent_id!r} of ref "
                                              f"{raw_ref.get('ref_id')!r} is also in ref {seen[str(sent_id)]!r}")
                continue
            seen[str(sent_id)] = raw_ref.get("ref_id")
            texts.append((text, str(sent_id)))
        if not texts and not sentences:
            self._problem("bad_entry", f"{self.refs_path}: ref {raw_ref.get('ref_id')!r} has no sentences")
        return texts

    def _category(self, raw_ref: dict, anns: list[dict], categories: dict[Any, str]) -> str | None:
        ids = [a["category_id"] for a in anns if a.get("category_id") is not None]
        if not ids and raw_ref.get("category_id") is not None:
            ids = [raw_ref["category_id"]]
        return "+".join(sorted({categories.get(i, str(i)) for i in ids})) or None

    def _build(self, raw_refs: list[dict], images: dict, annotations: dict, categories: dict) -> None:
        seen_sentences: dict[str, Any] = {}
        seen_refs: set[Any] = set()
        for raw in raw_refs:
            if raw.get("split") != self.split:
                continue
            lacking = [key for key in ("ref_id", "ann_id", "image_id", "sentences") if key not in raw]
            if lacking:
                self._problem("no_mask" if lacking == ["ann_id"] else "bad_entry",
                              f"{self.refs_path}: a ref lacks {lacking[0]!r}: {raw!r:.200}")
                continue
            if raw["ref_id"] in seen_refs:
                self._problem("duplicate_id", f"{self.refs_path}: ref_id {raw['ref_id']!r} appears twice")
                continue
            seen_refs.add(raw["ref_id"])
            image = images.get(raw["image_id"])
            if image is None:
                self._problem("missing_image", f"{self.refs_path}: ref {raw['ref_id']!r} names image_id "
                                               f"{raw['image_id']!r}, absent from {self.instances_path}")
                continue
            ann_ids = raw["ann_id"] if isinstance(raw["ann_id"], (list, tuple)) else [raw["ann_id"]]
            absent = [a for a in ann_ids if a not in annotations]
            if absent or not ann_ids:
                self._problem("no_mask", f"{self.refs_path}: ref {raw['ref_id']!r} names ann_id "
                                         f"{(absent or ann_ids or [None])[0]!r}, absent from {self.instances_path}")
                continue
            anns = [annotations[a] for a in ann_ids]
            texts = self._sentences(raw, seen_sentences)
            if not texts:
                continue
            source = {"segmentations": [a["segmentation"] for a in anns], "ann_ids": list(ann_ids),
                      "height": int(image["height"]), "width": int(image["width"])}
            self._add_ref(raw["ref_id"], self.image_dir / image["file_name"], source, texts,
                          category=self._category(raw, anns, categories),
                          absent=all(a.get("area", -1) == 0 for a in anns))  # the generator's absent sentences

    def _mask_origin(self, ref: Ref) -> str:
        return f"{self.instances_path} (annotation(s) {ref.mask_source['ann_ids']})"

    def _mask_size(self, ref: Ref) -> tuple[int, int]:
        return ref.mask_source["height"], ref.mask_source["width"]

    def _read_mask(self, ref: Ref, height: int, width: int) -> np.ndarray:
        src = ref.mask_source
        mask = np.zeros((src["height"], src["width"]), dtype=bool)
        for ann_id, segmentation in zip(src["ann_ids"], src["segmentations"]):
            try:
                mask |= decode_segmentation(segmentation, src["height"], src["width"])
            except (ValueError, TypeError) as exc:
                raise DatasetError(f"{self.instances_path}: annotation {ann_id!r}: {exc}") from exc
        return mask
