"""Tiling and merging: how a region of a raster is cut into model inputs, and how the model's answers
come back as windows of one output grid.

A region (the whole raster or an area of interest) is predicted in one of four ways
(:func:`plan_region`):

* ``"full"`` -- the region is read at full resolution and is one model input (regions up to
  :data:`DECIMATE_ABOVE` x the model's input size on the longer side). The logits are resized
  bilinearly to the region's grid in one piece.
* ``"decimated"`` -- a larger region without tiles is read as a decimated copy whose longer side is
  the model's input size (GDAL averages pixels, or uses overviews). The logits are resized to the
  full grid window by window (:func:`upsample_window`, the same bilinear rule as ``"full"``), so
  the output never has to be in memory whole.
* ``"tiled"`` -- the region is cut into ``tile x tile`` windows at native resolution that overlap by
  ``overlap`` pixels (:func:`tile_grid`); each tile is one model input.
* ``"scene"`` -- a larger region answered as one scene: a global look at a decimated copy, then
  native-resolution looks where it points, one answer kept (:mod:`rs2sam2.scene`, which runs it).

**Merge rule (tiles).** Every output pixel takes the answer of the tile whose centre is nearest
(ties go to the tile above / to the left). Along each axis that splits the overlap of two
neighbouring tiles in the middle, so each tile decides exactly one rectangle, its *core*; the cores
cover the region without gaps or overlaps, and a tile's core stays at least ``overlap // 2`` pixels
from the tile's inner edges, where the model sees the least context. A tile where the model finds
nothing writes background in its core and nothing elsewhere: it cannot erase an object a
neighbouring tile found in that tile's own core. The last tile of a row or column is shifted back
so that it ends at the region's edge (tiles are never padded); a region smaller than the tile size
is one tile of the region's size.

**What the model sees.** Each tile is a separate model input: position words in an expression
("at the top left", "the leftmost") refer to each tile's frame, not the scene's; class and colour
words ("the white storage tanks") work scene-wide. The percentile stretch of non-8-bit data is the
same in every tile (computed once per raster, see :mod:`rs2sam2.imageio`).

:func:`iter_pieces` runs a plan with any *segment* function (``rgb -> [Answer per text]``), the
model's or any other, and yields the output grid window by window, so reading, inference and
writing hold one tile (or one block) at a time.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .progress import progress_bar

__all__ = ["DECIMATE_ABOVE", "Answer", "Piece", "Plan", "Tile", "iter_pieces", "plan_region", "tile_grid",
           "upsample_window"]

#: Without tiles, a region whose longer side exceeds this many times the model's input is read decimated.
DECIMATE_ABOVE = 2
#: Output blocks of the decimated mode (pixels per side).
BLOCK = 1024

Window = tuple[int, int, int, int]  # (col_off, row_off, width, height)


@dataclass(frozen=True)
class Tile:
    """One tile: ``window`` is read and given to the model, ``core`` is the part of the output it
    decides (both ``(col_off, row_off, width, height)`` in the region's pixels)."""

    window: Window
    core: Window


def _axis(length: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Along one axis: ``(start, size, core_start, core_stop)`` of each tile."""
    if length <= size:
        return [(0, length, 0, length)]
    stride = size - overlap
    starts = list(range(0, length - size, stride)) + [length - size]
    # nearest centre: pixel x goes to the later tile b (after a) when x + 0.5 is closer to b's centre
    cuts = [(a + b + size + 1) // 2 for a, b in zip(starts, starts[1:])]
    bounds = [0, *cuts, length]
    return [(s, size, bounds[i], bounds[i + 1]) for i, s in enumerate(starts)]


def tile_grid(width: int, height: int, size: int, overlap: int) -> list[Tile]:
    """The tiles of a ``width x height`` region, row by row (see the module docstring's merge rule)."""
    if size < 1 or overlap < 0 or overlap >= size:
        raise ValueError(f"the tile size must be larger than the overlap (tile {size}, overlap {overlap})")
    cols, rows = _axis(width, size, overlap), _axis(height, size, overlap)
    return [Tile(window=(c, r, cw, rh), core=(cc0, rc0, cc1 - cc0, rc1 - rc0))
            for r, rh, rc0, rc1 in rows for c, cw, cc0, cc1 in cols]


def _blocks(width: int, height: int, size: int = BLOCK) -> list[Window]:
    return [(c, r, min(size, width - c), min(size, height - r))
            for r in range(0, height, size) for c in range(0, width, size)]


def _axis_weights(n_in: int, n_out: int, start: int, stop: int):
    """Source indices and weights of output pixels ``start..stop-1`` of a bilinear resize from
    ``n_in`` to ``n_out`` samples with half-pixel centres (``F.interpolate(align_corners=False)``)."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = (scale * (torch.arange(start, stop, dtype=torch.float32) + 0.5) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    w1 = (src - i0).clamp_(0, 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0, i1, 1 - w1, w1


def upsample_window(low: torch.Tensor, height: int, width: int, window: Window | None = None) -> np.ndarray:
    """The window ``(col_off, row_off, w, h)`` of ``low`` (an ``(h_in, w_in)`` float tensor) resized
    bilinearly to ``height x width``, as float32 numpy; equal (up to float rounding) to that window
    of ``F.interpolate(low, (height, width), mode="bilinear", align_corners=False)``, which is what
    the whole-window case computes."""
    low = low.float()
    if window is None or tuple(window) == (0, 0, width, height):
        x = low[None, None]
        if tuple(low.shape) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x[0, 0].cpu().numpy().astype(np.float32, copy=False)
    col, row, w, h = window
    r0, r1, rw0, rw1 = _axis_weights(low.shape[0], height, row, row + h)
    c0, c1, cw0, cw1 = _axis_weights(low.shape[1], width, col, col + w)
    rows = low[r0] * rw0[:, None] + low[r1] * rw1[:, None]
    out = rows[:, c0] * cw0 + rows[:, c1] * cw1
    return out.cpu().numpy().astype(np.float32, copy=False)


@dataclass
class Answer:
    """A segment function's answer for one text on one model input (at the model's resolution)."""

    logits: torch.Tensor  # (h, w) float32 mask logits
    prior: torch.Tensor | None = None  # (h, w) float32 prior probabilities, or None
    iou_score: float = float("nan")
    object_score: float = float("nan")


@dataclass
class Piece:
    """One window of the output grid: per text, logits (and priors) there, and the input's validity."""

    window: Window  # in the region's pixels
    logits: list[np.ndarray]
    priors: list[np.ndarray | None]
    valid: np.ndarray | None
    answers: list[Answer] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    """How a region is predicted (see the module docstring)."""

    mode: str  # "full", "decimated", "tiled" or "scene"
    width: int
    height: int
    tiles: tuple[Tile, ...] = ()
    read_shape: tuple[int, int] | None = None  # (height, width) of the decimated copy

    @property
    def downscale(self) -> float:
        """How many times smaller (per side) the model input was read than the region: 1 but decimated
        (the global look of a scene plan too)."""
        if self.read_shape is None:
            return 1.0
        return max(self.width, self.height) / max(self.read_shape)

    @property
    def steps(self) -> int:
        return len(self.tiles) if self.mode == "tiled" else 1


def plan_region(width: int, height: int, model_size: int, tile: int | None = None, overlap: int = 0, *,
                scene: bool = False) -> Plan:
    """The plan for a ``width x height`` region and a model with ``model_size`` input pixels per side:
    tiles when ``tile`` is given; else one full-resolution input when the longer side is at most
    :data:`DECIMATE_ABOVE` x ``model_size``; else a scene answer (``scene``, :mod:`rs2sam2.scene`) or
    a decimated read, both from a copy decimated to ``model_size`` on the longer side."""
    if tile is not None:
        return Plan("tiled", width, height, tiles=tuple(tile_grid(width, height, int(tile), int(overlap))))
    longer = max(width, height)
    if longer <= DECIMATE_ABOVE * model_size:
        return Plan("full", width, height)
    scale = longer / model_size
    shape = (max(1, round(height / scale)), max(1, round(width / scale)))
    return Plan("scene" if scene else "decimated", width, height, read_shape=shape)


def _offset(window: Window, origin: Window) -> Window:
    return (origin[0] + window[0], origin[1] + window[1], window[2], window[3])


def _crop(a: np.ndarray | None, window: Window) -> np.ndarray | None:
    if a is None:
        return None
    c, r, w, h = window
    return a[r:r + h, c:c + w]


def _piece(answers: Sequence[Answer], height: int, width: int, window: Window, out_window: Window,
           valid: np.ndarray | None) -> Piece:
    logits = [upsample_window(a.logits, height, width, window) for a in answers]
    priors = [None if a.prior is None else np.clip(upsample_window(a.prior, height, width, window), 0.0, 1.0)
              for a in answers]
    return Piece(window=out_window, logits=logits, priors=priors, valid=valid, answers=list(answers))


def iter_pieces(raster, region: Window, plan: Plan, segment: Callable[[np.ndarray], Sequence[Answer]], *,
                progress: bool | Callable[[int, int], None] = False, desc: str = "tiles",
                segment_tiles: Callable[[list[np.ndarray]], Sequence[Sequence[Answer]]] | None = None,
                tile_batch: int = 1) -> Iterator[Piece]:
    """Run ``plan`` on ``region`` (``(col_off, row_off, width, height)`` of ``raster``, an
    :class:`rs2sam2.imageio.Raster`): yield the output grid window by window (windows in the
    region's pixels). ``segment(rgb)`` returns one :class:`Answer` per text. ``progress``: True
    shows a bar over the tiles; a function is called with ``(done, total)`` after every model input.
    With ``segment_tiles`` (the answers of several model inputs at once), tiles are read and
    answered ``tile_batch`` at a time."""
    report = progress if callable(progress) else (lambda done, total: None)
    width, height = plan.width, plan.height
    whole = (0, 0, width, height)
    if plan.mode == "full":
        rgb, valid = raster.read(region)
        answers = segment(rgb)
        report(1, 1)
        yield _piece(answers, height, width, whole, whole, valid)
    elif plan.mode == "decimated":
        rgb, _ = raster.read(region, out_shape=plan.read_shape)
        answers = segment(rgb)
        report(1, 1)
        del rgb
        for block in _blocks(width, height):
            valid = raster.read_valid(_offset(block, region))
            yield _piece(answers, height, width, block, block, valid)
    elif plan.mode == "tiled":
        step = tile_batch if segment_tiles is not None else 1
        # the bar is closed with the generator, when its consumer stops early too
        with progress_bar(total=len(plan.tiles), desc=desc, unit="tile", disable=progress is not True,
                          file=sys.stderr, dynamic_ncols=True) as bar:
            for start in range(0, len(plan.tiles), step):
                group = plan.tiles[start:start + step]
                rgbs, valids = zip(*(raster.read(_offset(t.window, region)) for t in group))
                answers = segment_tiles(list(rgbs)) if step > 1 else [segment(rgbs[0])]
                del rgbs
                bar.update(len(group))
                report(start + len(group), len(plan.tiles))
                for t, valid, tile_answers in zip(group, valids, answers, strict=True):
                    core = (t.core[0] - t.window[0], t.core[1] - t.window[1], t.core[2], t.core[3])
                    yield _piece(tile_answers, t.window[3], t.window[2], core, t.core, _crop(valid, core))
    else:
        raise ValueError(f"unknown plan mode {plan.mode!r}")
