"""The batch job file of ``rs2sam2 predict --batch``: one job per row (``.csv`` with a header, or
``.jsonl``) with ``image``, ``text``, ``out`` and optionally ``vector`` (or its alias ``geojson``),
``overlay``, ``prob``; relative paths are relative to the file's folder.

Everything that can be found wrong before the model runs is found here and reported together
(:func:`validate_jobs`, :func:`read_headers`, :func:`check_areas`), so a bad row stops the run
before any file is written.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..geo import AreaError
from ..imageio import ImageReadError, RasterInfo, read_info
from ..results import Outputs
from ..text import normalize_text
from .inputs import Area, InputError, plan_area

__all__ = ["JOB_COLUMNS", "Job", "check_areas", "raise_problems", "read_headers", "read_jobs", "validate_jobs"]

JOB_COLUMNS = ("image", "text", "out", "vector", "geojson", "overlay", "prob")
REQUIRED_COLUMNS = ("image", "text", "out")


@dataclass
class Job:
    """One expression on one image, and the files of its answer."""

    image: Path
    text: str
    outputs: Outputs
    where: str = ""  # "jobs.csv line 3", for messages


def _rows_csv(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise InputError(f"{path}: empty batch file (expected a header line: image,text,out)")
        names = [n.strip() for n in reader.fieldnames]
        _check_columns(names, path)
        reader.fieldnames = names
        for row in reader:
            if None in row:  # more cells than header names
                raise InputError(f"{path} line {reader.line_num}: more cells than columns in the header "
                                 "(quote texts that contain commas)")
            if not any((v or "").strip() for v in row.values()):
                continue
            yield reader.line_num, row


def _rows_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    with open(path, encoding="utf-8-sig") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path} line {n}: not valid JSON ({exc})") from None
            if not isinstance(row, dict):
                raise InputError(f"{path} line {n}: expected a JSON object with keys image, text, out")
            _check_columns(list(row), path, n)
            yield n, row


def _check_columns(names: list[str], path: Path, line: int | None = None) -> None:
    where = f"{path}" + (f" line {line}" if line else "")
    unknown = [n for n in names if n not in JOB_COLUMNS]
    if unknown:
        raise InputError(f"{where}: unknown column(s) {', '.join(map(repr, unknown))}; "
                         f"the columns are {', '.join(JOB_COLUMNS)}")
    missing = [n for n in REQUIRED_COLUMNS if n not in names]
    if missing:
        raise InputError(f"{where}: missing column(s) {', '.join(missing)} (required: image, text, out)")


def _job_of(row: dict[str, Any], where: str, base: Path) -> Job:
    """One row as a :class:`Job` (paths relative to ``base``); output paths are checked later, together."""
    def as_path(value) -> Path | None:
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        p = Path(str(value).strip()).expanduser()
        return p if p.is_absolute() else base / p

    text = row.get("text")
    if not isinstance(text, str):
        raise InputError(f"{where}: the text must be a string")
    image, out = as_path(row.get("image")), as_path(row.get("out"))
    if image is None or out is None:
        raise InputError(f"{where}: image and out are required")
    vector, alias = as_path(row.get("vector")), as_path(row.get("geojson"))
    if vector is not None and alias is not None:
        raise InputError(f"{where}: give vector or geojson, not both (geojson is an alias of vector)")
    outputs = Outputs(mask=out, prob=as_path(row.get("prob")), vector=vector or alias,
                      overlay=as_path(row.get("overlay")))
    return Job(image=image, text=text, outputs=outputs, where=where)


def read_jobs(path: str | os.PathLike) -> list[Job]:
    """Read a batch file (``.csv`` with a header, or ``.jsonl``): one job per row with ``image``,
    ``text``, ``out`` and optionally ``vector`` (or its alias ``geojson``), ``overlay``, ``prob``.
    Relative paths are taken relative to the batch file's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"batch file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _rows_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _rows_jsonl(path)
    else:
        raise InputError(f"batch file {path}: use a .csv (header image,text,out,...) or a .jsonl file")
    jobs = [_job_of(row, f"{path.name} line {line}", path.parent) for line, row in rows]
    if not jobs:
        raise InputError(f"batch file {path} has no rows")
    return jobs


def validate_jobs(jobs: Sequence[Job]) -> None:
    """Every problem that can be found without reading pixels or running the model, reported together."""
    problems = []
    images = {j.image.resolve() for j in jobs}
    seen: dict[Path, str] = {}
    for j in jobs:
        prefix = f"{j.where}: " if j.where else ""
        if not normalize_text(j.text):
            problems.append(f"{prefix}the text is empty: give a sentence that describes the object")
        if not j.image.is_file():
            problems.append(f"{prefix}image file not found: {j.image}")
        o = j.outputs
        try:
            Outputs.of(out=o.mask, prob=o.prob, vector=o.vector, overlay=o.overlay)
        except UserError as exc:
            problems.append(f"{prefix}{exc}")
        for p in o.paths():
            key = p.resolve()
            if key in images:
                problems.append(f"{prefix}output {p} would overwrite an input image")
            if key in seen:
                problems.append(f"{prefix}output {p} is also written by {seen[key] or 'another output'}")
            seen[key] = j.where or "another output"
    raise_problems(problems)


def raise_problems(problems: Sequence[str]) -> None:
    """One :class:`InputError` listing ``problems`` (the first 20), if there are any."""
    if len(problems) == 1:
        raise InputError(problems[0])
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise InputError("\n  ".join([f"{len(problems)} problem(s) with the input:"] + list(problems[:20])) + more)


def read_headers(jobs: Sequence[Job]) -> tuple[dict[Path, RasterInfo], dict[Path, str]]:
    """The header of every image of ``jobs``, read before the first job runs (no pixels are decoded):
    ``(infos, problems)``, ``problems`` holding the message of each image that is not an image, is cut
    short in its header, or is over the decode budget (missing images are left to
    :func:`validate_jobs`). An image whose pixels turn out corrupt after a whole header fails only
    when its turn comes."""
    infos: dict[Path, RasterInfo] = {}
    problems: dict[Path, str] = {}
    for image in dict.fromkeys(j.image for j in jobs):
        if not image.is_file():
            continue
        try:
            infos[image] = read_info(image, budget=True)
        except ImageReadError as exc:
            where = ", ".join(j.where for j in jobs if j.image == image and j.where)
            problems[image] = f"{where + ': ' if where else ''}{exc}"
    return infos, problems


def check_areas(jobs: Sequence[Job], infos: dict[Path, RasterInfo], area: Area, model_size: int) -> None:
    """Before anything is written: the area of interest of every image whose header reads
    (``infos``), and the outputs its plan can write."""
    problems = []
    for image, info in infos.items():
        try:
            _, plan, _ = plan_area(info, area, model_size)
        except AreaError as exc:
            problems.append(f"{image}: {exc}")
            continue
        if plan.mode == "full":
            continue
        how = "tile by tile" if plan.mode == "tiled" else "downscaled"
        for j in jobs:
            if j.image != image:
                continue
            try:
                j.outputs.check_windowed(how)
            except UserError as exc:
                problems.append(f"{j.where + ': ' if j.where else ''}{exc}")
    raise_problems(problems)
