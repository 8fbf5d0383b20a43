"""Large-scene benchmark: peak memory and speed of ``rs2sam2 predict`` on a big GeoTIFF.

    python benchmarks/large_scene.py [--size 20000] [--work /tmp/rs2sam2-large] [--checkpoint CKPT]

Builds (once) a SIZE x SIZE tiled 3-band GeoTIFF of flat colours with bright rectangles (about 2 MB
for 20000^2) and, without --checkpoint, a seeded random ``nano`` checkpoint (as the tests do), then
runs two commands, each in a fresh process whose peak resident memory is measured with getrusage:

* ``--bbox`` of 2000 x 2000 pixels in the middle of the scene (acceptance: <= 1.0 GB);
* ``--tile 1024 --overlap 128`` over the whole scene (acceptance: <= 2.0 GB within 15 minutes);
* the default, a scene answer over the whole scene (a global look from a decimated read, native looks
  where it points; acceptance: <= 2.0 GB, the bound of tiles).

Prints one JSON line per run (and appends them to benchmarks/results/large_scene.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import helpers_ckpt
import helpers_scene
from rs2sam2.tiles import tile_grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rs2sam2-large"))
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--overlap", type=int, default=128)
    parser.add_argument("--skip-tiles", action="store_true", help="no --tile run")
    parser.add_argument("--skip-scene", action="store_true", help="no scene-answer run")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    scene = args.work / f"scene{args.size}.tif"
    if not scene.exists():
        start = time.perf_counter()
        helpers_scene.write_scene(scene, args.size)
        print(f"built {scene} ({scene.stat().st_size / 2**20:.2f} MB) in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)
    ckpt = args.checkpoint or helpers_ckpt.build_checkpoint(args.work / "nano")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "rs2sam2", "predict", "--checkpoint", str(ckpt), "--image", str(scene),
            "--text", "the white building", "--device", "cpu", "--threshold", "0", "-q"]
    x0, y0 = helpers_scene.SCENE_ORIGIN
    px = helpers_scene.SCENE_PIXEL
    mid = args.size // 2
    bbox = [x0 + (mid - 1000) * px, y0 - (mid + 1000) * px, x0 + (mid + 1000) * px, y0 - (mid - 1000) * px]
    runs = [("bbox 2000x2000", [*base, "--out", str(args.work / "bbox.tif"), "--vector",
                                str(args.work / "bbox.geojson"), "--bbox", *map(str, bbox)], 1.0, None)]
    if not args.skip_tiles:
        n = len(tile_grid(args.size, args.size, args.tile, args.overlap))
        runs.append((f"tiles {args.tile}/{args.overlap}", [*base, "--out", str(args.work / "tiles.tif"), "--tile",
                                                            str(args.tile), "--overlap", str(args.overlap)], 2.0, n))
    if not args.skip_scene:
        runs.append(("scene (default)", [*base, "--out", str(args.work / "scene.tif"), "--vector",
                                         str(args.work / "scene.geojson"), "--summary",
                                         str(args.work / "scene.summary.json")], 2.0, None))
    failed = False
    for name, cmd, bound_gb, tiles in runs:
        start = time.perf_counter()
        proc, peak = helpers_scene.run_measured(cmd, timeout=3600, env=env)
        seconds = time.perf_counter() - start
        record = {"run": name, "size": args.size, "returncode": proc.returncode, "seconds": round(seconds, 1),
                  "peak_rss_gb": round(peak, 3), "bound_gb": bound_gb, "cpus": os.cpu_count()}
        if tiles:
            record.update(tiles=tiles, tiles_per_s=round(tiles / seconds, 2))
        print(json.dumps(record))
        with open(ROOT / "benchmarks" / "results" / "large_scene.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        failed |= proc.returncode != 0 or peak > bound_gb
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
