"""rs2sam2.tiles: the tile grid, the nearest-centre merge, window-wise resizing, and the tiling engine
driven by model-independent segment functions (so the merge is checked pixel by pixel)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine

from rs2sam2.imageio import Raster
from rs2sam2.results import Outputs, SceneWriter, assemble
from rs2sam2.tiles import Answer, iter_pieces, plan_region, tile_grid, upsample_window


def _owner_by_nearest_centre(width: int, height: int, tiles) -> np.ndarray:
    """For every pixel, the index of the tile whose centre is nearest (Euclidean; ties: the earlier
    tile), by brute force over all tiles whose window holds the pixel."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    best = np.full((height, width), np.inf)
    owner = np.full((height, width), -1)
    for i, t in enumerate(tiles):
        c, r, w, h = t.window
        inside = (xs > c) & (xs < c + w) & (ys > r) & (ys < r + h)
        d = (xs - (c + w / 2)) ** 2 + (ys - (r + h / 2)) ** 2
        better = inside & (d < best)
        best[better], owner[better] = d[better], i
    return owner


@pytest.mark.parametrize("width,height,size,overlap", [(1000, 700, 256, 32), (300, 300, 128, 0), (257, 90, 128, 17),
                                                       (100, 80, 256, 64)])
def test_cores_partition_the_region_by_nearest_centre(width, height, size, overlap):
    tiles = tile_grid(width, height, size, overlap)
    cover = np.zeros((height, width), int)
    owner = np.full((height, width), -1)
    for i, t in enumerate(tiles):
        c, r, w, h = t.window
        assert c >= 0 and r >= 0 and c + w <= width and r + h <= height  # never padded
        assert (w, h) == (min(size, width), min(size, height))
        cc, rr, cw, ch = t.core
        assert c <= cc and r <= rr and cc + cw <= c + w and rr + ch <= r + h  # the core lies in the tile
        cover[rr:rr + ch, cc:cc + cw] += 1
        owner[rr:rr + ch, cc:cc + cw] = i
    assert (cover == 1).all()  # no gaps, no overlaps
    np.testing.assert_array_equal(owner, _owner_by_nearest_centre(width, height, tiles))
    # along each axis, a pixel belongs to the tile whose centre is nearest (ties: the earlier one)
    cols = sorted({t.window[0] for t in tiles})
    rows = sorted({t.window[1] for t in tiles})
    for x in range(width):
        d = [abs(x + 0.5 - (c + min(size, width) / 2)) for c in cols]
        expect = cols[int(np.argmin(d))]
        assert tiles[owner[0, x]].window[0] == expect
    for y in range(height):
        d = [abs(y + 0.5 - (r + min(size, height) / 2)) for r in rows]
        assert tiles[owner[y, 0]].window[1] == rows[int(np.argmin(d))]
    if width > size:
        assert max(t.window[0] + t.window[2] for t in tiles) == width  # the last tile ends at the edge
        inner = [t for t in tiles if 0 < t.core[0] and t.core[0] + t.core[2] < width]
        assert all(t.core[0] - t.window[0] >= overlap // 2 for t in inner)


def test_tile_grid_rejects_overlap_not_below_size():
    for size, overlap in [(64, 64), (64, 100), (0, 0)]:
        with pytest.raises(ValueError, match="larger than the overlap"):
            tile_grid(100, 100, size, overlap)


@pytest.mark.parametrize("window", [(0, 0, 37, 29), (100, 50, 200, 150), (311, 203, 89, 97), (0, 0, 400, 300)])
def test_upsample_window_equals_a_window_of_the_whole_resize(window):
    low = torch.randn(64, 48) * 5
    whole = F.interpolate(low[None, None], size=(300, 400), mode="bilinear", align_corners=False)[0, 0].numpy()
    c, r, w, h = window
    # float32 weights computed our way differ from PyTorch's kernel by a few ulp of the weights
    np.testing.assert_allclose(upsample_window(low, 300, 400, window), whole[r:r + h, c:c + w], atol=1e-4)
    if window == (0, 0, 400, 300):
        assert upsample_window(low, 300, 400, window).tolist() == whole.tolist()  # the whole: F.interpolate
    assert upsample_window(low, 64, 48).tolist() == low.tolist()  # same size: unchanged


# --------------------------------------------------------------------------------------------------------
# the engine with model-independent segment functions
# --------------------------------------------------------------------------------------------------------


def _scene(height=600, width=900) -> np.ndarray:
    """Flat dark ground with a bright 200 x 80 px object and small bright squares."""
    rgb = np.full((height, width, 3), 40, np.uint8)
    rgb[250:330, 200:400] = 230  # crosses the tile border at x = 256 (tiles of 256, overlap 32)
    rgb[40:60, 700:720] = 220
    rgb[500:540, 600:610] = 210
    return rgb


def _brightness(rgb: np.ndarray) -> list[Answer]:
    """A pixelwise 'model' at the input's own resolution: logit = (mean brightness - 128) / 10."""
    logits = torch.from_numpy((rgb.astype(np.float32).mean(axis=2) - 128.0) / 10.0)
    return [Answer(logits=logits, prior=None, iou_score=float(logits.max()), object_score=0.0)]


def _contrast(rgb: np.ndarray) -> list[Answer]:
    """A context-dependent 'model': pixels brighter than the tile's own mean + 20 (differs by tile)."""
    grey = rgb.astype(np.float32).mean(axis=2)
    return [Answer(logits=torch.from_numpy(grey - grey.mean() - 20.0))]


def test_tiles_merge_a_pixelwise_model_exactly_and_find_the_object_across_the_border():
    rgb = _scene()
    h, w = rgb.shape[:2]
    with Raster(rgb) as raster:
        plan = plan_region(w, h, model_size=256, tile=256, overlap=32)
        assert plan.mode == "tiled" and len(plan.tiles) == 4 * 3
        [pred] = assemble(iter_pieces(raster, (0, 0, w, h), plan, _brightness), ["bright"], raster.info, 0.0,
                          tiles=plan.steps)
    expected = rgb.mean(axis=2) > 128
    np.testing.assert_array_equal(pred.mask, expected)
    assert pred.mask[250:330, 200:400].all() and pred.mask.sum() == 200 * 80 + 20 * 20 + 40 * 10
    assert pred.tiles == 12 and pred.iou_score == pytest.approx((230 - 128) / 10)  # the best tile's
    # a polygon's score: the best predicted IoU among the tiles whose cores it touches
    score_at = {(int(p.rings[0][:, 0].min()), int(p.rings[0][:, 1].min())): p.score for p in pred.polygons()}
    assert score_at == {(200, 250): pytest.approx((230 - 128) / 10), (700, 40): pytest.approx((220 - 128) / 10),
                        (600, 500): pytest.approx((210 - 128) / 10)}  # each square alone in its tile


def test_each_pixel_takes_the_nearest_tiles_answer_and_empty_tiles_add_nothing():
    rgb = _scene()
    h, w = rgb.shape[:2]
    with Raster(rgb) as raster:
        plan = plan_region(w, h, model_size=256, tile=256, overlap=64)
        [pred] = assemble(iter_pieces(raster, (0, 0, w, h), plan, _contrast), ["contrast"], raster.info, 0.0)
    owner = _owner_by_nearest_centre(w, h, plan.tiles)
    expected = np.zeros((h, w), bool)
    for i, t in enumerate(plan.tiles):
        c, r, tw, th = t.window
        tile_answer = _contrast(rgb[r:r + th, c:c + tw])[0].logits.numpy() > 0
        sel = owner[r:r + th, c:c + tw] == i
        expected[r:r + th, c:c + tw][sel] = tile_answer[sel]
    np.testing.assert_array_equal(pred.mask, expected)
    # a tile of flat ground finds nothing, and nothing appears in its core
    flat = [t for t in plan.tiles if not (rgb[t.window[1]:t.window[1] + t.window[3],
                                              t.window[0]:t.window[0] + t.window[2]] > 100).any()]
    assert flat
    for t in flat:
        c, r, cw, ch = t.core
        assert not pred.mask[r:r + ch, c:c + cw].any()


def test_windowed_geotiff_tiles_with_nodata_and_scene_writer(tmp_path: Path):
    """The same engine on a GeoTIFF read by windows, written window by window: the written mask is the
    pixelwise answer on the exact grid, nodata where the input has none."""
    rgb = _scene()
    h, w = rgb.shape[:2]
    transform = Affine(0.5, 0, 500_000, 0, -0.5, 5_200_000)
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32633",
                       transform=transform, nodata=0, tiled=True, blockxsize=128, blockysize=128) as dst:
        data = rgb.transpose(2, 0, 1).copy()
        data[:, :, 850:] = 0  # nodata strip on the right
        dst.write(data)
    out = tmp_path / "out" / "mask.tif"
    with Raster(path) as raster:
        assert raster.info.has_nodata
        region = (100, 50, 700, 500)
        plan = plan_region(700, 500, model_size=256, tile=256, overlap=32)
        info = raster.info.window(*region)
        with contextlib.ExitStack() as stack:
            writer = SceneWriter(stack, "bright", info, 0.0, Outputs.of(out=out))
            for piece in iter_pieces(raster, region, plan, _brightness):
                writer.write(piece.window, piece.logits[0], piece.valid, piece.answers[0])
            result = writer.finish(raster, region, steps=plan.steps, downscale=1.0)
            assert not out.exists()  # renamed only when the stack closes
    with rasterio.open(out) as m:
        assert m.crs.to_epsg() == 32633 and m.transform == transform @ Affine.translation(100, 50)
        assert (m.width, m.height) == (700, 500) and m.nodata == 127
        band = m.read(1)
    sub = rgb[50:550, 100:800].mean(axis=2) > 128
    valid = np.ones((500, 700), bool)
    valid[:, 750:] = False  # columns >= 850 of the scene
    np.testing.assert_array_equal(band[valid] == 255, sub[valid])
    assert (band[~valid] == 127).all()
    assert result.foreground_px == int(sub[valid].sum()) and result.tiles == plan.steps


def test_decimated_plan_resizes_window_by_window():
    rgb = _scene(1200, 1800)
    with Raster(rgb) as raster:
        plan = plan_region(1800, 1200, model_size=256)
        assert plan.mode == "decimated" and plan.read_shape == (171, 256)
        assert plan.downscale == pytest.approx(1800 / 256)
        pieces = list(iter_pieces(raster, (0, 0, 1800, 1200), plan, _brightness))
        assert len(pieces) == 4  # blocks of 1024
        [pred] = assemble(iter(pieces), ["bright"], raster.info, 0.0, downscale=plan.downscale)
        small, _ = raster.read(out_shape=plan.read_shape)
    low = _brightness(small)[0].logits
    whole = F.interpolate(low[None, None], size=(1200, 1800), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(pred.logits, whole, atol=1e-4)
    assert plan_region(512, 400, model_size=256).mode == "full"  # up to 2x the input: read whole
    assert plan_region(513, 100, model_size=256).mode == "decimated"
