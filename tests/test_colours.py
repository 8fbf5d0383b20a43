"""Basic colour names of words and pixels (rs2sam2.colours), the scene answer's colour check."""

from __future__ import annotations

import numpy as np
import pytest

from rs2sam2.colours import colour_names, colour_share, colour_word
from rs2sam2.data.synth import make_mosaic


@pytest.mark.parametrize("text, expected", [
    ("the largest white tank at the top right", "white"), ("The grey building", "gray"),
    ("a dark red ship", "red"), ("the tank next to the road", None), ("the whiteboard", None),
    ("the tank next to the red building", None), ("the white car on the left of the blue house", "white"),
    ("the storage tank which is white", None)])
def test_colour_word(text, expected):
    assert colour_word(text) == expected


def test_pixels_are_named_by_hue_saturation_and_value():
    rgb = np.array([[[245, 245, 240], [150, 150, 155], [20, 20, 25], [200, 40, 35], [230, 130, 40]],
                    [[110, 70, 40], [230, 205, 50], [50, 150, 60], [40, 80, 190], [140, 60, 180]]], np.uint8)
    assert colour_names(rgb).tolist() == [["white", "gray", "black", "red", "orange"],
                                          ["brown", "yellow", "green", "blue", "purple"]]


def test_generated_objects_show_their_colour():
    """The generator paints objects in its colours with noise and shade: nearly all of each
    object's pixels carry its colour's name."""
    shares = [colour_share(m.image, o.mask, o.colour) for s in range(4) for m in [make_mosaic(seed=s, k=3)]
              for o in m.objects]
    assert len(shares) > 50 and np.mean(np.asarray(shares) > 0.5) > 0.98


def test_share_of_an_empty_mask_is_zero():
    rgb = np.zeros((4, 4, 3), np.uint8)
    assert colour_share(rgb, np.zeros((4, 4), bool), "black") == 0.0
    assert colour_share(rgb, np.ones((4, 4), bool), "black") == 1.0
