"""`rs2sam2 demo` end to end, with reduced steps (the full run is measured and reported in the README)."""

import json
import shlex
import sys

from PIL import Image

from rs2sam2.cli import main


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    for key in ("Pr@0.5", "Pr@0.7", "Pr@0.9", "oIoU", "mIoU", "num_expressions", "original_resolution"):
        assert key in report
    assert report["num_expressions"] > 0 and 0.0 <= report["mIoU"] <= 100.0
    assert report["train"]["global_step"] == 6
    scenes = report["scenes"]  # scene answers on a 3 x 3 and a 4 x 4 mosaic
    assert scenes["mosaics"] == 2 and scenes["mode"] == "scene" and scenes["targets"] >= 2
    assert 0.0 <= scenes["mIoU"] <= 100.0 and 0.0 <= scenes["outside_cell_pct"] <= 100.0
    assert scenes["absent"] >= 1 and 0.0 <= scenes["absent_empty_pct"] <= 100.0
    assert "scenes: mIoU" in printed
    for name in ("training_curve.png", "gallery.png"):
        with Image.open(tmp_path / "demo" / name) as im:
            assert im.width > 100 and im.height > 100

    # it ends with the next commands, on its own checkpoint: the predict command runs as printed
    commands = [line.strip() for line in printed.splitlines()[-2:]]
    assert commands[1] == f"rs2sam2 serve --checkpoint {tmp_path / 'demo' / 'run'}"
    assert commands[0].startswith(f"rs2sam2 predict --checkpoint {tmp_path / 'demo' / 'run'} --image ")
    assert main(shlex.split(commands[0])[1:]) == 0
    for name in ("mask.png", "overlay.png"):
        assert (tmp_path / "demo" / name).is_file()


def test_demo_without_matplotlib_stops_before_any_work(tmp_path, monkeypatch, capsys):
    for name in ("matplotlib", "matplotlib.figure"):  # as if the plot extra were not installed
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 2
    assert "pip install 'rs2sam2[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()
