"""Web demo: ``rs2sam2 serve --checkpoint CKPT [--host 127.0.0.1] [--port N]``.

A Gradio page where one uploads an image (PNG, JPEG, TIFF or GeoTIFF, also 16-bit and multi-band)
or picks one of the generated example scenes, types an expression, and gets

* the predicted mask drawn over the image,
* the Mask Prompt Generator's prior (the dense prompt the model derived from the text) as a heatmap,
* downloads: the mask (a GeoTIFF on the input grid when the upload was georeferenced, else a PNG;
  255 = object) and its polygons as GeoJSON (input CRS, or pixel coordinates).

The server listens on the loopback interface unless ``--host`` says otherwise, refuses uploads
over ``--max-upload-mb``, sends no usage statistics and loads nothing from the internet (the
page's scripts, styles and fonts come with the ``gradio`` package). Needs ``pip install
'rs2sam2[app]'`` (gradio >= 4.44).

For tests and embedding: :func:`build_app` returns the ``gr.Blocks``; :func:`launch` starts it
with the settings above.
"""

from __future__ import annotations

import argparse
import atexit
import ipaddress
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .runtime import PRECISIONS

# no telemetry, no version check against the network (read when gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["Example", "add_arguments", "build_app", "launch", "make_examples", "run", "segment"]

IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
DISPLAY_MAX_SIDE = 1024  # the overlays shown on the page are downscaled to this; downloads are full size
DEFAULT_MAX_UPLOAD_MB = 50.0


def _gradio():
    try:
        import gradio as gr
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("rs2sam2 serve needs gradio: pip install 'rs2sam2[app]' "
                         "(or pip install 'gradio>=4.44')") from exc
    return gr


@dataclass
class Example:
    """A bundled example: an image file and an expression about it."""

    image: str
    text: str


def make_examples(folder: str | os.PathLike, count: int = 4, seed: int = 2024) -> list[Example]:
    """Generate ``count`` synthetic scenes (256x256 PNGs) with one expression each into ``folder``."""
    from .data.synth import generate

    folder = Path(folder)
    generate("jsonl", folder, num_images=count, seed=seed, image_size=256)
    examples: list[Example] = []
    seen: set[str] = set()
    for line in (folder / "data.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["image"] in seen:
            continue
        seen.add(record["image"])
        examples.append(Example(str((folder / record["image"]).resolve()), record["text"]))
    return examples


def _display(image, max_side: int = DISPLAY_MAX_SIDE):
    """A PIL image shrunk (if needed) so that its longer side is at most ``max_side``."""
    from PIL import Image

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    w, h = img.size
    scale = max_side / max(w, h)
    if scale < 1:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    return img


def _shrink_array(a: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    from PIL import Image

    if a.shape[1::-1] == size:
        return a
    mode = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    if a.dtype == bool:
        return np.asarray(Image.fromarray(a.astype(np.uint8) * 255).resize(size, mode)) > 127
    return np.asarray(Image.fromarray(a.astype(np.float32), mode="F").resize(size, mode))


def _upload_path(file) -> str | None:
    if file is None:
        return None
    if isinstance(file, (str, os.PathLike)):
        return str(file)
    return getattr(file, "name", None) or getattr(file, "path", None)


def _read_upload(path: str, max_upload_mb: float):
    """(rgb, info, display name) of an uploaded file, or a gr.Error that says what is wrong."""
    gr = _gradio()
    from .imageio import ImageReadError, read_image

    name = Path(path).name
    try:
        size = os.path.getsize(path)
    except OSError:
        raise gr.Error(f"The uploaded file {name} is gone; upload it again.") from None
    if size > max_upload_mb * 1024 * 1024:
        raise gr.Error(f"{name} is {size / 2**20:.1f} MB; this server accepts images up to {max_upload_mb:g} MB.")
    if Path(path).suffix.lower() not in IMAGE_TYPES:
        raise gr.Error(f"{name}: unsupported file type; upload a PNG, JPEG, TIFF or GeoTIFF image.")
    try:
        rgb, info = read_image(path)
    except (ImageReadError, FileNotFoundError, OSError) as exc:
        detail = str(exc).replace(str(path), name)
        raise gr.Error(f"Could not read {name} as an image: {detail}") from None
    return rgb, info, name


def segment(predictor, file, text: str, threshold: float | None, workdir: str | os.PathLike,
            max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The app's event handler: ``(overlay, prior heatmap, mask file, GeoJSON file, summary markdown)``."""
    gr = _gradio()
    from .predict import InputError, write_outputs
    from .viz import overlay, overlay_heatmap

    path = _upload_path(file)
    if not path:
        raise gr.Error("Upload an image first (PNG, JPEG, TIFF or GeoTIFF), or pick one of the examples.")
    if not text or not str(text).strip():
        raise gr.Error("Type an expression that describes the object to segment, e.g. 'the white ship at the top'.")
    rgb, info, name = _read_upload(path, max_upload_mb)
    try:
        pred = predictor.predict(rgb, str(text), threshold=threshold)
    except InputError as exc:
        raise gr.Error(str(exc)) from None

    shown = _display(rgb)
    size = shown.size
    small_rgb = np.asarray(shown)
    overlay_img = overlay(small_rgb, _shrink_array(pred.mask, size, nearest=True))
    prior_img = None
    if pred.prior is not None:
        prior_img = overlay_heatmap(small_rgb, _shrink_array(pred.prior, size), alpha=0.6)
    else:
        gr.Warning("This model has no Mask Prompt Generator, so there is no prior to show.")

    out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=workdir))
    stem = Path(name).stem or "image"
    georef = bool(info.georeferenced)
    mask_path = out_dir / f"{stem}_mask.{'tif' if georef else 'png'}"
    geojson_path = out_dir / f"{stem}_mask.geojson"
    write_outputs(pred, rgb, info, out=mask_path, geojson=geojson_path)

    h, w = pred.shape
    lines = [
        f"**{name}**: {w} x {h} px, {info.count} band(s), {info.dtype}"
        + (f", georeferenced ({info.crs})" if georef else ", not georeferenced"),
        f"**Mask**: {pred.foreground_pixels} px ({100 * pred.foreground_fraction:.2f}% of the image) at logit "
        f"threshold {pred.threshold:g}; predicted IoU {pred.iou_score:.2f}",
        "Downloads: mask " + ("GeoTIFF on the input grid" if georef else "PNG") + " (255 = object) and GeoJSON polygons"
        + (" in the input CRS." if georef else " in pixel coordinates."),
    ]
    if pred.foreground_pixels == 0:
        gr.Warning("The mask is empty: the model found nothing matching the expression at this threshold.")
    return overlay_img, prior_img, str(mask_path), str(geojson_path), "\n\n".join(lines)


def preview(file, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """Show an upload as the model sees it (8-bit RGB), or warn when it cannot be read."""
    gr = _gradio()
    path = _upload_path(file)
    if not path:
        return None
    try:
        rgb, _, _ = _read_upload(path, max_upload_mb)
    except gr.Error as exc:
        gr.Warning(str(exc.message if hasattr(exc, "message") else exc))
        return None
    return _display(rgb)


def build_app(predictor, *, examples: Sequence[Example] | None = None, examples_dir: str | os.PathLike | None = None,
              max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, title: str = "RS2-SAM2: referring segmentation"):
    """Build the Gradio ``Blocks`` around a :class:`~rs2sam2.predict.Predictor`.

    Args:
        predictor: the model to serve.
        examples: example (image, expression) pairs; default: 4 generated scenes (see
            :func:`make_examples`) written under ``examples_dir`` or a temporary folder.
        examples_dir: where generated examples and per-request outputs go (default: a temporary
            folder removed at exit).
        max_upload_mb: largest accepted upload (also pass it to :func:`launch`).
        title: the page title.
    """
    gr = _gradio()
    if examples_dir is None:
        examples_dir = tempfile.mkdtemp(prefix="rs2sam2-serve-")
        atexit.register(shutil.rmtree, examples_dir, ignore_errors=True)
    workdir = Path(examples_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    if examples is None:
        examples = make_examples(workdir / "examples")
    cfg = predictor.config

    def on_submit(file, text, threshold):
        return segment(predictor, file, text, threshold, workdir, max_upload_mb)

    def on_upload(file):
        return preview(file, max_upload_mb)

    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(
            f"# {title}\n"
            "Upload an aerial or satellite image (PNG, JPEG, TIFF or GeoTIFF, up to "
            f"{max_upload_mb:g} MB), describe one object in it, and press **Segment**. "
            f"Model: `{cfg.name}` ({cfg.image_size} px input), {predictor.precision} on {predictor.device}."
        )
        with gr.Row():
            with gr.Column():
                file_in = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="image-file")
                preview_img = gr.Image(label="Input (as the model sees it)", type="pil", interactive=False,
                                       elem_id="preview", height=320)
                text_in = gr.Textbox(label="Expression", placeholder="e.g. the white storage tank at the top left",
                                     lines=1, elem_id="expression")
                with gr.Accordion("Options", open=False):
                    threshold_in = gr.Slider(-4.0, 4.0, value=predictor.threshold, step=0.05,
                                             label="Logit threshold",
                                             info="0.5 is the published rule (probability about 0.62); "
                                                  "0 means probability > 0.5")
                submit = gr.Button("Segment", variant="primary", elem_id="submit")
                if examples:
                    gr.Examples(examples=[[e.image, e.text] for e in examples], inputs=[file_in, text_in],
                                label="Generated example scenes")
            with gr.Column():
                overlay_out = gr.Image(label="Prediction", type="pil", interactive=False, elem_id="overlay",
                                       format="png")
                prior_out = gr.Image(label="Mask Prompt Generator prior", type="pil", interactive=False,
                                     elem_id="prior", format="png")
                summary_out = gr.Markdown(elem_id="summary")
                with gr.Row():
                    mask_out = gr.File(label="Mask (GeoTIFF / PNG)", elem_id="mask-file", interactive=False)
                    geojson_out = gr.File(label="GeoJSON", elem_id="geojson-file", interactive=False)
        outputs = [overlay_out, prior_out, mask_out, geojson_out, summary_out]
        file_in.change(on_upload, inputs=file_in, outputs=preview_img)
        submit.click(on_submit, inputs=[file_in, text_in, threshold_in], outputs=outputs)
        text_in.submit(on_submit, inputs=[file_in, text_in, threshold_in], outputs=outputs)
    demo.queue(default_concurrency_limit=1)
    demo.rs2sam2_workdir = str(workdir)  # served by launch()
    demo.rs2sam2_examples = list(examples)
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = None, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
           block: bool = True, quiet: bool = False):
    """Start the server (loopback by default) with the upload limit; returns gradio's
    ``(app, local_url, share_url)``. ``block=False`` returns at once (tests)."""
    workdir = getattr(demo, "rs2sam2_workdir", None)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        max_file_size=f"{max_upload_mb:g}mb",
        allowed_paths=[workdir] if workdir else None,
        show_error=True,
        quiet=quiet,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
    )


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a save_pretrained folder, a released RS2-SAM2 folder, or a weights file")
    parser.add_argument("--tokenizer", metavar="SPM", help="SentencePiece model (default: next to the checkpoint)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
                             "demo, which has no login, to the network)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 where the device multiplies bf16 faster than fp32, else fp32")
    parser.add_argument("--threshold", type=float, default=0.5, help="default logit threshold (0.5 = published)")
    parser.add_argument("--image-size", type=int, metavar="N", help="SAM2 input size for released checkpoints")


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    from .checkpoints import CheckpointError
    from .predict import InputError, Predictor

    if args.max_upload_mb <= 0:
        print("rs2sam2 serve: error: --max-upload-mb must be positive", file=sys.stderr)
        return 2
    if args.port is not None and not 0 < args.port < 65536:
        print(f"rs2sam2 serve: error: --port {args.port} is not a valid port", file=sys.stderr)
        return 2
    _gradio()  # before the (possibly slow) model load: a missing gradio is reported at once
    try:
        predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                              tokenizer=args.tokenizer, threshold=args.threshold,
                                              image_size=args.image_size)
    except (CheckpointError, InputError, FileNotFoundError) as exc:
        print(f"rs2sam2 serve: error: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        print(f"rs2sam2 serve: warning: listening on {args.host}: anyone who can reach this machine can use the "
              "demo (there is no login)", file=sys.stderr)
    demo = build_app(predictor, max_upload_mb=args.max_upload_mb)
    launch(demo, args.host, args.port, max_upload_mb=args.max_upload_mb, block=True)
    return 0


def _main(argv: Sequence[str] | None = None) -> Any:  # pragma: no cover - convenience
    parser = argparse.ArgumentParser(prog="python -m rs2sam2.app")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
