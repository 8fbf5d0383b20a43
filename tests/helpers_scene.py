"""Large synthetic GeoTIFF scenes for the memory tests and the large-scene benchmark.

A scene is a tiled, DEFLATE-compressed 3-band uint8 GeoTIFF (EPSG:32633, 0.5 m pixels) of flat
colours in 2048-px bands with bright rectangles, written block row by block row so that building it
takes little memory; a 20000 x 20000 scene is about 2 MB on disk.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

SCENE_CRS = "EPSG:32633"
SCENE_PIXEL = 0.5
SCENE_ORIGIN = (500_000.0, 5_200_000.0)


def write_scene(path: str | Path, size: int, *, seed: int = 0, rows_per_write: int = 1024) -> Path:
    """Write a ``size x size`` scene to ``path`` (about one bright rectangle per 4 Mpx)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    rng = np.random.default_rng(seed)
    count = max(4, size * size // 4_000_000)
    rects = [(int(rng.integers(0, size - 200)), int(rng.integers(0, size - 200)), int(rng.integers(20, 200)),
              int(rng.integers(20, 200))) for _ in range(count)]
    transform = Affine(SCENE_PIXEL, 0.0, SCENE_ORIGIN[0], 0.0, -SCENE_PIXEL, SCENE_ORIGIN[1])
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs=SCENE_CRS,
                   transform=transform, tiled=True, blockxsize=512, blockysize=512, compress="deflate")
    with rasterio.Env(GDAL_CACHEMAX=64 * 2**20), rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, rows_per_write):
            h = min(rows_per_write, size - r0)
            block = np.empty((3, h, size), np.uint8)
            for c0 in range(0, size, 2048):
                colour = np.array([60 + (c0 // 2048) % 5 * 20, 90, 70 + (r0 // 4096) % 3 * 30], np.uint8)
                block[:, :, c0:c0 + 2048] = colour[:, None, None]
            for x, y, w, hh in rects:
                a, b = max(y, r0), min(y + hh, r0 + h)
                if a < b:
                    block[:, a - r0:b - r0, x:x + w] = 240
            dst.write(block, window=Window(0, r0, size, h))
    return Path(path)


# runs the command in a fresh process whose only child it is, then prints that child's peak RSS (KiB)
_MEASURE = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(rc)\n")


def run_measured(cmd: list[str], *, timeout: float, env: dict[str, str] | None = None) -> tuple[
        subprocess.CompletedProcess, float]:
    """Run ``cmd``; return it with the peak resident memory of the process in GiB (``getrusage``
    of a fresh wrapper process whose only child it is)."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK_RSS_KIB ")]
    if not lines:
        raise RuntimeError(f"no peak memory reported; stderr: {proc.stderr[-2000:]}")
    return proc, int(lines[-1].split()[1]) / 2**20
