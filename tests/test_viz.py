"""Tests for rs2sam2.viz: overlays, heatmaps and gallery (PIL), line charts (matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rs2sam2.viz import (
    PRED_COLOR,
    caption_below,
    colormap,
    fit,
    gallery,
    heatmap,
    mask_boundary,
    overlay,
    overlay_heatmap,
    plot_curves,
    resize_map,
    save,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _rgb(h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _blob(h: int = 60, w: int = 80) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[10:30, 20:50] = True
    return m


def _assert_valid_png(path: Path, size: tuple[int, int] | None = None) -> Image.Image:
    assert path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    im = Image.open(path)
    im.load()
    assert im.format == "PNG"
    if size is not None:
        assert im.size == size
    return im


# ----------------------------------------------------------------------------------- overlay


def test_overlay_changes_only_masked_pixels() -> None:
    rgb, mask = _rgb(), _blob()
    out = overlay(rgb, mask)
    assert isinstance(out, Image.Image) and out.size == (80, 60) and out.mode == "RGB"
    arr = np.asarray(out)
    changed = np.any(arr != rgb, axis=-1)
    assert not changed[~mask].any()  # nothing outside the mask moves (outline is inside)
    assert changed[mask].mean() > 0.95  # (a pixel may equal its tint by chance)
    edge = mask_boundary(mask)
    assert edge.sum() == 2 * (20 + 30) - 4  # 1-px ring of a 20x30 rectangle
    bright = np.unique(arr[edge].reshape(-1, 3), axis=0)
    assert len(bright) == 1
    outline_color = tuple(int(c) for c in bright[0])
    assert outline_color != PRED_COLOR and sum(outline_color) > sum(PRED_COLOR)
    # the interior is the alpha blend
    inner = mask & ~edge
    tint = np.array(PRED_COLOR, np.float32)
    expected = np.round(0.5 * rgb[inner].astype(np.float32) + 0.5 * tint)
    np.testing.assert_array_equal(arr[inner], expected.astype(np.uint8))


def test_overlay_without_outline_and_edge_cases() -> None:
    rgb, mask = _rgb(), _blob()
    no_outline = np.asarray(overlay(rgb, mask, outline=False, alpha=0.3, color=(0, 0, 255)))
    assert not np.any(no_outline[~mask] != rgb[~mask])
    np.testing.assert_array_equal(np.asarray(overlay(rgb, mask, alpha=0.0, outline=False)), rgb)
    np.testing.assert_array_equal(np.asarray(overlay(rgb, np.zeros_like(mask))), rgb)
    # grey and float inputs are accepted
    assert overlay(rgb[..., 0], mask).size == (80, 60)
    assert overlay(rgb / 255.0, mask).size == (80, 60)
    with pytest.raises(ValueError, match="does not match"):
        overlay(rgb, mask[:-1])


def test_mask_boundary_touching_border_and_width() -> None:
    full = np.ones((5, 6), bool)
    edge = mask_boundary(full)
    assert edge[0].all() and edge[-1].all() and edge[:, 0].all() and edge[:, -1].all()
    assert not edge[1:-1, 1:-1].any()
    thick = mask_boundary(full, width=2)
    assert thick.sum() == 30 - 2 and not thick[2:-2, 2:-2].any()  # only the 1x2 core is left
    assert not mask_boundary(np.zeros((4, 4), bool)).any()


# ---------------------------------------------------------------------------------- heatmaps


def test_heatmap_colormap_and_overlay() -> None:
    prob = np.tile(np.linspace(0, 1, 50), (20, 1))
    prob[0, 0] = np.nan
    hm = heatmap(prob)
    assert hm.size == (50, 20) and hm.mode == "RGB"
    arr = np.asarray(hm)
    low, high = arr[5, 0].astype(int), arr[5, -1].astype(int)
    assert high.sum() > low.sum() + 300  # dark blue -> bright yellow
    assert high[0] > high[2] and low[2] > low[0]  # yellow end vs blue end
    lum = colormap(np.linspace(0, 1, 11)).astype(float) @ np.array([0.299, 0.587, 0.114])
    assert np.all(np.diff(lum) > 0)  # monotonic lightness
    np.testing.assert_array_equal(colormap(np.array([-1.0, 2.0])), colormap(np.array([0.0, 1.0])))

    rgb = _rgb(20, 50)
    ov = overlay_heatmap(rgb, np.nan_to_num(prob), alpha=0.4)
    assert ov.size == (50, 20)
    zero = overlay_heatmap(rgb, np.nan_to_num(prob), alpha=0.0)
    np.testing.assert_array_equal(np.asarray(zero), rgb)
    scaled = np.asarray(overlay_heatmap(rgb, np.zeros((20, 50)), alpha=0.8, scale_by_prob=True))
    np.testing.assert_array_equal(scaled, rgb)
    with pytest.raises(ValueError):
        overlay_heatmap(rgb, prob[:, :10])


# ----------------------------------------------------------------------------------- gallery


def test_gallery_writes_a_png_grid(tmp_path: Path) -> None:
    big = _rgb(300, 500, seed=1)
    big_mask = np.zeros((300, 500), bool)
    big_mask[100:200, 100:300] = True
    rows = [
        dict(image=_rgb(), text="the red car", pred=_blob(), target=_blob(), iou=1.0),
        dict(
            image=big,
            text="the long grey building to the north of the round pond, next to a wide road " * 3,
            pred=big_mask,
            target=np.roll(big_mask, 20, axis=1),
            iou=0.6667,
        ),
        dict(image=_rgb(40, 40), text="", pred=np.zeros((40, 40), bool), target=None, iou=None),
    ]
    tile = 96
    out = gallery(rows, tmp_path / "sub" / "gallery.png", tile=tile)
    assert out == tmp_path / "sub" / "gallery.png"
    im = _assert_valid_png(out)
    assert im.width == 3 * tile + 4 * 8
    assert im.height >= len(rows) * tile
    assert im.height < len(rows) * (tile + 120)
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["gallery.png"]


def test_gallery_default_tile_and_bad_rows(tmp_path: Path) -> None:
    out = gallery([dict(image=_rgb(), text="x", pred=_blob())], tmp_path / "g.png")
    im = _assert_valid_png(out)
    assert im.width == 3 * 192 + 32 and im.height >= 192
    with pytest.raises(ValueError, match="does not match"):
        gallery([dict(image=_rgb(), text="x", pred=_blob()[:10])], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="pred"):
        gallery([dict(image=_rgb(), text="x")], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ------------------------------------------------------------------------------- plot_curves


def _colors_present(im: Image.Image) -> set[tuple[int, int, int]]:
    return {c for _, c in im.convert("RGB").getcolors(maxcolors=1 << 20)}


def test_plot_curves_png_with_nan_and_single_points(tmp_path: Path) -> None:
    loss = [(s, 2.0 * math.exp(-s / 300.0)) for s in range(0, 1000, 10)]
    loss[30] = (300, float("nan"))  # a gap
    series = {
        "train/loss": loss,
        "val/mIoU": [(100, 0.31), (200, None), (300, 0.45), (400, 0.52)],
        "single": [(500, 1.2)],
    }
    out = plot_curves(series, tmp_path / "curves.png", title="nano run")
    im = _assert_valid_png(out, (640, 400))
    colors = _colors_present(im)
    for c in [(31, 119, 180), (255, 127, 14), (44, 160, 44)]:  # one colour per series: matplotlib's C0-C2
        assert c in colors

    small = plot_curves({"a": [(0, 1.0)]}, tmp_path / "one.png", size=(320, 200))
    _assert_valid_png(small, (320, 200))


def test_plot_curves_degenerate_inputs(tmp_path: Path) -> None:
    _assert_valid_png(plot_curves({}, tmp_path / "empty.png"), (640, 400))
    _assert_valid_png(
        plot_curves({"nan": [(0, float("nan")), (1, float("inf"))], "none": []}, tmp_path / "n.png")
    )
    _assert_valid_png(plot_curves({"flat": [(0, 0.5), (1, 0.5)]}, tmp_path / "flat.png"))
    _assert_valid_png(plot_curves({"same-x": [(3, 0.1), (3, 0.2)]}, tmp_path / "x.png"))
    _assert_valid_png(plot_curves({"big": [(0, 1e7), (10, -3e6)]}, tmp_path / "big.png"))
    with pytest.raises(ValueError):
        plot_curves({"a": [(0, 1)]}, tmp_path / "tiny.png", size=(50, 50))


def test_fit_resize_map_caption_and_save(tmp_path: Path) -> None:
    img = Image.fromarray(_rgb(60, 80))
    assert fit(img, 40).size == (40, 30) and fit(img, 160).size == (160, 120)
    assert fit(img, 160, enlarge=False) is img and fit(img, 80) is img
    mask = _blob()
    small = resize_map(mask, (40, 30))
    assert small.dtype == bool and small.shape == (30, 40)
    np.testing.assert_array_equal(small, mask[1::2, 1::2])  # nearest: the pixel centres
    prob = np.linspace(0, 1, 80, dtype=np.float32)[None].repeat(60, 0)
    shrunk = resize_map(prob, (40, 30))
    assert shrunk.dtype == np.float32 and shrunk.shape == (30, 40) and 0 <= shrunk.min() < shrunk.max() <= 1
    assert resize_map(mask, (80, 60)) is mask
    long = "the small gray vehicle parked next to the long road at the bottom left of the scene " * 2
    captioned = caption_below(img, long)
    assert captioned.width == 80 and captioned.height > 60 + 2 * 12  # wrapped onto several lines
    assert np.array_equal(np.asarray(captioned)[:60], np.asarray(img))
    path = save(captioned, tmp_path / "sub" / "c.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE and sorted(p.name for p in path.parent.iterdir()) == ["c.png"]
    with pytest.raises(ValueError, match="suffix"):
        save(captioned, tmp_path / "c.unknown")
