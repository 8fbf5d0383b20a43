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

from rs2sam2.data.synth import make_mosaic  # noqa: E402

CELL = 256


def _write_geotiff(path: Path, rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    profile = {"driver": "GTiff", "width": w, "height": h, "count": 3, "dtype": "uint8", "crs": "EPSG:32633",
               "transform": Affine(0.5, 0, 500000.0, 0, -0.5, 5200000.0), "compress": "JPEG",
               "photometric": "YCBCR", "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(rgb.transpose(2, 0, 1))


def build(work: Path, mosaics: int, seed: int) -> list[dict]:
    """The mosaics, their cells and the jobs: one per target (its first sentence) and one absent sentence."""
    jobs = []
    for k in (3, 4):
        for m in range(mosaics):
            scene = make_mosaic(seed=seed + m, k=k, size=CELL)
            image = work / f"mosaic{k}x{k}_{m}.tif"
            _write_geotiff(image, scene.image)
            for t, (index, sentences) in enumerate(scene.targets):
                obj = scene.objects[index]
                row, col = int(obj.cy) // CELL, int(obj.cx) // CELL
                cell_image = work / f"mosaic{k}x{k}_{m}_cell{row}{col}.tif"
                _write_geotiff(cell_image, scene.image[row * CELL:(row + 1) * CELL, col * CELL:(col + 1) * CELL])
                target = work / f"mosaic{k}x{k}_{m}_t{t}.npy"
                np.save(target, obj.mask)
                jobs.append({"name": f"{k}x{k}_{m}_t{t}", "image": str(image), "cell_image": str(cell_image),
                             "text": sentences[0], "target": str(target), "cell": [row, col], "absent": False})
            for a, (_, sentence) in enumerate(scene.absent):
                jobs.append({"name": f"{k}x{k}_{m}_a{a}", "image": str(image), "text": sentence, "target": None,
                             "cell": None, "absent": True})
    return jobs


def _run(name: str, jobs: list[dict], work: Path, ckpt: str, extra: list[str], env: dict) -> float:
    """One ``rs2sam2 predict --batch`` over ``jobs``; its wall time in seconds."""
    folder = work / name.replace(" ", "_")
    folder.mkdir(exist_ok=True)
    batch = folder / "jobs.csv"
    with open(batch, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "text", "out", "vector"])
        for j in jobs:
            image = j["cell_image"] if name == "right cell" else j["image"]
            writer.writerow([image, j["text"], f"{j['name']}.tif", f"{j['name']}.geojson"])
    cmd = [sys.executable, "-m", "rs2sam2", "predict", "--checkpoint", ckpt, "--batch", str(batch), "--device", "cpu",
           "-q", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return seconds


def _score(name: str, jobs: list[dict], work: Path) -> dict:
    folder = work / name.replace(" ", "_")
    ious, outside, painted, empty_absent, absent_polys, absent = [], 0, 0, 0, 0, 0
    for j in jobs:
        with rasterio.open(folder / f"{j['name']}.tif") as m:
            mask = m.read(1) == 255
        polys = len(json.loads((folder / f"{j['name']}.geojson").read_text())["features"])
        if j["absent"]:
            absent += 1
            empty_absent += int(not mask.any())
            absent_polys += polys
            continue
        target = np.load(j["target"])
        row, col = j["cell"]
        cell = (slice(row * CELL, (row + 1) * CELL), slice(col * CELL, (col + 1) * CELL))
        if name == "right cell":
            target = target[cell]
        else:
            inside = np.zeros_like(mask)
            inside[cell] = True
            outside += int((mask & ~inside).sum())
            painted += int(mask.sum())
        union = (mask | target).sum()
        ious.append(float((mask & target).sum() / union) if union else 1.0)
    return {"targets": len(ious), "mIoU": round(100 * float(np.mean(ious)), 1),
            "iou_at_0.5": round(100 * float(np.mean(np.asarray(ious) >= 0.5)), 1),
            "outside_cell_pct": None if name == "right cell" else round(100 * outside / max(1, painted), 1),
            "absent": absent, "absent_empty_pct": round(100 * empty_absent / max(1, absent), 1) if absent else None,
            "absent_polygons": absent_polys if absent else None}


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
        chosen = [j for j in jobs if not (name == "right cell" and j["absent"])]
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
