"""Referring expressions for generated scenes: which descriptions single out an object, and the
sentences written from them.

An expression only states what is true, and is only kept when it picks out exactly that object among
the objects of its class (checked on the attributes; see :func:`describe`). The rules are relative to
the image they are given (thirds of its side, margins scaled to its size), so the same rules describe
a single scene and a mosaic of scenes (:mod:`.mosaic`). :func:`absent_sentence` writes a sentence
that describes nothing in the image: a class and colour combination no object has.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .vocab import CLASSES, SceneObject

__all__ = ["Description", "absent_sentence", "choose_targets", "describe", "render"]

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


def render(desc: Description, obj: SceneObject, rng: np.random.Generator, num_roads: int) -> str:
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



def choose_targets(objects: Sequence[SceneObject], size: int, num_roads: int, rng: np.random.Generator,
                   all_targets: bool = False) -> list[tuple[int, list[str]]]:
    """``(object index, [1-2 sentences])`` for 1-3 describable objects (every one with ``all_targets``);
    empty when no object can be singled out. ``num_roads`` counts the straight roads (0: no road words)."""
    options = {i: describe(objects, i, size, num_roads) for i in range(len(objects))}
    eligible = [i for i, c in options.items() if c]
    if not eligible:
        return []
    chosen = eligible if all_targets else rng.choice(eligible, size=min(len(eligible), int(rng.integers(1, 4))),
                                                     replace=False)
    targets = []
    for i in sorted(int(k) for k in chosen):
        candidates = options[i]
        n = 2 if len(candidates) > 1 and rng.random() < 0.6 else 1
        picks = rng.choice(len(candidates), size=n, replace=False)
        texts = [render(candidates[int(k)], objects[i], rng, num_roads) for k in picks]
        targets.append((i, list(dict.fromkeys(texts))))  # drop an accidental duplicate sentence
    return targets


def absent_sentence(objects: Sequence[SceneObject], rng: np.random.Generator) -> tuple[str, str] | None:
    """``(class, sentence)``: a sentence that describes no object of ``objects``, naming a class and
    colour that no object has together ("the red airplane"), sometimes with a size or a region word,
    which cannot make it true. None when every class is present in every colour it comes in."""
    present = {(o.cls, o.colour) for o in objects}
    options = [(cls, colour) for cls, spec in CLASSES.items() for colour in spec.colours if (cls, colour) not in present]
    if not options:
        return None
    cls, colour = options[int(rng.integers(len(options)))]
    nouns = CLASSES[cls].nouns
    before = [colour]
    if rng.random() < 0.25:
        before.insert(0, "large" if rng.random() < 0.5 else "small")
    after = []
    if rng.random() < 0.4:
        regions = [phrase for phrases in _REGION_BOTH.values() for phrase in phrases]
        after.append(regions[int(rng.integers(len(regions)))])
    return cls, " ".join(["the", *before, nouns[int(rng.integers(len(nouns)))], *after])
