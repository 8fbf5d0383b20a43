"""Scene figures: how well answers to sentences about a whole scene find their object, on mosaics
of generated scenes (:func:`rs2sam2.data.synth.make_mosaic`).

Used by ``rs2sam2 demo`` (the ``scenes`` figures of its report.json and the scene rows of its
gallery) and by ``benchmarks/scene_search.py`` (the same jobs through ``rs2sam2 predict --batch``,
mode against mode). A job is one sentence on one mosaic: a target's first sentence, written at the
mosaic's scale ("the leftmost red car", "the white tank at the top right"), or an absent sentence,
which describes nothing in the mosaic. The figures of a set of answers (:func:`score`):

* ``mIoU`` and ``iou_at_0.5`` (percent) over the target sentences;
* ``outside_cell_pct``: the share of the painted pixels that lie outside the target's own cell (the
  generated scene it was drawn in): how much of an answer lands in the wrong place;
* ``absent_empty_pct``: the share of absent sentences answered with an empty mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .data.synth import make_mosaic

__all__ = ["MosaicJob", "mosaic_jobs", "score"]


@dataclass
class MosaicJob:
    """One sentence on one mosaic. ``target`` is the object's mask (None for an absent sentence),
    ``cell`` the ``(row, column)`` of the scene it lies in, ``size`` the side of a cell."""

    name: str
    image: np.ndarray
    text: str
    target: np.ndarray | None
    cell: tuple[int, int] | None
    size: int

    @property
    def absent(self) -> bool:
        return self.target is None

    def cell_window(self) -> tuple[slice, slice]:
        """The target's cell as ``(rows, columns)`` slices of the mosaic."""
        row, col = self.cell
        return slice(row * self.size, (row + 1) * self.size), slice(col * self.size, (col + 1) * self.size)


def mosaic_jobs(count: int, seed: int, ks: Sequence[int] = (3, 4), size: int = 256) -> list[MosaicJob]:
    """The jobs of ``count`` mosaics of each ``k x k`` in ``ks`` (seeds ``seed .. seed + count - 1``):
    per mosaic, each target's first sentence and every absent sentence."""
    jobs = []
    for k in ks:
        for m in range(count):
            mosaic = make_mosaic(seed=seed + m, k=k, size=size)
            for t, (index, sentences) in enumerate(mosaic.targets):
                obj = mosaic.objects[index]
                jobs.append(MosaicJob(f"{k}x{k}_{m}_t{t}", mosaic.image, sentences[0], obj.mask,
                                      (int(obj.cy) // size, int(obj.cx) // size), size))
            for a, (_, sentence) in enumerate(mosaic.absent):
                jobs.append(MosaicJob(f"{k}x{k}_{m}_a{a}", mosaic.image, sentence, None, None, size))
    return jobs


def score(jobs: Sequence[MosaicJob], masks: Sequence[np.ndarray], on_cell: bool = False) -> dict:
    """The figures of ``masks`` (one bool mask per job, on the mosaic; ``on_cell``: on the target's
    cell only, as when the sentence was answered on that cell alone) (module docstring)."""
    ious, outside, painted, empty = [], 0, 0, []
    for job, mask in zip(jobs, masks):
        if job.absent:
            empty.append(not mask.any())
            continue
        target = job.target[job.cell_window()] if on_cell else job.target
        if not on_cell:
            inside = np.zeros(mask.shape, bool)
            inside[job.cell_window()] = True
            outside += int((mask & ~inside).sum())
            painted += int(mask.sum())
        union = int((mask | target).sum())
        ious.append(float((mask & target).sum() / union) if union else 1.0)
    return {"targets": len(ious), "mIoU": round(100 * float(np.mean(ious)), 1) if ious else None,
            "iou_at_0.5": round(100 * float(np.mean(np.asarray(ious) >= 0.5)), 1) if ious else None,
            "outside_cell_pct": None if on_cell else round(100 * outside / max(1, painted), 1),
            "absent": len(empty), "absent_empty_pct": round(100 * float(np.mean(empty)), 1) if empty else None}
