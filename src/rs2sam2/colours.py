"""Basic colour names, of words and of pixels: the cheap evidence a scene answer checks a colour word against.

"The white storage tank" names a colour that the pixels of the object it means should show. A model
that looks at one window of a scene answers with its best guess even where no white tank is there,
so a scene answer (:mod:`rs2sam2.scene`) also asks the pixels: what share of a candidate's pixels
carry the colour the sentence names. Pixels are named by rules on hue, saturation and value (HSV),
the way the colour words are used of aerial imagery: low saturation is white, gray or black by
brightness; otherwise the hue decides, and dark orange is brown.

    >>> colour_word("the largest white tank at the top right")
    'white'
    >>> colour_names(np.array([[[236, 236, 230], [188, 44, 40]]], np.uint8)).tolist()
    [['white', 'red']]
"""

from __future__ import annotations

import re

import numpy as np

__all__ = ["COLOUR_WORDS", "colour_names", "colour_share", "colour_word"]

#: the colour words read from a sentence, and the pixel name each stands for
COLOUR_WORDS = {"white": "white", "gray": "gray", "grey": "gray", "silver": "gray", "black": "black",
                "red": "red", "orange": "orange", "brown": "brown", "yellow": "yellow", "green": "green",
                "blue": "blue", "purple": "purple", "pink": "red"}
_NAMES = ("", "white", "gray", "black", "red", "orange", "brown", "yellow", "green", "blue", "purple")
# (lowest hue in degrees, name) for saturated pixels, in order
_HUES = ((0, "red"), (15, "orange"), (45, "yellow"), (70, "green"), (165, "blue"), (260, "purple"), (330, "red"))
_GREY_SATURATION = 0.2  # below it a pixel has no hue to speak of
_WHITE_VALUE = 0.7  # bright grey is white (a white roof in sun or in light shade)
_BLACK_VALUE = 0.25
_BROWN_VALUE = 0.6  # orange darker than this is brown


# words that end the object's own noun phrase: what follows describes something else ("the tank next
# to the red building": the building is red, not the tank)
_PHRASE_ENDS = frozenset("next near nearest closest close beside besides by behind between on in at of with to from "
                         "along above below under over around across beyond opposite adjacent surrounded facing "
                         "and or that which who whose than".split())


def colour_word(text: str) -> str | None:
    """The pixel name of the colour word of the object ``text`` names (``"grey"`` -> ``"gray"``), or
    None. Only words before the object's noun phrase ends count: in "the tank next to the red
    building" red is the building's colour, and nothing is said of the tank's."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _PHRASE_ENDS:
            return None
        if word in COLOUR_WORDS:
            return COLOUR_WORDS[word]
    return None


def colour_names(rgb: np.ndarray) -> np.ndarray:
    """The basic colour name of every pixel of ``rgb`` (``(..., 3)`` uint8): an array of str."""
    x = rgb.astype(np.float32) / 255.0
    top, bottom = x.max(-1), x.min(-1)
    spread = np.maximum(top - bottom, 1e-6)
    saturation = np.where(top > 0, (top - bottom) / np.maximum(top, 1e-6), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = 60.0 * np.where(top == r, ((g - b) / spread) % 6, np.where(top == g, (b - r) / spread + 2, (r - g) / spread + 4))
    code = np.zeros(top.shape, np.int8)
    for low, name in _HUES:
        code[hue >= low] = _NAMES.index(name)
    code[(code == _NAMES.index("orange")) & (top < _BROWN_VALUE)] = _NAMES.index("brown")
    grey = saturation < _GREY_SATURATION
    code[grey] = np.where(top[grey] >= _WHITE_VALUE, _NAMES.index("white"), _NAMES.index("gray"))
    code[top < _BLACK_VALUE] = _NAMES.index("black")
    return np.asarray(_NAMES, object)[code]


def colour_share(rgb: np.ndarray, mask: np.ndarray, colour: str) -> float:
    """The share of ``mask``'s pixels of ``rgb`` whose colour name is ``colour`` (0 for an empty mask)."""
    if not mask.any():
        return 0.0
    return float((colour_names(rgb[mask]) == colour).mean())
