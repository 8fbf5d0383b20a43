"""Peak memory of ``rs2sam2 predict`` on a large GeoTIFF (a scaled version of benchmarks/large_scene.py,
whose 20000 x 20000 figures are in benchmarks/README.md): ``--bbox`` of 2000 x 2000 px within 1.0 GB,
``--tile 1024 --overlap 128`` over the whole scene within 2.0 GB, each measured in a fresh process."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import helpers_ckpt as h
import helpers_scene

SIZE = 6000  # 49 tiles of 1024 with overlap 128; the benchmark runs 20000 (529 tiles)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    work = tmp_path_factory.mktemp("large")
    scene = helpers_scene.write_scene(work / "scene.tif", SIZE)
    ckpt = h.build_checkpoint(work / "nano")
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    base = [sys.executable, "-m", "rs2sam2", "predict", "--checkpoint", str(ckpt), "--image", str(scene), "--text",
            "the white building", "--device", "cpu", "--threshold", "0", "-q"]
    return work, scene, base, env


@pytest.mark.slow
def test_bbox_of_2000_px_stays_under_1_gb(setup):
    import rasterio

    work, scene, base, env = setup
    x0, y0 = helpers_scene.SCENE_ORIGIN
    px = helpers_scene.SCENE_PIXEL
    bbox = [x0 + 1000 * px, y0 - 3000 * px, x0 + 3000 * px, y0 - 1000 * px]
    proc, peak = helpers_scene.run_measured([*base, "--out", str(work / "bbox.tif"), "--bbox", *map(str, bbox)],
                                            timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"--bbox 2000 x 2000 of a {SIZE}^2 scene: peak RSS {peak:.2f} GB")
    assert peak <= 1.0
    with rasterio.open(scene) as src, rasterio.open(work / "bbox.tif") as m:
        assert (m.width, m.height) == (2000, 2000) and m.crs == src.crs
        assert m.transform == src.transform @ rasterio.Affine.translation(1000, 1000)


@pytest.mark.slow
def test_whole_scene_tiles_stay_under_2_gb(setup):
    import rasterio

    work, scene, base, env = setup
    start = time.perf_counter()
    proc, peak = helpers_scene.run_measured([*base, "--out", str(work / "tiles.tif"), "--tile", "1024", "--overlap",
                                             "128"], timeout=900, env=env)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-2000:]
    print(f"--tile 1024 --overlap 128 over {SIZE}^2 (49 tiles): peak RSS {peak:.2f} GB, {seconds:.0f} s, "
          f"{49 / seconds:.2f} tiles/s")
    assert peak <= 2.0
    with rasterio.open(scene) as src, rasterio.open(work / "tiles.tif") as m:
        assert (m.width, m.height, m.crs, m.transform) == (SIZE, SIZE, src.crs, src.transform)
        block = m.read(1, window=rasterio.windows.Window(0, 0, 1024, 1024))
    assert set(np.unique(block).tolist()) <= {0, 255}
