"""Web demo: ``rs2sam2 serve --checkpoint CKPT [--host 127.0.0.1] [--port N]``.

A Gradio page where one uploads an image (PNG, JPEG, TIFF or GeoTIFF, also 16-bit and multi-band)
or picks one of the generated example scenes, types an expression, and gets

* the predicted mask drawn over the image,
* the Mask Prompt Generator's prior (the dense prompt the model derived from the text) as a heatmap,
* downloads: the mask (a GeoTIFF on the input grid when the upload was georeferenced, else a PNG;
  255 = object) and its polygons as GeoJSON (RFC 7946 lon/lat, or pixel coordinates).

The server listens on the loopback interface unless ``--host`` says otherwise, refuses uploads
over ``--max-upload-mb``, sends no usage statistics and loads nothing from the internet (the
page's scripts, styles and fonts come with the ``gradio`` package). Needs ``pip install
'rs2sam2[app]'`` (gradio >= 4.44).

Uploads are read by windows under the decode budget (:mod:`rs2sam2.imageio`): one larger than
twice the model input per side is predicted from a decimated copy and its full-grid mask written
window by window, so a small file of many pixels cannot exhaust the server's memory; truncated or
corrupt images are refused with a message naming the file.

Everything ``rs2sam2 serve`` writes -- the example scenes, one ``request-*`` folder of downloads per
request, and gradio's copies of the uploads (unless ``GRADIO_TEMP_DIR`` names another folder) -- lives
in one temporary folder, removed when the server stops: Ctrl-C (SIGINT), SIGTERM or an error. On
SIGTERM or SIGINT the server refuses new requests with a message, finishes the ones in flight, then
exits 143 or 130 (:mod:`rs2sam2.signals`; the same signal again ends it at once).

``--host`` and ``--port`` are checked before the model loads: a host that is not an address of this
machine, or a port in use, is a user error naming it (exit status 2). A request's user error (an
unreadable upload, an empty expression) goes back to the page and is logged as one line on stderr.

For tests and embedding: :func:`build_app` returns the ``gr.Blocks``; :func:`launch` starts it
with the settings above.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import errno
import ipaddress
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .checkpoints import CHECKPOINT_HELP, TOKENIZER_HELP, add_hub_arguments
from .cliargs import number
from .config import BOUNDS
from .data.synth import generate
from .errors import ConfigError, MissingFileError
from .extras import require
from .imageio import ImageReadError, Raster, set_max_pixels
from .predict import InputError, Outputs, Predictor
from .results import preview_shape
from .runtime import PRECISIONS
from .text import TextTruncatedWarning, normalize_text
from .viz import overlay, overlay_heatmap

# no telemetry, no version check against the network (read when gradio is imported)
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

__all__ = ["Example", "add_arguments", "build_app", "launch", "make_examples", "run", "segment"]

IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".tif", ".tiff"]
DISPLAY_MAX_SIDE = 1024  # the overlays shown on the page are downscaled to this; downloads are full size
DEFAULT_MAX_UPLOAD_MB = 50.0


def _gradio():
    """The gradio module; a missing one is a MissingExtraError naming the ``[app]`` extra."""
    return require("gradio", "rs2sam2 serve (the web demo)")


@dataclass
class Example:
    """A bundled example: an image file and an expression about it."""

    image: str
    text: str


def make_examples(folder: str | os.PathLike, count: int = 4, seed: int = 2024) -> list[Example]:
    """Generate ``count`` synthetic scenes (256x256 PNGs) with one expression each into ``folder``."""
    folder = Path(folder)
    generate("jsonl", folder, num_images=count, seed=seed, image_size=256, overwrite=True)
    examples: list[Example] = []
    seen: set[str] = set()
    for line in (folder / "data.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record["image"] in seen:
            continue
        seen.add(record["image"])
        examples.append(Example(str((folder / record["image"]).resolve()), record["text"]))
    return examples


def _upload_path(file) -> str | None:
    if file is None:
        return None
    if isinstance(file, (str, os.PathLike)):
        return str(file)
    return getattr(file, "name", None) or getattr(file, "path", None)


def _open_upload(path: str, max_upload_mb: float):
    """``(Raster, display name)`` of an uploaded file, or a gr.Error that says what is wrong.

    Only the header is read here (its size checked against the decode budget); pixels are read
    later by windows or decimated, so a small file of many pixels cannot exhaust the server's memory."""
    gr = _gradio()
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
        return Raster(path), name
    except (ImageReadError, FileNotFoundError, OSError) as exc:
        detail = str(exc).replace(str(path), name)
        raise gr.Error(f"Could not read {name} as an image: {detail}") from None


def _read_display(raster, name: str):
    """The upload shrunk to at most DISPLAY_MAX_SIDE pixels per side (read decimated), as a PIL image."""
    gr = _gradio()
    try:
        rgb, _ = raster.read(out_shape=preview_shape(raster.height, raster.width, DISPLAY_MAX_SIDE))
    except (ImageReadError, OSError) as exc:
        raise gr.Error(f"Could not read {name} as an image: {exc}") from None
    return Image.fromarray(rgb)


def _summary(predictor, setup, result, name: str, info, mask_path: Path, threshold: float | None) -> list[str]:
    """The markdown lines the app shows under a result: the image, the mask, the downloads, and how
    the answer was made (a downscaled read, or a scene answer with its looks and presence)."""
    gr = _gradio()
    plan, georef = setup.plan, bool(info.georeferenced)
    w, h = result.width, result.height
    lines = [
        f"**{name}**: {w} x {h} px, {info.count} band(s), {info.dtype}"
        + (f", georeferenced ({info.crs})" if georef else ", not georeferenced"),
        f"**Mask**: {result.foreground_px} px ({100 * result.foreground_fraction:.2f}% of the image) at logit "
        f"threshold {predictor.threshold if threshold is None else threshold:g}; predicted IoU {result.iou_score:.2f}",
        "Downloads: mask " + ("GeoTIFF on the input grid" if georef else mask_path.suffix[1:].upper())
        + " (255 = object) and GeoJSON polygons" + (" in lon/lat (RFC 7946)." if georef else " in pixel coordinates."),
    ]
    for category, note in setup.notes:
        if issubclass(category, TextTruncatedWarning):
            gr.Warning(note)
            lines.append(f"**Expression**: {note}")
    if plan.mode == "decimated":
        lines.append(f"The image was read downscaled {plan.downscale:.1f}x for the model (input "
                     f"{predictor.config.image_size} px); for native resolution use `rs2sam2 predict --tile`.")
    if result.decision is not None:
        d = result.decision
        verdict = "the object it chose was kept" if d["present"] else "nothing was kept (the sentence was judged absent)"
        presence = "n/a" if d["presence"] is None else f"{d['presence']:.2f}"
        lines.append(f"Answered as a scene: a global look downscaled {plan.downscale:.1f}x for the model (input "
                     f"{predictor.config.image_size} px), then {len(d['looks'])} look(s) at native resolution; "
                     f"presence {presence} ({d['presence_source']}): {verdict}.")
    return lines


def segment(predictor, file, text: str, threshold: float | None, workdir: str | os.PathLike,
            max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """The app's event handler: ``(overlay, prior heatmap, mask file, GeoJSON file, summary markdown)``.

    Uploads larger than twice the model input per side are predicted from a decimated copy and
    their mask written to the full grid window by window (:meth:`Predictor.predict_to_file`), so
    memory stays bounded whatever the upload's size in pixels."""
    gr = _gradio()
    path = _upload_path(file)
    if not path:
        raise gr.Error("Upload an image first (PNG, JPEG, TIFF or GeoTIFF), or pick one of the examples.")
    if not text or not normalize_text(str(text)):
        raise gr.Error("Type an expression that describes the object to segment, e.g. 'the white ship at the top'.")
    raster, name = _open_upload(path, max_upload_mb)
    info = raster.info
    stem = Path(name).stem or "image"
    georef = bool(info.georeferenced)
    try:
        with raster:
            setup = predictor.setup(raster, [str(text)])
            plan = setup.plan
            # a decimated prediction is written window by window, which needs a TIFF
            out_dir = Path(tempfile.mkdtemp(prefix="request-", dir=workdir))
            mask_path = out_dir / f"{stem}_mask.{'tif' if georef or plan.mode != 'full' else 'png'}"
            geojson_path = out_dir / f"{stem}_mask.geojson"
            [result] = predictor.write(raster, setup, [Outputs.of(out=mask_path, vector=geojson_path)],
                                       threshold=threshold, preview_side=DISPLAY_MAX_SIDE)
    except InputError as exc:
        raise gr.Error(str(exc)) from None
    except (ImageReadError, OSError) as exc:
        raise gr.Error(f"Could not read {name} as an image: {str(exc).replace(str(path), name)}") from None

    overlay_img = overlay(result.preview, result.preview_mask)
    prior_img = None
    if result.preview_prior is not None:
        prior_img = overlay_heatmap(result.preview, result.preview_prior, alpha=0.6)
    else:
        gr.Warning("This model has no Mask Prompt Generator, so there is no prior to show.")

    lines = _summary(predictor, setup, result, name, info, mask_path, threshold)
    if result.foreground_px == 0:
        gr.Warning("The mask is empty: the model found nothing matching the expression at this threshold.")
    return overlay_img, prior_img, str(mask_path), str(geojson_path), "\n\n".join(lines)


def preview(file, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB):
    """Show an upload as the model sees it (8-bit RGB, shrunk for display), or warn when it cannot be read."""
    gr = _gradio()
    path = _upload_path(file)
    if not path:
        return None
    try:
        raster, name = _open_upload(path, max_upload_mb)
        with raster:
            return _read_display(raster, name)
    except gr.Error as exc:
        gr.Warning(str(exc.message if hasattr(exc, "message") else exc))
        return None


class Requests:
    """The requests being answered, so that a stopping server finishes them and refuses new ones.

    A user error of a request (a ``gr.Error``: an unreadable upload, an empty expression) goes back
    to the page and is logged here as one line on stderr, without a traceback."""

    def __init__(self) -> None:
        self._busy = 0
        self._changed = threading.Condition()
        self.stopping = False

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        """The block answers one request (refused with a message once the server is stopping)."""
        gr = _gradio()
        with self._changed:
            if self.stopping:
                self._refuse(gr.Error("This server is shutting down; try again when it is back."))
            self._busy += 1
        try:
            yield
        except gr.Error as exc:
            self._refuse(exc)
        finally:
            with self._changed:
                self._busy -= 1
                self._changed.notify_all()

    @staticmethod
    def _refuse(exc: Exception) -> None:
        print(f"rs2sam2 serve: request refused: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
        exc.print_exception = False  # gradio prints a traceback otherwise
        raise exc

    def stop(self) -> int:
        """Refuse new requests from now on; returns how many are in flight."""
        with self._changed:
            self.stopping = True
            return self._busy

    def wait(self) -> None:
        """Wait until no request is in flight."""
        with self._changed:
            self._changed.wait_for(lambda: self._busy == 0)


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
    requests = Requests()

    def on_submit(file, text, threshold):
        with requests.serving():
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
                file_in, preview_img, text_in, threshold_in, submit = _input_column(gr, predictor, examples)
            with gr.Column():
                outputs = _output_column(gr)
        file_in.change(on_upload, inputs=file_in, outputs=preview_img)
        submit.click(on_submit, inputs=[file_in, text_in, threshold_in], outputs=outputs)
        text_in.submit(on_submit, inputs=[file_in, text_in, threshold_in], outputs=outputs)
    demo.queue(default_concurrency_limit=1)
    demo.rs2sam2_workdir = str(workdir)  # served by launch()
    demo.rs2sam2_requests = requests
    demo.rs2sam2_examples = list(examples)
    return demo


def _input_column(gr, predictor, examples: Sequence[Example]):
    """The page's left column: upload, preview, expression, threshold, button and examples."""
    file_in = gr.File(label="Image", file_types=IMAGE_TYPES, type="filepath", elem_id="image-file")
    preview_img = gr.Image(label="Input (as the model sees it)", type="pil", interactive=False,
                           elem_id="preview", height=320)
    text_in = gr.Textbox(label="Expression", placeholder="e.g. the white storage tank at the top left",
                         lines=1, elem_id="expression")
    with gr.Accordion("Options", open=False):
        threshold_in = gr.Slider(-4.0, 4.0, value=predictor.threshold, step=0.05, label="Logit threshold",
                                 info="0.5 is the published rule (probability about 0.62); 0 means probability > 0.5")
    submit = gr.Button("Segment", variant="primary", elem_id="submit")
    if examples:
        gr.Examples(examples=[[e.image, e.text] for e in examples], inputs=[file_in, text_in],
                    label="Generated example scenes")
    return file_in, preview_img, text_in, threshold_in, submit


def _output_column(gr) -> list:
    """The page's right column; returns the components :func:`segment` fills, in its order."""
    overlay_out = gr.Image(label="Prediction", type="pil", interactive=False, elem_id="overlay", format="png")
    prior_out = gr.Image(label="Mask Prompt Generator prior", type="pil", interactive=False, elem_id="prior",
                         format="png")
    summary_out = gr.Markdown(elem_id="summary")
    with gr.Row():
        mask_out = gr.File(label="Mask (GeoTIFF / PNG)", elem_id="mask-file", interactive=False)
        geojson_out = gr.File(label="GeoJSON", elem_id="geojson-file", interactive=False)
    return [overlay_out, prior_out, mask_out, geojson_out, summary_out]


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


#: the largest --max-upload-mb: far above any real use, low enough to refuse a typo at once
MAX_UPLOAD_MB = 10_240.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 serve``."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    add_hub_arguments(parser)
    parser.add_argument("--tokenizer", metavar="SPM", help=TOKENIZER_HELP)
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes the "
                             "demo, which has no login, to the network)")
    parser.add_argument("--port", type=number(int, low=1, high=65535), default=None,
                        help="port (default: 7860 or the next free one)")
    parser.add_argument("--max-upload-mb", type=number(float, low=0, low_open=True, high=MAX_UPLOAD_MB),
                        default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest accepted upload in MB (default {DEFAULT_MAX_UPLOAD_MB:g})")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto (default): bf16 where the device multiplies bf16 faster than fp32, else fp32")
    parser.add_argument("--threshold", type=number(float), default=0.5,
                        help="default logit threshold (0.5 = published)")
    parser.add_argument("--image-size", type=number(int, low=1, high=BOUNDS["image_size"]), metavar="N",
                        help="SAM2 input size for released checkpoints")
    parser.add_argument("--max-pixels", type=number(int, low=1), metavar="N",
                        help="decode budget: the most pixels decoded into memory at once (default 100,000,000, or "
                             "the environment variable RS2SAM2_MAX_PIXELS); larger uploads are read decimated")


def _is_loopback(host: str) -> bool:
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_address(host: str, port: int | None) -> None:
    """Whether the server can listen on ``host`` (and ``port`` when given), tried with a socket that
    is closed at once; raises :class:`~rs2sam2.errors.ConfigError` naming ``--host`` or ``--port``."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host}: not a host name or address this machine can resolve ({exc.strerror})"
                          ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: already in use on {host}; choose another port, or leave --port "
                                  "out to take the first free one from 7860") from None
            if exc.errno == errno.EADDRNOTAVAIL:
                raise ConfigError(f"--host {host}: not an address of this machine; use 127.0.0.1 (this machine "
                                  "only) or 0.0.0.0 (every interface)") from None
            raise ConfigError(f"cannot listen on {host} port {port or 'any'}: {exc.strerror or exc}") from None


def _load_predictor(args: argparse.Namespace):
    """The model to serve, as the arguments say (a user error names what is wrong)."""
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        raise MissingFileError(f"--tokenizer {args.tokenizer}: no such file")
    try:
        return Predictor.from_pretrained(args.checkpoint, device=args.device, precision=args.precision,
                                         tokenizer=args.tokenizer, threshold=args.threshold,
                                         image_size=args.image_size, subfolder=args.subfolder,
                                         revision=args.revision)
    except FileNotFoundError as exc:
        raise MissingFileError(str(exc)) from None
    except ValueError as exc:  # a device that is not there or not a device
        raise ConfigError(str(exc)) from None


def _serve_until_stopped(demo) -> None:
    """Block until SIGTERM or SIGINT (:class:`rs2sam2.signals.Stopped`), then refuse new requests,
    finish those in flight and close the server; the signal's exception goes on up."""
    try:
        while True:
            time.sleep(0.5)
    except KeyboardInterrupt:
        busy = demo.rs2sam2_requests.stop()
        if busy:
            print(f"rs2sam2 serve: stopping; finishing {busy} request(s) in flight", file=sys.stderr, flush=True)
        demo.rs2sam2_requests.wait()
        _wait_delivered(demo)
        raise
    finally:
        demo.close()


def _wait_delivered(demo, timeout: float = 10.0) -> None:
    """Wait (at most ``timeout`` seconds) until gradio has handed every finished request's result
    to its connection: closing the server earlier cuts the answer off. Reads gradio's queue
    (``active_jobs``, ``pending_messages_per_session``); where a gradio version lacks them, this
    returns at once."""
    queue = getattr(demo, "_queue", None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = getattr(queue, "active_jobs", [])
        pending = getattr(queue, "pending_messages_per_session", {})
        if all(job is None for job in jobs) and all(q.empty() for q in list(pending.values())):
            break
        time.sleep(0.05)
    time.sleep(0.2)  # the last message taken from the queue is still being written to its socket


def run(args) -> int:
    """``rs2sam2 serve``: load the checkpoint and serve the web demo (loopback unless ``--host`` says
    otherwise) until SIGTERM or SIGINT."""
    if args.max_pixels is not None:
        set_max_pixels(args.max_pixels)
    check_address(args.host, args.port)
    _gradio()  # before the (possibly slow) model load: a missing gradio is reported at once
    predictor = _load_predictor(args)
    if not _is_loopback(args.host):
        print(f"rs2sam2 serve: warning: listening on {args.host}: anyone who can reach this machine can use "
              "the demo (there is no login)", file=sys.stderr)
    # one temporary folder for everything this server writes: the examples, a request-* folder per request
    # and (unless GRADIO_TEMP_DIR says otherwise) gradio's copies of the uploads; removed however the
    # server ends: Ctrl-C (SIGINT), SIGTERM, or an error
    root = Path(tempfile.mkdtemp(prefix="rs2sam2-serve-"))
    own_uploads = "GRADIO_TEMP_DIR" not in os.environ
    if own_uploads:
        os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # read when gradio starts a server
    try:
        demo = build_app(predictor, examples_dir=root, max_upload_mb=args.max_upload_mb)
        launch(demo, args.host, args.port, max_upload_mb=args.max_upload_mb, block=False)
        _serve_until_stopped(demo)
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if own_uploads:
            os.environ.pop("GRADIO_TEMP_DIR", None)
