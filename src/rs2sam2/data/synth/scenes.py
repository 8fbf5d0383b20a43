"""Procedural aerial-like scenes: textured ground (grass, soil or urban), 0-2 straight roads
(sometimes crossing at a roundabout), some trees, and 2-6 objects -- storage tanks, buildings,
vehicles, ships, planes, swimming pools -- each with a colour, a size and a position. Objects never
touch, so the mask of an object is exactly the set of pixels painted with it.

For 1-3 target objects per scene (every describable object with ``all_targets``: more training
expressions from the same scenes), 1-2 expressions are written by :mod:`.sentences`. Everything is
drawn from one seeded ``numpy.random.Generator``: the same seed gives the same scenes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .sentences import choose_targets
from .vocab import CLASSES, COLOURS, Scene, SceneObject

__all__ = ["MIN_IMAGE_SIZE", "iter_scenes", "make_scene"]

MIN_IMAGE_SIZE = 32  # smallest side a scene is drawn at

GROUNDS: dict[str, tuple[int, int, int]] = {
    "grass": (86, 118, 60),
    "soil": (152, 128, 96),
    "urban": (124, 122, 118),
}
ASPHALT = (72, 72, 76)
TREE = (40, 72, 36)
MIN_CONTRAST = 70.0  # minimum RGB distance between an object colour and the ground


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
    """One draw of a scene; None when no object was placed or none can be singled out."""
    sc = size / 256.0
    ys, xs = np.ogrid[0:size, 0:size]
    xs, ys = xs.astype(np.float32), ys.astype(np.float32)
    ground = str(rng.choice(list(GROUNDS)))
    img = _paint_ground(rng, size, ground)
    roads = _make_roads(rng, size, sc)
    road_dist, keep_out = _paint_roads(img, roads, xs, ys, rng)
    _paint_trees(img, rng, keep_out, sc)
    objects, placements = _place_objects(rng, size, sc, ground, roads, road_dist, keep_out)
    if not objects:
        return None
    _shadow(img, [o.mask for o in objects if o.cls != "pool"] or [np.zeros((size, size), bool)], sc)
    for obj, placed in zip(objects, placements):
        _paint_object(img, obj, placed, rng, sc)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    num_straight = len([r for r in roads if r.kind != "ring"])
    targets = choose_targets(objects, size, num_straight, rng, all_targets)
    if not targets:
        return None
    return Scene(image=image, objects=objects, targets=targets, num_roads=len(roads))


def _place_objects(rng: np.random.Generator, size: int, sc: float, ground: str, roads: list[_Road],
                   road_dist: np.ndarray, keep_out: np.ndarray) -> tuple[list[SceneObject], list[_Placed]]:
    """2-6 objects of 1-3 classes, none touching another; vehicles may stand on roads, nothing else."""
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
        objects.append(SceneObject(cls=cls, colour=_pick_colour(cls, ground, rng), mask=placed.full(size),
                                   cx=float(ox.mean() + placed.x0), cy=float(oy.mean() + placed.y0),
                                   area=int(ox.size),
                                   road_distance=float(road_dist[placed.window][placed.local].min())
                                   if roads else float("inf")))
        placements.append(placed)
    return objects, placements


def iter_scenes(num_images: int, seed: int, image_size: int = 256, all_targets: bool = False) -> Iterator[Scene]:
    """The scenes :func:`generate` writes for ``(num_images, seed, image_size, all_targets)``, in order."""
    rng = np.random.default_rng(seed)
    for _ in range(num_images):
        yield make_scene(rng, image_size, all_targets=all_targets)

