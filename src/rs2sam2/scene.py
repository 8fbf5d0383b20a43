"""Scene answers: a sentence about a large scene is answered where it points, not in every tile.

A ``"scene"`` plan (:func:`rs2sam2.tiles.plan_region` with ``scene=True``, for regions whose longer
side exceeds :data:`~rs2sam2.tiles.DECIMATE_ABOVE` x the model input) runs in five steps, per text:

1. **The global look.** The whole region, decimated to one model input, is read once and answered.
   This look reads the scene-level words ("the leftmost tank", "in the north-east", "the largest
   ship") in the frame of the whole region, because the model sees the whole region; its logits say
   where the sentence points.
2. **Scan looks.** Windows of :data:`~rs2sam2.tiles.DECIMATE_ABOVE` model inputs (the largest area
   one input reads without losing detail by today's rule; larger when more than
   :data:`SCAN_PER_SIDE` would be needed per side), each read decimated to one input, cover the region; the strongest part of each one's answer is a candidate too. They find objects the
   global look sees too small to point at.
3. **Candidates.** The parts of the global answer above the threshold (or its strongest point) and
   the scan candidates, ranked by their peak probability weighed by the global look's probability
   around them (``peak x (0.5 + 0.5 x support)``); candidates whose boxes meet are one object;
   at most :data:`MAX_CANDIDATES` are looked at.
4. **Native looks.** Each candidate is looked at at native resolution: model-input windows covering
   its box (plus a margin), and, when the object found there runs into a window's inner edge, the
   window beyond it (at most :data:`MAX_LOOKS` per candidate). A native look keeps only the parts of
   its mask that touch the candidate, so a look never answers about an object elsewhere in its
   window, and the looks of one candidate are merged (their union), so an object across a look's
   border comes out whole.
5. **One answer, or none.** The candidate with the best score (its rank x the native looks' mean
   probability over what they kept) is the answer; the others stay empty. Its *presence* decides
   whether anything is written: with a checkpoint whose presence head was trained
   (``config.presence_head``), the sigmoid of the global look's object-score logit; without one,
   the chosen candidate's score. Below ``presence_threshold`` the answer is empty.

Nothing here knows about models or files: :func:`iter_scene` takes a *segment* function
(``(rgb, texts indices) -> [Answer]``), like :func:`rs2sam2.tiles.iter_pieces`, and yields the
output grid block by block, so memory stays bounded by a block and the looks kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .tiles import BLOCK, DECIMATE_ABOVE, Answer, Piece, Plan, Window, tile_grid, upsample_window

__all__ = ["MAX_CANDIDATES", "MAX_LOOKS", "SUPPRESSED", "Decision", "grow_into", "iter_scene", "label"]

#: candidates looked at per text (the strongest parts of the global answer)
MAX_CANDIDATES = 3
#: native looks per candidate (covering its box, then following the object across window edges)
MAX_LOOKS = 8
#: scan looks per side at most (larger regions get larger scan windows, read decimated)
SCAN_PER_SIDE = 6
#: the logit written where the scene answer is not (probability ~2e-9)
SUPPRESSED = -20.0

Segment = Callable[[np.ndarray, Sequence[int]], Sequence[Answer]]


@dataclass
class Decision:
    """What the scene answer decided for one text: where it looked and what it kept."""

    looks: list[Window] = field(default_factory=list)  # native windows inspected (region pixels)
    candidates: int = 0
    chosen: int | None = None  # the chosen candidate's rank (0 = strongest in the global look)
    score: float = float("nan")  # the chosen candidate's score
    presence: float = float("nan")
    present: bool = False
    presence_source: str = "candidate score"  # or "presence head"
    box: Window | None = None  # the answer's bounding box (region pixels), when present

    def as_dict(self) -> dict:
        return {"global_look": True, "looks": [list(w) for w in self.looks], "candidates": self.candidates,
                "chosen": self.chosen, "score": _finite(self.score), "presence": _finite(self.presence),
                "presence_source": self.presence_source, "present": self.present,
                "box": None if self.box is None else list(self.box)}


def _finite(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected parts of a boolean mask: ``(labels, n)``, labels 1..n (0 = background).

    Union by hooking and pointer jumping: each pixel's root is hooked onto the smallest root among
    its neighbours, then every pointer jumps to its root, until nothing changes (a few rounds)."""
    h, w = mask.shape
    inside = np.flatnonzero(mask)
    if inside.size == 0:
        return np.zeros(mask.shape, np.int32), 0
    big = h * w
    parent = np.arange(big + 1)  # one more: the root of everything outside the mask
    while True:
        roots = np.full((h + 2, w + 2), big)
        roots[1:-1, 1:-1] = np.where(mask, parent[:big].reshape(h, w), big)
        smallest = roots[1:-1, 1:-1].copy()
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                np.minimum(smallest, roots[dr:dr + h, dc:dc + w], out=smallest)
        before = parent.copy()
        np.minimum.at(parent, parent[inside], smallest.ravel()[inside])
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        if np.array_equal(parent, before):
            break
    _, labels = np.unique(parent[inside], return_inverse=True)
    out = np.zeros(big, np.int32)
    out[inside] = labels + 1
    return out.reshape(h, w), int(labels.max()) + 1


def grow_into(seed: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The parts of ``mask`` (8-connected) that ``seed`` touches."""
    if not (seed & mask).any():
        return np.zeros(mask.shape, bool)
    labels, _ = label(mask)
    touched = np.unique(labels[seed & mask])
    return np.isin(labels, touched[touched > 0])


@dataclass
class _Candidate:
    part: np.ndarray  # bool, on a map of the look that found it (the global look, or a scan look)
    peak: float  # the largest probability in it
    box: Window  # in region pixels
    frame: Window  # the region pixels ``part`` covers
    support: float = 0.0  # the global look's largest probability around it
    merged: list[_Candidate] = field(default_factory=list)  # weaker candidates on the same object
    kept: list[tuple[Window, np.ndarray]] = field(default_factory=list)  # (window, logits, SUPPRESSED elsewhere)
    looks: list[Window] = field(default_factory=list)
    native: float = 0.0  # mean probability of the native looks over what they kept
    iou: float = float("nan")

    @property
    def rank(self) -> float:
        """Before the native looks: how strongly a look points here, weighed by the global look."""
        return self.peak * (0.5 + 0.5 * self.support)

    @property
    def score(self) -> float:
        return self.rank * self.native


def _candidates(g: np.ndarray, threshold: float, frame: Window, most: int) -> list[_Candidate]:
    """The parts of the map ``g`` (logits of a look at ``frame``, in region pixels) above
    ``threshold``, strongest first (at most ``most``); the strongest point when none is."""
    labels, n = label(g > threshold)
    if n == 0:
        labels = np.zeros(g.shape, np.int32)
        labels[np.unravel_index(int(np.argmax(g)), g.shape)] = 1
        n = 1
    sy, sx = frame[3] / g.shape[0], frame[2] / g.shape[1]
    found = []
    for i in range(1, n + 1):
        part = labels == i
        rows, cols = np.nonzero(part)
        c0, r0 = frame[0] + int(cols.min() * sx), frame[1] + int(rows.min() * sy)
        c1, r1 = frame[0] + int(np.ceil((cols.max() + 1) * sx)), frame[1] + int(np.ceil((rows.max() + 1) * sy))
        found.append(_Candidate(part, float(_sigmoid(g[part].max())), (c0, r0, c1 - c0, r1 - r0), frame))
    found.sort(key=lambda c: -c.peak)
    return found[:most]


def _support(cand: _Candidate, g: np.ndarray, width: int, height: int) -> float:
    """The global look's largest probability on the candidate's box (grown by one global pixel)."""
    c, r, w, h = cand.box
    r0, r1 = max(0, int(r * g.shape[0] / height) - 1), min(g.shape[0], int(np.ceil((r + h) * g.shape[0] / height)) + 1)
    c0, c1 = max(0, int(c * g.shape[1] / width) - 1), min(g.shape[1], int(np.ceil((c + w) * g.shape[1] / width)) + 1)
    return float(_sigmoid(g[r0:r1, c0:c1].max()))


def _fit(start: int, size: int, length: int) -> int:
    return max(0, min(start, length - size))


def _cover(box: Window, side: int, width: int, height: int) -> list[Window]:
    """Model-input windows (``side`` px, inside the region) covering ``box`` grown by an eighth of a window."""
    margin = side // 8
    c0, r0 = max(0, box[0] - margin), max(0, box[1] - margin)
    c1, r1 = min(width, box[0] + box[2] + margin), min(height, box[1] + box[3] + margin)
    w, h = min(side, width), min(side, height)

    def starts(a: int, b: int, size: int, length: int) -> list[int]:
        if b - a <= size:
            return [_fit((a + b - size) // 2, size, length)]
        step = size - size // 8
        return sorted({_fit(s, size, length) for s in [*range(a, b - size, step), b - size]})

    return [(c, r, w, h) for r in starts(r0, r1, h, height) for c in starts(c0, c1, w, width)]


def _merge(cands: list[_Candidate], most: int) -> list[_Candidate]:
    """The strongest ``most`` candidates (by rank); a weaker one whose box meets a stronger one's is
    the same object seen by another look, and joins it (its part and box)."""
    kept: list[_Candidate] = []
    for cand in sorted(cands, key=lambda c: -c.rank):
        same = next((k for k in kept if _overlap(k.box, cand.box) is not None), None)
        if same is None:
            kept.append(cand)
            continue
        same.merged.append(cand)
        c0, r0 = min(same.box[0], cand.box[0]), min(same.box[1], cand.box[1])
        c1 = max(same.box[0] + same.box[2], cand.box[0] + cand.box[2])
        r1 = max(same.box[1] + same.box[3], cand.box[1] + cand.box[3])
        same.box = (c0, r0, c1 - c0, r1 - r0)
    return kept[:most]


def _gate(cand: _Candidate, window: Window) -> np.ndarray:
    """The candidate's parts on ``window``'s pixels, each grown by one pixel of the map it was found on."""
    gate = _part_gate(cand, window)
    for other in cand.merged:
        gate |= _part_gate(other, window)
    return gate


def _part_gate(cand: _Candidate, window: Window) -> np.ndarray:
    part = cand.part
    grown = part.copy()
    grown[1:] |= part[:-1]
    grown[:-1] |= part[1:]
    grown[:, 1:] |= grown[:, :-1].copy()
    grown[:, :-1] |= grown[:, 1:].copy()
    c, r, w, h = window
    fc, fr, fw, fh = cand.frame
    rows = np.floor((np.arange(r, r + h) - fr + 0.5) * part.shape[0] / fh).astype(int)
    cols = np.floor((np.arange(c, c + w) - fc + 0.5) * part.shape[1] / fw).astype(int)
    inside = ((rows >= 0) & (rows < part.shape[0]))[:, None] & ((cols >= 0) & (cols < part.shape[1]))[None, :]
    gate = grown[np.ix_(np.clip(rows, 0, part.shape[0] - 1), np.clip(cols, 0, part.shape[1] - 1))]
    return gate & inside


def _keep(logits: np.ndarray, gate: np.ndarray, threshold: float) -> np.ndarray:
    """The parts of ``logits > threshold`` that touch ``gate``."""
    return grow_into(gate, logits > threshold)


def _beyond(window: Window, kept: np.ndarray, side: int, width: int, height: int) -> list[Window]:
    """The windows next to ``window`` on each inner edge that the kept mask touches."""
    c, r, w, h = window
    step = side - side // 8
    out = []
    for touches, dc, dr in ((kept[:, 0].any() and c > 0, -step, 0), (kept[:, -1].any() and c + w < width, step, 0),
                            (kept[0].any() and r > 0, 0, -step), (kept[-1].any() and r + h < height, 0, step)):
        if touches:
            out.append((_fit(c + dc, w, width), _fit(r + dr, h, height), w, h))
    return out


def _offset(window: Window, origin: Window) -> Window:
    return (origin[0] + window[0], origin[1] + window[1], window[2], window[3])


def _overlap(a: Window, b: Window) -> tuple[slice, slice, slice, slice] | None:
    """``(rows in a, cols in a, rows in b, cols in b)`` of the intersection of two windows, or None."""
    c0, r0 = max(a[0], b[0]), max(a[1], b[1])
    c1, r1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    if c1 <= c0 or r1 <= r0:
        return None
    return (slice(r0 - a[1], r1 - a[1]), slice(c0 - a[0], c1 - a[0]),
            slice(r0 - b[1], r1 - b[1]), slice(c0 - b[0], c1 - b[0]))


@dataclass
class _Looker:
    """Native looks of one text: reads windows of the region and keeps what touches a candidate."""

    raster: object
    region: Window
    plan: Plan
    segment: Segment
    text: int
    threshold: float
    side: int
    report: Callable[[], None]

    def look(self, cand: _Candidate) -> None:
        width, height = self.plan.width, self.plan.height
        queue = _cover(cand.box, self.side, width, height)
        total = count = 0.0
        while queue and len(cand.looks) < MAX_LOOKS:
            window = queue.pop(0)
            if window in cand.looks:
                continue
            rgb, _ = self.raster.read(_offset(window, self.region))
            [answer] = self.segment(rgb, [self.text])
            self.report()
            logits = upsample_window(answer.logits, window[3], window[2])
            kept = _keep(logits, _gate(cand, window) | self._kept_on(cand, window), self.threshold)
            cand.looks.append(window)
            if kept.any():
                cand.kept.append((window, np.where(kept, logits, SUPPRESSED).astype(np.float32)))
                total += float(_sigmoid(logits[kept]).sum())
                count += int(kept.sum())
                cand.iou = np.nanmax([cand.iou, answer.iou_score])
                queue.extend(_beyond(window, kept, self.side, width, height))
        cand.native = total / count if count else 0.0

    @staticmethod
    def _kept_on(cand: _Candidate, window: Window) -> np.ndarray:
        """What the candidate's earlier looks kept, on ``window``'s pixels (so an object is followed across edges)."""
        on = np.zeros((window[3], window[2]), bool)
        for w, logits in cand.kept:
            o = _overlap(window, w)
            if o is not None:
                on[o[0], o[1]] |= logits[o[2], o[3]] > SUPPRESSED
        return on


def _decide(cands: list[_Candidate], answer: Answer, presence_head: bool, presence_threshold: float) -> Decision:
    d = Decision(candidates=len(cands), looks=[w for c in cands for w in c.looks])
    if presence_head:
        d.presence, d.presence_source = float(_sigmoid(answer.object_score)), "presence head"
    best = max(range(len(cands)), key=lambda i: cands[i].score) if cands else None
    if best is not None and cands[best].kept:
        d.chosen, d.score = best, cands[best].score
        if not presence_head:
            d.presence = d.score
        d.present = d.presence >= presence_threshold
        if d.present:
            d.box = _box(cands[best].kept)
    return d


def _box(kept: list[tuple[Window, np.ndarray]]) -> Window:
    c0 = r0 = 1 << 62
    c1 = r1 = -1
    for (c, r, _, _), logits in kept:
        rows, cols = np.nonzero(logits > SUPPRESSED)
        c0, r0 = min(c0, c + int(cols.min())), min(r0, r + int(rows.min()))
        c1, r1 = max(c1, c + int(cols.max()) + 1), max(r1, r + int(rows.max()) + 1)
    return (c0, r0, c1 - c0, r1 - r0)


def iter_scene(raster, region: Window, plan: Plan, segment: Segment, *, texts: int, threshold: float,
               presence_threshold: float, presence_head: bool, model_size: int,
               progress: Callable[[int, int], None] | None = None,
               decisions: list[Decision] | None = None) -> Iterator[Piece]:
    """Run a ``"scene"`` plan on ``region`` of ``raster`` for ``texts`` texts (see the module
    docstring) and yield the output grid block by block. ``segment(rgb, indices)`` answers the
    texts of ``indices`` on one model input; ``progress(done, total)`` is called after every look
    (``total`` grows as looks are added); ``decisions`` receives one :class:`Decision` per text."""
    done = [0]

    def report() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], done[0])

    rgb, _ = raster.read(region, out_shape=plan.read_shape)
    global_answers = list(segment(rgb, list(range(texts))))
    del rgb
    report()
    found = _scan(raster, region, plan, segment, texts, threshold, model_size, report)
    chosen: list[_Candidate | None] = []
    for k, answer in enumerate(global_answers):
        g = upsample_window(answer.logits, *plan.read_shape)
        cands = _candidates(g, threshold, (0, 0, plan.width, plan.height), MAX_CANDIDATES) + found[k]
        for cand in cands:
            cand.support = _support(cand, g, plan.width, plan.height)
        cands = _merge(cands, MAX_CANDIDATES)
        looker = _Looker(raster, region, plan, segment, k, threshold, model_size, report)
        for cand in cands:
            looker.look(cand)
        d = _decide(cands, answer, presence_head, presence_threshold)
        if decisions is not None:
            decisions.append(d)
        chosen.append(cands[d.chosen] if d.present else None)
    yield from _pieces(raster, region, plan, chosen, global_answers)


def _scan(raster, region: Window, plan: Plan, segment: Segment, texts: int, threshold: float, model_size: int,
          report: Callable[[], None]) -> list[list[_Candidate]]:
    """The scan looks: windows of :data:`~rs2sam2.tiles.DECIMATE_ABOVE` model inputs, the largest area
    one input reads without losing detail, over the whole region; per text, the strongest part of
    each look's answer becomes a candidate."""
    side = max(DECIMATE_ABOVE * model_size, -(-max(plan.width, plan.height) // (SCAN_PER_SIDE - 1)))
    found: list[list[_Candidate]] = [[] for _ in range(texts)]
    for t in tile_grid(plan.width, plan.height, side, side // 8):
        c, r, w, h = t.window
        scale = max(1.0, max(w, h) / model_size)
        shape = (max(1, round(h / scale)), max(1, round(w / scale)))
        rgb, _ = raster.read(_offset(t.window, region), out_shape=shape)
        answers = segment(rgb, list(range(texts)))
        report()
        for k, answer in enumerate(answers):
            found[k] += _candidates(upsample_window(answer.logits, *shape), threshold, t.window, 1)
    return found


def _pieces(raster, region: Window, plan: Plan, chosen: list[_Candidate | None],
            global_answers: list[Answer]) -> Iterator[Piece]:
    """The output grid block by block: the chosen candidate's kept logits (their largest where looks overlap)."""
    answers = [Answer(logits=a.logits, prior=a.prior, iou_score=a.iou_score if c is None else c.iou,
                      object_score=a.object_score) for a, c in zip(global_answers, chosen)]
    for r in range(0, plan.height, BLOCK):
        for c in range(0, plan.width, BLOCK):
            block = (c, r, min(BLOCK, plan.width - c), min(BLOCK, plan.height - r))
            valid = raster.read_valid(_offset(block, region))
            logits = []
            for cand in chosen:
                out = np.full((block[3], block[2]), SUPPRESSED, np.float32)
                for window, kept in ([] if cand is None else cand.kept):
                    o = _overlap(block, window)
                    if o is not None:
                        np.maximum(out[o[0], o[1]], kept[o[2], o[3]], out=out[o[0], o[1]])
                logits.append(out)
            yield Piece(window=block, logits=logits, priors=[None] * len(chosen), valid=valid, answers=answers)
