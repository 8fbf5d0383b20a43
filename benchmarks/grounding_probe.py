"""Which words of the sentence does a checkpoint follow? Probes on the synthetic scenes it was trained on.

The mIoU of a run says how often the mask is right, not why it is wrong. This script regenerates the
scenes of ``rs2sam2 synth`` (pass the ``--num-images`` and ``--seed`` of the dataset, so that every
object's mask is known, not only the targets') and, for the expressions of one split:

* **word swaps**: replaces the words of one kind (position: left <-> right, top <-> bottom, ...; the
  class noun; the colour) with others of that kind and compares the masks before and after (IoU).
  Near 1 means the model ignores that kind of word; a model that reads it moves its mask.
* **ranking**: for each other object of the scene, whether the mean probability inside the target
  is above the mean inside that object, for the final mask and for the MPG prior (the union
  encoder's dense prompt), split into objects of the target's class and of other classes. 0.5 is
  chance.
* **pointing**: whether the MPG's highest patch-grid cell holds target pixels (the grounding loss's
  cells, :func:`rs2sam2.losses.grounding_cells`), per class, with the mask IoU at the model's input
  size where it points at the target and where it does not: how much of the mIoU the pointing decides.

Usage::

    python3 benchmarks/grounding_probe.py CHECKPOINT --num-images 1000 --seed 0 [--split test]
        [--scenes 60] [--json OUT]

``rs2sam2 demo`` generates its data with ``--num-images 1000 --seed 0``; its checkpoint is the one
named in its ``report.json``. Figures of past runs are in benchmarks/README.md (issue 14).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rs2sam2.data.synth import CLASSES, COLOURS, assign_splits, iter_scenes
from rs2sam2.data.transforms import resize_mask
from rs2sam2.fsutil import atomic_write_text
from rs2sam2.losses import grounding_cells
from rs2sam2.metrics import intersection_union
from rs2sam2.predict import Predictor

_PAIRS = [("left", "right"), ("leftmost", "rightmost"), ("top", "bottom"), ("upper", "lower"),
          ("topmost", "bottommost")]
POSITION = {**dict(_PAIRS), **{b: a for a, b in _PAIRS}}


# every noun of a class becomes the first noun of the next class; every colour the next colour
_CLASS_ORDER = list(CLASSES)
NOUN = {noun: CLASSES[_CLASS_ORDER[(k + 1) % len(_CLASS_ORDER)]].nouns[0]
        for k, cls in enumerate(_CLASS_ORDER) for noun in CLASSES[cls].nouns}
_COLOUR_ORDER = list(COLOURS)
COLOUR = {c: _COLOUR_ORDER[(k + 1) % len(_COLOUR_ORDER)] for k, c in enumerate(_COLOUR_ORDER)}
SWAPS = {"position": POSITION, "noun": NOUN, "colour": COLOUR}


def swap_words(text: str, table: dict[str, str]) -> str:
    """``text`` with every whole word or phrase of ``table`` replaced at once (longest phrase first)."""
    pattern = "|".join(re.escape(k) for k in sorted(table, key=len, reverse=True))
    return re.sub(rf"\b(?:{pattern})\b", lambda m: table[m.group(0)], text)


def _resize(mask: np.ndarray, side: int) -> np.ndarray:
    """Share of each cell of a ``side`` x ``side`` grid covered by ``mask`` (bilinear, like the model's input)."""
    return np.asarray(Image.fromarray(mask.astype(np.float32)).resize((side, side), Image.BILINEAR))


def _mean_inside(prob: np.ndarray, mask: np.ndarray) -> float:
    cover = _resize(mask, prob.shape[0])
    return float((prob * cover).sum() / max(cover.sum(), 1e-6))


@torch.inference_mode()
def points_at(predictor: Predictor, image: np.ndarray, text: str, target: np.ndarray) -> bool:
    """Whether the MPG's highest grid cell for ``text`` holds a pixel of ``target`` (at the model's input size)."""
    _, evf = predictor.preprocess(image)
    grid = predictor.model.pointing_logits(evf, *predictor.tokenize([text]))
    cells = grounding_cells(resize_mask(target, predictor.config.image_size)[None], grid.shape[-1])
    return bool(cells[0, int(grid.flatten(1).argmax(1))])


def _pointing_summary(rows: list[tuple[str, bool, float]]) -> dict:
    """(class, points at the target, mask IoU) per expression -> shares and mIoUs, overall and per class."""
    def summary(sel):
        hit = [iou for _, p, iou in sel if p]
        miss = [iou for _, p, iou in sel if not p]
        return {"n": len(sel), "share": round(len(hit) / len(sel), 3),
                "mIoU": round(100 * float(np.mean([iou for _, _, iou in sel])), 2),
                "mIoU_pointed": round(100 * float(np.mean(hit)), 2) if hit else None,
                "mIoU_missed": round(100 * float(np.mean(miss)), 2) if miss else None}
    classes = sorted({c for c, _, _ in rows})
    return {"all": summary(rows), "by_class": {c: summary([r for r in rows if r[0] == c]) for c in classes}} if rows else {}


def probe(predictor: Predictor, num_images: int, seed: int, split: str = "test", max_scenes: int = 60) -> dict:
    """The word-swap IoUs, ranking shares and pointing (see the module docstring) over the first
    ``max_scenes`` scenes of ``split``."""
    split_of = assign_splits(num_images, seed)
    swap_iou: dict[str, list[float]] = defaultdict(list)
    above: dict[tuple[str, str], list[float]] = defaultdict(list)
    pointing: list[tuple[str, bool, float]] = []
    scenes = expressions = 0
    for index, scene in enumerate(iter_scenes(num_images, seed)):
        if split_of[index] != split:
            continue
        for target_index, texts in scene.targets:
            target = scene.objects[target_index]
            for text in texts:
                variants = {kind: swap_words(text, table) for kind, table in SWAPS.items()}
                variants = {kind: t for kind, t in variants.items() if t != text}
                answers = predictor.answers(scene.image, [text, *variants.values()])
                prob = torch.sigmoid(answers[0].logits).numpy()
                masks = [a.logits.numpy() > predictor.threshold for a in answers]
                for kind, mask in zip(variants, masks[1:]):
                    inter, union = intersection_union(masks[0], mask)
                    swap_iou[kind].append(inter / union if union else 1.0)
                inter, union = intersection_union(masks[0], resize_mask(target.mask, masks[0].shape[0]).numpy() > 0)
                pointing.append((target.cls, points_at(predictor, scene.image, text, target.mask),
                                 inter / union if union else 0.0))
                maps = {"mask": prob}
                if answers[0].prior is not None:
                    maps["prior"] = answers[0].prior.numpy()
                for name, m in maps.items():
                    inside = _mean_inside(m, target.mask)
                    for k, other in enumerate(scene.objects):
                        if k != target_index:
                            group = "same_class" if other.cls == target.cls else "other_class"
                            above[(name, group)].append(float(inside > _mean_inside(m, other.mask)))
                expressions += 1
        scenes += 1
        if scenes >= max_scenes:
            break
    return {
        "split": split, "scenes": scenes, "expressions": expressions,
        "swap_mask_iou": {k: {"mean": round(float(np.mean(v)), 3), "n": len(v)} for k, v in swap_iou.items()},
        "target_above_other": {f"{name}/{group}": {"share": round(float(np.mean(v)), 3), "pairs": len(v)}
                               for (name, group), v in sorted(above.items())},
        "pointing": _pointing_summary(pointing),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a checkpoint folder (e.g. the one report.json of rs2sam2 demo names)")
    p.add_argument("--num-images", type=int, required=True, help="--num-images of the synth dataset it trained on")
    p.add_argument("--seed", type=int, required=True, help="--seed of that dataset")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--scenes", type=int, default=60, help="first N scenes of the split (default 60)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained(args.checkpoint, device="cpu", precision="fp32")
    result = {"checkpoint": str(args.checkpoint), "num_images": args.num_images, "seed": args.seed,
              **probe(predictor, args.num_images, args.seed, args.split, args.scenes)}
    for kind, v in result["swap_mask_iou"].items():
        print(f"mask IoU before/after swapping {kind} words: {v['mean']:.3f} ({v['n']} sentences)")
    for key, v in result["target_above_other"].items():
        print(f"target above another object ({key}): {v['share']:.3f} ({v['pairs']} pairs)")
    pointing = result["pointing"]
    for name, v in [("all", pointing["all"]), *pointing["by_class"].items()] if pointing else []:
        print(f"MPG points at the target ({name}): {v['share']:.3f} of {v['n']} expressions; mask mIoU {v['mIoU']:.1f}, "
              f"{v['mIoU_pointed']} where it points at it, {v['mIoU_missed']} where not")
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
