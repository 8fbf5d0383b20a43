"""The dataset layouts synth writes: RRSIS-D, RefSegRS, JSONL and RISBench, so that the real readers
are exercised. Each writer takes the scenes one by one (:meth:`_Writer.add`) and writes its
annotation files at the end (:meth:`_Writer.finish`).

Absent sentences (``Scene.absent``, from mosaics) are written like any other expression, with an
empty mask: an RRSIS-D annotation with an empty RLE, an all-zero RefSegRS/JSONL mask file, an
empty RISBench RLE.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from ...errors import ConfigError
from .vocab import CLASSES, Scene

__all__ = ["DEFAULT_SPLITS", "FORMATS", "OWNED_NAMES", "SPLIT_NAMES", "WRITERS", "assign_splits"]

FORMATS = ("rrsisd", "refsegrs", "jsonl", "risbench")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.7, 0.15, 0.15)  # shares of the images
# where a mosaic's GeoTIFF lies: UTM 33N, 0.5 m pixels (made up, so that GIS tools show a real grid)
GEOTIFF_CRS = "EPSG:32633"
GEOTIFF_PIXEL = 0.5
GEOTIFF_ORIGIN = (500_000.0, 5_200_000.0)


def assign_splits(num_images: int, seed: int, fractions: Sequence[float] = DEFAULT_SPLITS) -> list[str]:
    """Split name per image of :func:`iter_scenes` ``(num_images, seed)``, as :func:`generate` writes them:
    a seeded shuffle cut by ``fractions``; every non-zero share gets >= 1."""
    if (len(fractions) != 3 or not all(math.isfinite(f) and f >= 0 for f in fractions)
            or sum(fractions) <= 0):
        raise ConfigError(f"splits must be three non-negative fractions (train, val, test; --splits), "
                          f"got {list(fractions)}")
    fractions = np.asarray(fractions, float) / sum(fractions)
    counts = np.floor(fractions * num_images).astype(int)
    for k in np.argsort(-(fractions * num_images - counts)):  # hand out the remainder
        if counts.sum() >= num_images:
            break
        counts[k] += 1
    for k in range(3):  # a requested split should not come out empty when images allow
        if fractions[k] > 0 and counts[k] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[k] = 1
    names = np.repeat(np.array(SPLIT_NAMES), counts)
    order = np.random.default_rng([seed, 1]).permutation(num_images)
    out = [""] * num_images
    for rank, image_index in enumerate(order):
        out[image_index] = str(names[rank])
    return out


def _tokens(text: str) -> list[str]:
    return text.lower().split()


def _refs(scene: Scene) -> list[tuple[np.ndarray, list[str], str]]:
    """``(mask, sentences, class)`` of every ref of ``scene``: its targets, then one ref per absent
    sentence with an empty mask (the class is the one the sentence names)."""
    refs = [(scene.objects[i].mask, texts, scene.objects[i].cls) for i, texts in scene.targets]
    empty = np.zeros(scene.image.shape[:2], bool)
    return refs + [(empty, [text], cls) for cls, text in scene.absent]


def _rle(mask: np.ndarray) -> dict:
    """A mask as a compressed COCO RLE with a JSON-able ``counts`` string."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def write_geotiff(path: Path, rgb: np.ndarray) -> None:
    """Write an RGB image as a tiled, DEFLATE-compressed GeoTIFF on the made-up grid above."""
    import rasterio  # noqa: PLC0415  (heavy; only mosaics are written as GeoTIFFs)
    from affine import Affine  # noqa: PLC0415  (comes with rasterio)

    height, width = rgb.shape[:2]
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
               "crs": GEOTIFF_CRS, "transform": Affine(GEOTIFF_PIXEL, 0.0, GEOTIFF_ORIGIN[0], 0.0, -GEOTIFF_PIXEL, GEOTIFF_ORIGIN[1]),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "photometric": "RGB"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of a mask; all zero for an empty one."""
    ys, xs = np.nonzero(mask)
    if not xs.size:
        return [0, 0, 0, 0]
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


class _Writer:
    """Base of the layouts: collects per-split counts. ``owns`` lists the top-level names it writes."""

    owns: tuple[str, ...] = ()

    def __init__(self, out: Path, geotiff: bool = False) -> None:
        self.out = out
        self.geotiff = geotiff  # write the images as GeoTIFFs where the layout allows (mosaics)
        self.counts = {s: {"images": 0, "refs": 0, "expressions": 0, "absent": 0} for s in SPLIT_NAMES}
        self.lines: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}

    def add(self, index: int, scene: Scene, split: str) -> None:
        """Write one scene into ``split`` and count it."""
        counts = self.counts[split]
        counts["images"] += 1
        counts["refs"] += len(scene.targets) + len(scene.absent)
        counts["expressions"] += sum(len(t) for _, t in scene.targets) + len(scene.absent)
        counts["absent"] += len(scene.absent)
        self.write_scene(index, scene, split)

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, str]:
        return {}

    def save_image(self, path: Path, rgb: np.ndarray, **pil_options: Any) -> None:
        """Save ``rgb`` at ``path``: a GeoTIFF when ``self.geotiff`` and ``path`` ends in .tif."""
        if self.geotiff and path.suffix == ".tif":
            write_geotiff(path, rgb)
        else:
            Image.fromarray(rgb).save(path, **pil_options)

    def write_split_lines(self, name: str) -> dict[str, str]:
        """Write ``self.lines[split]`` to ``out/<name with the split>``, one file per split."""
        paths = {}
        for split, lines in self.lines.items():
            path = self.out / name.format(split)
            path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            paths[split] = str(path)
        return paths


class _RRSISDWriter(_Writer):
    owns = ("images", "rrsisd")

    def __init__(self, out: Path, geotiff: bool = False) -> None:
        super().__init__(out, geotiff)
        self.image_dir = out / "images" / "rrsisd" / "JPEGImages"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        (out / "rrsisd").mkdir(parents=True, exist_ok=True)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.refs: list[dict] = []
        self.category_ids = {name: k + 1 for k, name in enumerate(CLASSES)}
        self.next_sent_id = 0

    def _annotate(self, image_id: int, mask: np.ndarray, cls: str) -> int:
        ann_id = len(self.annotations) + 1
        self.annotations.append({"id": ann_id, "image_id": image_id, "category_id": self.category_ids[cls],
                                 "segmentation": _rle(mask), "area": int(mask.sum()), "iscrowd": 0,
                                 "bbox": _bbox(mask)})
        return ann_id

    def _sentences(self, texts: list[str]) -> list[dict]:
        out = []
        for text in texts:
            out.append({"raw": text, "sent": text.lower(), "sent_id": self.next_sent_id, "tokens": _tokens(text)})
            self.next_sent_id += 1
        return out

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        height, width = scene.image.shape[:2]
        image_id, file_name = index + 1, f"{index:05d}.jpg"
        Image.fromarray(scene.image).save(self.image_dir / file_name, quality=95)
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        # every object is annotated, as in COCO; only targets get refs (an absent sentence gets an
        # empty annotation of its own)
        ann_ids = [self._annotate(image_id, obj.mask, obj.cls) for obj in scene.objects]
        targets = [(ann_ids[i], texts, scene.objects[i].cls) for i, texts in scene.targets]
        empty = np.zeros((height, width), bool)
        targets += [(self._annotate(image_id, empty, cls), [text], cls) for cls, text in scene.absent]
        for ann_id, texts, cls in targets:
            sentences = self._sentences(texts)
            self.refs.append({
                "ref_id": len(self.refs), "ann_id": ann_id, "image_id": image_id, "split": split,
                "sentences": sentences, "sent_ids": [s["sent_id"] for s in sentences], "file_name": file_name,
                "category_id": self.category_ids[cls],
            })

    def finish(self) -> dict[str, str]:
        instances = {"images": self.images, "annotations": self.annotations,
                     "categories": [{"id": i, "name": n} for n, i in self.category_ids.items()]}
        instances_path = self.out / "rrsisd" / "instances.json"
        instances_path.write_text(json.dumps(instances), encoding="utf-8")
        refs_path = self.out / "rrsisd" / "refs(unc).p"
        with open(refs_path, "wb") as fh:
            pickle.dump(self.refs, fh, protocol=2)
        return {"instances": str(instances_path), "refs": str(refs_path), "images": str(self.image_dir)}


class _RefSegRSWriter(_Writer):
    owns = ("images", "masks", *(f"output_phrase_{split}.txt" for split in SPLIT_NAMES))

    def __init__(self, out: Path, geotiff: bool = False) -> None:
        super().__init__(out, geotiff)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        self.next_id = 0

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        # RefSegRS has one image file per id: the first ref's image is written, later refs of the
        # same scene link to it (or copy, where links are not possible)
        first: Path | None = None
        for mask, texts, _ in _refs(scene):
            ref_id = str(self.next_id)
            self.next_id += 1
            image_path = self.out / "images" / f"{ref_id}.tif"
            if first is None:
                self.save_image(image_path, scene.image, format="TIFF")
                first = image_path
            else:
                try:
                    os.link(first, image_path)
                except OSError:
                    shutil.copyfile(first, image_path)
            Image.fromarray(mask.astype(np.uint8) * 255).save(self.out / "masks" / f"{ref_id}.tif", format="TIFF",
                                                              compression="tiff_adobe_deflate")
            self.lines[split].extend(f"{ref_id} {text}" for text in texts)

    def finish(self) -> dict[str, str]:
        return self.write_split_lines("output_phrase_{}.txt")


class _JsonlWriter(_Writer):
    owns = ("images", "masks", "data.jsonl")

    def __init__(self, out: Path, geotiff: bool = False) -> None:
        super().__init__(out, geotiff)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        image_rel = f"images/{index:05d}.{'tif' if self.geotiff else 'png'}"
        self.save_image(self.out / image_rel, scene.image, compress_level=1)
        for k, (mask, texts, _) in enumerate(_refs(scene)):
            mask_rel = f"masks/{index:05d}_{k}.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(self.out / mask_rel)
            for j, text in enumerate(texts):
                self.records.append({"image": image_rel, "mask": mask_rel, "text": text, "split": split,
                                     "id": f"{index:05d}_{k}_{j}"})

    def finish(self) -> dict[str, str]:
        path = self.out / "data.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        return {"jsonl": str(path)}


class _RISBenchWriter(_Writer):
    """RISBench as RSRefSeg 2 distributes it: one JSON line per expression with the mask as a COCO
    RLE, one file per split, the images in ``images/``."""

    owns = ("images", *(f"risbench_{split}.jsonl" for split in SPLIT_NAMES))

    def __init__(self, out: Path, geotiff: bool = False) -> None:
        super().__init__(out, geotiff)
        (out / "images").mkdir(parents=True, exist_ok=True)

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        file_name = f"{split}_{index:05d}.{'tif' if self.geotiff else 'png'}"
        self.save_image(self.out / "images" / file_name, scene.image, compress_level=1)
        for k, (mask, texts, _) in enumerate(_refs(scene)):
            # a target keeps its object index in the id (as before); absent refs count on from the objects
            ref_key = scene.targets[k][0] if k < len(scene.targets) else len(scene.objects) + k
            segmentation = _rle(mask)
            self.lines[split].extend(
                json.dumps({"split": split, "image_id": f"{split}_{index:05d}_{ref_key}", "sent": text,
                            "file_name": file_name, "segmentation": segmentation})
                for text in texts)

    def finish(self) -> dict[str, str]:
        return self.write_split_lines("risbench_{}.jsonl")


#: the writer of each format
WRITERS = {"rrsisd": _RRSISDWriter, "refsegrs": _RefSegRSWriter, "jsonl": _JsonlWriter, "risbench": _RISBenchWriter}
#: the top-level entries of an output folder that synth writes, in any format: what an overwrite replaces
OWNED_NAMES = frozenset(name for writer in WRITERS.values() for name in writer.owns)
