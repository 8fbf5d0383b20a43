"""The QGIS plugin: ``rs2sam2 qgis install|package`` and the Processing algorithms run in QGIS.

The algorithm checks run QGIS's own Python (Debian's ``/usr/bin/python3`` with ``python3-qgis``) in a
subprocess with ``QT_QPA_PLATFORM=offscreen`` (tests/qgis_harness.py): a standalone QgsApplication
loads the plugin from a fresh profile into which the ``rs2sam2 qgis package`` zip was unpacked, and
runs each algorithm through ``processing.run`` with the real ``rs2sam2`` program and a small
checkpoint. They are skipped only where QGIS is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from helpers_ckpt import build_checkpoint, write_geotiff
from rs2sam2 import qgis
from rs2sam2.cli import main as cli_main

QGIS_PYTHON = "/usr/bin/python3"
HARNESS = Path(__file__).with_name("qgis_harness.py")
SENTENCE = "the white storage tank at the top"
# an extent (EPSG:32633) inside the test GeoTIFF (origin 500000, 5200000; 0.5 m pixels; 300 x 200 px):
# snapped outward to whole pixels it is columns 20..122 and rows 19..100
EXTENT = "500010.2,500060.7,5199950.3,5199990.1 [EPSG:32633]"
EXTENT_WINDOW = {"width": 102, "height": 81, "origin": (500010.0, 5199990.5)}


def _has_qgis() -> bool:
    if not os.path.exists(QGIS_PYTHON):
        return False
    probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True,
                           env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    return probe.returncode == 0


needs_qgis = pytest.mark.skipif(not _has_qgis(), reason=(
    f"QGIS is not installed: no 'qgis' module in {QGIS_PYTHON} (Debian: apt-get install python3-qgis "
    "qgis-providers)"))


# --------------------------------------------------------------------------------------------
# install and package (no QGIS needed)
# --------------------------------------------------------------------------------------------


def test_package_zip_holds_the_plugin_with_the_package_version(tmp_path):
    out = tmp_path / "rs2sam2_qgis.zip"
    assert cli_main(["qgis", "package", "--out", str(out)]) == 0
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        metadata = zf.read("rs2sam2_qgis/metadata.txt").decode()
    assert {"rs2sam2_qgis/__init__.py", "rs2sam2_qgis/metadata.txt", "rs2sam2_qgis/algorithms.py"} <= names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert "hasProcessingProvider=yes" in metadata
    import rs2sam2

    assert f"version={rs2sam2.__version__}" in metadata.splitlines()


def test_profiles_root_is_found_the_way_qgis_finds_it(tmp_path):
    home = tmp_path
    assert qgis.profiles_root({}, "linux", home) == home / ".local/share/QGIS/QGIS3/profiles"
    assert qgis.profiles_root({"XDG_DATA_HOME": "/x"}, "linux", home) == Path("/x/QGIS/QGIS3/profiles")
    assert qgis.profiles_root({}, "darwin", home) == home / "Library/Application Support/QGIS/QGIS3/profiles"
    assert qgis.profiles_root({"APPDATA": "C:/U/AppData/Roaming"}, "win32", home) == Path(
        "C:/U/AppData/Roaming/QGIS/QGIS3/profiles")
    assert qgis.profiles_root({"QGIS_CUSTOM_CONFIG_PATH": "/c"}, "linux", home) == Path("/c/profiles")


def test_install_into_the_default_profile_enables_it_and_replaces_an_older_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QGIS_CUSTOM_CONFIG_PATH", str(tmp_path))
    root = tmp_path / "profiles"
    (root / "work" / "QGIS").mkdir(parents=True)
    (root / "profiles.ini").write_text("[core]\ndefaultProfile=work\n")
    ini = root / "work" / "QGIS" / "QGIS3.ini"
    ini.write_text("[General]\nfoo=1\n\n[PythonPlugins]\nother=true\nrs2sam2_qgis=false\n\n[Qgis]\nbar=2\n")
    old = root / "work" / "python" / "plugins" / "rs2sam2_qgis"
    old.mkdir(parents=True)
    (old / "stale.py").write_text("")
    assert cli_main(["qgis", "install"]) == 0
    assert "restart QGIS" in capsys.readouterr().out
    assert (old / "metadata.txt").is_file() and not (old / "stale.py").exists()
    assert sorted(p.name for p in old.parent.iterdir()) == ["rs2sam2_qgis"]  # no temporary folders left
    assert ini.read_text() == "[General]\nfoo=1\n\n[PythonPlugins]\nother=true\nrs2sam2_qgis=true\n\n[Qgis]\nbar=2\n"
    assert os.stat(old).st_mode & 0o055 == 0o055  # readable by others, like any folder QGIS makes


def test_install_names_a_missing_profile(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QGIS_CUSTOM_CONFIG_PATH", str(tmp_path))
    (tmp_path / "profiles" / "default").mkdir(parents=True)
    assert cli_main(["qgis", "install", "--profile", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no QGIS profile 'nope'" in err and "default" in err and "Traceback" not in err


def test_install_into_a_plugins_folder(tmp_path):
    assert cli_main(["qgis", "install", "--plugins-dir", str(tmp_path / "plugins")]) == 0
    assert (tmp_path / "plugins" / "rs2sam2_qgis" / "provider.py").is_file()


# --------------------------------------------------------------------------------------------
# the plugin's runner (plain Python) with a stand-in program
# --------------------------------------------------------------------------------------------

FAKE_PROGRAM = """
import json, sys, time
mode = sys.argv[1]
print(json.dumps({"event": "start", "jobs": 1}), flush=True)
print("a warning", file=sys.stderr, flush=True)
for k in (1, 2):
    print(json.dumps({"event": "progress", "done": k, "total": 2}), flush=True)
if mode == "user-error":
    print("usage: ...", file=sys.stderr)
    print("rs2sam2 predict: error: checkpoint not found: /x", file=sys.stderr)
    sys.exit(2)
if mode == "crash":
    print("Traceback (most recent call last):", file=sys.stderr)
    sys.exit(1)
if mode == "slow":
    time.sleep(60)
print(json.dumps({"event": "job", "index": 0, "text": "t", "written": ["m.tif"], "foreground_px": 7}), flush=True)
print(json.dumps({"event": "end", "status": "done", "seconds": 0.1}), flush=True)
"""


def _runner():
    spec = importlib.util.spec_from_file_location("rs2sam2_qgis_runner", qgis.PLUGIN_DIR / "runner.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / "fake.py"
    script.write_text(FAKE_PROGRAM)
    return lambda mode: [sys.executable, str(script), mode]


def test_runner_reports_progress_jobs_and_warnings(fake):
    runner = _runner()
    seen = {"progress": [], "info": [], "warning": []}
    feedback = runner.Feedback(progress=seen["progress"].append, info=seen["info"].append,
                               warning=seen["warning"].append)
    result = runner.run(fake("ok"), feedback)
    assert seen["progress"] == [50.0, 100.0]
    assert seen["warning"] == ["a warning"]
    assert result.jobs[0]["foreground_px"] == 7 and result.end["status"] == "done"


def test_runner_gives_the_program_message_on_a_user_error_and_the_stderr_tail_on_a_crash(fake):
    runner = _runner()
    with pytest.raises(runner.ProgramError) as err:
        runner.run(fake("user-error"))
    assert str(err.value) == "checkpoint not found: /x"
    with pytest.raises(runner.ProgramError, match="exit status 1:\n(.|\n)*Traceback"):
        runner.run(fake("crash"))


def test_runner_stops_the_program_on_cancel(fake):
    runner = _runner()
    pids, canceled_at = [], []

    def canceled():
        if pids and not canceled_at:
            canceled_at.append(time.monotonic())
        return bool(canceled_at)

    with pytest.raises(runner.Canceled):
        runner.run(fake("slow"), runner.Feedback(canceled=canceled, started=pids.append))
    assert time.monotonic() - canceled_at[0] < 2.0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_runner_names_a_missing_program(tmp_path):
    runner = _runner()
    with pytest.raises(runner.ProgramError, match="does not exist"):
        runner.find_program(str(tmp_path / "rs2sam2"))


# --------------------------------------------------------------------------------------------
# the algorithms in QGIS
# --------------------------------------------------------------------------------------------


def _vrt(path: Path, source: Path) -> Path:
    """A VRT over ``source`` (a layer that is not a plain GeoTIFF file)."""
    with rasterio.open(source) as src:
        t, (h, w), dtype = src.transform, src.shape, src.dtypes[0]
    bands = "".join(
        f'<VRTRasterBand dataType="{ {"uint16": "UInt16"}[dtype] }" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{source.name}</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>" for b in range(1, 5))
    path.write_text(f'<VRTDataset rasterXSize="{w}" rasterYSize="{h}"><SRS>EPSG:32633</SRS>'
                    f"<GeoTransform>{t.c}, {t.a}, 0, {t.f}, 0, {t.e}</GeoTransform>{bands}</VRTDataset>")
    return path


def _gpkg_raster(path: Path, source: Path) -> Path:
    """A GeoPackage raster (8-bit RGB) on the grid of ``source``."""
    with rasterio.open(source) as src:
        data, profile = (src.read([1, 2, 3]) // 16).astype("uint8"), src.profile
    with rasterio.open(path, "w", driver="GPKG", width=profile["width"], height=profile["height"], count=3,
                       dtype="uint8", crs=profile["crs"], transform=profile["transform"]) as dst:
        dst.write(data)
    return path


@pytest.fixture(scope="module")
def qgis_run(tmp_path_factory):
    """One QGIS session that runs every case; its report, and the paths it used."""
    if not _has_qgis():
        pytest.skip("QGIS is not installed")
    tmp = tmp_path_factory.mktemp("qgis")
    ckpt = build_checkpoint(tmp / "ckpt")
    image = write_geotiff(tmp / "scene.tif")
    vrt = _vrt(tmp / "scene.vrt", image)
    gpkg = _gpkg_raster(tmp / "raster.gpkg", image)
    # the zip, unpacked into a fresh profile as QGIS's "Install from ZIP" does
    plugins = tmp / "config" / "profiles" / "default" / "python" / "plugins"
    plugins.mkdir(parents=True)
    assert cli_main(["qgis", "package", "--out", str(tmp / "rs2sam2_qgis.zip")]) == 0
    with zipfile.ZipFile(tmp / "rs2sam2_qgis.zip") as zf:
        zf.extractall(plugins)
    program = shutil.which("rs2sam2", path=str(Path(sys.executable).parent)) or shutil.which("rs2sam2")
    model = {"CHECKPOINT": str(ckpt), "DEVICE": "cpu", "PRECISION": 1}  # fp32
    out = tmp / "out"
    cases = {
        "sentence": {"alg": "rs2sam2:segment_by_sentence", "params": {
            "INPUT": str(image), "SENTENCE": SENTENCE, **model, "MODE": 2, "THRESHOLD": -1000.0,
            "COLOUR_CHECK": False, "OUTPUT": str(out / "mask.tif"),
            "VECTOR": str(out / "mask.gpkg")}},
        "many": {"alg": "rs2sam2:segment_many", "params": {
            "ROWS": [str(image), "the red building on the left", "vrt layer", SENTENCE,
                     str(gpkg), "the large ship in the middle"], **model,
            "OUTPUT_FOLDER": str(out / "many")}},
        "model_vrt_extent": {"model": True, "model_params": {"SENTENCE": SENTENCE, "EXTENT": EXTENT, **model,
                                                             "THRESHOLD": -1000.0},
                             "params": {"layer": str(vrt), "seg:mask": str(out / "model_mask.tif"),
                                        "seg:polygons": str(out / "model_mask.gpkg")}},
        "cancel": {"alg": "rs2sam2:segment_by_sentence", "cancel_on_progress": True, "params": {
            "INPUT": str(image), "SENTENCE": SENTENCE, **model, "MODE": 1, "TILE": 32,
            "OUTPUT": str(out / "canceled.tif"), "VECTOR": str(out / "canceled.gpkg")}},
        "bad_checkpoint": {"alg": "rs2sam2:segment_by_sentence", "params": {
            "INPUT": str(image), "SENTENCE": SENTENCE, **model, "CHECKPOINT": str(tmp / "no-such-ckpt"),
            "OUTPUT": str(out / "bad.tif"), "VECTOR": str(out / "bad.gpkg")}},
        "empty_sentence": {"alg": "rs2sam2:segment_by_sentence", "params": {
            "INPUT": str(image), "SENTENCE": "  ", **model, "OUTPUT": str(out / "empty.tif"),
            "VECTOR": str(out / "empty.gpkg")}},
    }
    config = {"plugins_dir": str(plugins), "program": program, "cases": cases,
              "layers": [{"source": str(vrt), "name": "vrt layer"}]}
    (tmp / "config.json").write_text(json.dumps(config))
    (tmp / "tmpdir").mkdir()
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QGIS_CUSTOM_CONFIG_PATH": str(tmp / "config"),
           "TMPDIR": str(tmp / "tmpdir")}
    proc = subprocess.run([QGIS_PYTHON, str(HARNESS), str(tmp / "config.json"), str(tmp / "report.json")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp / "report.json").read_text())
    assert "harness_error" not in report, report["harness_error"]
    return {"report": report, "image": image, "tmp": tmp, "out": out, "plugins": plugins}


@needs_qgis
def test_install_enables_the_plugin_so_qgis_process_lists_its_algorithms(tmp_path):
    # Debian's qgis_process wrapper adds --noversioncheck, which qgis_process 3.22 refuses: call the binary
    program = shutil.which("qgis_process.bin") or shutil.which("qgis_process")
    if program is None:
        pytest.skip("qgis_process is not installed (Debian: apt-get install qgis)")
    (tmp_path / "profiles" / "default").mkdir(parents=True)
    env = {**os.environ, "QGIS_CUSTOM_CONFIG_PATH": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    subprocess.run([sys.executable, "-m", "rs2sam2", "qgis", "install"], env=env, check=True, capture_output=True)
    # with the system PATH only: QGIS's embedded Python takes its home from the python3 it finds on PATH
    env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"} | {"PATH": "/usr/bin:/bin"}
    listed = subprocess.run([program, "list"], env=env, capture_output=True, text=True, timeout=120)
    assert "rs2sam2:segment_by_sentence\tSegment by sentence" in listed.stdout
    assert "rs2sam2:segment_many\tSegment many" in listed.stdout


def _grid(path: Path):
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, (ds.width, ds.height)


def _columns(path) -> dict:
    import pyogrio

    meta, _, _, fields = pyogrio.raw.read(path)
    return dict(zip(meta["fields"], fields))


def _case(qgis_run, name: str) -> dict:
    case = qgis_run["report"]["cases"][name]
    assert "Traceback" not in (case["error"] or "")
    return case


@needs_qgis
def test_the_zip_installs_into_a_fresh_profile_and_registers_both_algorithms(qgis_run):
    report = qgis_run["report"]
    assert Path(report["plugin_file"]).is_relative_to(qgis_run["plugins"])
    assert report["algorithms"] == ["rs2sam2:segment_by_sentence", "rs2sam2:segment_many"]
    assert report["algorithms_after_unload"] == []


@needs_qgis
def test_segment_by_sentence_gives_a_mask_on_the_layer_grid_and_polygons_with_provenance(qgis_run):
    import pyogrio

    case = _case(qgis_run, "sentence")
    assert case["error"] is None
    mask = Path(case["results"]["OUTPUT"])
    assert _grid(mask) == _grid(qgis_run["image"])
    with rasterio.open(mask) as ds:
        assert ds.count == 1 and ds.dtypes[0] == "uint8"
        assert set(np.unique(ds.read(1))) == {255}
    info = pyogrio.read_info(case["results"]["VECTOR"])
    assert info["crs"] == "EPSG:32633" and info["geometry_type"] in ("Polygon", "MultiPolygon")
    # the threshold far below every logit makes the whole layer the object: one polygon of it all, with
    # the provenance fields of predict --vector
    columns = _columns(case["results"]["VECTOR"])
    assert list(columns["text"]) == [SENTENCE] and list(columns["mode"]) == ["whole"]
    assert list(columns["image"]) == [str(qgis_run["image"])]
    assert list(columns["checkpoint"]) == [str(qgis_run["tmp"] / "ckpt")]
    assert 0 <= columns["score"][0] <= 1 and 0 <= columns["presence"][0] <= 1
    assert columns["area_px"].sum() == 300 * 200 and columns["area"].sum() == pytest.approx(300 * 200 * 0.25)
    # progress came from the program's JSON lines, in order, up to 100 %
    progress = case["log"]["progress"]
    assert progress and progress == sorted(progress) and progress[-1] == pytest.approx(100.0)
    assert case["log"]["command"] and "--mode whole" in case["log"]["command"][0]
    assert "--progress json" in case["log"]["command"][0] and "--no-colour-check" in case["log"]["command"][0]
    assert case["pid_alive_after"] is False


@needs_qgis
def test_segment_many_writes_one_mask_per_row_and_removes_its_temporary_exports(qgis_run):
    case = _case(qgis_run, "many")
    assert case["error"] is None
    masks, vectors = case["results"]["MASKS"], case["results"]["VECTORS"]
    assert [Path(m).name for m in masks] == ["01_the_red_building_on_the_left.tif",
                                            "02_the_white_storage_tank_at_the_top.tif",
                                            "03_the_large_ship_in_the_middle.tif"]
    for mask in masks:  # the VRT and GeoPackage layers were exported whole: the GeoTIFF's grid
        assert _grid(Path(mask)) == _grid(qgis_run["image"])
    assert all(Path(v).is_file() for v in vectors)
    assert not list((qgis_run["tmp"] / "tmpdir").glob("rs2sam2-qgis-*"))


@needs_qgis
def test_a_vrt_layer_with_an_extent_in_a_model_is_exported_on_the_layer_grid(qgis_run):
    case = _case(qgis_run, "model_vrt_extent")
    assert case["error"] is None
    crs, transform, size = _grid(qgis_run["out"] / "model_mask.tif")
    _, full, _ = _grid(qgis_run["image"])
    assert crs == "EPSG:32633"
    assert size == (EXTENT_WINDOW["width"], EXTENT_WINDOW["height"])
    assert (transform.c, transform.f) == EXTENT_WINDOW["origin"] and (transform.a, transform.e) == (full.a, full.e)
    # the polygons name the layer the user chose, not the temporary GeoTIFF the program read
    columns = _columns(qgis_run["out"] / "model_mask.gpkg")
    assert len(columns["image"]) == 1 and list(columns["image"]) == [str(qgis_run["tmp"] / "scene.vrt")]
    assert columns["area_px"].sum() == EXTENT_WINDOW["width"] * EXTENT_WINDOW["height"]
    assert not list((qgis_run["tmp"] / "tmpdir").glob("rs2sam2-qgis-*"))


@needs_qgis
def test_cancel_ends_the_program_within_two_seconds(qgis_run):
    case = _case(qgis_run, "cancel")
    assert case["error"] and "canceled" in case["error"]
    assert case["cancel_to_end_s"] < 2.0
    assert case["pid_alive_after"] is False
    assert not list(qgis_run["out"].glob("*canceled*"))  # nothing written, no temporary file left


@needs_qgis
def test_user_errors_are_the_algorithm_error_with_the_program_message(qgis_run):
    bad = _case(qgis_run, "bad_checkpoint")
    assert "no-such-ckpt" in bad["error"] and "checkpoint" in bad["error"]
    assert not bad["error"].startswith("rs2sam2")  # the message itself, without the program's prefix
    empty = _case(qgis_run, "empty_sentence")
    assert "empty" in empty["error"]
    for case in (bad, empty):
        assert case["pid_alive_after"] is False
