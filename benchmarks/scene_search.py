"""Scene-search benchmark: does ``rs2sam2 predict`` answer a sentence about a whole scene where it points?

    python benchmarks/scene_search.py --checkpoint rs2sam2-demo/run [--mosaics 6] [--work /tmp/rs2sam2-scenes]

Builds mosaics of 3 x 3 and 4 x 4 generated 256 px scenes (``rs2sam2.data.synth.make_mosaic``:
768^2 and 1024^2 GeoTIFFs, JPEG-compressed as much real imagery is), each with its targets described
at the scale of the whole mosaic (the generator's rules: colour, size, thirds, leftmost, largest) and
one absent sentence (it describes nothing in the mosaic), and runs the same jobs four ways, each one
``rs2sam2 predict --batch`` in a fresh process:

* ``scene`` -- the plain command (the default: a scene answer);
* ``tiles`` -- ``--tile 256 --overlap 32`` (every tile answers on its own);
* ``whole`` -- ``--mode whole`` (the mosaic decimated to one model input);
* ``right cell`` -- the target sentences on the target's own 256 px cell only (what the model does
  when it is shown the right place).

Per run: mIoU and the share of targets at IoU >= 0.5 (target sentences; the right-cell run is
scored on the cell), the share of painted pixels outside the target's 256 px cell, the wall time
(model loading included, the same for every run), and for the absent sentences the share of empty
masks and the polygons written. Prints a Markdown table and writes ``results.json`` in the work folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src")]

from rs2sam2.scene_eval import MosaicJob, mosaic_jobs, score  # noqa: E402

CELL = 256


def _write_geotiff(path: Path, rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(0.5, 0, 500000.0, 0, -0.5, 5200000.0), "compress": "JPEG",
               "photometric": "YCBCR", "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(rgb.transpose(2, 0, 1))


def build(work: Path, mosaics: int, seed: int) -> list[tuple[MosaicJob, Path, Path | None]]:
    """The jobs (rs2sam2.scene_eval), each with its mosaic's GeoTIFF and its target's cell's."""
    out, written = [], {}
    for job in mosaic_jobs(mosaics, seed, size=CELL):
        mosaic = job.name.rsplit("_", 1)[0]
        image = work / f"mosaic{mosaic}.tif"
        if mosaic not in written:
            _write_geotiff(image, job.image)
            written[mosaic] = image
        cell_image = None
        if not job.absent:
            cell_image = work / f"mosaic{job.name}_cell.tif"
            _write_geotiff(cell_image, job.image[job.cell_window()])
        out.append((job, image, cell_image))
    return out


def _run(name: str, jobs: list, work: Path, ckpt: str, extra: list[str], env: dict) -> float:
    """One ``rs2sam2 predict --batch`` over ``jobs``; its wall time in seconds."""
    folder = work / name.replace(" ", "_")
    folder.mkdir(exist_ok=True)
    batch = folder / "jobs.csv"
    with open(batch, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "text", "out", "vector"])
        for job, image, cell_image in jobs:
            writer.writerow([cell_image if name == "right cell" else image, job.text, f"{job.name}.tif",
                             f"{job.name}.geojson"])
    cmd = [sys.executable, "-m", "rs2sam2", "predict", "--checkpoint", ckpt, "--batch", str(batch), "--device", "cpu",
           "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return seconds


def _score(name: str, jobs: list, work: Path) -> dict:
    """The run's figures (rs2sam2.scene_eval.score) and the polygons written for absent sentences."""
    folder = work / name.replace(" ", "_")
    masks, polygons = [], 0
    for job, _, _ in jobs:
        with rasterio.open(folder / f"{job.name}.tif") as m:
            masks.append(m.read(1) == 255)
        if job.absent:
            polygons += len(json.loads((folder / f"{job.name}.geojson").read_text())["features"])
    figures = score([job for job, _, _ in jobs], masks, on_cell=name == "right cell")
    return {**figures, "absent_polygons": polygons if figures["absent"] else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rs2sam2-scenes"))
    parser.add_argument("--mosaics", type=int, default=6, help="mosaics of each size (3x3 and 4x4)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--runs", default="scene,tiles,whole,right cell")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    jobs = build(args.work, args.mosaics, args.seed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs = {"scene": [], "tiles": ["--tile", "256", "--overlap", "32"], "whole": ["--mode", "whole"],
            "right cell": []}
    results = {}
    for name in args.runs.split(","):
        chosen = [j for j in jobs if not (name == "right cell" and j[0].absent)]
        seconds = _run(name, chosen, args.work, args.checkpoint, runs[name], env)
        results[name] = {**_score(name, chosen, args.work), "seconds": round(seconds, 1)}
        print(json.dumps({"run": name, **results[name]}), file=sys.stderr)
    (args.work / "results.json").write_text(json.dumps({"jobs": len(jobs), "results": results}, indent=1) + "\n")
    print("| run | mIoU | targets at IoU >= 0.5 | painted outside the target's cell | absent: empty masks "
          "(polygons) | time |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = results.get("tiles", {}).get("seconds")
    for name, r in results.items():
        ratio = f" ({r['seconds'] / base:.2f}x tiles)" if base else ""
        outside = "-" if r["outside_cell_pct"] is None else f"{r['outside_cell_pct']}%"
        absent = "-" if r["absent_empty_pct"] is None else f"{r['absent_empty_pct']}% ({r['absent_polygons']})"
        print(f"| {name} | {r['mIoU']} | {r['iou_at_0.5']}% | {outside} | {absent} | {r['seconds']} s{ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
