"""The Predictor API and the ``rs2sam2 predict`` command, on a tiny seeded nano checkpoint."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import helpers_ckpt as h
from rs2sam2 import CheckpointError
from rs2sam2.cli import main as cli_main
from rs2sam2.imageio import ImageReadError, read_image
from rs2sam2.predict import (
    InputError,
    Prediction,
    Predictor,
    parse_bands,
    read_jobs,
    write_outputs,
)

TEXTS = ["the red building on the left", "ship", "the small gray vehicle near the road at the bottom", "tank"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


@pytest.fixture(scope="module")
def predictor(ckpt) -> Predictor:
    return Predictor.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    return {"geo": h.write_geotiff(d / "scene.tif"), "png": h.write_png(d / "photo.png")}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# API
# --------------------------------------------------------------------------------------------


def test_path_pil_and_numpy_inputs_agree(predictor, images):
    path = images["png"]
    arr = np.asarray(Image.open(path).convert("RGB"))
    a = predictor.predict(path, TEXTS[0])
    b = predictor.predict(Image.open(path), TEXTS[0])
    c = predictor.predict(arr, TEXTS[0])
    assert isinstance(a, Prediction) and a.text == TEXTS[0]
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.logits, c.logits)


def test_outputs_at_original_resolution(predictor, images):
    pred = predictor.predict(images["png"], TEXTS[1])  # 300 x 200 image, 256 x 256 model input
    assert pred.shape == (200, 300)
    for a in (pred.logits, pred.probability, pred.prior):
        assert a.shape == (200, 300) and a.dtype == np.float32
    assert pred.mask.dtype == bool
    np.testing.assert_allclose(pred.probability, 1 / (1 + np.exp(-pred.logits.astype(np.float64))), atol=1e-6)
    np.testing.assert_array_equal(pred.mask, pred.logits > 0.5)
    assert 0.0 <= pred.prior.min() and pred.prior.max() <= 1.0

    # the full-resolution logits are the model's logits resized bilinearly (what evaluate scores)
    rgb, _ = read_image(images["png"])
    image, evf = predictor.preprocess(rgb)
    ids, mask = predictor.tokenize([TEXTS[1]])
    with torch.inference_mode():
        out = predictor.model(images=image, images_evf=evf, input_ids=ids, attention_mask=mask)
    expected = F.interpolate(out.logits, size=(200, 300), mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(pred.logits, expected, atol=1e-6)


def test_several_texts_batched_equal_one_by_one(predictor, images):
    batched = predictor.predict(images["geo"], TEXTS, batch_size=4)
    chunked = predictor.predict(images["geo"], TEXTS, batch_size=3)
    assert [p.text for p in batched] == TEXTS
    for i, text in enumerate(TEXTS):
        single = predictor.predict(images["geo"], text)
        np.testing.assert_allclose(batched[i].logits, single.logits, atol=1e-4)
        np.testing.assert_allclose(chunked[i].logits, single.logits, atol=1e-4)
        np.testing.assert_allclose(batched[i].prior, single.prior, atol=1e-4)
    # different texts give different answers (the text reaches the model)
    assert not np.allclose(batched[0].logits, batched[1].logits)


def test_threshold(ckpt, images, predictor):
    base = predictor.predict(images["png"], TEXTS[0])
    t = float(np.median(base.logits))
    pred = predictor.predict(images["png"], TEXTS[0], threshold=t)
    assert pred.threshold == t
    np.testing.assert_array_equal(pred.mask, base.logits > t)
    assert 0.3 < pred.foreground_fraction < 0.7
    other = Predictor.from_pretrained(ckpt, threshold=t)
    np.testing.assert_array_equal(other.predict(images["png"], TEXTS[0]).mask, pred.mask)


def test_bands_choice(predictor, images):
    assert parse_bands("4,3,2") == (4, 3, 2) and parse_bands(" 1 ") == (1,) and parse_bands(None) is None
    for bad in ("4,3", "0,1,2", "a,b,c"):
        with pytest.raises(InputError):
            parse_bands(bad)
    a = predictor.predict(images["geo"], TEXTS[0], bands="4,3,2")
    c = predictor.predict(images["geo"], TEXTS[0])
    assert not np.array_equal(a.logits, c.logits)


def test_bf16_runs_and_agrees_with_fp32(ckpt, images, predictor):
    bf = Predictor.from_pretrained(ckpt, precision="bf16")
    assert bf.model.image_encoder.trunk.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    ref = predictor.predict(images["png"], TEXTS[:2], threshold=0.0)
    got = bf.predict(images["png"], TEXTS[:2], threshold=0.0)
    for r, g in zip(ref, got, strict=True):
        assert g.logits.dtype == np.float32 and g.probability.dtype == np.float32 and g.prior.dtype == np.float32
        assert np.abs(g.logits - r.logits).max() < 0.05
        assert (g.mask == r.mask).mean() > 0.97


def test_api_errors(ckpt, predictor, images, tmp_path):
    with pytest.raises(InputError, match="empty"):
        predictor.predict(images["png"], "   ")
    with pytest.raises(InputError, match="expression 1 is empty"):
        predictor.predict(images["png"], ["a tank", ""])
    with pytest.raises(InputError, match="no expression"):
        predictor.predict(images["png"], [])
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="broken.png"):
        predictor.predict(bad, "a tank")
    with pytest.raises(FileNotFoundError, match="nothere.tif"):
        predictor.predict(tmp_path / "nothere.tif", "a tank")
    with pytest.raises(InputError, match="torch tensor"):
        predictor.predict(torch.zeros(3, 8, 8), "a tank")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        Predictor.from_pretrained(tmp_path / "missing")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / name, no_tok / name)
    with pytest.raises(CheckpointError, match=r"looked for tokenizer\.model.*in .*no_tok"):
        Predictor.from_pretrained(no_tok)
    # an explicit tokenizer works
    Predictor.from_pretrained(no_tok, tokenizer=ckpt / "tokenizer.model")
    with pytest.raises(CheckpointError, match="tokenizer not found"):
        Predictor.from_pretrained(no_tok, tokenizer=tmp_path / "nope.model")


def test_write_outputs_all_or_nothing(predictor, images, tmp_path, monkeypatch):
    rgb, info = read_image(images["geo"])
    pred = predictor.predict(rgb, TEXTS[0])
    out = tmp_path / "out"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr("rs2sam2.results.draw_overlay", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(pred, rgb, info, out=out / "m.tif", geojson=out / "m.geojson", overlay=out / "o.png")
    assert _files(out) == []  # the mask and GeoJSON were not renamed into place, no temporaries left


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def _run(*argv) -> int:
    return cli_main(["predict", *map(str, argv)])


def test_cli_geotiff_keeps_the_grid(ckpt, images, predictor, tmp_path, capsys):
    import rasterio

    out = tmp_path / "out"
    rc = _run("--checkpoint", ckpt, "--image", images["geo"], "--text", TEXTS[0], "--out", out / "mask.tif",
              "--geojson", out / "mask.geojson", "--overlay", out / "overlay.png", "--prob", out / "prob.tif",
              "--bands", "4,3,2", "--threshold", "0", "--device", "cpu")
    assert rc == 0, capsys.readouterr().err
    assert _files(out) == ["mask.geojson", "mask.tif", "overlay.png", "prob.tif"]
    with rasterio.open(images["geo"]) as src, rasterio.open(out / "mask.tif") as m, \
            rasterio.open(out / "prob.tif") as p:
        assert src.count == 4 and src.dtypes[0] == "uint16"
        for dst in (m, p):
            assert dst.crs == src.crs and dst.crs.to_epsg() == 32633
            assert dst.transform == src.transform
            assert (dst.width, dst.height) == (src.width, src.height) == (300, 200)
            assert dst.count == 1
        assert m.dtypes[0] == "uint8" and p.dtypes[0] == "float32"
        mask = m.read(1)
        bounds = src.bounds
    assert set(np.unique(mask)) <= {0, 255}
    expected = predictor.predict(images["geo"], TEXTS[0], bands=(4, 3, 2), threshold=0.0)
    np.testing.assert_array_equal(mask == 255, expected.mask)
    assert 0 < expected.foreground_pixels < mask.size

    # RFC 7946: lon/lat inside the scene's lon/lat bounds, no crs member; the source CRS is recorded
    from rasterio.warp import transform_bounds

    fc = json.loads((out / "mask.geojson").read_text())
    assert "crs" not in fc and fc["properties"]["source_crs"] == "EPSG:32633"
    assert fc["properties"]["foreground_px"] == expected.foreground_pixels and fc["features"]
    west, south, east, north = transform_bounds("EPSG:32633", "EPSG:4326", *bounds)
    xy = np.array([pt for f in fc["features"] for pt in f["geometry"]["coordinates"][0]])
    assert west - 1e-7 <= xy[:, 0].min() and xy[:, 0].max() <= east + 1e-7
    assert south - 1e-7 <= xy[:, 1].min() and xy[:, 1].max() <= north + 1e-7
    assert sum(f["properties"]["area_px"] for f in fc["features"]) == expected.foreground_pixels
    assert {f["properties"]["text"] for f in fc["features"]} == {TEXTS[0]}

    with Image.open(out / "overlay.png") as ov:
        assert ov.size == (300, 200) and ov.format == "PNG"


def test_cli_png_input_gives_png_mask(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _run("--checkpoint", ckpt, "--image", images["png"], "--text", TEXTS[1], "--out", out / "mask.png",
              "--geojson", out / "mask.geojson", "--threshold", "0")
    assert rc == 0, capsys.readouterr().err
    with Image.open(out / "mask.png") as m:
        assert m.format == "PNG" and m.mode == "L" and m.size == (300, 200)
        assert set(np.unique(np.asarray(m))) <= {0, 255}
    fc = json.loads((out / "mask.geojson").read_text())
    assert "crs" not in fc and fc["properties"]["coordinate_space"] == "pixel"

    # a .tif output of an image without georeference is a plain TIFF
    import rasterio

    assert _run("--checkpoint", ckpt, "--image", images["png"], "--text", TEXTS[1], "--out", out / "plain.tif") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(out / "plain.tif") as t:
            assert t.crs is None and t.transform.is_identity and (t.width, t.height) == (300, 200)


def test_cli_accepts_a_training_run_folder(ckpt, images, predictor, tmp_path, capsys):
    """``--checkpoint RUN`` uses RUN/checkpoints/best (before last) and the tokenizer of the run folder."""
    run = tmp_path / "run"
    for name in ("best", "last"):
        (run / "checkpoints" / name).mkdir(parents=True)
        shutil.copy(ckpt / "config.json", run / "checkpoints" / name / "config.json")
    shutil.copy(ckpt / "model.safetensors", run / "checkpoints" / "best" / "model.safetensors")
    (run / "checkpoints" / "last" / "model.safetensors").write_bytes(b"not read: best comes first")
    shutil.copy(ckpt / "tokenizer.model", run / "tokenizer.model")
    out = tmp_path / "out"
    rc = _run("--checkpoint", run, "--image", images["png"], "--text", TEXTS[0], "--out", out / "mask.png",
              "--threshold", "0")
    assert rc == 0, capsys.readouterr().err
    expected = predictor.predict(images["png"], TEXTS[0], threshold=0.0)
    with Image.open(out / "mask.png") as m:
        np.testing.assert_array_equal(np.asarray(m) == 255, expected.mask)


def test_cli_batch_csv_and_jsonl(ckpt, images, predictor, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(images["geo"], work / "scene.tif")
    shutil.copy(images["png"], work / "photo.png")
    rows = [("scene.tif", TEXTS[0], "out/a.tif", "out/a.geojson", ""),
            ("photo.png", TEXTS[1], "out/b.png", "", "out/b_overlay.png"),
            ("scene.tif", "the ship, at the top", "out/c.tif", "", "")]
    csv_text = "image,text,out,geojson,overlay\n" + "".join(
        f'{i},"{t}",{o},{g},{ov}\n' for i, t, o, g, ov in rows)
    (work / "jobs.csv").write_text(csv_text)
    assert [j.text for j in read_jobs(work / "jobs.csv")] == [r[1] for r in rows]
    rc = _run("--checkpoint", ckpt, "--batch", work / "jobs.csv", "--threshold", "0")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _files(work / "out") == ["a.geojson", "a.tif", "b.png", "b_overlay.png", "c.tif"]
    assert "predict" in captured.err  # the tqdm bar
    import rasterio

    scene_preds = predictor.predict(work / "scene.tif", [rows[0][1], rows[2][1]], threshold=0.0)
    photo_pred = predictor.predict(work / "photo.png", rows[1][1], threshold=0.0)
    for (_image, text, out, *_rest), pred in zip(rows, [scene_preds[0], photo_pred, scene_preds[1]], strict=True):
        assert pred.text == text
        expected = pred.mask
        if out.endswith(".tif"):
            with rasterio.open(work / out) as m:
                got = m.read(1) == 255
                assert m.crs.to_epsg() == 32633
        else:
            got = np.asarray(Image.open(work / out)) == 255
        np.testing.assert_array_equal(got, expected)

    jsonl = work / "jobs.jsonl"
    jsonl.write_text("".join(json.dumps({"image": i, "text": t, "out": o.replace("out/", "out2/")}) + "\n"
                             for i, t, o, *_ in rows))
    assert _run("--checkpoint", ckpt, "--batch", jsonl, "--quiet") == 0
    assert _files(work / "out2") == ["a.tif", "b.png", "c.tif"]


@pytest.mark.parametrize("case", ["unreadable", "missing_image", "empty_text", "missing_checkpoint",
                                  "missing_tokenizer", "bad_suffix", "batch_bad_row", "bad_bands"])
def test_cli_errors_exit_2_and_write_nothing(case, ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    checkpoint, image, text, mask = ckpt, images["png"], "a tank", out / "mask.tif"
    extra: list = []
    expect = ""
    if case == "unreadable":
        image = tmp_path / "broken.png"
        image.write_bytes(b"\x89PNG but not really")
        expect = "broken.png"
    elif case == "missing_image":
        image, expect = tmp_path / "nothere.tif", "image file not found"
    elif case == "empty_text":
        text, expect = "  ", "text is empty"
    elif case == "missing_checkpoint":
        checkpoint, expect = tmp_path / "nockpt", "checkpoint not found"
    elif case == "missing_tokenizer":
        checkpoint = tmp_path / "ck"
        checkpoint.mkdir()
        for name in ("config.json", "model.safetensors"):
            shutil.copy(ckpt / name, checkpoint / name)
        expect = "looked for tokenizer.model"
    elif case == "bad_suffix":
        mask, expect = out / "mask.jpg", "unsupported suffix"
    elif case == "bad_bands":
        extra, expect = ["--bands", "4,3"], "bands"
    if case == "batch_bad_row":
        (tmp_path / "jobs.csv").write_text(f"image,text,out\n{images['png']},a tank,{out}/a.tif\n"
                                           f"{images['png']},,{out}/b.tif\n")
        rc = _run("--checkpoint", checkpoint, "--batch", tmp_path / "jobs.csv")
        expect = "jobs.csv line 3: the text is empty"
    else:
        rc = _run("--checkpoint", checkpoint, "--image", image, "--text", text, "--out", mask,
                  "--geojson", out / "m.geojson", "--overlay", out / "o.png", *extra)
    err = capsys.readouterr().err
    assert rc == 2
    assert "error" in err and expect in err, err
    assert "Traceback" not in err
    assert _files(out) == []


def _cut_png(path: Path, keep: float = 0.5) -> Path:
    """A PNG cut short: its header whole (``keep`` of the file kept), its pixel data not."""
    data = h.write_png(path.with_name("whole_" + path.name)).read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _jobs_csv(tmp_path: Path, *rows) -> tuple[Path, Path]:
    """``tmp_path/jobs.csv`` of ``(image, text, output name)`` rows writing into ``tmp_path/out``:
    ``(the batch file, the output folder)``."""
    out = tmp_path / "out"
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,text,out\n" + "".join(f"{image},{text},{out}/{name}\n" for image, text, name in rows))
    return jobs, out


def test_cli_batch_stops_at_a_bad_image_and_keeps_going_on_request(ckpt, images, tmp_path, capsys):
    """An image whose header is whole but whose pixels are cut short fails when its turn comes: the
    jobs before it keep their complete outputs, its own write nothing, the later ones do not run."""
    broken = _cut_png(tmp_path / "broken.png")
    jobs, out = _jobs_csv(tmp_path, (images["png"], "a tank", "a.png"), (broken, "a ship", "b.png"),
                          (images["geo"], "a car", "c.tif"))
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--quiet") == 2
    err = capsys.readouterr().err
    assert "jobs.csv line 3: cannot read image" in err and "broken.png" in err and "truncated" in err, err
    assert _files(out) == ["a.png"]  # complete files of the jobs before the failure, nothing partial
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--quiet", "--keep-going") == 2
    assert _files(out) == ["a.png", "c.tif"]


def test_cli_batch_reads_every_header_before_the_first_job(ckpt, images, tmp_path, capsys):
    """Images that are not images, cut short in their header, or over the decode budget stop the run
    before anything is written; with --keep-going they are skipped and reported."""
    not_raster = tmp_path / "broken.tif"
    not_raster.write_bytes(b"this is not a raster")
    no_header = _cut_png(tmp_path / "stub.png", keep=0.0001)  # the first bytes only
    jobs, out = _jobs_csv(tmp_path, (images["png"], "a tank", "a.png"), (not_raster, "a ship", "b.png"),
                          (images["geo"], "a car", "c.tif"), (no_header, "a road", "d.png"))
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--quiet") == 2
    err = capsys.readouterr().err
    assert "2 problem(s) with the input" in err, err
    assert "jobs.csv line 3: cannot read image" in err and "broken.tif" in err
    assert "jobs.csv line 5: cannot read image" in err and "stub.png" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--quiet", "--keep-going") == 2
    err = capsys.readouterr().err
    assert "broken.tif" in err and "stub.png" in err and "2 image(s) failed" in err, err
    assert _files(out) == ["a.png", "c.tif"]

    # a PNG is decoded whole: over the decode budget it is refused before the first job
    shutil.rmtree(out)
    _jobs_csv(tmp_path, (images["geo"], "a car", "c.tif"), (images["png"], "a tank", "a.png"))
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--quiet", "--max-pixels", 50_000) == 2
    err = capsys.readouterr().err
    assert "jobs.csv line 3:" in err and "photo.png" in err and "decode budget of 50,000" in err, err
    assert "--max-pixels" in err and not out.exists()


def test_cli_long_text_is_warned_once_with_its_token_count(ckpt, images, predictor, tmp_path, capsys):
    """A 5000-word text: one warning on stderr with the token count (also over several tiles), the
    per-job line echoes only a prefix, and the mask is that of the text cut to the token limit."""
    import rasterio

    words = ["the", "red", "building", "next", "to", "a", "road"]
    text = " ".join(words[i % len(words)] for i in range(5000))
    out = tmp_path / "m.tif"
    rc = _run("--checkpoint", ckpt, "--image", images["geo"], "--text", text, "--out", out, "--tile", 128,
              "--overlap", 16, "--threshold", 0)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    warned = [line for line in captured.err.splitlines() if "tokens" in line]
    assert len(warned) == 1, captured.err
    n_tokens = len(predictor.tokenizer.encode(text))
    assert warned[0].startswith(f"rs2sam2 predict: warning: a text of {n_tokens} tokens (BOS and EOS included) "
                                f"is longer than the limit of {predictor.max_len}: only its first "
                                f"{predictor.max_len} tokens are read ('the red building")
    assert "characters)')" in warned[0] and len(warned[0]) < 300
    assert "characters)" in captured.out and len(captured.out) < 300 and text not in captured.out
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = predictor.predict(images["geo"], text, tile=128, overlap=16, threshold=0.0).mask
    assert sum("tokens" in str(w.message) for w in caught) == 1  # the Python API warns once too
    with rasterio.open(out) as m:
        np.testing.assert_array_equal(m.read(1) == 255, expected)


def test_cli_zero_width_only_text_is_empty(ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    rc = _run("--checkpoint", ckpt, "--image", images["png"], "--text", "\u200b\u2060\ufeff", "--out", out / "m.png")
    err = capsys.readouterr().err
    assert rc == 2 and "error: the text is empty" in err and "Traceback" not in err, err
    assert _files(out) == []


def test_cli_subprocess_entry_point(ckpt, images, tmp_path):
    """The installed ``rs2sam2`` script dispatches to predict (exit status 2 on a missing image)."""
    import subprocess
    import sys

    exe = Path(sys.executable).with_name("rs2sam2")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rs2sam2"]
    r = subprocess.run([*cmd, "predict", "--checkpoint", str(ckpt), "--image", str(tmp_path / "x.png"),
                        "--text", "a", "--out", str(tmp_path / "m.png")], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "image file not found" in r.stderr


# --------------------------------------------------------------------------------------------
# areas of interest, tiles, nodata, vectors (issue: large scenes)
# --------------------------------------------------------------------------------------------


def _geo_rgb(path: Path, height: int, width: int, *, nodata: int | None = None, seed: int = 3) -> Path:
    """An 8-bit RGB GeoTIFF (EPSG:32633, 0.5 m) with flat ground and bright rectangles, tiled."""
    import rasterio
    from affine import Affine

    rng = np.random.default_rng(seed)
    data = np.empty((3, height, width), np.uint8)
    data[:] = np.array([70, 90, 60], np.uint8)[:, None, None]
    for _ in range(max(2, height * width // 40000)):
        r, c = int(rng.integers(0, height - 40)), int(rng.integers(0, width - 60))
        data[:, r:r + int(rng.integers(10, 40)), c:c + int(rng.integers(10, 60))] = 235
    if nodata is not None:
        data[:, :, : width // 5] = nodata
    transform = Affine(h.GEO_PIXEL, 0.0, h.GEO_ORIGIN[0], 0.0, -h.GEO_PIXEL, h.GEO_ORIGIN[1])
    with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=h.GEO_CRS,
                       transform=transform, nodata=nodata, tiled=True, blockxsize=128, blockysize=128) as dst:
        dst.write(data)
    return path


def test_window_and_bbox_give_exact_grids(ckpt, predictor, images, tmp_path):
    import rasterio
    from affine import Affine
    from rasterio.warp import transform_bounds

    path = images["geo"]
    with rasterio.open(path) as src:
        t, crs = src.transform, src.crs
    rgb, _ = read_image(path)
    pred = predictor.predict(path, TEXTS[0], window=(50, 20, 100, 80))
    assert pred.shape == (80, 100) and pred.crs == "EPSG:32633"
    assert Affine(*pred.transform) == t @ Affine.translation(50, 20)
    # only the window was read, stretched like the whole scene: the same as predicting the cut-out
    np.testing.assert_array_equal(pred.logits, predictor.predict(rgb[20:100, 50:150], TEXTS[0]).logits)
    # a bbox in the CRS, not on pixel edges: snapped outward to whole pixels
    x0, y0 = h.GEO_ORIGIN
    box = (x0 + 25.2, y0 - 50.1, x0 + 74.9, y0 - 10.0)  # columns 50.4..149.8, rows 20..100.2
    pred = predictor.predict(path, TEXTS[0], bbox=box)
    assert pred.shape == (81, 100) and Affine(*pred.transform) == t @ Affine.translation(50, 20)
    # the same box in lon/lat covers at least those pixels
    lonlat = transform_bounds(crs, "EPSG:4326", *box)
    out = tmp_path / "aoi.tif"
    rc = _run("--checkpoint", ckpt, "--image", path, "--text", TEXTS[0], "--out", out,
              "--bbox", *lonlat, "--bbox-crs", "EPSG:4326", "-q")
    assert rc == 0
    with rasterio.open(out) as m:
        col, row = ~t @ (m.transform.c, m.transform.f)
        assert m.crs == crs and (m.transform.a, m.transform.e) == (t.a, t.e)
        assert col == int(col) and row == int(row) and col <= 50 and row <= 20  # on the input's pixel grid
        assert col + m.width >= 150 and row + m.height >= 101 and m.width <= 102 and m.height <= 83


def test_nodata_is_carried_exactly(ckpt, predictor, tmp_path):
    import pyogrio
    import rasterio
    from pyogrio.raw import read

    scene = _geo_rgb(tmp_path / "nd.tif", 200, 300, nodata=0)
    pred = predictor.predict(scene, TEXTS[0], threshold=-100.0)  # everything with data is "object"
    assert pred.valid is not None and pred.has_nodata
    assert not pred.valid[:, :60].any() and pred.valid[:, 60:].all()
    assert not pred.mask[:, :60].any() and pred.mask[:, 60:].all()
    out = tmp_path / "out"
    rc = _run("--checkpoint", ckpt, "--image", scene, "--text", TEXTS[0], "--out", out / "m.tif", "--prob",
              out / "p.tif", "--vector", out / "m.gpkg", "--threshold", "-100", "-q")
    assert rc == 0
    with rasterio.open(out / "m.tif") as m, rasterio.open(out / "p.tif") as p:
        assert m.nodata == 127 and np.isnan(p.nodata)
        band, prob, transform = m.read(1), p.read(1), m.transform
    assert (band[:, :60] == 127).all() and (band[:, 60:] == 255).all()
    assert np.isnan(prob[:, :60]).all() and np.isfinite(prob[:, 60:]).all()
    # one polygon: the data, which it never leaves
    meta, _, geometry, fields = read(out / "m.gpkg")
    assert len(geometry) == 1 and dict(zip(meta["fields"], fields))["area_px"][0] == 200 * 240
    left, bottom, right, top = pyogrio.read_info(out / "m.gpkg")["total_bounds"]
    assert (left, right) == (transform.c + 60 * h.GEO_PIXEL, transform.c + 300 * h.GEO_PIXEL)


def test_tiled_cli_end_to_end_on_the_full_grid(ckpt, predictor, tmp_path, capsys):
    import pyogrio
    import rasterio

    scene = _geo_rgb(tmp_path / "scene.tif", 500, 700)
    out = tmp_path / "out"
    rc = _run("--checkpoint", ckpt, "--image", scene, "--text", TEXTS[0], "--out", out / "m.tif", "--prob",
              out / "p.tif", "--vector", out / "m.shp", "--overlay", out / "o.png", "--tile", "256", "--overlap",
              "32", "--threshold", "0", "--simplify", "0.5", "--min-area", "2")
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "tiles" in captured.err  # the progress bar over tiles
    assert _files(out) == ["m.cpg", "m.dbf", "m.prj", "m.shp", "m.shx", "m.tif", "o.png", "p.tif"]
    with rasterio.open(scene) as src, rasterio.open(out / "m.tif") as m:
        assert (m.crs, m.transform, m.width, m.height) == (src.crs, src.transform, 700, 500)
        assert m.profile["tiled"] and m.nodata is None
        written = m.read(1) == 255
    pred = predictor.predict(scene, TEXTS[0], tile=256, overlap=32, threshold=0.0)
    assert pred.tiles == 3 * 3 and pred.shape == (500, 700)  # starts 0, 224, 444 and 0, 224, 244
    np.testing.assert_array_equal(written, pred.mask)
    assert 0 < written.sum() < written.size
    info = pyogrio.read_info(out / "m.shp")
    assert "32633" in info["crs"] and info["features"] >= 1
    with Image.open(out / "o.png") as ov:
        assert ov.size == (700, 500)


def test_large_area_read_whole_is_read_decimated(ckpt, predictor, tmp_path, capsys):
    import rasterio

    scene = _geo_rgb(tmp_path / "wide.tif", 400, 1100)  # longer side > 2 x 256: decimated
    with pytest.warns(UserWarning, match=r"downscaled 4\.3x"):
        pred = predictor.predict(scene, TEXTS[1], threshold=0.0, mode="whole")
    assert pred.shape == (400, 1100) and pred.downscale == pytest.approx(1100 / 256)
    rc = _run("--checkpoint", ckpt, "--image", scene, "--text", TEXTS[1], "--out", tmp_path / "m.tif",
              "--threshold", "0", "--mode", "whole")
    err = capsys.readouterr().err
    assert rc == 0 and "downscaled 4.3x" in err and "--tile" in err
    with rasterio.open(tmp_path / "m.tif") as m:
        assert (m.width, m.height) == (1100, 400)
        np.testing.assert_array_equal(m.read(1) == 255, pred.mask)


def test_prediction_save_vectors_plot_and_repr_png(predictor, images, tmp_path):
    import rasterio

    pred = predictor.predict(images["geo"], TEXTS[0], threshold=0.0, window=(10, 10, 120, 90))
    with rasterio.open(pred.save(tmp_path / "m.tif")) as m:
        assert m.crs.to_epsg() == 32633 and tuple(m.transform)[:6] == pytest.approx(pred.transform)
        np.testing.assert_array_equal(m.read(1) == 255, pred.mask)
    with rasterio.open(pred.save_probability(tmp_path / "p.tif")) as p:
        np.testing.assert_allclose(p.read(1), pred.probability)
    polys = pred.polygons()
    assert sum(p.area_px for p in polys) == pred.foreground_pixels
    assert polys and all(p.score == pred.iou_score for p in polys)  # one model answer: its predicted IoU
    files = pred.to_vector(tmp_path / "m.geojson", min_area=1.0)
    fc = json.loads(files[0].read_text())
    assert all(f["properties"]["area"] >= 1.0 for f in fc["features"]) and "crs" not in fc
    png = pred._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib

    matplotlib.use("Agg")
    ax = pred.plot()
    x0, x1 = ax.get_xlim()
    assert x0 == pytest.approx(pred.transform[2]) and x1 == pytest.approx(pred.transform[2] + 120 * h.GEO_PIXEL)


def test_an_open_rasterio_dataset_is_an_input(predictor, images):
    import rasterio

    with rasterio.open(images["geo"]) as ds:
        a = predictor.predict(ds, TEXTS[0], window=(0, 0, 100, 100))
        assert not ds.closed
    b = predictor.predict(images["geo"], TEXTS[0], window=(0, 0, 100, 100))
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.crs == b.crs == "EPSG:32633"


@pytest.mark.parametrize("case", ["bbox_outside", "window_zero", "window_outside", "tile_overlap", "overlap_alone",
                                  "bbox_crs_alone", "vector_suffix", "unwritable", "png_tiles", "truncated"])
def test_cli_area_tile_and_output_errors_exit_2(case, ckpt, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    image, mask = images["geo"], out / "m.tif"
    x0, y0 = h.GEO_ORIGIN
    extra, expect = {
        "bbox_outside": (["--bbox", x0 + 1000, y0, x0 + 2000, y0 + 10], "outside the raster"),
        "window_zero": (["--window", 0, 0, 0, 10], "zero size"),
        "window_outside": (["--window", 250, 0, 100, 10], "not inside the raster"),
        "tile_overlap": (["--tile", 128, "--overlap", 128], "--tile 128 must be larger than --overlap 128"),
        "overlap_alone": (["--overlap", 32], "--overlap needs --tile"),
        "bbox_crs_alone": (["--bbox-crs", "EPSG:4326"], "--bbox-crs needs --bbox"),
        "vector_suffix": (["--vector", out / "m.kml"], "unsupported suffix '.kml'"),
        "unwritable": ([], "is not a folder"),
        "png_tiles": (["--tile", 128], "needs a GeoTIFF"),
        "truncated": ([], "truncated"),
    }[case]
    if case == "unwritable":
        (tmp_path / "afile").write_text("x")
        mask = tmp_path / "afile" / "m.tif"
    if case == "png_tiles":
        mask = out / "m.png"
    if case == "truncated":
        whole = h.write_png(tmp_path / "whole.png")
        data = whole.read_bytes()
        image = tmp_path / "cut.png"
        image.write_bytes(data[: len(data) // 2])
        expect = "cut.png"
    rc = _run("--checkpoint", ckpt, "--image", image, "--text", "a tank", "--out", mask, "--overlay",
              out / "o.png", *extra)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "error" in err and expect in err, err
    assert "Traceback" not in err
    assert _files(out) == []


def test_torchrun_shares_batch_jobs_among_two_gloo_ranks(ckpt, images, tmp_path):
    """``torchrun --nproc_per_node 2``: every image's jobs run on exactly one rank, all outputs appear once."""
    import os
    import re
    import subprocess
    import sys

    work = tmp_path / "work"
    work.mkdir()
    rows = []
    for i in range(4):
        shutil.copy(images["png"] if i % 2 else images["geo"], work / f"img{i}{'.png' if i % 2 else '.tif'}")
        rows.append(f"img{i}{'.png' if i % 2 else '.tif'},\"{TEXTS[i]}\",out/m{i}.tif")
    (work / "jobs.csv").write_text("image,text,out\n" + "\n".join(rows) + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "rs2sam2", "predict", "--checkpoint", str(ckpt), "--batch", str(work / "jobs.csv"),
                        "--device", "cpu"], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    done = re.findall(r"\[rank (\d)\] '([^']*)': .* -> (\S+)", r.stdout)
    assert sorted(Path(p).name for _, _, p in done) == ["m0.tif", "m1.tif", "m2.tif", "m3.tif"]  # each once
    by_rank = {rank: sorted(Path(p).name for rk, _, p in done if rk == rank) for rank in ("0", "1")}
    assert by_rank == {"0": ["m0.tif", "m2.tif"], "1": ["m1.tif", "m3.tif"]}
    assert _files(work / "out") == ["m0.tif", "m1.tif", "m2.tif", "m3.tif"]
