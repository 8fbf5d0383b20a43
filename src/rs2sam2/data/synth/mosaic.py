"""Mosaics: K x K generated scenes side by side, described at the scale of the whole mosaic.

A GIS analyst's sentence is about the scene, not about a tile: "the largest white storage tank at the
top right" refers to the whole raster. A mosaic is the generator's stand-in for such a scene: ``K * K``
scenes of ``size`` pixels (:func:`.scenes.make_scene`) laid out row by row into one
``(K * size)``-pixel square image. Its sentences are written by the generator's own rules
(:func:`.sentences.describe`: colour, size, thirds of the image, leftmost, largest...) applied to
every object of the mosaic in the mosaic's frame, so each one identifies exactly one object in the
whole mosaic. Road words are left out (a cell's road says nothing about the mosaic's). Each mosaic
also carries absent sentences (:func:`.sentences.absent_sentence`), which describe no object of it
and whose target is empty.

From Python::

    from rs2sam2.data.synth import make_mosaic
    mosaic = make_mosaic(seed=0, k=3, size=256)      # a Scene
    mosaic.image                                      # (768, 768, 3) uint8 RGB
    for index, sentences in mosaic.targets:           # each target object and its sentences
        obj = mosaic.objects[index]                   # obj.mask: (768, 768) bool; obj.cx, obj.cy
        cell = (int(obj.cy) // 256, int(obj.cx) // 256)   # (row, column) of its cell
    mosaic.absent                                     # [(class, sentence)]: no such object here
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ...errors import ConfigError
from .scenes import make_scene
from .sentences import absent_sentence, choose_targets
from .vocab import Scene, SceneObject

__all__ = ["MAX_MOSAIC_SIDE", "iter_mosaics", "make_mosaic", "mosaic_from"]

#: largest side (pixels) of a mosaic: ``k * size`` above it is refused before any work
MAX_MOSAIC_SIDE = 4096


def _shifted(obj: SceneObject, row: int, col: int, size: int, side: int) -> SceneObject:
    """``obj`` of the cell at (row, col) in the mosaic's frame (mask, centroid; no road distance)."""
    mask = np.zeros((side, side), bool)
    mask[row * size:(row + 1) * size, col * size:(col + 1) * size] = obj.mask
    return SceneObject(cls=obj.cls, colour=obj.colour, mask=mask, cx=obj.cx + col * size, cy=obj.cy + row * size,
                       area=obj.area, road_distance=float("inf"))


def mosaic_from(cells: list[Scene], k: int, rng: np.random.Generator, num_absent: int = 1,
                all_targets: bool = False) -> Scene | None:
    """Lay ``k * k`` scenes of one size out row by row and describe the result; None when no object
    of the mosaic can be singled out in it."""
    size = cells[0].image.shape[0]
    side = k * size
    image = np.zeros((side, side, 3), np.uint8)
    objects: list[SceneObject] = []
    for n, cell in enumerate(cells):
        row, col = divmod(n, k)
        image[row * size:(row + 1) * size, col * size:(col + 1) * size] = cell.image
        objects.extend(_shifted(obj, row, col, size, side) for obj in cell.objects)
    targets = choose_targets(objects, side, 0, rng, all_targets)
    if not targets:
        return None
    absent = [a for a in (absent_sentence(objects, rng) for _ in range(num_absent)) if a is not None]
    return Scene(image=image, objects=objects, targets=targets, num_roads=0, absent=list(dict.fromkeys(absent)))


def _check(k: int, size: int) -> None:
    if k < 1 or k * size > MAX_MOSAIC_SIDE:
        raise ConfigError(f"a mosaic of {k} x {k} scenes of {size} px is {k * size} px a side; the most is "
                         f"{MAX_MOSAIC_SIDE} (k >= 1)")


def _draw(rng: np.random.Generator, k: int, size: int, num_absent: int, all_targets: bool,
          max_tries: int = 20) -> Scene:
    for _ in range(max_tries):
        cells = [make_scene(rng, size) for _ in range(k * k)]
        mosaic = mosaic_from(cells, k, rng, num_absent, all_targets)
        if mosaic is not None:
            return mosaic
    raise RuntimeError("could not generate a mosaic with a describable object")  # pragma: no cover


def make_mosaic(seed: int, k: int, size: int = 256, num_absent: int = 1, all_targets: bool = False) -> Scene:
    """One mosaic of ``k x k`` scenes of ``size`` px, seeded by ``seed`` (module docstring): a
    :class:`~rs2sam2.data.synth.Scene` whose ``image`` is ``(k*size, k*size, 3)`` uint8 RGB, whose
    ``targets`` are ``(object index, [sentences])`` with 1-3 targets (every describable object with
    ``all_targets``), and whose ``absent`` holds ``num_absent`` sentences describing nothing in it."""
    _check(k, size)
    return _draw(np.random.default_rng([seed, k, size]), k, size, num_absent, all_targets)


def iter_mosaics(num_images: int, seed: int, k: int, size: int = 256, num_absent: int = 1,
                 all_targets: bool = False) -> Iterator[Scene]:
    """The mosaics :func:`~rs2sam2.data.synth.generate` writes with ``mosaic=k``, in order."""
    _check(k, size)
    rng = np.random.default_rng([seed, k, size])
    for _ in range(num_images):
        yield _draw(rng, k, size, num_absent, all_targets)
