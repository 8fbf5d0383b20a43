"""The words about the scene's frame, read apart from the object (rs2sam2.scene_words)."""

from __future__ import annotations

import pytest

from rs2sam2.scene_words import SceneWords, read_scene_words


@pytest.mark.parametrize(("text", "expected"), [
    # the generator's region phrases
    ("the red building in the bottom right corner", SceneWords("the red building", "bottom", "right")),
    ("the large white tank at the top in the middle", SceneWords("the white tank", "top", "center", "larger")),
    ("the small red car at the middle left", SceneWords("the red car", "middle", "left", "smaller")),
    ("white house on the left side of the image", SceneWords("white house", None, "left")),
    ("the brown house in the upper part of the image", SceneWords("the brown house", "top")),
    ("the white plane in the center of the image", SceneWords("the white plane", "middle", "center")),
    # pick words, before the noun or after it
    ("the leftmost red car", SceneWords("the red car", pick="left")),
    ("the upper blue ship", SceneWords("the blue ship", pick="top")),
    ("the largest white tank at the top right", SceneWords("the white tank", "top", "right", "larger")),
    ("the tank on the left", SceneWords("the tank", pick="left")),
    ("the oil tank on the right in the lower part of the image", SceneWords("the oil tank", "bottom", pick="right")),
    ("the lower tank in the upper part of the image", SceneWords("the tank", "top", pick="bottom")),
    # compass words, as analysts write them
    ("the gray ship in the north-east of the image", SceneWords("the gray ship", "top", "right")),
    ("The ship in the South", SceneWords("the ship", "bottom")),
])
def test_scene_words_are_read_apart(text, expected):
    assert read_scene_words(text) == expected


@pytest.mark.parametrize("text", [
    "the storage tank",  # nothing about the scene
    "the vehicle in the middle",  # the middle of what? left to the model
    "the ship closest to the pier",  # a relation, not a frame word
    "the leftmost",  # nothing would be left to look for
])
def test_sentences_without_frame_words_are_kept_whole(text):
    words = read_scene_words(text)
    assert words == SceneWords(text) and not words.any
