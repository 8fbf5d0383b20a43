"""The Gradio demo: its handler directly, and end to end in headless Chromium (``-m browser``)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from urllib.parse import urljoin

import pytest

import helpers_ckpt as h

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path("/tmp/rs2sam2_app.png")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from rs2sam2.predict import Predictor

    ckpt = h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")
    # threshold 0 so that the untrained model's mask is neither empty nor full
    return Predictor.from_pretrained(ckpt, threshold=0.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return h.write_geotiff(tmp_path_factory.mktemp("img") / "scene.tif")


def test_make_examples(tmp_path):
    from PIL import Image

    from rs2sam2.app import make_examples

    examples = make_examples(tmp_path, count=3)
    assert len(examples) == 3
    for e in examples:
        assert Path(e.image).is_file() and e.text.strip()
        assert Image.open(e.image).size == (256, 256)


def test_segment_handler(predictor, scene, tmp_path):
    import gradio as gr
    import rasterio
    from PIL import Image

    from rs2sam2.app import segment

    overlay, prior, mask_file, geojson_file, summary = segment(predictor, str(scene), "the red building", None,
                                                               tmp_path)
    assert isinstance(overlay, Image.Image) and overlay.size == (300, 200)
    assert isinstance(prior, Image.Image) and prior.size == (300, 200)
    assert mask_file.endswith("scene_mask.tif") and geojson_file.endswith("scene_mask.geojson")
    with rasterio.open(scene) as src, rasterio.open(mask_file) as m:
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
        assert 0 < (m.read(1) == 255).sum() < m.width * m.height
    assert "EPSG:32633" in summary

    png = h.write_png(tmp_path / "photo.png")
    _, _, mask_png, _, summary = segment(predictor, str(png), "a ship", 0.5, tmp_path)
    assert mask_png.endswith("photo_mask.png") and "not georeferenced" in summary

    with pytest.raises(gr.Error, match="Upload an image"):
        segment(predictor, None, "a ship", None, tmp_path)
    with pytest.raises(gr.Error, match="Type an expression"):
        segment(predictor, str(png), "   ", None, tmp_path)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(gr.Error, match="Could not read broken.png"):
        segment(predictor, str(broken), "a ship", None, tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    with pytest.raises(gr.Error, match="unsupported file type"):
        segment(predictor, str(notes), "a ship", None, tmp_path)
    with pytest.raises(gr.Error, match="up to 0.001 MB"):
        segment(predictor, str(png), "a ship", None, tmp_path, max_upload_mb=0.001)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.filterwarnings("ignore::Warning:gradio")  # gradio's own pandas deprecations
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                    "(apt-get install chromium chromium-driver; CI installs it)")
def test_browser_upload_and_segment(predictor, scene, tmp_path):
    from playwright.sync_api import sync_playwright

    from rs2sam2.app import build_app, launch

    demo = build_app(predictor, examples_dir=tmp_path / "app")
    _, url, _ = launch(demo, "127.0.0.1", _free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    external: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.on("request", lambda r: external.append(r.url)
                        if not r.url.startswith(("http://127.0.0.1", "data:", "blob:")) else None)
                page.goto(url)
                page.wait_for_selector("#submit", timeout=60_000)
                # the generated examples are listed
                assert page.get_by_text("Generated example scenes").count() >= 1

                page.set_input_files("#image-file input[type=file]", str(scene))
                page.wait_for_selector("#preview img[src]", timeout=60_000)
                page.fill("#expression textarea", "the red building on the left")
                page.click("#submit")
                page.wait_for_selector("#overlay img[src]", timeout=60_000)
                page.wait_for_selector("#prior img[src]", timeout=60_000)
                page.wait_for_function("document.querySelector('#summary').innerText.includes('EPSG:32633')",
                                       timeout=60_000)
                assert page.locator("#overlay img").get_attribute("src")
                # the downloads are served: a GeoTIFF mask and GeoJSON in the scene's CRS
                mask_href = page.locator("#mask-file a[href]").first.get_attribute("href")
                geojson_href = page.locator("#geojson-file a[href]").first.get_attribute("href")
                assert mask_href.endswith("scene_mask.tif") and geojson_href.endswith("scene_mask.geojson")
                mask_bytes = page.request.get(urljoin(url, mask_href)).body()
                assert mask_bytes[:4] in (b"II*\x00", b"MM\x00*")
                fc = json.loads(page.request.get(urljoin(url, geojson_href)).body())
                # RFC 7946: lon/lat (UTM 33N at 500 km E, 5200 km N is near 15 E, 47 N), no crs member
                assert "crs" not in fc and fc["properties"]["source_crs"] == "EPSG:32633"
                lon, lat = fc["features"][0]["geometry"]["coordinates"][0][0]
                assert 14.9 < lon < 15.1 and 46.9 < lat < 47.0
                page.wait_for_timeout(300)
                page.screenshot(path=str(SCREENSHOT), full_page=True)

                # an empty expression gives a readable error, not a crash
                page.fill("#expression textarea", "")
                page.click("#submit")
                page.get_by_text("Type an expression").first.wait_for(timeout=30_000)

                # a bundled example fills in the image and the expression
                page.get_by_text(demo.rs2sam2_examples[0].text).first.click()
                page.wait_for_function(
                    "document.querySelector('#expression textarea').value.length > 0", timeout=30_000)
                page.click("#submit")
                page.wait_for_function("document.querySelector('#summary').innerText.includes('00000.png')",
                                       timeout=60_000)
            finally:
                browser.close()
    finally:
        demo.close()
    assert external == [], f"the page tried to load from the network: {external}"


def test_truncated_image_is_refused_naming_the_file(predictor, tmp_path):
    import gradio as gr

    from rs2sam2.app import preview, segment

    data = h.write_png(tmp_path / "whole.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(gr.Error, match=r"Could not read cut\.png as an image: .*truncated"):
        segment(predictor, str(cut), "a ship", None, tmp_path)
    warned = []
    gr_warning = gr.Warning
    try:
        gr.Warning = lambda message: warned.append(message)  # preview() warns instead of failing
        assert preview(str(cut)) is None
    finally:
        gr.Warning = gr_warning
    assert len(warned) == 1 and "cut.png" in warned[0] and "truncated" in warned[0]


def test_long_expression_is_reported_to_the_web_user(predictor, scene, tmp_path, monkeypatch):
    """A sentence over the token limit is segmented from its beginning and the page says so (a
    warning toast and a summary line), instead of the notice going only to the server's log."""
    import gradio as gr

    from rs2sam2.app import segment

    warned = []
    monkeypatch.setattr(gr, "Warning", lambda message: warned.append(message))
    long_text = "the red building next to the long straight road " * 12
    *_, summary = segment(predictor, str(scene), long_text, None, tmp_path)
    notes = [w for w in warned if "longer than the limit" in w]
    assert len(notes) == 1 and "tokens" in notes[0]
    assert f"**Expression**: {notes[0]}" in summary
    warned.clear()
    *_, summary = segment(predictor, str(scene), "the red building", None, tmp_path)
    assert not [w for w in warned if "longer than the limit" in w] and "**Expression**" not in summary


def test_upload_over_the_decode_budget_is_refused_before_decoding(predictor, tmp_path):
    import gradio as gr

    from rs2sam2.app import segment
    from rs2sam2.imageio import set_max_pixels

    png = h.write_png(tmp_path / "photo.png")  # 300 x 200: PNG is decoded whole
    set_max_pixels(50_000)
    try:
        with pytest.raises(gr.Error, match=r"photo\.png.*60,000 pixels.*decode budget of 50,000.*--max-pixels"):
            segment(predictor, str(png), "a ship", None, tmp_path)
    finally:
        set_max_pixels(None)


def test_large_pixel_upload_is_answered_as_a_scene_by_the_handler(predictor, tmp_path):
    """A scene over twice the model input per side: a global look decimated for the model, native looks
    where it points, the mask on the full grid."""
    import rasterio

    import helpers_scene
    from rs2sam2.app import segment

    scene = helpers_scene.write_scene(tmp_path / "big.tif", 3000)
    overlay, prior, mask_file, geojson_file, summary = segment(predictor, str(scene), "the white building", 0.0,
                                                               tmp_path)
    assert max(overlay.size) == 1024 and max(prior.size) == 1024
    with rasterio.open(scene) as src, rasterio.open(mask_file) as m:
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, (3000, 3000))
    assert "Answered as a scene: a global look downscaled 11.7x" in summary
    assert json.loads(Path(geojson_file).read_text())["type"] == "FeatureCollection"


@contextlib.contextmanager
def _serve(ckpt: Path, tmpdir: Path | None = None):
    """A real ``rs2sam2 serve`` subprocess on 127.0.0.1 and a free port, up and answering:
    ``(process, gradio client)``; SIGTERM at the end unless the body ended it. ``tmpdir`` becomes its
    TMPDIR (and the default of gradio's upload folder)."""
    import subprocess
    import sys
    import time

    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
        env.pop("GRADIO_TEMP_DIR", None)
    server = subprocess.Popen([sys.executable, "-m", "rs2sam2", "serve", "--checkpoint", str(ckpt), "--port",
                               str(port), "--device", "cpu"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              env=env)
    try:
        deadline = time.time() + 180
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.time() < deadline, server.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        yield server, Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=False,
                             analytics_enabled=False)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=60)


def test_serve_finishes_the_request_in_flight_on_sigterm_and_removes_its_folders(tmp_path_factory, tmp_path):
    """SIGTERM while a request is being answered: the request still gets its result, a new one is
    refused with a message, the server exits 143 with one line, and no folder of it is left: not its
    examples, not the request-* folders, not gradio's copies of the uploads. A request's user error
    is logged as one line, without a traceback."""
    import signal
    import time

    from gradio_client import handle_file

    ckpt = h.build_checkpoint(tmp_path_factory.mktemp("serve_ckpt") / "nano")
    image = h.write_png(tmp_path_factory.mktemp("upload") / "upload.png", 1500, 1500)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with _serve(ckpt, tmpdir) as (server, client):
        with pytest.raises(Exception, match="Type an expression"):
            client.predict(handle_file(str(image)), "", 0.0, api_name="/on_submit")
        job = client.submit(handle_file(str(image)), "the white building", 0.0, api_name="/on_submit")
        deadline = time.time() + 60
        while not list(tmpdir.glob("rs2sam2-serve-*/request-*")):  # the request is being answered
            assert time.time() < deadline and not job.done()
            time.sleep(0.01)
        server.send_signal(signal.SIGTERM)
        assert "1500 x 1500 px" in job.result(timeout=120)[-1]
        assert server.wait(timeout=60) == 143
        err = server.stderr.read().decode()
    assert "Traceback" not in err, err
    assert "rs2sam2 serve: request refused: Type an expression" in err
    assert err.strip().splitlines()[-1] == "rs2sam2 serve: stopped by SIGTERM", err
    left = [str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")
            if p.name.startswith(("request-", "rs2sam2-serve-")) or p.name == "upload.png"]
    assert left == []


def test_serve_refuses_a_busy_port_and_a_foreign_host_before_loading(tmp_path, capsys):
    from rs2sam2.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for extra, message in ((["--port", str(port)], f"--port {port}: already in use on 127.0.0.1"),
                               (["--host", "203.0.113.7"], "--host 203.0.113.7: not an address of this machine")):
            # the checkpoint does not exist: the address is checked first
            assert main(["serve", "--checkpoint", str(tmp_path / "none"), *extra]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"rs2sam2 serve: error: {message}") and err.count("\n") == 1, err


@pytest.mark.slow
def test_web_demo_memory_stays_bounded_for_a_small_file_of_many_pixels(tmp_path_factory, tmp_path):
    """A 0.8 MB, 15000 x 15000 GeoTIFF uploaded to a running ``rs2sam2 serve``: the server's peak resident
    memory (VmHWM) stays under 1.2 GB (it was 6.0 GB when uploads were decoded whole)."""
    from gradio_client import handle_file

    import helpers_scene

    ckpt = h.build_checkpoint(tmp_path_factory.mktemp("serve_ckpt") / "nano")
    scene = helpers_scene.write_scene(tmp_path / "s15k.tif", 15000)
    assert scene.stat().st_size < 1.5 * 2**20
    with _serve(ckpt) as (server, client):

        def peak_gb() -> float:
            for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
            raise AssertionError("no VmHWM")

        before = peak_gb()
        result = client.predict(handle_file(str(scene)), "the white building", 0.0, api_name="/on_submit")
        after = peak_gb()
    assert "15000 x 15000 px" in result[-1] and "downscaled 58.6x" in result[-1]
    print(f"serve peak memory: {before:.2f} GB after start, {after:.2f} GB after a 15000 x 15000 upload")
    assert after < 1.2, f"{after:.2f} GB"
