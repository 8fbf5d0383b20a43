"""Dataset checks: find what would stop or skew training and evaluation, split by split.

For each split it lists

* **missing images** -- named by an annotation but not on disk, or an image id the annotations lack;
* **unreadable images** -- a header that cannot be parsed, or a truncated file (a JPEG without its
  end-of-image marker, a PNG without its IEND chunk);
* **image/mask size mismatches** -- with what loading does about each: within the mask size rule of
  :mod:`rs2sam2.data.base` the mask is resized to the image (with a warning), beyond it loading fails;
* **empty masks**;
* **duplicate ids** -- expression ids, and the ref / image / annotation ids of RRSIS-D;
* **sentences without a mask** -- an annotation that is absent, a mask file that is missing, a line
  without a segmentation;
* **unreadable masks** and **malformed entries** (lines or records that cannot be parsed).

It reads the annotations with the dataset's own reader (``strict=False``, so that every bad entry is
recorded instead of the first one raising) and takes image sizes from the file headers only; masks
are decoded, since that is the only way to see an empty one. ``decode=True`` also decodes every image.
``rs2sam2 check-data`` (:mod:`rs2sam2.datacheck`) prints these reports; training runs
:func:`blocking_problems` before its first step.

Python use::

    report = check_dataset("rrsisd", "/data/rrsisd", ["train", "val", "test"])
    report["splits"]["test"]["problems"]["size_mismatch"]   # list of messages
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..imageio import read_image
from . import build_dataset
from .base import DatasetError, ReferringDataset, mask_size_fits, raster_size

__all__ = ["DEFAULT_SPLITS", "KINDS", "blocking_problems", "check_dataset", "check_split"]

#: Problem kinds, in the order they are listed, with their titles.
KINDS = {
    "missing_image": "missing images",
    "unreadable_image": "unreadable images",
    "size_mismatch": "image/mask size mismatches",
    "empty_mask": "empty masks",
    "duplicate_id": "duplicate ids",
    "no_mask": "sentences without a mask",
    "unreadable_mask": "unreadable masks",
    "bad_entry": "malformed entries",
}
DEFAULT_SPLITS = ("train", "val", "test")
_TAIL_BYTES = 64


def _truncated(path: Path) -> bool:
    """Whether a JPEG or PNG file lacks its closing marker (a cut-off download); other formats have
    no trailer to look at and count as complete."""
    with path.open("rb") as fh:
        head = fh.read(8)
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - _TAIL_BYTES))
        tail = fh.read()
    if head.startswith(b"\xff\xd8"):  # JPEG: the EOI marker (only padding may follow it)
        return b"\xff\xd9" not in tail
    if head.startswith(b"\x89PNG"):
        return b"IEND" not in tail
    return False


def _image_size(path: Path, decode: bool) -> tuple[tuple[int, int] | None, tuple[str, str] | None]:
    """``(size, problem)`` of an image file: its header size, or the problem ``(kind, message)``."""
    try:
        size = raster_size(path)
    except FileNotFoundError:
        return None, ("missing_image", str(path))
    except DatasetError as exc:
        return None, ("unreadable_image", str(exc))
    try:
        if _truncated(path):
            return None, ("unreadable_image", f"{path}: truncated (the file ends before its closing marker)")
    except OSError as exc:
        return None, ("unreadable_image", f"{path}: {exc}")
    if decode:
        try:
            read_image(path)
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raised, the file is bad
            return None, ("unreadable_image", f"{path}: {exc}")
    return size, None


def _findings(dataset: ReferringDataset, decode: bool, masks: bool) -> Iterator[tuple[str, str, bool]]:
    """``(kind, message, blocks_loading)`` for every problem of one split: ``blocks_loading`` when
    loading a sample of it would fail (a missing or unreadable file, a mask far off its image's
    size), not when the reader left the entry out or the sample loads as it is. ``masks``: also
    decode every mask (to find empty ones)."""
    for problem in dataset.problems:  # entries the lenient reader left out
        yield problem.kind, problem.message, False
    image_sizes: dict[Path, tuple[int, int] | None] = {}
    for ref in dataset.refs:
        if ref.image_path not in image_sizes:
            size, problem = _image_size(ref.image_path, decode)
            image_sizes[ref.image_path] = size
            if problem is not None:
                yield problem[0], problem[1], True
    mismatched: set[tuple[Path, tuple[int, int]]] = set()
    for r, ref in enumerate(dataset.refs):
        ids = ", ".join(dataset.expressions[i][2] for i in ref.expression_indices)
        what = f"ref {ref.ref_id!r} (expression(s) {ids})"
        image_size = image_sizes[ref.image_path]
        try:
            mask_size = dataset.mask_size(r)
        except FileNotFoundError as exc:
            yield "no_mask", f"{what}: {exc}", True
            continue
        except (DatasetError, ValueError) as exc:
            yield "unreadable_mask", f"{what}: {exc}", True
            continue
        if mask_size is not None and image_size is not None and mask_size != image_size:
            if (ref.image_path, mask_size) not in mismatched:
                mismatched.add((ref.image_path, mask_size))
                fits = mask_size_fits(mask_size, image_size)
                fate = "the mask is resized to the image when loaded" if fits else "too different: loading fails"
                yield ("size_mismatch", f"{ref.image_path}: image {image_size[0]}x{image_size[1]}, mask "
                       f"{mask_size[0]}x{mask_size[1]} ({fate})", not fits)
        grid = mask_size or image_size
        if not masks or grid is None:  # grid None: a mask drawn on the grid of an image that cannot be read
            continue
        try:
            mask = dataset.ref_mask(r, *grid)
        except (DatasetError, ValueError, OSError) as exc:
            yield "unreadable_mask", f"{what}: {exc}", True
            continue
        if not mask.any() and not ref.absent:  # an absent sentence's empty target is what the dataset says
            yield "empty_mask", f"{what} on {ref.image_path}", False


def check_split(dataset: ReferringDataset, decode: bool = False) -> dict[str, Any]:
    """Check one split read with ``strict=False``: counts, and the problems by kind (lists of messages)."""
    problems: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for kind, message, _ in _findings(dataset, decode, masks=True):
        problems.setdefault(kind, []).append(message)
    return {
        **dataset.summary(),
        "problems": {kind: messages for kind, messages in problems.items() if messages},
        "clean": not any(problems.values()),
    }


def blocking_problems(dataset: ReferringDataset) -> list[str]:
    """The problems that would stop a sample of ``dataset`` from loading (missing or unreadable
    images and masks, masks too far off their image's size), from file headers and annotations
    only: what training checks before its first step."""
    return [message for _, message, blocks in _findings(dataset, decode=False, masks=False) if blocks]


def check_dataset(name: str, root: str | Path, splits: Sequence[str | None] = DEFAULT_SPLITS,
                  decode: bool = False) -> dict[str, Any]:
    """:func:`check_split` for each split of dataset ``name`` at ``root``.

    A split whose annotation file is missing or cannot be parsed gets ``{"error": message}``.
    ``None`` as a split means every line (JSONL).
    """
    out: dict[str, Any] = {"dataset": name, "data": str(Path(root).resolve()), "splits": {}}
    for split in splits:
        try:
            dataset = build_dataset(name, root, split, strict=False, check_files=False)
        except DatasetError as exc:
            out["splits"][str(split or "all")] = {"split": split, "error": str(exc), "clean": False}
            continue
        out["splits"][str(split or "all")] = check_split(dataset, decode=decode)
    out["clean"] = all(s["clean"] for s in out["splits"].values())
    return out
