"""The generator's vocabulary and scene model: object classes with their nouns and colours, the
painted objects and the scenes they make up. Shared by the drawing (:mod:`.scenes`), the sentences
(:mod:`.sentences`), the mosaics (:mod:`.mosaic`) and the dataset writers (:mod:`.writers`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CLASSES", "COLOURS", "ClassSpec", "Scene", "SceneObject"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (236, 236, 230),
    "gray": (160, 160, 166),
    "black": (30, 30, 34),
    "red": (188, 44, 40),
    "blue": (46, 86, 186),
    "green": (52, 146, 66),
    "yellow": (230, 200, 52),
    "brown": (112, 72, 44),
    "orange": (228, 126, 40),
}


@dataclass(frozen=True)
class ClassSpec:
    """An object class: its nouns (synonyms), the colours it comes in, and how it is drawn."""

    nouns: tuple[str, ...]
    colours: tuple[str, ...]
    shape: str
    rgb_override: dict[str, tuple[int, int, int]] = field(default_factory=dict)


CLASSES: dict[str, ClassSpec] = {
    "storage tank": ClassSpec(("storage tank", "oil tank", "tank"), ("white", "gray", "red", "green"), "circle"),
    "building": ClassSpec(("building", "house"), ("white", "gray", "red", "blue", "brown", "orange"), "rect"),
    "vehicle": ClassSpec(("vehicle", "car"), ("white", "black", "red", "blue", "gray", "yellow"), "vehicle"),
    "ship": ClassSpec(("ship", "boat"), ("white", "gray", "red", "blue"), "ship"),
    "plane": ClassSpec(("airplane", "plane"), ("white", "gray"), "plane"),
    "pool": ClassSpec(("swimming pool", "pool"), ("blue",), "pool", {"blue": (70, 160, 214)}),
}


@dataclass
class SceneObject:
    """One painted object. ``mask`` is full-image bool; ``cx, cy`` its centroid in pixels."""

    cls: str
    colour: str
    mask: np.ndarray
    cx: float
    cy: float
    area: int
    road_distance: float  # pixels from the nearest road; inf when the scene has none


@dataclass
class Scene:
    """A generated image, its objects, the targets ``(object index, [expressions])`` and the
    ``absent`` sentences ``(class named, sentence)``, which describe no object of the image (their
    target is empty)."""

    image: np.ndarray
    objects: list[SceneObject]
    targets: list[tuple[int, list[str]]]
    num_roads: int
    absent: list[tuple[str, str]] = field(default_factory=list)  # (class named, sentence): no such object here
