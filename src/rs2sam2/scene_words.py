"""The words of a sentence that refer to the frame of the whole scene, read apart from the object.

"The largest white storage tank in the north-east of the image" names an object ("white storage
tank") and says where it is and which one it is *in the scene*: a region (its thirds: top / middle /
bottom, left / center / right; compass words count as the same), and a choice among the matching
objects (leftmost, upper, largest...). A model that looks at one window of a large scene would read
those words in the window's frame, so a scene answer (:mod:`rs2sam2.scene`) looks for the object
alone (:attr:`SceneWords.object_text`) and applies the scene words to what it finds, in the frame
of the region read.

English only, and only the words listed here: a sentence without them keeps its words and is
answered by the model's own reading (the scene answer's global look).

    >>> read_scene_words("the largest white tank at the top right")
    SceneWords(object_text='the white tank', v='top', h='right', pick='larger')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["SceneWords", "read_scene_words"]

_V = {"top": "top", "upper": "top", "north": "top", "northern": "top", "middle": "middle", "center": "middle",
      "centre": "middle", "central": "middle", "bottom": "bottom", "lower": "bottom", "south": "bottom",
      "southern": "bottom"}
_H = {"left": "left", "west": "left", "western": "left", "center": "center", "centre": "center", "middle": "center",
      "central": "center", "right": "right", "east": "right", "eastern": "right"}
_COMPASS = {"north": ("top", None), "south": ("bottom", None), "east": (None, "right"), "west": (None, "left"),
            "northeast": ("top", "right"), "northwest": ("top", "left"), "southeast": ("bottom", "right"),
            "southwest": ("bottom", "left")}
# a word before the noun that picks one of the matching objects, and which one
_PICK_WORDS = {
    "leftmost": "left", "westernmost": "left", "rightmost": "right", "easternmost": "right",
    "topmost": "top", "uppermost": "top", "upper": "top", "northernmost": "top",
    "bottommost": "bottom", "lowermost": "bottom", "lowest": "bottom", "lower": "bottom", "southernmost": "bottom",
    "largest": "larger", "biggest": "larger", "larger": "larger", "bigger": "larger", "large": "larger",
    "big": "larger", "smallest": "smaller", "smaller": "smaller", "small": "smaller", "tiny": "smaller",
}
_DIRECTION = "|".join(sorted({*_V, *_H, *_COMPASS}, key=len, reverse=True))
_ROWS = "top|upper|bottom|lower|middle|center|centre|central"
_COLUMNS = "left|right|center|centre|middle|central"
_PART = r"(?: (?:corner|part|side|portion|edge|half))?"
_FRAME = r"(?: (?:of|in) the (?:image|scene|picture|photo|map|area|region))?"
# "at the top left", "in the bottom right corner of the image", "at the top in the middle", "at the middle left"
_PAIR = re.compile(rf"\b(?:at|in|on) the ({_ROWS})(?: in the)? ({_COLUMNS})\b{_PART}{_FRAME}\b")
# "in the north east", "on the left side of the image", "in the upper part of the image", "on the left"
_SINGLE = re.compile(rf"\b(?:at|in|on|to) the ({_DIRECTION})\b({_PART})({_FRAME})\b")


@dataclass(frozen=True)
class SceneWords:
    """What a sentence says about the scene's frame. ``v`` / ``h``: the third (rows ``top`` /
    ``middle`` / ``bottom``, columns ``left`` / ``center`` / ``right``) the object lies in, or None;
    ``pick``: which of the matching objects (``left`` / ``right`` / ``top`` / ``bottom``: the one
    farthest that way; ``larger`` / ``smaller``: by area), or None. ``object_text``: the sentence
    without those words (the sentence itself when it has none)."""

    object_text: str
    v: str | None = None
    h: str | None = None
    pick: str | None = None

    @property
    def any(self) -> bool:
        return self.v is not None or self.h is not None or self.pick is not None


def _single(match: re.Match) -> tuple[str | None, str | None, str | None] | None:
    """``(v, h, pick)`` that a one-direction phrase says, or None when it says none of them ("in
    the middle" alone: of what?)."""
    word, part, frame = match.groups()
    if word in _COMPASS:
        return (*_COMPASS[word], None)
    if word in ("top", "upper", "bottom", "lower", "northern", "southern"):
        return _V[word], None, None
    framed = bool(part or frame)
    if word in ("left", "right", "eastern", "western"):
        return (None, _H[word], None) if framed else (None, None, _H[word])  # bare "on the left": of a pair
    if framed:  # "in the center of the image"
        return "middle", "center", None
    return None


def read_scene_words(text: str) -> SceneWords:
    """Split ``text`` into the object it names and the words about the scene's frame (module docstring)."""
    rest = " ".join(re.findall(r"[a-z]+", text.lower()))
    rest = re.sub(r"\b(north|south) ?(east|west)(?:ern)?\b", r"\1\2", rest)
    v = h = pick = None
    for match in list(_PAIR.finditer(rest)):
        v, h = _V[match.group(1)], _H[match.group(2)]
        rest = rest.replace(match.group(0), " ", 1)
    for match in list(_SINGLE.finditer(rest)):
        said = _single(match)
        if said is not None:
            v, h, pick = said[0] or v, said[1] or h, said[2] or pick
            rest = rest.replace(match.group(0), " ", 1)
    kept = []
    for word in rest.split():
        if word in _PICK_WORDS and pick is None:
            pick = _PICK_WORDS[word]
        else:
            kept.append(word)
    if (v, h, pick) == (None, None, None) or all(w in ("the", "a", "an") for w in kept):
        return SceneWords(text)
    return SceneWords(" ".join(kept), v, h, pick)
