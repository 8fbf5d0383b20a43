"""``generate``: write generated scenes (or mosaics of them) as a dataset on disk, all or nothing.

The output folder must be empty or absent; ``overwrite=True`` (``--overwrite``) replaces a dataset
written there before. The dataset is written into a temporary folder inside the output folder and
moved into place only when complete, so a failed or interrupted run leaves the folder as it was. An
overwrite replaces every top-level entry that synth writes in any format (:data:`OWNED_NAMES`: the
image and mask folders, the annotation files) and keeps anything else, so no stale image of the
old dataset stays beside the new one.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, OutputError
from .mosaic import MAX_MOSAIC_SIDE, iter_mosaics
from .scenes import MIN_IMAGE_SIZE, iter_scenes
from .sentences import absent_sentence
from .vocab import Scene
from .writers import DEFAULT_SPLITS, FORMATS, OWNED_NAMES, WRITERS, assign_splits

__all__ = ["MAX_IMAGE_SIZE", "generate", "iter_dataset_scenes"]

#: largest side (pixels) of a generated scene
MAX_IMAGE_SIZE = MAX_MOSAIC_SIDE
# prefix of the temporary folders inside the output folder (a run killed outright leaves one behind;
# the next overwrite removes it)
_TEMP_PREFIX = ".synth-"
# errors of the file system, not of this code: reported as an OutputError
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_arguments(format: str, num_images: int, seed: int, image_size: int, mosaic: int, absent: int) -> None:
    if format not in WRITERS:
        raise ConfigError(f"unknown synthetic format {format!r}; choose one of {', '.join(FORMATS)}")
    if not _is_int(num_images) or num_images < 1:
        raise ConfigError(f"num_images must be >= 1 (--num-images), got {num_images!r}")
    if not _is_int(seed) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (--seed), got {seed!r}")
    if not _is_int(image_size) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] (--image-size), "
                          f"got {image_size!r}")
    if not _is_int(mosaic) or mosaic < 0 or mosaic * image_size > MAX_MOSAIC_SIDE:
        raise ConfigError(f"mosaic must be 0 (single scenes) or K >= 1 with K * image_size <= {MAX_MOSAIC_SIDE} "
                          f"(--mosaic, --image-size), got {mosaic!r} x {image_size!r}")
    if not _is_int(absent) or absent < 0:
        raise ConfigError(f"absent must be an integer >= 0 (--absent), got {absent!r}")


def iter_dataset_scenes(num_images: int, seed: int, image_size: int = 256, all_targets: bool = False,
                        mosaic: int = 0, absent: int | None = None) -> Iterator[Scene]:
    """The scenes :func:`generate` writes, in order: single scenes, or mosaics of ``mosaic x mosaic``
    scenes. ``absent`` sentences per image (default: 0 for single scenes, 1 for mosaics); a single
    scene's are drawn from their own generator, so the scenes are those of :func:`iter_scenes`."""
    if mosaic:
        yield from iter_mosaics(num_images, seed, mosaic, image_size, 1 if absent is None else absent, all_targets)
        return
    rng = np.random.default_rng([seed, 2])
    for scene in iter_scenes(num_images, seed, image_size, all_targets):
        drawn = (absent_sentence(scene.objects, rng) for _ in range(absent or 0))
        scene.absent = list(dict.fromkeys(a for a in drawn if a is not None))
        yield scene


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


def _work_folder(out: Path, created: bool) -> Path:
    """A new temporary folder inside ``out`` to write the dataset into."""
    try:
        return Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, dir=out))
    except OSError as exc:
        if created:
            out.rmdir()
        raise OutputError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc


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
             all_targets: bool = False, mosaic: int = 0, absent: int | None = None) -> dict[str, Any]:
    """Write ``num_images`` synthetic scenes to ``out`` in ``format`` (rrsisd | refsegrs | jsonl | risbench).

    ``all_targets``: every describable object of a scene gets expressions, not 1-3 of them (the
    scenes after the first differ then, as the generator draws differently). ``mosaic=K`` writes
    mosaics of K x K scenes of ``image_size`` px with scene-level sentences instead
    (:mod:`rs2sam2.data.synth.mosaic`); ``absent`` sentences per image describe nothing in it and are
    written with an empty mask (default: 1 per mosaic, none for single scenes).

    ``splits`` are the train/val/test shares of the *images* (all refs of an image share its split,
    as in RefCOCO-style datasets). ``out`` must be empty or absent unless ``overwrite`` (module
    docstring). Returns a summary: counts per split (images, refs, expressions, absent ones), the
    files written, the entries of ``out`` kept by an overwrite (``kept``), and the time taken. Read
    the result with ``build_dataset(format, out, split)``.

    Raises :class:`~rs2sam2.errors.ConfigError` for a bad argument and
    :class:`~rs2sam2.errors.OutputError` when ``out`` cannot take the dataset; either way ``out`` is
    left as it was.
    """
    _check_arguments(format, num_images, seed, image_size, mosaic, 0 if absent is None else absent)
    start = time.perf_counter()
    split_of = assign_splits(num_images, seed, splits)  # checks the shares before anything is written
    out = Path(out)
    created = _open_output(out, overwrite)
    work = _work_folder(out, created)
    try:
        writer = WRITERS[format](work, geotiff=bool(mosaic))
        for index, scene in enumerate(iter_dataset_scenes(num_images, seed, image_size, all_targets, mosaic, absent)):
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
        "format": format, "out": str(out), "num_images": num_images, "seed": seed, "image_size": image_size,
        "all_targets": all_targets, "mosaic": mosaic, "splits": writer.counts, "files": files, "kept": kept,
        "seconds": round(time.perf_counter() - start, 3),
    }
