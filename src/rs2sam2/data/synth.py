"""Procedural aerial-like scenes with referring expressions, written in the real dataset layouts.

Each scene is textured ground (grass, soil or urban), 0-2 straight roads (sometimes crossing at a
roundabout), some trees, and 2-6 objects -- storage tanks, buildings, vehicles, ships, planes,
swimming pools -- each with a colour, a size and a position. Objects never touch, so the mask of
an object is exactly the set of pixels painted with it.

For 1-3 target objects per scene (every describable object with ``all_targets``: more training
expressions from the same scenes), 1-2 expressions are written from templates, for instance "the
large white storage tank at the top left", "the red car", "the building closest to the road",
"the tank on the right". An expression only states what is true, and is only kept when it picks
out exactly that object among the objects of its class (checked on the attributes; see
:func:`describe`).

``generate(format, out, num_images, seed)`` writes the scenes as RRSIS-D, RefSegRS, JSONL or
RISBench on disk so that the real readers are exercised. Everything is drawn from one seeded
``numpy.random.Generator``: the same seed gives the same files.

The output folder must be empty or absent; ``overwrite=True`` (``--overwrite``) replaces a dataset
written there before. The dataset is written into a temporary folder inside the output folder and
moved into place only when complete, so a failed or interrupted run leaves the folder as it was. An
overwrite replaces every top-level entry that synth writes in any format (:data:`OWNED_NAMES`: the
image and mask folders, the annotation files) and keeps anything else, so no stale image of the
old dataset stays beside the new one.

Command line: ``rs2sam2 synth --format rrsisd --out OUT --num-images 200 --seed 0``.
"""

from __future__ import annotations

import argparse
import errno
import itertools
import json
import math
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError, OutputError

__all__ = ["CLASSES", "COLOURS", "OWNED_NAMES", "Scene", "SceneObject", "assign_splits", "describe", "generate",
           "iter_scenes", "make_scene"]

FORMATS = ("rrsisd", "refsegrs", "jsonl", "risbench")
SPLIT_NAMES = ("train", "val", "test")
DEFAULT_SPLITS = (0.7, 0.15, 0.15)  # shares of the images
MIN_IMAGE_SIZE = 32

# --------------------------------------------------------------------------------------------
# vocabulary
# --------------------------------------------------------------------------------------------

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

GROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (86, 118, 60),
    "soil": (152, 128, 96),
    "urban": (124, 122, 118),
}
ASPHALT = (72, 72, 76)
TREE = (40, 72, 36)
MIN_CONTRAST = 70.0  # minimum RGB distance between an object colour and the ground


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

# --------------------------------------------------------------------------------------------
# scene model
# --------------------------------------------------------------------------------------------


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
    """A generated image, its objects, and the targets: ``(object index, [expressions])``."""

    image: np.ndarray
    objects: list[SceneObject]
    targets: list[tuple[int, list[str]]]
    num_roads: int


@dataclass
class _Road:
    """A road as an analytic distance field (straight band or ring)."""

    kind: str  # "h" | "v" | "ring"
    centre: tuple[float, float]  # band: (coordinate across, unused); ring: (cx, cy)
    width: float
    radius: float = 0.0

    def distance(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        half = self.width / 2
        if self.kind == "h":
            d = np.abs(ys - self.centre[0])
        elif self.kind == "v":
            d = np.abs(xs - self.centre[0])
        else:
            d = np.abs(np.hypot(xs - self.centre[0], ys - self.centre[1]) - self.radius)
        return np.maximum(d - half, 0.0)


# --------------------------------------------------------------------------------------------
# drawing helpers
# --------------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, amplitude: float) -> np.ndarray:
    """Low-frequency noise: a coarse random grid upsampled bicubically (cheap Perlin stand-in)."""
    grid = rng.normal(0.0, 1.0, (cells, cells)).astype(np.float32)
    up = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
    return np.asarray(up) * amplitude


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean pixel noise with standard deviation ``sigma``; uniform because it is several times
    cheaper to draw than Gaussian noise, and nobody can tell the difference in a texture."""
    return (rng.random(shape, dtype=np.float32) - 0.5) * np.float32(sigma * np.sqrt(12.0))


def _rotate(points: np.ndarray, angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = np.cos(angle), np.sin(angle)
    rot = points @ np.array([[c, s], [-s, c]])
    return [(float(x + cx), float(y + cy)) for x, y in rot]


def _rect(w: float, h: float) -> np.ndarray:
    return np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])


def _shape_polygons(shape: str, dims: dict[str, float], angle: float, cx: float, cy: float) -> list:
    """Polygons (lists of points) or ("ellipse", bbox) / ("rounded", bbox, r) items for a shape."""
    if shape == "circle":
        r = dims["r"]
        return [("ellipse", (cx - r, cy - r, cx + r, cy + r))]
    if shape == "pool":
        w, h = dims["w"], dims["h"]
        return [("rounded", (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), min(w, h) * 0.25)]
    if shape in ("rect", "vehicle"):
        return [_rotate(_rect(dims["w"], dims["h"]), angle, cx, cy)]
    if shape == "ship":
        length, width = dims["l"], dims["w"]
        pts = np.array([[-length / 2, -width / 2], [length / 2 - width, -width / 2], [length / 2, 0],
                        [length / 2 - width, width / 2], [-length / 2, width / 2]])
        return [_rotate(pts, angle, cx, cy)]
    if shape == "plane":
        span = dims["span"]
        fuselage = _rect(span, span * 0.14)
        wings = _rect(span * 0.2, span) + np.array([span * 0.08, 0])
        tail = _rect(span * 0.1, span * 0.4) + np.array([-span * 0.42, 0])
        return [_rotate(p, angle, cx, cy) for p in (fuselage, wings, tail)]
    raise ValueError(f"unknown shape {shape!r}")


def _items_bbox(items: list) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of shape items."""
    xs, ys = [], []
    for item in items:
        if isinstance(item, tuple):  # ("ellipse", box) or ("rounded", box, radius)
            x0, y0, x1, y1 = item[1]
            xs += [x0, x1]
            ys += [y0, y1]
        else:
            xs += [p[0] for p in item]
            ys += [p[1] for p in item]
    return min(xs), min(ys), max(xs), max(ys)


def _raster_local(items: list, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """Rasterise shape items into a (height, width) bool window whose top-left is (x0, y0)."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for item in items:
        if isinstance(item, tuple):
            bx0, by0, bx1, by1 = item[1]
            box = (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0)
            if item[0] == "ellipse":
                draw.ellipse(box, fill=1)
            else:
                draw.rounded_rectangle(box, radius=item[2], fill=1)
        else:
            draw.polygon([(x - x0, y - y0) for x, y in item], fill=1)
    return np.asarray(canvas, dtype=bool)


def _dims(cls: str, large: bool, rng: np.random.Generator, sc: float) -> dict[str, float]:
    """Random dimensions (pixels) of an object of ``cls``; ``large`` picks the upper size range."""
    u = lambda lo, hi: float(rng.uniform(lo, hi)) * sc  # noqa: E731
    if cls == "storage tank":
        return {"r": u(13, 19) if large else u(6, 9)}
    if cls == "building":
        return {"w": u(36, 52), "h": u(26, 36)} if large else {"w": u(16, 24), "h": u(12, 18)}
    if cls == "vehicle":
        return {"w": u(14, 17), "h": u(6, 7.5)} if large else {"w": u(8, 10), "h": u(4, 5)}
    if cls == "ship":
        length = u(38, 54) if large else u(18, 26)
        return {"l": length, "w": length * float(rng.uniform(0.22, 0.3))}
    if cls == "plane":
        return {"span": u(38, 50) if large else u(20, 27)}
    if cls == "pool":
        return {"w": u(28, 38), "h": u(18, 24)} if large else {"w": u(14, 20), "h": u(10, 13)}
    raise ValueError(cls)


# --------------------------------------------------------------------------------------------
# scene generation
# --------------------------------------------------------------------------------------------


def _make_roads(rng: np.random.Generator, size: int, sc: float) -> list[_Road]:
    n = int(rng.choice([0, 1, 2], p=[0.3, 0.4, 0.3]))
    width = float(rng.uniform(10, 16)) * sc
    lo, hi = 0.2 * size, 0.8 * size
    if n == 0:
        return []
    if n == 1:
        return [_Road(str(rng.choice(["h", "v"])), (float(rng.uniform(lo, hi)), 0.0), width)]
    y, x = float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi))
    roads = [_Road("h", (y, 0.0), width), _Road("v", (x, 0.0), width)]
    if rng.random() < 0.5:  # a roundabout at the crossing
        roads.append(_Road("ring", (x, y), width * 0.9, radius=float(rng.uniform(16, 22)) * sc))
    return roads


def _paint_ground(rng: np.random.Generator, size: int, ground: str) -> np.ndarray:
    base = np.asarray(GROUNDS[ground], np.float32)
    low = _smooth_noise(rng, size, 6, 14.0)[..., None]
    fine = _noise(rng, (size, size, 3), 6.0 if ground != "urban" else 9.0)
    tint = _smooth_noise(rng, size, 4, 6.0)[..., None] * np.array([1.0, -0.6, 0.4], np.float32)
    return base + low + fine + tint


def _paint_roads(img: np.ndarray, roads: list[_Road], xs: np.ndarray, ys: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint the roads; returns (distance-to-road map, road-or-island keep-out mask)."""
    size = img.shape[0]
    if not roads:
        return np.full((size, size), np.inf, np.float32), np.zeros((size, size), bool)
    # xs is a (1, size) row and ys a (size, 1) column: straight roads cost one row of work
    dist = np.full((size, size), np.inf, np.float32)
    for r in roads:
        np.minimum(dist, r.distance(xs, ys), out=dist)
    road = dist <= 0
    keep_out = road.copy()
    ring = next((r for r in roads if r.kind == "ring"), None)
    if ring is not None:
        # the central island is ground again; no road passes through it, and no object goes there
        island = np.hypot(xs - ring.centre[0], ys - ring.centre[1]) < ring.radius - ring.width / 2
        road &= ~island
        keep_out |= island
    asphalt = np.asarray(ASPHALT, np.float32) + _noise(rng, (size, size, 1), 4.0)
    np.copyto(img, asphalt, where=road[..., None])
    for r in roads:  # dashed centre lines on the straight roads
        if r.kind == "ring":
            continue
        across, along = (ys, xs) if r.kind == "h" else (xs, ys)
        dash = (np.abs(across - r.centre[0]) < 0.8) & ((along // 8) % 2 == 0) & road
        if ring is not None:
            dash &= np.hypot(xs - ring.centre[0], ys - ring.centre[1]) > ring.radius + ring.width
        img[dash] = (205, 205, 200)
    return dist, keep_out


def _paint_trees(img: np.ndarray, rng: np.random.Generator, keep_out: np.ndarray, sc: float) -> None:
    size = img.shape[0]
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 14))):
        r = float(rng.uniform(3, 7)) * sc
        x, y = rng.uniform(0, size, 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=1)
    trees = np.asarray(canvas, bool) & ~keep_out
    img[trees] = np.asarray(TREE, np.float32) + _noise(rng, (int(trees.sum()), 3), 8.0)


def _pick_colour(cls: str, ground: str, rng: np.random.Generator) -> str:
    spec = CLASSES[cls]
    ground_rgb = np.asarray(GROUNDS[ground], float)
    ok = [c for c in spec.colours
          if np.linalg.norm(np.asarray(spec.rgb_override.get(c, COLOURS[c]), float) - ground_rgb) >= MIN_CONTRAST]
    return str(rng.choice(ok or list(spec.colours)))


@dataclass
class _Placed:
    """A rasterised shape: ``local`` is its bool mask in the window starting at (x0, y0)."""

    local: np.ndarray
    x0: int
    y0: int

    @property
    def window(self) -> tuple[slice, slice]:
        h, w = self.local.shape
        return slice(self.y0, self.y0 + h), slice(self.x0, self.x0 + w)

    def full(self, size: int) -> np.ndarray:
        mask = np.zeros((size, size), bool)
        mask[self.window] = self.local
        return mask


def _place(cls: str, rng: np.random.Generator, size: int, sc: float, occupied: np.ndarray,
           roads: list[_Road], tries: int = 30) -> _Placed | None:
    """Rasterise ``cls`` somewhere free of ``occupied`` and wholly inside the image, or None."""
    large = bool(rng.random() < 0.5)
    dims = _dims(cls, large, rng, sc)
    shape = CLASSES[cls].shape
    straight = [r for r in roads if r.kind != "ring"]
    on_road = cls == "vehicle" and straight and rng.random() < 0.75
    margin = 2
    for _ in range(tries):
        if on_road:  # vehicles drive along a road, in a lane
            road = straight[int(rng.integers(len(straight)))]
            along = float(rng.uniform(0.05, 0.95)) * size
            lane = road.centre[0] + float(rng.choice([-1, 1])) * road.width * 0.22
            cx, cy = (along, lane) if road.kind == "h" else (lane, along)
            angle = 0.0 if road.kind == "h" else np.pi / 2
        else:
            cx, cy = rng.uniform(0, size, 2)
            angle = float(rng.uniform(0, np.pi)) if shape in ("vehicle", "ship", "plane") else (
                float(rng.choice([0.0, np.pi / 2, rng.uniform(-0.5, 0.5)])) if shape == "rect" else 0.0)
        items = _shape_polygons(shape, dims, angle, float(cx), float(cy))
        bx0, by0, bx1, by1 = _items_bbox(items)
        x0, y0, x1, y1 = int(np.floor(bx0)) - 1, int(np.floor(by0)) - 1, int(np.ceil(bx1)) + 2, int(np.ceil(by1)) + 2
        if x0 < margin or y0 < margin or x1 > size - margin or y1 > size - margin:
            continue  # keep the object whole inside the image
        local = _raster_local(items, x0, y0, x1 - x0, y1 - y0)
        if not local.any() or (local & occupied[y0:y1, x0:x1]).any():
            continue
        return _Placed(local, x0, y0)
    return None


def _grow(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a square of side 2*radius+1 (shifted ORs; no scipy needed)."""
    out = mask.copy()
    for shift in range(1, radius + 1):
        out[shift:] |= mask[:-shift]
        out[:-shift] |= mask[shift:]
    rows = out.copy()
    for shift in range(1, radius + 1):
        out[:, shift:] |= rows[:, :-shift]
        out[:, :-shift] |= rows[:, shift:]
    return out


def _stamp_grown(occupied: np.ndarray, placed: _Placed, radius: int) -> None:
    """``occupied |= dilate(placed shape, radius)``, working only around the shape."""
    padded = np.pad(placed.local, radius)
    grown = _grow(padded, radius)
    y0, x0 = placed.y0 - radius, placed.x0 - radius
    h, w = grown.shape
    cy0, cx0 = max(y0, 0), max(x0, 0)
    cy1, cx1 = min(y0 + h, occupied.shape[0]), min(x0 + w, occupied.shape[1])
    occupied[cy0:cy1, cx0:cx1] |= grown[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]


def _paint_object(img: np.ndarray, obj: SceneObject, placed: _Placed, rng: np.random.Generator,
                  sc: float) -> None:
    """Fill the object's pixels (and only those) with its colour plus a little detail."""
    spec = CLASSES[obj.cls]
    rgb = np.asarray(spec.rgb_override.get(obj.colour, COLOURS[obj.colour]), np.float32)
    rgb = rgb + rng.normal(0, 6, 3).astype(np.float32)
    m = placed.local
    window = img[placed.window]  # a view: writing to it paints the image
    n = int(m.sum())
    window[m] = rgb + _noise(rng, (n, 3), 4.0)
    # interior detail (roof tone, tank lid ring, windscreen, pool rim) stays inside the mask: it is
    # part of the object
    ys, xs = np.nonzero(m)
    lcx, lcy = obj.cx - placed.x0, obj.cy - placed.y0
    shade = 0.8 if obj.colour != "black" else 1.6
    if spec.shape == "circle":
        r = np.hypot(xs - lcx, ys - lcy)
        ring = np.abs(r - 0.6 * r.max()) < 0.9 * sc
        window[ys[ring], xs[ring]] = rgb * shade
    elif spec.shape == "rect":
        interior = ~_grow(~np.pad(m, 1), 1)[1:-1, 1:-1][ys, xs]  # rim stays light, roof a tone darker
        window[ys[interior], xs[interior]] *= 0.93
    elif spec.shape == "vehicle":
        centre = np.hypot(xs - lcx, ys - lcy) < 0.25 * np.sqrt(n)
        window[ys[centre], xs[centre]] = rgb * shade  # windscreen/roof
    elif spec.shape == "pool":
        rim = _grow(~np.pad(m, 1), 1)[1:-1, 1:-1][ys, xs]
        window[ys[rim], xs[rim]] = (225, 225, 220)


def _shadow(img: np.ndarray, masks: list[np.ndarray], sc: float) -> None:
    """Darken the ground down-right of every object (objects are painted over it afterwards)."""
    d = max(1, int(round(3 * sc)))
    union = np.any(masks, axis=0)
    shifted = np.zeros_like(union)
    shifted[d:, d:] = union[:-d, :-d]
    img[shifted & ~union] *= 0.6


def make_scene(rng: np.random.Generator, image_size: int = 256, max_tries: int = 20,
               all_targets: bool = False) -> Scene:
    """Generate one scene with at least one describable target (see module docstring)."""
    for _ in range(max_tries):
        scene = _try_scene(rng, image_size, all_targets)
        if scene is not None:
            return scene
    raise RuntimeError("could not generate a scene with a describable object")  # pragma: no cover


def _try_scene(rng: np.random.Generator, size: int, all_targets: bool = False) -> Scene | None:
    sc = size / 256.0
    ys, xs = np.ogrid[0:size, 0:size]
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    ground = str(rng.choice(list(GROUNDS)))
    img = _paint_ground(rng, size, ground)
    roads = _make_roads(rng, size, sc)
    road_dist, keep_out = _paint_roads(img, roads, xs, ys, rng)
    _paint_trees(img, rng, keep_out, sc)

    # a few classes per scene, so that most objects share a class with another one
    classes = list(rng.choice(list(CLASSES), size=int(rng.integers(1, 4)), replace=False))
    if "vehicle" in classes and not roads and rng.random() < 0.5:
        classes.remove("vehicle")
        classes = classes or ["building"]
    objects: list[SceneObject] = []
    placements: list[_Placed] = []
    # keep-out zones: around objects for everything; roads (plus a verge) for all but vehicles
    near_objects = np.zeros((size, size), bool)
    blocked = (road_dist < 3 * sc) | keep_out
    for _ in range(int(rng.integers(2, 7))):
        cls = str(rng.choice(classes))
        occupied = near_objects if cls == "vehicle" else near_objects | blocked
        placed = _place(cls, rng, size, sc, occupied, roads)
        if placed is None:
            continue
        _stamp_grown(near_objects, placed, max(2, int(3 * sc)))
        oy, ox = np.nonzero(placed.local)
        mask = placed.full(size)
        objects.append(SceneObject(cls=cls, colour=_pick_colour(cls, ground, rng), mask=mask,
                                   cx=float(ox.mean() + placed.x0), cy=float(oy.mean() + placed.y0),
                                   area=int(ox.size),
                                   road_distance=float(road_dist[placed.window][placed.local].min())
                                   if roads else float("inf")))
        placements.append(placed)
    if not objects:
        return None
    _shadow(img, [o.mask for o in objects if o.cls != "pool"] or [np.zeros((size, size), bool)], sc)
    for obj, placed in zip(objects, placements):
        _paint_object(img, obj, placed, rng, sc)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    num_straight = len([r for r in roads if r.kind != "ring"])
    options = {i: describe(objects, i, size, num_straight) for i in range(len(objects))}
    eligible = [i for i, c in options.items() if c]
    if not eligible:
        return None
    chosen = eligible if all_targets else rng.choice(eligible, size=min(len(eligible), int(rng.integers(1, 4))),
                                                     replace=False)
    targets = []
    for i in sorted(int(k) for k in chosen):
        candidates = options[i]
        n = 2 if len(candidates) > 1 and rng.random() < 0.6 else 1
        picks = rng.choice(len(candidates), size=n, replace=False)
        texts = [_render(candidates[int(k)], objects[i], rng, num_straight) for k in picks]
        targets.append((i, list(dict.fromkeys(texts))))  # drop an accidental duplicate sentence
    return Scene(image=image, objects=objects, targets=targets, num_roads=len(roads))


def iter_scenes(num_images: int, seed: int, image_size: int = 256, all_targets: bool = False) -> Iterator[Scene]:
    """The scenes :func:`generate` writes for ``(num_images, seed, image_size, all_targets)``, in order."""
    rng = np.random.default_rng(seed)
    for _ in range(num_images):
        yield make_scene(rng, image_size, all_targets=all_targets)


# --------------------------------------------------------------------------------------------
# referring expressions
# --------------------------------------------------------------------------------------------

H_BANDS = ("left", "center", "right")
V_BANDS = ("top", "middle", "bottom")


def _band(coord: float, size: int, names: tuple[str, str, str], margin: float) -> str | None:
    """Which third ``coord`` lies in, or None when it is within ``margin`` of a border."""
    third = size / 3
    k = min(int(coord // third), 2)
    if abs(coord - k * third) < margin and k > 0 or abs(coord - (k + 1) * third) < margin and k < 2:
        return None
    return names[k]


def _in_band(coord: float, size: int, names: tuple[str, str, str], name: str, margin: float) -> bool:
    """Could ``coord`` be read as being in band ``name``? (borderline counts for both sides)."""
    k = names.index(name)
    third = size / 3
    return k * third - margin <= coord <= (k + 1) * third + margin


@dataclass(frozen=True)
class Description:
    """A way to single out an object: attribute filters plus at most one selector.

    ``filters`` is a subset of ("size", "colour", "h", "v") with the object's values in ``values``;
    ``selector`` (within the filtered group of >= 2) is one of left/right/top/bottom/larger/smaller/
    near_road/far_road, and ``group`` the size of that group.
    """

    filters: tuple[str, ...]
    values: tuple[tuple[str, str], ...]
    selector: str | None = None
    group: int = 1


def describe(objects: Sequence[SceneObject], index: int, size: int, num_roads: int = 0) -> list[Description]:
    """Every description (filters + optional selector) that picks out exactly ``objects[index]``.

    Filters select within the target's class: its colour, its third of the image horizontally
    (``h``) and vertically (``v``; objects near a third's border count as in both neighbours), and
    ``size`` ("large"/"small": at least 1.5x larger/smaller than every other object of the class).
    A description without a selector is valid when the filters leave only the target. Selectors
    (leftmost, upper, larger, closest to the road...) pick the target from a filtered group of two
    or more when it wins by a clear margin.
    """
    sc = size / 256.0
    band_margin, pos_gap, road_gap = 6 * sc, 12 * sc, 10 * sc
    t = objects[index]
    same = [o for o in objects if o.cls == t.cls]
    others = [o for o in same if o is not t]

    values: dict[str, str] = {"colour": t.colour}
    if others:
        if all(t.area >= 1.5 * o.area for o in others):
            values["size"] = "large"
        elif all(1.5 * t.area <= o.area for o in others):
            values["size"] = "small"
    h = _band(t.cx, size, H_BANDS, band_margin)
    v = _band(t.cy, size, V_BANDS, band_margin)
    if h is not None:
        values["h"] = h
    if v is not None:
        values["v"] = v

    def keeps(o: SceneObject, key: str) -> bool:
        if o is t:
            return True
        if key == "colour":
            return o.colour == t.colour
        if key == "size":
            return False  # only the target is the class's clear largest/smallest
        if key == "h":
            return _in_band(o.cx, size, H_BANDS, values["h"], band_margin)
        return _in_band(o.cy, size, V_BANDS, values["v"], band_margin)

    out: list[Description] = []
    keys = [k for k in ("size", "colour", "h", "v") if k in values]
    for n in range(len(keys) + 1):
        for subset in itertools.combinations(keys, n):
            if _awkward_region(subset, values):
                continue
            group = [o for o in same if all(keeps(o, k) for k in subset)]
            vals = tuple((k, values[k]) for k in subset)
            if len(group) == 1:
                out.append(Description(subset, vals))
            elif len(subset) <= 1 and "size" not in subset:
                for sel in _selectors(t, group, num_roads, pos_gap, road_gap):
                    # "the tank on the left on the left side of the image" says the same thing twice
                    if ("h" in subset and sel in ("left", "right")) or ("v" in subset and sel in ("top", "bottom")):
                        continue
                    out.append(Description(subset, vals, sel, len(group)))
    return out


def _awkward_region(subset: tuple[str, ...], values: dict[str, str]) -> bool:
    """A lone "center" column or "middle" row reads badly ("the tank in the middle column")."""
    if "h" in subset and "v" not in subset and values["h"] == "center":
        return True
    return "v" in subset and "h" not in subset and values["v"] == "middle"


def _selectors(t: SceneObject, group: list[SceneObject], num_roads: int, pos_gap: float,
               road_gap: float) -> list[str]:
    rest = [o for o in group if o is not t]
    found = []
    tests: list[tuple[str, Callable[[SceneObject], float], float, bool]] = [
        ("left", lambda o: o.cx, pos_gap, True),
        ("right", lambda o: o.cx, pos_gap, False),
        ("top", lambda o: o.cy, pos_gap, True),
        ("bottom", lambda o: o.cy, pos_gap, False),
    ]
    if num_roads:
        tests += [("near_road", lambda o: o.road_distance, road_gap, True),
                  ("far_road", lambda o: o.road_distance, road_gap, False)]
    for name, key, gap, smallest in tests:
        if smallest and all(key(t) + gap <= key(o) for o in rest):
            found.append(name)
        if not smallest and all(key(t) >= key(o) + gap for o in rest):
            found.append(name)
    if all(t.area >= 1.4 * o.area for o in rest):
        found.append("larger")
    if all(1.4 * t.area <= o.area for o in rest):
        found.append("smaller")
    return found


_REGION_BOTH = {
    ("top", "left"): ["at the top left", "in the top left corner"],
    ("top", "center"): ["at the top center", "at the top in the middle"],
    ("top", "right"): ["at the top right", "in the top right corner"],
    ("middle", "left"): ["at the middle left"],
    ("middle", "center"): ["in the center of the image", "in the middle of the image"],
    ("middle", "right"): ["at the middle right"],
    ("bottom", "left"): ["at the bottom left", "in the bottom left corner"],
    ("bottom", "center"): ["at the bottom center", "at the bottom in the middle"],
    ("bottom", "right"): ["at the bottom right", "in the bottom right corner"],
}
_REGION_H = {"left": ["on the left side of the image", "in the left part of the image"],
             "right": ["on the right side of the image", "in the right part of the image"]}
_REGION_V = {"top": ["at the top of the image", "in the upper part of the image"],
             "bottom": ["at the bottom of the image", "in the lower part of the image"]}

# selector -> (word before the noun for a pair, for a larger group) or a phrase after the noun
_SELECTOR_ADJ = {
    "left": (None, "leftmost"), "right": (None, "rightmost"),
    "top": ("upper", "topmost"), "bottom": ("lower", "bottommost"),
    "larger": ("larger", "largest"), "smaller": ("smaller", "smallest"),
}
_SELECTOR_AFTER = {"left": "on the left", "right": "on the right"}


def _render(desc: Description, obj: SceneObject, rng: np.random.Generator, num_roads: int) -> str:
    """Turn a :class:`Description` into a sentence, e.g. "the large white tank at the top left"."""
    values = dict(desc.values)
    pick = lambda options: options[int(rng.integers(len(options)))]  # noqa: E731
    before: list[str] = []
    after: list[str] = []
    sel = desc.selector
    if sel in _SELECTOR_ADJ:
        pair_word, group_word = _SELECTOR_ADJ[sel]
        if desc.group == 2 and pair_word is None:
            after.append(_SELECTOR_AFTER[sel])
        else:
            before.append(pair_word if desc.group == 2 else group_word)
    elif sel in ("near_road", "far_road"):
        road = "the road" if num_roads == 1 else "a road"
        after.append(f"closest to {road}" if sel == "near_road" else f"farthest from {road}")
    if "size" in values:
        before.append(values["size"])
    if "colour" in values:
        before.append(values["colour"])
    if "h" in values and "v" in values:
        after.append(pick(_REGION_BOTH[(values["v"], values["h"])]))
    elif "h" in values:
        after.append(pick(_REGION_H[values["h"]]))
    elif "v" in values:
        after.append(pick(_REGION_V[values["v"]]))
    noun = pick(CLASSES[obj.cls].nouns)
    words = ["the", *before, noun, *after]
    if rng.random() < 0.15:  # RRSIS-D has plenty of sentences without the article
        words = words[1:]
    return " ".join(words)


# --------------------------------------------------------------------------------------------
# writers
# --------------------------------------------------------------------------------------------


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


class _Writer:
    """Base of the layouts: collects per-split counts. ``owns`` lists the top-level names it writes."""

    owns: tuple[str, ...] = ()

    def __init__(self, out: Path) -> None:
        self.out = out
        self.counts = {s: {"images": 0, "refs": 0, "expressions": 0} for s in SPLIT_NAMES}

    def add(self, index: int, scene: Scene, split: str) -> None:
        self.counts[split]["images"] += 1
        self.counts[split]["refs"] += len(scene.targets)
        self.counts[split]["expressions"] += sum(len(t) for _, t in scene.targets)
        self.write_scene(index, scene, split)

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        raise NotImplementedError

    def finish(self) -> dict[str, str]:
        return {}

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

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        self.image_dir = out / "images" / "rrsisd" / "JPEGImages"
        self.image_dir.mkdir(parents=True, exist_ok=True)
        (out / "rrsisd").mkdir(parents=True, exist_ok=True)
        self.images: list[dict] = []
        self.annotations: list[dict] = []
        self.refs: list[dict] = []
        self.category_ids = {name: k + 1 for k, name in enumerate(CLASSES)}
        self.next_sent_id = 0

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        from pycocotools import mask as coco_mask

        height, width = scene.image.shape[:2]
        image_id, file_name = index + 1, f"{index:05d}.jpg"
        Image.fromarray(scene.image).save(self.image_dir / file_name, quality=95)
        self.images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        ann_ids = []
        for obj in scene.objects:  # every object is annotated, as in COCO; only targets get refs
            rle = coco_mask.encode(np.asfortranarray(obj.mask.astype(np.uint8)))
            ann_id = len(self.annotations) + 1
            ys, xs = np.nonzero(obj.mask)
            self.annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": self.category_ids[obj.cls],
                "segmentation": {"size": [height, width], "counts": rle["counts"].decode("ascii")},
                "area": int(obj.area), "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            })
            ann_ids.append(ann_id)
        for obj_index, texts in scene.targets:
            sent_ids, sentences = [], []
            for text in texts:
                sent_id = self.next_sent_id
                self.next_sent_id += 1
                sent_ids.append(sent_id)
                sentences.append({"raw": text, "sent": text.lower(), "sent_id": sent_id, "tokens": _tokens(text)})
            self.refs.append({
                "ref_id": len(self.refs), "ann_id": ann_ids[obj_index], "image_id": image_id, "split": split,
                "sentences": sentences, "sent_ids": sent_ids, "file_name": file_name,
                "category_id": self.category_ids[scene.objects[obj_index].cls],
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

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        self.lines: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}
        self.next_id = 0

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        # RefSegRS has one image file per id: the first ref's image is written, later refs of the
        # same scene link to it (or copy, where links are not possible)
        first: Path | None = None
        for obj_index, texts in scene.targets:
            ref_id = str(self.next_id)
            self.next_id += 1
            image_path = self.out / "images" / f"{ref_id}.tif"
            if first is None:
                Image.fromarray(scene.image).save(image_path, format="TIFF")
                first = image_path
            else:
                try:
                    os.link(first, image_path)
                except OSError:
                    shutil.copyfile(first, image_path)
            mask = scene.objects[obj_index].mask.astype(np.uint8) * 255
            Image.fromarray(mask).save(self.out / "masks" / f"{ref_id}.tif", format="TIFF",
                                       compression="tiff_adobe_deflate")
            self.lines[split].extend(f"{ref_id} {text}" for text in texts)

    def finish(self) -> dict[str, str]:
        return self.write_split_lines("output_phrase_{}.txt")


class _JsonlWriter(_Writer):
    owns = ("images", "masks", "data.jsonl")

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        self.records: list[dict] = []

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        image_rel = f"images/{index:05d}.png"
        Image.fromarray(scene.image).save(self.out / image_rel, compress_level=1)
        for k, (obj_index, texts) in enumerate(scene.targets):
            mask_rel = f"masks/{index:05d}_{k}.png"
            Image.fromarray(scene.objects[obj_index].mask.astype(np.uint8) * 255).save(self.out / mask_rel)
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

    def __init__(self, out: Path) -> None:
        super().__init__(out)
        (out / "images").mkdir(parents=True, exist_ok=True)
        self.lines: dict[str, list[str]] = {s: [] for s in SPLIT_NAMES}

    def write_scene(self, index: int, scene: Scene, split: str) -> None:
        from pycocotools import mask as coco_mask

        file_name = f"{split}_{index:05d}.png"
        Image.fromarray(scene.image).save(self.out / "images" / file_name, compress_level=1)
        for obj_index, texts in scene.targets:
            rle = coco_mask.encode(np.asfortranarray(scene.objects[obj_index].mask.astype(np.uint8)))
            segmentation = {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
            self.lines[split].extend(
                json.dumps({"split": split, "image_id": f"{split}_{index:05d}_{obj_index}", "sent": text,
                            "file_name": file_name, "segmentation": segmentation})
                for text in texts)

    def finish(self) -> dict[str, str]:
        return self.write_split_lines("risbench_{}.jsonl")


_WRITERS = {"rrsisd": _RRSISDWriter, "refsegrs": _RefSegRSWriter, "jsonl": _JsonlWriter,
            "risbench": _RISBenchWriter}
#: the top-level entries of an output folder that synth writes, in any format: what an overwrite replaces
OWNED_NAMES = frozenset(name for writer in _WRITERS.values() for name in writer.owns)
# prefix of the temporary folders inside the output folder (a run killed outright leaves one behind;
# the next overwrite removes it)
_TEMP_PREFIX = ".synth-"
# errors of the file system, not of this code: reported as an OutputError
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _check_arguments(format: str, num_images: int, seed: int, image_size: int) -> None:
    if format not in _WRITERS:
        raise ConfigError(f"unknown synthetic format {format!r}; choose one of {', '.join(FORMATS)}")
    if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
        raise ConfigError(f"num_images must be >= 1 (--num-images), got {num_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (--seed), got {seed!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer >= {MIN_IMAGE_SIZE} (--image-size), got {image_size!r}")


def _open_output(out: Path, overwrite: bool) -> bool:
    """Make sure ``out`` can take a new dataset (module docstring); returns whether it was created."""
    if out.exists() and not out.is_dir():
        raise OutputError(f"output folder {out} is a file, not a folder")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            shown = ", ".join(entries[:5]) + (f", ... ({len(entries)} entries)" if len(entries) > 5 else "")
            raise OutputError(f"output folder {out} is not empty ({shown}); pass --overwrite (overwrite=True) to "
                              "replace the dataset there, or choose an empty or new folder")
        return False
    try:
        out.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out}: {exc.strerror or exc}") from exc
    return True


def _move_in(work: Path, out: Path) -> list[str]:
    """Replace the synth-owned entries of ``out`` by those of ``work``; returns the entries kept."""
    old = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=out))
    kept = []
    for entry in sorted(out.iterdir()):
        if entry in (work, old):
            continue
        if entry.name in OWNED_NAMES or entry.name.startswith(_TEMP_PREFIX):
            os.replace(entry, old / entry.name)
        else:
            kept.append(entry.name)
    for entry in work.iterdir():
        os.replace(entry, out / entry.name)
    work.rmdir()
    shutil.rmtree(old)
    return kept


def generate(format: str, out: str | Path, num_images: int, seed: int, image_size: int = 256,
             splits: Sequence[float] = DEFAULT_SPLITS, overwrite: bool = False,
             all_targets: bool = False) -> dict[str, Any]:
    """Write ``num_images`` synthetic scenes to ``out`` in ``format`` (rrsisd | refsegrs | jsonl | risbench).

    ``all_targets``: every describable object of a scene gets expressions, not 1-3 of them (the
    scenes after the first differ then, as the generator draws differently).

    ``splits`` are the train/val/test shares of the *images* (all refs of an image share its split,
    as in RefCOCO-style datasets). ``out`` must be empty or absent unless ``overwrite`` (module
    docstring). Returns a summary: counts per split (images, refs, expressions), the files written,
    the entries of ``out`` kept by an overwrite (``kept``), and the time taken. Read the result with
    ``build_dataset(format, out, split)``.

    Raises :class:`~rs2sam2.errors.ConfigError` for a bad argument and
    :class:`~rs2sam2.errors.OutputError` when ``out`` cannot take the dataset; either way ``out`` is
    left as it was.
    """
    _check_arguments(format, num_images, seed, image_size)
    start = time.perf_counter()
    split_of = assign_splits(num_images, seed, splits)  # checks the shares before anything is written
    out = Path(out)
    created = _open_output(out, overwrite)
    try:
        work = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=out))
    except OSError as exc:
        if created:
            out.rmdir()
        raise OutputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc
    try:
        writer = _WRITERS[format](work)
        for index, scene in enumerate(iter_scenes(num_images, seed, image_size, all_targets)):
            writer.add(index, scene, split_of[index])
        files = {key: str(out / Path(path).relative_to(work)) for key, path in writer.finish().items()}
        kept = _move_in(work, out)
    except BaseException as exc:
        shutil.rmtree(work, ignore_errors=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
            raise OutputError(f"cannot write the dataset to {out}: {exc.strerror or exc}; the folder is left as "
                              "it was") from exc
        raise
    return {
        "format": format, "out": str(out), "num_images": num_images, "seed": seed,
        "image_size": image_size, "all_targets": all_targets, "splits": writer.counts, "files": files, "kept": kept,
        "seconds": round(time.perf_counter() - start, 3),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``rs2sam2 synth``."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="on-disk layout to write")
    parser.add_argument("--out", required=True, help="output folder (the dataset root)")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--splits", type=float, nargs=3, default=DEFAULT_SPLITS,
                        metavar=("TRAIN", "VAL", "TEST"), help="shares of the images per split")
    parser.add_argument("--all-targets", action="store_true",
                        help="write expressions for every describable object of a scene, not for 1-3 of them")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a dataset already in --out (its images, masks and annotation files; other "
                             "files are kept); without it a non-empty --out is an error")


def run(args: argparse.Namespace) -> int:
    """Generate as ``args`` says and print the summary as JSON. A bad argument or output folder raises a
    user error (exit status 2, see :mod:`rs2sam2.cli`)."""
    summary = generate(args.format, args.out, args.num_images, args.seed, args.image_size, args.splits,
                       overwrite=args.overwrite, all_targets=args.all_targets)
    if summary["kept"]:
        print(f"rs2sam2 synth: kept in {args.out} (not written by synth): {', '.join(summary['kept'])}",
              file=sys.stderr)
    print(json.dumps(summary, indent=2))
    return 0
