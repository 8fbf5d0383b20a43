"""Procedural aerial-like scenes with referring expressions, written in the real dataset layouts.

* :mod:`.vocab`: object classes, colours, the scene model (:class:`Scene`, :class:`SceneObject`);
* :mod:`.scenes`: drawing a scene (:func:`make_scene`, :func:`iter_scenes`);
* :mod:`.sentences`: which descriptions single out an object (:func:`describe`), the sentences, and
  sentences that describe nothing in an image (:func:`absent_sentence`);
* :mod:`.mosaic`: K x K scenes described as one (:func:`make_mosaic`);
* :mod:`.writers`: the RRSIS-D, RefSegRS, JSONL and RISBench layouts;
* :mod:`.dataset`: :func:`generate`, which writes a dataset all or nothing;
* :mod:`.cli`: ``rs2sam2 synth``.

Command line: ``rs2sam2 synth --format rrsisd --out OUT --num-images 200 --seed 0`` (add
``--mosaic 3`` for mosaics of 3 x 3 scenes). Everything is drawn from seeded
``numpy.random.Generator`` objects: the same arguments give the same files.
"""

from __future__ import annotations

from .cli import add_arguments, run
from .dataset import MAX_IMAGE_SIZE, generate, iter_dataset_scenes
from .mosaic import MAX_MOSAIC_SIDE, iter_mosaics, make_mosaic
from .scenes import MIN_IMAGE_SIZE, iter_scenes, make_scene
from .sentences import Description, absent_sentence, describe
from .vocab import CLASSES, COLOURS, Scene, SceneObject
from .writers import DEFAULT_SPLITS, FORMATS, OWNED_NAMES, SPLIT_NAMES, WRITERS, assign_splits

__all__ = ["CLASSES", "COLOURS", "DEFAULT_SPLITS", "FORMATS", "MAX_IMAGE_SIZE", "MAX_MOSAIC_SIDE", "MIN_IMAGE_SIZE",
           "OWNED_NAMES", "SPLIT_NAMES", "WRITERS", "Description", "Scene", "SceneObject", "absent_sentence",
           "add_arguments", "assign_splits", "describe", "generate", "iter_dataset_scenes", "iter_mosaics",
           "iter_scenes", "make_mosaic", "make_scene", "run"]
