"""``rs2sam2 predict``: the arguments become checked values (an :class:`~rs2sam2.predict.inputs.Area`,
one :class:`~rs2sam2.results.Outputs` per job), then the public :class:`~rs2sam2.predict.Predictor`
methods run each image's jobs (:meth:`~rs2sam2.predict.Predictor.setup`,
:meth:`~rs2sam2.predict.Predictor.write`).

Every job's inputs and outputs, and every image's header, are checked before the first job runs;
bad input is one message and exit status 2 before anything is written (with ``--keep-going``, an
image whose header is bad is skipped and reported instead). An image whose pixels turn out corrupt
after a whole header fails when its turn comes: the jobs of the images before it keep their
outputs, its own jobs write nothing, and the later images are not run (``--keep-going``: they are,
and the exit status is still 2).

``--progress json`` makes stdout a stream of JSON objects, one per line, for programs (the QGIS
plugin): ``{"event": "start", "jobs": N}`` once every input is checked; ``{"event": "progress",
"done": k, "total": n}`` after every model input (a tile, a look of a scene answer -- whose
``total`` grows as looks are added -- or the jobs of an image read whole); ``{"event": "job",
"index": i, "text": ..., "written": [...], "foreground_px": n, "mode": m, "presence": p,
"decision": {...}}`` after each job's files are written (``index`` counts from 0 in the order of
the jobs; ``decision``: a scene answer's looks and choice, else null); ``{"event": "end", "status":
s, "seconds": t}`` last, also after an error. Warnings and errors stay on stderr.

The summary (``--summary FILE``; by default ``<batch file>.summary.json`` beside a ``--batch``
file) is one JSON object: the checkpoint, and per job its image, text, mode, files, foreground
pixels, presence and, for a scene answer, the windows it inspected and what it decided.

Under ``torchrun``, ``--batch`` shares the images among the ranks (a gloo group from
:func:`rs2sam2.runtime.init_distributed`): each image's jobs run on one rank only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..checkpoints import CHECKPOINT_HELP, TOKENIZER_HELP, CheckpointError, add_hub_arguments
from ..cliargs import number
from ..config import BOUNDS
from ..errors import ConfigError, UserError
from ..fsutil import atomic_write_text, check_writable
from ..geo import AreaError
from ..imageio import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, RasterInfo, set_max_pixels
from ..metrics import PUBLISHED_THRESHOLD
from ..progress import progress_bar
from ..results import OVERLAY_MAX_SIDE, Outputs, SceneResult
from ..runtime import PRECISIONS, init_distributed, launch_ranks
from ..text import text_preview
from .api import PRESENCE_THRESHOLD, Predictor
from .inputs import MODES, Area, InputError, check_texts, open_image, parse_bands, plan_area
from .jobs import Job, check_areas, raise_problems, read_headers, read_jobs, validate_jobs

__all__ = ["add_arguments", "run"]

PROGRESS = ("bar", "json", "none")
# errors that are the user's to fix: one message, exit 2
_USER_ERRORS = (UserError, AreaError, CheckpointError, FileNotFoundError, ImportError)

EPILOG = (
    "examples:\n"
    "  rs2sam2 predict --checkpoint ckpt/ --image scene.tif --text 'the ship at the top' \\\n"
    "      --out mask.tif --vector mask.gpkg --overlay overlay.png\n"
    "  rs2sam2 predict --checkpoint ckpt/ --image big.tif --text 'the white storage tanks' \\\n"
    "      --out tanks.tif --vector tanks.gpkg --tile 1024 --overlap 128\n"
    "  rs2sam2 predict --checkpoint ckpt/ --image big.tif --text 'the ship' --out ship.tif \\\n"
    "      --bbox 12.30 45.42 12.33 45.44 --bbox-crs EPSG:4326\n"
    "  rs2sam2 predict --checkpoint ckpt/ --batch jobs.csv   # columns image,text,out[,vector,overlay,prob]\n\n"
    "Masks are uint8 rasters, 255 = object, 0 = background (127 = nodata where the input has none), on\n"
    "exactly the grid of the image or area (GeoTIFF with the input CRS for .tif outputs of georeferenced\n"
    "inputs). Areas larger than twice the model input per side get a scene answer (--mode scene): a\n"
    "global look reads the scene-level words, native looks where it points refine the one object kept,\n"
    "and a sentence that describes nothing there writes an empty mask. With --mode tiles (--tile),\n"
    "every tile answers on its own and position words refer to each tile's frame. Exit status 2 on bad input.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 predict``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    _model_arguments(parser.add_argument_group("model"))
    _single_arguments(parser.add_argument_group("one prediction"))
    g = parser.add_argument_group("many predictions")
    g.add_argument("--batch", metavar="FILE",
                   help=".csv (with header) or .jsonl of jobs: image,text,out and optional vector (or geojson), "
                        "overlay, prob; relative paths are relative to the batch file. Under torchrun the images "
                        "are shared among the ranks")
    g.add_argument("--keep-going", action="store_true",
                   help="in batch mode, go on after a job fails (exit status 2 at the end if any failed)")
    _area_arguments(parser.add_argument_group("area of interest and how it is read"))
    _option_arguments(parser.add_argument_group("prediction options"))


def _model_arguments(g) -> None:
    g.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    add_hub_arguments(g)
    g.add_argument("--tokenizer", metavar="SPM", help=TOKENIZER_HELP)
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when available; default)")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default: bf16 where the device multiplies bf16 faster than fp32, else fp32), fp32, "
                        "bf16, or int8 (CPU: int8 MLP layers in the image encoder)")
    g.add_argument("--image-size", type=number(int, low=16, high=BOUNDS["image_size"]), metavar="N",
                   help="override the SAM2 input size (default: the one the checkpoint records; 1024 for "
                        "released folders)")


def _single_arguments(g) -> None:
    g.add_argument("--image", metavar="IN", help="PNG / JPEG / TIFF / GeoTIFF (any size, 8/16-bit, 1..N bands)")
    g.add_argument("--text", metavar="TEXT", help="the referring expression")
    g.add_argument("--out", metavar="MASK", help="mask raster: .tif (GeoTIFF for georeferenced inputs) or .png")
    g.add_argument("--vector", metavar="OUT", help="also write the mask's polygons: .gpkg or .shp (input CRS; "
                   "needs pip install 'rs2sam2[gis]'), .geojson (RFC 7946: lon/lat)")
    g.add_argument("--geojson", metavar="OUT.geojson", help="an alias of --vector")
    g.add_argument("--overlay", metavar="OUT.png", help="also write the mask drawn over the image (input size, "
                   f"at most {OVERLAY_MAX_SIDE} px per side for larger areas)")
    g.add_argument("--prob", metavar="OUT.tif", help="also write the probability map (float32 .tif or 8-bit .png)")


def _area_arguments(g) -> None:
    g.add_argument("--bbox", nargs=4, type=number(float), metavar=("MINX", "MINY", "MAXX", "MAXY"),
                   help="predict only this box, in the image's CRS (or --bbox-crs); snapped outward to whole "
                        "pixels; the mask covers exactly that window")
    g.add_argument("--bbox-crs", metavar="CRS", help="the CRS of --bbox, e.g. EPSG:4326 for lon/lat")
    g.add_argument("--window", nargs=4, type=number(int, low=0), metavar=("COL", "ROW", "WIDTH", "HEIGHT"),
                   help="predict only this window, in pixels")
    g.add_argument("--mode", choices=MODES,
                   help="scene (default; tiles with --tile): areas larger than twice the model input per side get "
                        "a scene answer -- a global look, native looks where it points, one object or none; "
                        "smaller ones are read whole. whole: the area is one model input (read decimated when "
                        "large). tiles: every tile at native resolution answers on its own, merged into one mask "
                        "(for 'all the tanks' questions)")
    g.add_argument("--tile", type=number(int, low=16), metavar="SIZE",
                   help="the tile size of --mode tiles (default: the model input); --tile alone means --mode tiles. "
                        "Memory stays bounded by a tile")
    g.add_argument("--presence-threshold", type=number(float, low=0, high=1), default=PRESENCE_THRESHOLD,
                   metavar="P", help=f"a scene answer whose presence is below P writes an empty mask (default "
                                     f"{PRESENCE_THRESHOLD}; presence: the trained presence head where the "
                                     "checkpoint has one, else the chosen candidate's score)")
    g.add_argument("--no-colour-check", dest="colour_check", action="store_false",
                   help="a scene answer does not check a colour word of the sentence ('the white tank') against "
                        "the candidates' pixels (for false-colour composites or single bands)")
    g.add_argument("--overlap", type=number(int, low=0), metavar="PX",
                   help="overlap of neighbouring tiles in pixels (default: SIZE // 8); each output pixel comes "
                        "from the tile whose centre is nearest")
    g.add_argument("--tile-batch", type=number(int, low=1, high=64), default=1, metavar="N",
                   help="--mode tiles: N tiles go through the model together, each with every sentence of a "
                        "--batch-size batch (default 1; memory grows with N)")


def _option_arguments(g) -> None:
    g.add_argument("--threshold", type=number(float), default=PUBLISHED_THRESHOLD,
                   help="logit threshold of the mask (default 0.5: the published rule, probability ~0.62; "
                        "0 = probability > 0.5)")
    g.add_argument("--bands", metavar="R,G,B",
                   help="1-based bands to use as RGB (e.g. 4,3,2) or one band (e.g. 1); default: 1,2,3 (1 for "
                        "single-band); non-8-bit data is stretched per band between its 2nd and 98th percentile")
    g.add_argument("--simplify", type=number(float, low=0), default=0.0, metavar="TOL",
                   help="simplify the polygons (Douglas-Peucker) with this tolerance in CRS units (default 0)")
    g.add_argument("--min-area", type=number(float, low=0), default=0.0, metavar="A",
                   help="drop polygons smaller than A square CRS units (default 0)")
    g.add_argument("--max-pixels", type=number(int, low=1), metavar="N",
                   help="decode budget: the most pixels decoded into memory at once (default "
                        f"{DEFAULT_MAX_PIXELS:,}, or the environment variable {MAX_PIXELS_ENV})")
    g.add_argument("--batch-size", type=number(int, low=1), default=8, help="expressions per forward pass (default 8)")
    g.add_argument("--summary", metavar="FILE.json",
                   help="write what each job decided (mode, presence, the windows a scene answer inspected) as "
                        "JSON (default with --batch: <batch file>.summary.json beside it)")
    g.add_argument("--progress", choices=PROGRESS, default="bar",
                   help="bar (default): progress bars on stderr; json: stdout carries only JSON lines "
                        "(events start, progress, job, end) for programs; none")
    g.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar or per-job lines (warnings are still shown)")
    g.add_argument("--verbose", "-v", action="store_true",
                   help="say on stderr which device and precision run the model, and why")


# --------------------------------------------------------------------------------------------
# progress and per-job reports
# --------------------------------------------------------------------------------------------


class Reporter:
    """What the command tells while it runs: progress bars and per-job lines, or JSON events (``--progress json``)."""

    def __init__(self, kind: str, quiet: bool, batch_mode: bool, who: str = "") -> None:
        self.json = kind == "json"
        self.bars = kind == "bar" and not quiet
        self.lines = not quiet and not self.json
        self.batch_mode, self.who = batch_mode, who
        self.done = self.total = 0
        self.records: list[dict] = []  # per job, for the summary
        self._bar = None
        self.start_time = time.perf_counter()

    def _emit(self, **event) -> None:
        print(json.dumps(event), flush=True)

    def start(self, jobs: int, steps: int) -> None:
        self.total = steps
        if self.json:
            self._emit(event="start", jobs=jobs)
        self._bar = progress_bar(total=jobs, desc=f"{self.who}predict", unit="expr", file=sys.stderr,
                                 dynamic_ncols=True, disable=not (self.bars and self.batch_mode))

    def stepper(self, weight: int):
        """The ``progress`` of one image's model inputs; each counts ``weight`` steps."""
        if not self.json:
            return self.bars

        def step(done: int, total: int) -> None:
            self.done += weight
            self.total = max(self.total, self.done)
            self._emit(event="progress", done=self.done, total=self.total)
        return step

    def job(self, index: int, job: Job, result: SceneResult) -> None:
        written = [str(p) for p in result.written]
        presence = result.provenance.get("presence")
        record = {"index": index, "image": str(job.image), "text": job.text, "written": written,
                  "foreground_px": result.foreground_px, "mode": result.provenance.get("mode"),
                  "presence": presence if presence is not None and math.isfinite(presence) else None,
                  "decision": result.decision}
        self.records.append(record)
        if self.json:
            self._emit(event="job", **{k: v for k, v in record.items() if k != "image"})
        elif self.lines:
            line = (f"{self.who}{text_preview(job.text)!r}: {result.foreground_px} px "
                    f"({100 * result.foreground_fraction:.2f}%){_scene_note(result.decision)} -> {', '.join(written)}")
            tqdm.write(line, file=sys.stdout) if self.batch_mode else print(line)
        self.skip(1)

    def skip(self, jobs: int) -> None:
        if self._bar is not None:
            self._bar.update(jobs)

    def end(self, status: int, jobs_written: int) -> None:
        if self._bar is not None:
            self._bar.close()
        seconds = time.perf_counter() - self.start_time
        if self.json:
            self._emit(event="end", status=status, seconds=round(seconds, 3))
        elif status == 0 and self.batch_mode and self.lines:
            print(f"{self.who}wrote {jobs_written} prediction(s) in {seconds:.1f} s", file=sys.stderr)


def _scene_note(decision: dict | None) -> str:
    if decision is None:
        return ""
    verdict = "kept" if decision["present"] else "nothing kept"
    presence = "n/a" if decision["presence"] is None else f"{decision['presence']:.2f}"
    return f" [scene: {len(decision['looks'])} native look(s), presence {presence}, {verdict}]"


def _write_summary(path: Path, checkpoint: str, records: list[dict]) -> None:
    summary = {"checkpoint": checkpoint, "jobs": sorted(records, key=lambda r: r["index"])}
    atomic_write_text(path, json.dumps(summary, indent=1, allow_nan=False) + "\n")


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


@dataclass
class Work:
    """Everything checked before the first job runs."""

    jobs: list[Job]
    infos: dict[Path, RasterInfo]
    unreadable: dict[Path, str]
    predictor: Predictor
    area: Area
    bands: tuple[int, ...] | None


def _fail(message: str) -> int:
    print(f"rs2sam2 predict: error: {message}", file=sys.stderr)
    return 2


def _jobs_from_args(args) -> list[Job]:
    single = [n for n in ("image", "text", "out", "vector", "geojson", "overlay", "prob")
              if getattr(args, n, None) is not None]
    if args.batch is not None:
        if single:
            raise InputError(f"--batch cannot be combined with {', '.join('--' + n for n in single)} "
                             "(give those as columns of the batch file)")
        return read_jobs(args.batch)
    missing = [f"--{n}" for n in ("image", "text", "out") if getattr(args, n, None) is None]
    if missing:
        raise InputError(f"missing {', '.join(missing)} (or use --batch FILE)")
    outputs = Outputs.of(out=args.out, prob=args.prob, vector=args.vector, geojson=args.geojson,
                         overlay=args.overlay)
    return [Job(image=Path(args.image).expanduser(), text=args.text, outputs=outputs)]


def _prepare(args) -> Work:
    """Check every argument, job, output and image header, and load the model."""
    bands = parse_bands(args.bands)
    area = Area.of(bbox=args.bbox, bbox_crs=args.bbox_crs, window=args.window, mode=args.mode, tile=args.tile,
                   overlap=args.overlap)
    set_max_pixels(args.max_pixels)
    jobs = _jobs_from_args(args)
    validate_jobs(jobs)
    infos, unreadable = read_headers(jobs)
    if unreadable and not (args.batch is not None and args.keep_going):
        raise_problems(list(unreadable.values()))
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                          tokenizer=args.tokenizer, threshold=args.threshold,
                                          image_size=args.image_size, subfolder=args.subfolder,
                                          revision=args.revision, presence_threshold=args.presence_threshold,
                                          colour_check=args.colour_check, tile_batch=args.tile_batch)
    check_areas(jobs, infos, area, predictor.config.image_size)
    if args.verbose:
        print(f"rs2sam2 predict: device {predictor.device}, precision {predictor.precision} "
              f"({predictor.precision_reason})", file=sys.stderr)
    return Work(jobs, infos, unreadable, predictor, area, bands)


def _steps(work: Work, groups: Sequence[tuple[Path, list[int]]]) -> int:
    """The model steps the run is expected to take (a tile, the jobs of an image read whole, or a
    scene answer's global look and about two native looks per job: it may take more)."""
    total = 0
    for image, indices in groups:
        if image in work.infos:
            _, plan, _ = plan_area(work.infos[image], work.area, work.predictor.config.image_size)
            steps = {"tiled": len(plan.tiles), "scene": 1 + 2 * len(indices)}
            total += steps.get(plan.mode, len(indices))
    return total


def run(args) -> int:
    """``rs2sam2 predict``: one image or a batch file (shared among torchrun ranks); exit status 0, or 2 on bad input."""
    try:
        rank, world = launch_ranks()
    except ConfigError as exc:
        return _fail(str(exc))
    batch_mode = args.batch is not None
    reporter = Reporter(args.progress, args.quiet, batch_mode, f"[rank {rank}] " if world > 1 else "")
    try:
        work = _prepare(args)
        if (summary := _summary_path(args, rank, world)) is not None:
            check_writable(summary, "--summary")  # before the work, not after it
    except _USER_ERRORS as exc:
        reporter.end(2, 0)
        return _fail(str(exc)) if rank == 0 else 2
    # jobs on the same image share one read and one preprocessing; order of first appearance
    groups: dict[Path, list[int]] = {}
    for i, j in enumerate(work.jobs):
        groups.setdefault(j.image, []).append(i)
    dist = init_distributed("cpu")  # the ranks agree on the outcome over gloo, wherever the model runs
    mine = list(groups.items())[dist.rank::dist.world_size]
    reporter.start(sum(len(g) for _, g in mine), _steps(work, mine))
    failures = _run_groups(work, mine, args, reporter)
    failed = dist.any(bool(failures))
    for f in failures:
        print(f"rs2sam2 predict: error: {reporter.who}{f}", file=sys.stderr)
    dist.close()
    if failures and args.keep_going and batch_mode:
        print(f"rs2sam2 predict: {reporter.who}{len(failures)} image(s) failed; the other jobs were written",
              file=sys.stderr)
    status = 2 if failed else 0
    summary = _summary_path(args, dist.rank, dist.world_size)
    if summary is not None and reporter.records:
        _write_summary(summary, args.checkpoint, reporter.records)
    reporter.end(status, sum(len(g) for _, g in mine))
    return status


def _summary_path(args, rank: int, world: int) -> Path | None:
    """Where the summary goes (each rank writes its own jobs' under torchrun)."""
    if args.summary is not None:
        path = Path(args.summary).expanduser()
    elif args.batch is not None:
        batch = Path(args.batch)
        path = batch.with_name(f"{batch.stem}.summary.json")
    else:
        return None
    return path if world == 1 else path.with_name(f"{path.stem}.rank{rank}{path.suffix}")


def _run_groups(work: Work, mine: Sequence[tuple[Path, list[int]]], args, reporter: Reporter) -> list[str]:
    """Run each image's jobs; the messages of the images that failed."""
    failures: list[str] = []
    for image_path, indices in mine:
        group = [work.jobs[i] for i in indices]
        if image_path in work.unreadable:  # --keep-going: its header was found bad before the run
            failures.append(work.unreadable[image_path])
            reporter.skip(len(group))
            continue
        try:
            results = _predict_group(work, image_path, group, args, reporter)
        except (ImageReadError, FileNotFoundError, OSError) as exc:
            where = ", ".join(j.where for j in group if j.where)
            failures.append(f"{where + ': ' if where else ''}{exc}")
            reporter.skip(len(group))
            if not args.keep_going:
                break
            continue
        for i, j, r in zip(indices, group, results, strict=True):
            reporter.job(i, j, r)
    return failures


def _predict_group(work: Work, image_path: Path, group: list[Job], args, reporter: Reporter) -> list[SceneResult]:
    """All jobs of one image: read it (or its area) once, write every job's outputs."""
    predictor = work.predictor
    texts = check_texts([j.text for j in group])
    with open_image(image_path, work.bands) as raster:
        setup = predictor.setup(raster, texts, work.area)
        notes = [message for _, message in setup.notes]
        if raster.info.georeferenced and any(j.outputs.mask.suffix.lower() == ".png" for j in group):
            notes.append(f"{image_path} is georeferenced but a PNG mask carries no georeference; use a .tif "
                         "output to keep the CRS and transform")
        for note in notes:
            print(f"rs2sam2 predict: warning: {note}", file=sys.stderr)
        weight = 1 if setup.plan.mode in ("tiled", "scene") else len(group)
        return predictor.write(raster, setup, [j.outputs for j in group], batch_size=args.batch_size,
                               simplify=args.simplify, min_area=args.min_area,
                               progress=reporter.stepper(weight) if setup.plan.mode == "tiled" or reporter.json
                               else False)
