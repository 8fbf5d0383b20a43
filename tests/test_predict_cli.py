"""``rs2sam2 predict``'s reading modes and reports: ``--mode``, ``--progress json``, the warnings of
tiles larger than the model input and of long texts under ``-q``; on a tiny seeded nano checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import helpers_ckpt as h
from rs2sam2.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    return {"geo": h.write_geotiff(d / "scene.tif"), "png": h.write_png(d / "photo.png")}


def _run(*argv) -> int:
    return cli_main(["predict", *map(str, argv)])


def test_progress_json_is_the_only_thing_on_stdout(ckpt, images, tmp_path, capsys):
    """Two images, three jobs, one of them tiled: start, a progress event per model input, a job event
    per job with its files, and end, each a JSON object on its own line."""
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("image,text,out,vector\n"
                    f"{images['geo']},the red building,a.tif,a.geojson\n"
                    f"{images['png']},the white tank,b.tif,\n"
                    f"{images['geo']},the ship,c.tif,\n")
    rc = _run("--checkpoint", ckpt, "--batch", jobs, "--progress", "json", "--tile", 128, "--overlap", 16)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events[0] == {"event": "start", "jobs": 3}
    assert events[-1]["event"] == "end" and events[-1]["status"] == 0 and events[-1]["seconds"] > 0
    progress = [e for e in events if e["event"] == "progress"]
    # 300 x 200 in 128 px tiles overlapping 16: 3 x 2 tiles; the PNG is as large
    assert [e["done"] for e in progress] == list(range(1, 13)) and {e["total"] for e in progress} == {12}
    done = [e for e in events if e["event"] == "job"]
    assert sorted(e["index"] for e in done) == [0, 1, 2]
    by_index = {e["index"]: e for e in done}
    assert by_index[0]["text"] == "the red building"
    assert by_index[0]["written"] == [str(tmp_path / "a.tif"), str(tmp_path / "a.geojson")]
    assert all(isinstance(e["foreground_px"], int) for e in done)
    assert all(Path(p).is_file() for e in done for p in e["written"])


def test_progress_json_error_is_on_stderr_with_an_end_event(ckpt, images, tmp_path, capsys):
    rc = _run("--checkpoint", ckpt, "--image", images["geo"], "--text", "  ", "--out", tmp_path / "m.tif",
              "--progress", "json")
    captured = capsys.readouterr()
    assert rc == 2 and "rs2sam2 predict: error:" in captured.err and "empty" in captured.err
    assert [json.loads(line)["event"] for line in captured.out.splitlines()] == ["end"]


def test_progress_json_counts_jobs_of_a_whole_read(ckpt, images, tmp_path, capsys):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(json.dumps({"image": str(images["png"]), "text": t, "out": f"{i}.png"}) + "\n"
                            for i, t in enumerate(["the red car", "the ship"])))
    assert _run("--checkpoint", ckpt, "--batch", jobs, "--progress", "json") == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["done"], e["total"]) for e in events if e["event"] == "progress"] == [(2, 2)]


@pytest.mark.parametrize("argv", [["--mode", "scenery"], ["--progress", "xml"]])
def test_unknown_mode_or_progress_exits_2(ckpt, images, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        _run("--checkpoint", ckpt, "--image", images["geo"], "--text", "a tank", "--out", tmp_path / "m.tif", *argv)
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_mode_tiles_without_a_size_uses_the_model_input(ckpt, tmp_path, capsys):
    image = h.write_geotiff(tmp_path / "wide.tif", height=200, width=600)
    rc = _run("--checkpoint", ckpt, "--image", image, "--text", "the ship", "--out", tmp_path / "m.tif",
              "--mode", "tiles", "--progress", "json")
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rc == 0
    assert [e["total"] for e in events if e["event"] == "progress"] == [3] * 3  # 256 px tiles: 3 x 1


def test_tile_and_mode_whole_conflict(ckpt, images, tmp_path, capsys):
    rc = _run("--checkpoint", ckpt, "--image", images["geo"], "--text", "a tank", "--out", tmp_path / "m.tif",
              "--mode", "whole", "--tile", 128)
    assert rc == 2 and "--mode tiles" in capsys.readouterr().err


def test_tile_larger_than_the_model_input_warns(ckpt, tmp_path, capsys):
    """The nano model's input is 256 px: 600 px tiles are shrunk 2.3x, and the command says so."""
    image = h.write_geotiff(tmp_path / "big.tif", height=600, width=600)
    rc = _run("--checkpoint", ckpt, "--image", image, "--text", "the ship", "--out", tmp_path / "m.tif",
              "--tile", 600, "-q")
    err = capsys.readouterr().err
    assert rc == 0 and "tiles of 600 px are shrunk 2.3x to the model input of 256 px" in err, err


def test_quiet_keeps_the_long_text_warning(ckpt, images, tmp_path, capsys):
    text = " ".join(["the red building next to a road"] * 400)
    rc = _run("--checkpoint", ckpt, "--image", images["png"], "--text", text, "--out", tmp_path / "m.png", "-q")
    captured = capsys.readouterr()
    assert rc == 0 and "tokens (BOS and EOS included) is longer than the limit" in captured.err
    assert captured.out == ""
