"""`rs2sam2 demo` end to end, with reduced steps (the full run is measured and reported in the README)."""

import json
import shlex

from PIL import Image

from rs2sam2.cli import main


def test_demo_quick(tmp_path, capsys, monkeypatch):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    printed = capsys.readouterr().out
    # the demo ends with the next commands; the predict one runs as printed
    predict = next(line.strip() for line in printed.splitlines() if line.strip().startswith("rs2sam2 predict"))
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(predict)[1:]) == 0 and (tmp_path / "mask.png").is_file()
    assert any(line.strip().startswith("rs2sam2 serve --checkpoint") for line in printed.splitlines())
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    for key in ("Pr@0.5", "Pr@0.7", "Pr@0.9", "oIoU", "mIoU", "num_expressions", "original_resolution"):
        assert key in report
    assert report["num_expressions"] > 0 and 0.0 <= report["mIoU"] <= 100.0
    assert report["train"]["global_step"] == 6
    for name in ("training_curve.png", "gallery.png"):
        with Image.open(tmp_path / "demo" / name) as im:
            assert im.width > 100 and im.height > 100
