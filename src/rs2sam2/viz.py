"""Pictures for the demo and the reports, drawn with PIL and numpy; line charts with matplotlib.

* :func:`overlay` -- a mask tinted over an image, with its boundary in a brighter colour.
* :func:`heatmap` / :func:`overlay_heatmap` -- a probability map through a small colormap.
* :func:`gallery` -- a grid "image | prediction | ground truth", one row per sample, with the
  referring expression and the IoU written above each row.
* :func:`plot_curves` -- a line chart (training loss per step, val mIoU per epoch ...), with
  matplotlib (the ``plot`` extra).
* :func:`caption_below` -- a picture with a sentence written on a white band below it.
* :func:`fit` / :func:`resize_map` -- images and per-pixel maps scaled for display.

Files are written through :func:`rs2sam2.fsutil.atomic_write`, so a crash never leaves a partial PNG.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .extras import require
from .fsutil import atomic_write, atomic_write_bytes

__all__ = [
    "PRED_COLOR",
    "TARGET_COLOR",
    "as_rgb_uint8",
    "mask_boundary",
    "overlay",
    "caption_below",
    "fit",
    "resize_map",
    "save",
    "colormap",
    "heatmap",
    "overlay_heatmap",
    "gallery",
    "plot_curves",
]

Color = tuple[int, int, int]

#: Default colour of predicted masks.
PRED_COLOR: Color = (255, 40, 40)
#: Default colour of ground-truth masks.
TARGET_COLOR: Color = (40, 220, 80)

_BACKGROUND: Color = (255, 255, 255)
_TEXT: Color = (20, 20, 20)
_MUTED: Color = (110, 110, 110)

# A sequential colormap written for this project: dark navy -> blue -> teal -> green -> yellow.
# Monotonic in lightness, so it stays readable in greyscale print.
_CMAP_ANCHORS: tuple[tuple[float, Color], ...] = (
    (0.00, (18, 16, 82)),
    (0.25, (36, 82, 178)),
    (0.50, (30, 160, 168)),
    (0.75, (120, 208, 88)),
    (1.00, (252, 236, 40)),
)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Return ``image`` as a contiguous ``(H, W, 3) uint8`` array.

    Accepts a PIL image, or an array that is ``(H, W)`` grey, ``(H, W, 1)``, ``(H, W, 3)`` or
    ``(H, W, 4)`` (alpha dropped); ``uint8`` as is, ``bool`` as 0/255, other integer types
    clipped to 0..255, floats taken as ``[0, 1]`` and scaled.
    """
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        arr = np.round(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif np.issubdtype(arr.dtype, np.integer):
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    return np.ascontiguousarray(arr)


def _as_mask(mask: np.ndarray, shape: tuple[int, int], what: str = "mask") -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.shape != shape:
        raise ValueError(f"{what} shape {m.shape} does not match the image (H, W) = {shape}")
    return m != 0 if m.dtype != bool else m


def mask_boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Inner boundary of a boolean mask: mask pixels within ``width`` px of a background pixel.

    4-neighbourhood; pixels outside the image count as background, so a mask touching the
    border is outlined there too.  The boundary is always a subset of ``mask``.
    """
    m = np.asarray(mask, dtype=bool)
    eroded = m.copy()
    for _ in range(max(1, int(width))):
        padded = np.pad(eroded, 1, constant_values=False)
        eroded = (
            eroded
            & padded[:-2, 1:-1]
            & padded[2:, 1:-1]
            & padded[1:-1, :-2]
            & padded[1:-1, 2:]
        )
    return m & ~eroded


def _brighter(color: Color, amount: float = 0.55) -> Color:
    """Move ``color`` towards white by ``amount`` (0..1)."""
    return tuple(int(round(c + (255 - c) * amount)) for c in color)  # type: ignore[return-value]


def _check_color(color: Sequence[int]) -> Color:
    if len(color) != 3:
        raise ValueError(f"colour must be an (R, G, B) triple, got {color!r}")
    return tuple(int(np.clip(c, 0, 255)) for c in color)  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Overlays and heatmaps
# --------------------------------------------------------------------------------------------


def overlay(
    rgb: np.ndarray | Image.Image,
    mask: np.ndarray,
    color: Sequence[int] = PRED_COLOR,
    alpha: float = 0.5,
    outline: bool = True,
    outline_width: int | None = None,
) -> Image.Image:
    """Tint the ``mask`` pixels of ``rgb`` with ``color`` and draw the mask's boundary.

    Only pixels inside the mask change: ``(1 - alpha) * rgb + alpha * color`` in the interior,
    and a solid, brighter version of ``color`` on the mask's inner boundary when ``outline``.

    Args:
        rgb: ``(H, W, 3) uint8`` image (see :func:`as_rgb_uint8` for other accepted inputs).
        mask: ``(H, W)`` mask, non-zero = foreground.
        color: tint colour.
        alpha: tint opacity in ``[0, 1]``.
        outline: draw the boundary.
        outline_width: boundary thickness in pixels; default ``max(1, min(H, W) // 256)``.

    Returns:
        An RGB PIL image of size ``(W, H)``.
    """
    img = as_rgb_uint8(rgb)
    h, w = img.shape[:2]
    m = _as_mask(mask, (h, w))
    col = np.array(_check_color(color), dtype=np.float32)
    a = float(np.clip(alpha, 0.0, 1.0))
    out = img.copy()
    if m.any():
        blended = (1.0 - a) * img[m].astype(np.float32) + a * col
        out[m] = np.round(blended).astype(np.uint8)
        if outline:
            width = outline_width if outline_width is not None else max(1, min(h, w) // 256)
            edge = mask_boundary(m, width)
            out[edge] = np.array(_brighter(_check_color(color)), dtype=np.uint8)
    return Image.fromarray(out)


def colormap(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` to ``uint8`` RGB with the module's navy→yellow colormap.

    Values are clipped to ``[0, 1]``; NaN maps to mid grey.  Returns ``values.shape + (3,)``.
    """
    v = np.asarray(values, dtype=np.float64)
    nan = np.isnan(v)
    v = np.clip(np.where(nan, 0.0, v), 0.0, 1.0)
    stops = np.array([s for s, _ in _CMAP_ANCHORS])
    colors = np.array([c for _, c in _CMAP_ANCHORS], dtype=np.float64)
    out = np.stack([np.interp(v, stops, colors[:, k]) for k in range(3)], axis=-1)
    out = np.round(out).astype(np.uint8)
    out[nan] = (128, 128, 128)
    return out


def heatmap(prob: np.ndarray) -> Image.Image:
    """Render a probability map ``(H, W)`` in ``[0, 1]`` as an RGB image of the same size."""
    p = np.asarray(prob)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.ndim != 2:
        raise ValueError(f"probability map must be (H, W), got shape {p.shape}")
    return Image.fromarray(colormap(p.astype(np.float64)))


def overlay_heatmap(
    rgb: np.ndarray | Image.Image,
    prob: np.ndarray,
    alpha: float = 0.5,
    *,
    scale_by_prob: bool = False,
) -> Image.Image:
    """Blend :func:`heatmap` of ``prob`` over ``rgb``.

    Args:
        rgb: ``(H, W, 3)`` image.
        prob: ``(H, W)`` probabilities in ``[0, 1]``.
        alpha: heatmap opacity in ``[0, 1]``.
        scale_by_prob: if true the opacity is ``alpha * prob`` per pixel, so confident regions
            are coloured and the rest of the image stays visible.

    Returns:
        An RGB PIL image of the input size.
    """
    img = as_rgb_uint8(rgb)
    h, w = img.shape[:2]
    p = np.asarray(prob, dtype=np.float64)
    if p.ndim == 3 and p.shape[0] == 1:
        p = p[0]
    if p.shape != (h, w):
        raise ValueError(f"probability map shape {p.shape} does not match the image {(h, w)}")
    heat = colormap(p).astype(np.float32)
    a = float(np.clip(alpha, 0.0, 1.0))
    weight: np.ndarray | float = a
    if scale_by_prob:
        weight = (a * np.clip(np.nan_to_num(p, nan=0.0), 0.0, 1.0)).astype(np.float32)[..., None]
    out = (1.0 - weight) * img.astype(np.float32) + weight * heat
    return Image.fromarray(np.round(out).astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------

_FontT = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _font(size: int = 13) -> _FontT:
    """PIL's default font (a scalable FreeType font on Pillow >= 10.1, else the bitmap one)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font: _FontT) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(math.ceil(right - left)), int(math.ceil(bottom - top))


def _line_height(draw: ImageDraw.ImageDraw, font: _FontT) -> int:
    _, top, _, bottom = draw.textbbox((0, 0), "Ag|", font=font)
    return int(math.ceil(bottom - top)) + 3


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: _FontT, max_width: int) -> list[str]:
    """Greedy word wrap to ``max_width`` pixels; words longer than a line are hard-split."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        current = ""
        for word in paragraph.split():
            candidate = f"{current} {word}" if current else word
            if draw.textlength(candidate, font=font) <= max_width:
                current = candidate
                continue
            if current:
                lines.append(current)
            # hard-split a word wider than the line
            while draw.textlength(word, font=font) > max_width and len(word) > 1:
                cut = len(word)
                while cut > 1 and draw.textlength(word[:cut], font=font) > max_width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            current = word
        lines.append(current)
    return lines


def caption_below(picture: Image.Image, caption: str) -> Image.Image:
    """``picture`` with ``caption`` wrapped to its width on a white band below it (the font grows
    with the picture, 12 to 24 px)."""
    width = picture.width
    font = _font(max(12, min(24, width // 32)))
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = _wrap(scratch, caption, font, max(1, width - 8))
    line_h = _line_height(scratch, font)
    canvas = Image.new("RGB", (width, picture.height + line_h * len(lines) + 8), _BACKGROUND)
    canvas.paste(picture.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, picture.height + 4 + k * line_h), line, fill=_TEXT, font=font)
    return canvas


# --------------------------------------------------------------------------------------------
# Sizes and files
# --------------------------------------------------------------------------------------------


def fit(image: Image.Image, side: int, *, enlarge: bool = True,
        resample: Image.Resampling = Image.Resampling.BILINEAR) -> Image.Image:
    """``image`` scaled, keeping its aspect ratio, so that its longer side is ``side`` pixels;
    with ``enlarge=False`` a smaller image is returned as it is."""
    w, h = image.size
    scale = side / max(w, h)
    if scale > 1 and not enlarge:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image if size == (w, h) else image.resize(size, resample)


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An ``(H, W)`` map resized to ``size = (width, height)`` (PIL's order, e.g. ``fit(...).size``):
    a boolean mask with nearest neighbour (stays boolean), anything else bilinearly as float32."""
    a = np.asarray(values)
    if a.shape[1::-1] == tuple(size):
        return a
    if a.dtype == bool:
        return np.asarray(Image.fromarray(a.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def save(image: Image.Image, path: str | os.PathLike[str]) -> Path:
    """Write ``image`` atomically in the format its suffix names (``.png`` recommended)."""
    dest = Path(path)
    with atomic_write(dest) as tmp:
        image.save(tmp, format=_format_for(dest))
    return dest


def _format_for(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise ValueError(f"unknown image suffix {path.suffix!r}; use .png")
    return fmt


# --------------------------------------------------------------------------------------------
# Gallery
# --------------------------------------------------------------------------------------------


def _tile_overlay(
    image: np.ndarray, mask: np.ndarray | None, color: Color, tile: int
) -> Image.Image:
    """Downscale image (bilinear) and mask (nearest) to the tile, then overlay at tile size.

    Drawing at tile size keeps the outline visible and avoids full-resolution work on big scenes.
    """
    base = fit(Image.fromarray(image), tile)
    if mask is None:
        return base
    return overlay(np.asarray(base), resize_map(mask, base.size), color=color, alpha=0.45, outline_width=1)


def _placeholder(tile: int, text: str, font: _FontT) -> Image.Image:
    img = Image.new("RGB", (tile, tile), (235, 235, 235))
    d = ImageDraw.Draw(img)
    tw, th = _text_size(d, text, font)
    d.text(((tile - tw) // 2, (tile - th) // 2), text, fill=_MUTED, font=font)
    return img


def _gallery_row(i: int, row: Mapping[str, Any], scratch: ImageDraw.ImageDraw, font, small_font, text_width: int,
                 tile: int, pc: Color, tc: Color) -> tuple[list[str], list[Image.Image]]:
    """One gallery row laid out: its caption lines and its three cells (image, prediction, target)."""
    try:
        image = as_rgb_uint8(row["image"])
        pred_raw = row["pred"]
    except KeyError as exc:
        raise ValueError(f"gallery row {i} lacks the key {exc.args[0]!r}") from None
    shape = image.shape[:2]
    pred = _as_mask(pred_raw, shape, f"row {i} pred")
    target_raw = row.get("target")
    target = None if target_raw is None else _as_mask(target_raw, shape, f"row {i} target")
    iou = row.get("iou")
    iou_val = math.nan if iou is None else float(iou)
    iou_txt = f"IoU {iou_val:.3f}" if math.isfinite(iou_val) else "IoU n/a"
    text = " ".join(str(row.get("text", "") or "").split())
    caption = f"{i + 1}. {iou_txt}  |  \u201c{text}\u201d" if text else f"{i + 1}. {iou_txt}"
    cells = [
        _tile_overlay(image, None, pc, tile),
        _tile_overlay(image, pred, pc, tile),
        _tile_overlay(image, target, tc, tile) if target is not None else _placeholder(tile, "no ground truth", small_font),
    ]
    return _wrap(scratch, caption, font, text_width), cells


def gallery(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    tile: int = 192,
    *,
    pred_color: Sequence[int] = PRED_COLOR,
    target_color: Sequence[int] = TARGET_COLOR,
) -> Path:
    """Save a grid: one row per sample, columns ``image | prediction | ground truth``.

    Each row is a mapping with keys ``image`` (``(H, W, 3)`` uint8), ``text`` (the referring
    expression), ``pred`` (``(H, W)`` bool mask), and optionally ``target`` (bool mask or
    ``None`` -- a grey "no ground truth" tile is drawn) and ``iou`` (float or ``None``).
    The expression and IoU are written above the row, wrapped to the grid width.  Images are
    fitted into ``tile x tile`` cells keeping their aspect ratio.

    The canvas is ``3 * tile + 4 * pad`` wide (``pad = 8``); its height depends on the text.
    Written atomically; the suffix of ``path`` picks the format (PNG recommended).

    Returns:
        ``Path(path)``.
    """
    if tile < 16:
        raise ValueError(f"tile must be >= 16 px, got {tile}")
    pad = 8
    font = _font(13)
    small_font = _font(11)
    width = 3 * tile + 4 * pad
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = _line_height(scratch, font)
    header_h = _line_height(scratch, small_font) + pad
    pc, tc = _check_color(pred_color), _check_color(target_color)

    # lay out every row first so the canvas can be sized exactly
    layouts = [_gallery_row(i, row, scratch, font, small_font, width - 2 * pad, tile, pc, tc)
               for i, row in enumerate(rows)]

    height = header_h + sum(len(lines) * line_h + tile + 2 * pad for lines, _ in layouts) + pad
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    for col, name in enumerate(("image", "prediction", "ground truth")):
        x0 = pad + col * (tile + pad)
        tw, _ = _text_size(draw, name, small_font)
        draw.text((x0 + (tile - tw) // 2, pad // 2), name, fill=_MUTED, font=small_font)

    y = header_h
    for lines, cells in layouts:
        for line in lines:
            draw.text((pad, y), line, fill=_TEXT, font=font)
            y += line_h
        y += pad // 2
        for col, cell in enumerate(cells):
            x0 = pad + col * (tile + pad)
            cw, ch = cell.size
            canvas.paste(cell, (x0 + (tile - cw) // 2, y + (tile - ch) // 2))
            draw.rectangle([x0 - 1, y - 1, x0 + tile, y + tile], outline=(200, 200, 200))
        y += tile + pad + pad // 2

    return save(canvas, path)


# --------------------------------------------------------------------------------------------
# Line charts
# --------------------------------------------------------------------------------------------


def _points(points: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by step; a value that is ``None``, NaN or inf becomes NaN (a gap in the line)."""
    pairs = [(float(x), math.nan if y is None else float(y)) for x, y, *_ in points]
    pairs = sorted((x, y if math.isfinite(y) else math.nan) for x, y in pairs if math.isfinite(x))
    xy = np.asarray(pairs, dtype=np.float64).reshape(-1, 2)
    return xy[:, 0], xy[:, 1]


def _isolated(y: np.ndarray) -> np.ndarray:
    """The finite points whose neighbours are both gaps (or ends): a line cannot show them."""
    ok = np.isfinite(y)
    padded = np.pad(ok, 1, constant_values=False)
    return ok & ~padded[:-2] & ~padded[2:]


def plot_curves(
    series: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike[str],
    title: str = "training curves",
    *,
    size: tuple[int, int] = (640, 400),
    xlabel: str = "step",
    ylabel: str = "",
) -> Path:
    """Draw a line chart of one or more ``(step, value)`` series with matplotlib and save it (PNG).

    One colour per series (matplotlib's colour cycle), with a legend and a light grid. Points are
    sorted by step; ``None``/NaN/inf values break the line, and isolated points (a single epoch, or a
    point between gaps) are drawn as dots. With no finite data the axes carry a "no data" note.
    Needs matplotlib (the ``plot`` extra).

    Args:
        series: name -> list of ``(step, value)``.
        path: destination (``.png``); written atomically.
        title: chart title.
        size: ``(width, height)`` of the image in pixels.
        xlabel: x-axis label.
        ylabel: y-axis label.

    Returns:
        ``Path(path)``.
    """
    width, height = int(size[0]), int(size[1])
    if width < 200 or height < 150:
        raise ValueError(f"plot size must be at least 200x150, got {size}")
    figure = require("matplotlib.figure", "a training curve").Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = figure.add_subplot()
    has_data = False
    for k, (name, points) in enumerate(series.items()):
        x, y = _points(points)
        alone = _isolated(y)
        ax.plot(x, y, color=f"C{k}", linewidth=1.5, label=str(name))
        ax.plot(x[alone], y[alone], "o", color=f"C{k}", markersize=4)
        has_data |= bool(np.isfinite(y).any())
    if not has_data:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="0.45")
    if series:
        ax.legend(loc="upper right", fontsize=9)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(True, color="0.9")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())
