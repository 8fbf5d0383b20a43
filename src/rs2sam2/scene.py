"""Scene answers: a sentence about a large scene is answered where it points, not in every tile.

A ``"scene"`` plan (:func:`rs2sam2.tiles.plan_region` with ``scene=True``, for regions whose longer
side exceeds :data:`~rs2sam2.tiles.DECIMATE_ABOVE` x the model input) runs in five steps, per text:

1. **Scene words.** The words about the scene's frame ("at the top right", "in the north-east",
   "the leftmost", "the largest") are read apart from the object they qualify
   (:func:`rs2sam2.scene_words.read_scene_words`): a window of the scene would read them in its
   own frame, so the looks below ask for the object alone ("the white tank").
2. **The global look.** The whole region, decimated to one model input, answers the whole
   sentence. Where no scene word was read apart, its probability around a candidate weighs that
   candidate (the model's own reading of the sentence, ``rank x (0.5 + 0.5 x support)``).
3. **Scan looks.** Windows of :data:`~rs2sam2.tiles.DECIMATE_ABOVE` model inputs (the largest area
   one input reads without losing detail by today's rule; larger when more than
   :data:`SCAN_PER_SIDE` would be needed per side) cover the region with as little overlap as it
   allows, each answering the object. The strongest parts of each answer (:data:`PER_SCAN_LOOK`)
   are candidates, with their *evidence*: the look's presence (the sigmoid of its object-score
   logit) where the checkpoint's presence head was trained (``config.presence_head``), else the
   part's mean probability; 0 where the object's words name a colour that under
   :data:`COLOUR_SHARE` of the part's pixels show (:mod:`rs2sam2.colours`: a model answers with
   its best guess in every window, the pixels tell a white tank from the red one asked for).
   Candidates whose boxes meet or touch are one object, cut by a border.
4. **Resolved in the scene's frame.** The candidates whose evidence reaches
   ``presence_threshold`` are the objects the sentence names; of those, the ones in the sentence's
   third(s) of the region (give or take :data:`BAND_MARGIN`); of those, the one its pick word
   chooses (leftmost, upper, largest... by box centre or area), or else the strongest. None left:
   the answer is empty.
5. **Native looks.** The chosen candidate is looked at at native resolution: model-input windows
   covering its box (plus a margin), and, when the object runs into a window's inner edge, the
   window beyond it (at most :data:`MAX_LOOKS`). A native look keeps only the parts of its mask that
   touch the candidate, so a look never answers about an object elsewhere in its window, and the
   looks are merged (their union), so an object across a look's border comes out whole.

Nothing here knows about models or files: :func:`iter_scene` takes a *segment* function
(``(rgb, texts) -> [Answer]``), like :func:`rs2sam2.tiles.iter_pieces`, and yields the
output grid block by block, so memory stays bounded by a block and the looks kept in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .colours import colour_share, colour_word
from .scene_words import SceneWords, read_scene_words
from .tiles import BLOCK, DECIMATE_ABOVE, Answer, Piece, Plan, Window, upsample_window

__all__ = ["BAND_MARGIN", "COLOUR_SHARE", "MAX_LOOKS", "PER_SCAN_LOOK", "SUPPRESSED", "Decision", "grow_into", "iter_scene", "label"]

#: native looks per candidate (covering its box, then following the object across window edges)
MAX_LOOKS = 8
#: scan looks per side at most (larger regions get larger scan windows, read decimated)
SCAN_PER_SIDE = 6
#: candidates one scan look gives per text (a window may hold two of the objects a sentence names)
PER_SCAN_LOOK = 2
#: how far past a third's border an object still counts as in that third (a share of the side)
BAND_MARGIN = 0.025
#: the least share of a candidate's pixels that must show the colour the sentence names
COLOUR_SHARE = 0.3
#: the logit written where the scene answer is not (probability ~2e-9)
SUPPRESSED = -20.0

Segment = Callable[[np.ndarray, Sequence[str]], Sequence[Answer]]


@dataclass
class Decision:
    """What the scene answer decided for one text: where it looked and what it kept."""

    looks: list[Window] = field(default_factory=list)  # native windows inspected (region pixels)
    scan_looks: list[Window] = field(default_factory=list)  # the scan windows, read decimated (region pixels)
    candidates: int = 0
    chosen: int | None = None  # the chosen candidate's rank among them (0 = the strongest evidence)
    score: float = float("nan")  # the chosen candidate's score
    presence: float = float("nan")
    present: bool = False
    presence_source: str = "candidate score"  # or "presence head"
    box: Window | None = None  # the answer's bounding box (region pixels), when present
    words: SceneWords | None = None  # how the sentence was read: the object, and the words about the scene
    colour: str | None = None  # the colour checked against the candidates' pixels (None: none named, or unchecked)
    colour_share: float = float("nan")  # the share of the chosen candidate's pixels showing it

    def as_dict(self) -> dict:
        words = None if self.words is None else {"object": self.words.object_text, "rows": self.words.v,
                                                 "columns": self.words.h, "pick": self.words.pick}
        return {"global_look": True, "scene_words": words, "scan_looks": [list(w) for w in self.scan_looks],
                "looks": [list(w) for w in self.looks],
                "colour": self.colour, "colour_share": _finite(self.colour_share),
                "candidates": self.candidates, "chosen": self.chosen, "score": _finite(self.score),
                "presence": _finite(self.presence), "presence_source": self.presence_source,
                "present": self.present, "box": None if self.box is None else list(self.box)}


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


@dataclass(eq=False)
class _Candidate:
    part: np.ndarray  # bool, on the map of the scan look that found it
    peak: float  # the largest probability in it
    mean: float  # its mean probability
    box: Window  # in region pixels
    frame: Window  # the region pixels ``part`` covers
    area: float  # in region pixels
    presence: float = float("nan")  # the scan look's presence (sigmoid of its object-score logit)
    support: float = 0.0  # the global look's largest probability around it
    merged: list[_Candidate] = field(default_factory=list)  # weaker candidates on the same object
    kept: list[tuple[Window, np.ndarray]] = field(default_factory=list)  # (window, logits, SUPPRESSED elsewhere)
    looks: list[Window] = field(default_factory=list)
    iou: float = float("nan")
    colour: float = float("nan")  # the share of its pixels showing the colour the sentence names (nan: none named)

    @property
    def centre(self) -> tuple[float, float]:
        """``(column, row)`` of its box's centre, in region pixels."""
        return self.box[0] + self.box[2] / 2, self.box[1] + self.box[3] / 2

    def evidence(self, presence_head: bool) -> float:
        """How sure the scan look is that this is the object named: the presence head where the
        checkpoint has one, else the mean probability of the part; 0 where the sentence names a
        colour that too few of its pixels show (:data:`COLOUR_SHARE`)."""
        if self.colour < COLOUR_SHARE:
            return 0.0
        return self.presence if presence_head else self.mean

    def rank(self, presence_head: bool) -> float:
        """The evidence, weighed by the global look's reading of the whole sentence around it where
        that reading counts (``support`` is 1 where the scene words were read apart)."""
        return self.evidence(presence_head) * (0.5 + 0.5 * self.support)


def _candidates(g: np.ndarray, threshold: float, frame: Window, most: int, presence: float) -> list[_Candidate]:
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
        p = _sigmoid(g[part])
        found.append(_Candidate(part, float(p.max()), float(p.mean()), (c0, r0, c1 - c0, r1 - r0), frame,
                                float(rows.size * sx * sy), presence))
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


def _merge(cands: list[_Candidate], presence_head: bool) -> list[_Candidate]:
    """One candidate per object, strongest first: candidates whose boxes meet (directly or through
    others) are one object seen by several scan looks; the strongest of them takes the others in
    (their parts, their boxes)."""
    kept: list[_Candidate] = []
    for cand in sorted(cands, key=lambda c: -c.rank(presence_head)):
        meeting = [k for k in kept if _overlap(_grown(k.box), cand.box) is not None]
        if not meeting:
            kept.append(cand)
            continue
        head = meeting[0]
        for other in [cand, *meeting[1:]]:
            head.merged += [other, *other.merged]
            other.merged = []
            c0, r0 = min(head.box[0], other.box[0]), min(head.box[1], other.box[1])
            c1 = max(head.box[0] + head.box[2], other.box[0] + other.box[2])
            r1 = max(head.box[1] + head.box[3], other.box[1] + other.box[3])
            head.box = (c0, r0, c1 - c0, r1 - r0)
            head.area = max(head.area, other.area)
        kept = [k for k in kept if k is head or all(k is not m for m in meeting)]
    return kept


def _grown(box: Window) -> Window:
    """``box`` one pixel larger on every side (boxes that touch across a scan look's border meet)."""
    return (box[0] - 1, box[1] - 1, box[2] + 2, box[3] + 2)


def _in_third(coord: float, length: int, third: int) -> bool:
    """Whether ``coord`` lies in third ``third`` (0, 1, 2) of ``length``, give or take :data:`BAND_MARGIN`."""
    margin = BAND_MARGIN * length
    return third * length / 3 - margin <= coord <= (third + 1) * length / 3 + margin


_PICKS: dict[str, Callable[[_Candidate], float]] = {
    "left": lambda c: -c.centre[0], "right": lambda c: c.centre[0], "top": lambda c: -c.centre[1],
    "bottom": lambda c: c.centre[1], "larger": lambda c: c.area, "smaller": lambda c: -c.area,
}


def _resolve(cands: list[_Candidate], words: SceneWords, width: int, height: int, presence_head: bool,
             presence_threshold: float) -> _Candidate | None:
    """The candidate the sentence points at in the scene's frame (step 4), or None: of the
    candidates whose evidence reaches ``presence_threshold`` (the objects the sentence names), those
    in its third(s) of the region, then the one its pick word chooses, or else the strongest."""
    matches = [c for c in cands if c.evidence(presence_head) >= presence_threshold]
    if words.v is not None:
        matches = [c for c in matches if _in_third(c.centre[1], height, ("top", "middle", "bottom").index(words.v))]
    if words.h is not None:
        matches = [c for c in matches if _in_third(c.centre[0], width, ("left", "center", "right").index(words.h))]
    if not matches:
        return None
    if words.pick is not None:
        return max(matches, key=_PICKS[words.pick])
    return max(matches, key=lambda c: c.rank(presence_head))


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
    query: str
    threshold: float
    side: int
    report: Callable[[], None]

    def look(self, cand: _Candidate) -> None:
        width, height = self.plan.width, self.plan.height
        queue = _cover(cand.box, self.side, width, height)
        while queue and len(cand.looks) < MAX_LOOKS:
            window = queue.pop(0)
            if window in cand.looks:
                continue
            rgb, _ = self.raster.read(_offset(window, self.region))
            [answer] = self.segment(rgb, [self.query])
            self.report()
            logits = upsample_window(answer.logits, window[3], window[2])
            kept = _keep(logits, _gate(cand, window) | self._kept_on(cand, window), self.threshold)
            cand.looks.append(window)
            if kept.any():
                cand.kept.append((window, np.where(kept, logits, SUPPRESSED).astype(np.float32)))
                cand.iou = np.nanmax([cand.iou, answer.iou_score])
                queue.extend(_beyond(window, kept, self.side, width, height))

    @staticmethod
    def _kept_on(cand: _Candidate, window: Window) -> np.ndarray:
        """What the candidate's earlier looks kept, on ``window``'s pixels (so an object is followed across edges)."""
        on = np.zeros((window[3], window[2]), bool)
        for w, logits in cand.kept:
            o = _overlap(window, w)
            if o is not None:
                on[o[0], o[1]] |= logits[o[2], o[3]] > SUPPRESSED
        return on


def _decide(cands: list[_Candidate], chosen: _Candidate | None, words: SceneWords, colour: str | None,
            scans: list[Window], presence_head: bool, presence_threshold: float) -> Decision:
    d = Decision(candidates=len(cands), words=words, colour=colour, scan_looks=scans)
    d.presence_source = "presence head" if presence_head else "candidate score"
    if chosen is None:
        best = max(cands, key=lambda c: c.evidence(presence_head), default=None)
        d.presence = float("nan") if best is None else best.evidence(presence_head)
        return d
    d.looks, d.chosen = chosen.looks, next(i for i, c in enumerate(cands) if c is chosen)
    d.score = d.presence = chosen.evidence(presence_head)
    d.colour_share = chosen.colour
    d.present = bool(chosen.kept) and d.presence >= presence_threshold
    if d.present:
        d.box = _box(chosen.kept)
    return d


def _box(kept: list[tuple[Window, np.ndarray]]) -> Window:
    c0 = r0 = 1 << 62
    c1 = r1 = -1
    for (c, r, _, _), logits in kept:
        rows, cols = np.nonzero(logits > SUPPRESSED)
        c0, r0 = min(c0, c + int(cols.min())), min(r0, r + int(rows.min()))
        c1, r1 = max(c1, c + int(cols.max()) + 1), max(r1, r + int(rows.max()) + 1)
    return (c0, r0, c1 - c0, r1 - r0)


def iter_scene(raster, region: Window, plan: Plan, segment: Segment, *, texts: Sequence[str], threshold: float,
               presence_threshold: float, presence_head: bool, model_size: int, colour_check: bool = True,
               progress: Callable[[int, int], None] | None = None,
               decisions: list[Decision] | None = None) -> Iterator[Piece]:
    """Run a ``"scene"`` plan on ``region`` of ``raster`` for ``texts`` (see the module docstring)
    and yield the output grid block by block. ``segment(rgb, texts)`` answers texts on one model
    input; ``progress(done, total)`` is called after every look (``total`` grows as looks are
    added); ``decisions`` receives one :class:`Decision` per text."""
    done = [0]

    def report() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], done[0])

    words = [read_scene_words(t) for t in texts]
    rgb, _ = raster.read(region, out_shape=plan.read_shape)
    global_answers = list(segment(rgb, list(texts)))
    del rgb
    report()
    colours = [colour_word(w.object_text) if colour_check else None for w in words]
    scans = _scan_windows(plan.width, plan.height, _scan_side(plan, model_size))
    found = _scan(raster, region, scans, segment, [w.object_text for w in words], threshold, model_size, report,
                  presence_head, colours)
    chosen: list[_Candidate | None] = []
    for k, answer in enumerate(global_answers):
        g = upsample_window(answer.logits, *plan.read_shape)
        for cand in found[k]:  # the model's own reading of the sentence, where no scene word was read apart
            cand.support = 1.0 if words[k].any else _support(cand, g, plan.width, plan.height)
        cands = _merge(found[k], presence_head)
        best = _resolve(cands, words[k], plan.width, plan.height, presence_head, presence_threshold)
        if best is not None:
            _Looker(raster, region, plan, segment, words[k].object_text, threshold, model_size, report).look(best)
        d = _decide(cands, best, words[k], colours[k], scans, presence_head, presence_threshold)
        if decisions is not None:
            decisions.append(d)
        chosen.append(best if d.present else None)
    yield from _pieces(raster, region, plan, chosen, global_answers)


def _scan_side(plan: Plan, model_size: int) -> int:
    """The side of the scan windows: :data:`~rs2sam2.tiles.DECIMATE_ABOVE` model inputs, or larger
    when more than :data:`SCAN_PER_SIDE` of them would be needed per side."""
    return max(DECIMATE_ABOVE * model_size, -(-max(plan.width, plan.height) // SCAN_PER_SIDE))


def _scan(raster, region: Window, windows: list[Window], segment: Segment, queries: list[str], threshold: float,
          model_size: int, report: Callable[[], None], presence_head: bool,
          colours: list[str | None]) -> list[list[_Candidate]]:
    """The scan looks: ``windows`` (:func:`_scan_side` px, over the whole region), each read as one
    model input and answering the object a text names (its scene words left out); per text, the
    strongest parts of each look's answer (:data:`PER_SCAN_LOOK`) are candidates, with the share of
    their pixels that show the text's colour (``colours``: a basic colour name per text, or None)."""
    distinct = list(dict.fromkeys(queries))
    found: list[list[_Candidate]] = [[] for _ in queries]
    for window in windows:
        _, _, w, h = window
        scale = max(1.0, max(w, h) / model_size)
        shape = (max(1, round(h / scale)), max(1, round(w / scale)))
        rgb, _ = raster.read(_offset(window, region), out_shape=shape)
        answers = dict(zip(distinct, segment(rgb, distinct)))
        report()
        for k, query in enumerate(queries):
            answer = answers[query]
            presence = float(_sigmoid(answer.object_score)) if presence_head else float("nan")
            cands = _candidates(upsample_window(answer.logits, *shape), threshold, window, PER_SCAN_LOOK, presence)
            if colours[k] is not None:
                for cand in cands:
                    cand.colour = colour_share(rgb, cand.part, colours[k])
            found[k] += cands
    return found


def _scan_windows(width: int, height: int, side: int) -> list[Window]:
    """Windows of ``side`` px covering the region with as little overlap as it allows: as many per
    side as it takes, spread evenly (an object cut by a border is joined again by :func:`_merge`)."""
    def starts(length: int) -> list[tuple[int, int]]:
        size = min(side, length)
        n = -(-length // size)
        return [(round(i * (length - size) / max(1, n - 1)), size) for i in range(n)]

    return [(c, r, w, h) for r, h in starts(height) for c, w in starts(width)]


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
