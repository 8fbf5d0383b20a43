"""RISBench: the reader on a hand-made split file, `evaluate --predictions` with metrics computed by
hand, and training / evaluating a checkpoint on the layout `rs2sam2 synth` writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from rs2sam2.cli import main
from rs2sam2.data import DatasetError, RISBench, build_dataset
from rs2sam2.data.synth import generate
from rs2sam2.evaluate import per_expression_csv_path
from rs2sam2.train.config import read_yaml

TOKENIZER = Path(__file__).parent / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"


def _box(rows, cols, shape=(8, 8)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def _rle(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _uncompressed(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")  # COCO runs go down the columns, from background
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], changes])).tolist()}


# test split, by line (ids are the zero-based line numbers):
#   0  a.png  "the square"         rows 2..5 x cols 2..5 (16 px)
#   1  (blank)
#   2  a.png  "the centre square"  the same mask: same ref as line 0
#   3  b.png  "the left band"      rows 0..7 x cols 0..1 (16 px)
#   4  b.png  "the corner"         rows 0..1 x cols 6..7 (4 px), as an uncompressed RLE
MASKS = {"0": _box((2, 5), (2, 5)), "2": _box((2, 5), (2, 5)), "3": _box((0, 7), (0, 1)), "4": _box((0, 1), (6, 7))}


def _line(split, file_name, sent, segmentation, image_id=None) -> str:
    return json.dumps({"split": split, "image_id": image_id or file_name, "sent": sent, "file_name": file_name,
                       "segmentation": segmentation})


@pytest.fixture()
def root(tmp_path) -> Path:
    root = tmp_path / "risbench"
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / "images" / name)
    lines = [_line("test", "a.png", "the square", _rle(MASKS["0"]), "a_0"), "",
             _line("test", "a.png", "the centre square ", _rle(MASKS["2"]), "a_0"),
             _line("test", "b.png", "the left band", _rle(MASKS["3"]), "b_0"),
             _line("test", "b.png", "the corner", _uncompressed(MASKS["4"]), "b_1")]
    (root / "risbench_test.jsonl").write_text("\n".join(lines) + "\n")
    (root / "risbench_train.jsonl").write_text(_line("train", "a.png", "the square", _rle(MASKS["0"])) + "\n")
    return root


def test_reader_ids_refs_and_masks(root):
    ds = build_dataset("risbench", root, "test")
    assert isinstance(ds, RISBench) and len(ds) == 4 and ds.num_refs == 3
    assert [(text, eid) for _, text, eid in ds.expressions] == [
        ("the square", "0"), ("the centre square", "2"), ("the left band", "3"), ("the corner", "4")]
    assert ds.ref_expressions(0) == [0, 1] and ds.refs[0].ref_id == "a_0"
    for i in range(len(ds)):
        sample = ds.load(i)
        assert sample["image"].shape == (8, 8, 3) and sample["meta"]["dataset"] == "risbench"
        np.testing.assert_array_equal(sample["mask"], MASKS[sample["expression_id"]])
    assert ds.mask_size(2) == (8, 8) and ds.expression_categories() is None
    assert len(build_dataset("risbench", root, "train")) == 1


def test_reader_errors_name_the_file_and_line(root):
    with pytest.raises(DatasetError, match=r"risbench_val\.jsonl.*present: risbench_test\.jsonl, risbench_train"):
        build_dataset("risbench", root, "val")
    path = root / "risbench_test.jsonl"
    good = path.read_text()
    cases = {
        '{"split": "test", "file_name": "a.png", "sent": "x"}': r"line 6: no 'segmentation'",
        _line("test", "a.png", "x", {"counts": "abc"}): r"line 6: 'segmentation' must be a COCO RLE",
        _line("test", "a.png", "", _rle(MASKS["0"])): r"line 6: 'sent' must be a non-empty string",
        "{oops": r"line 6: not valid JSON",
        _line("test", "gone.png", "x", _rle(MASKS["0"])): r"gone\.png",
    }
    for extra, pattern in cases.items():
        path.write_text(good + extra + "\n")
        with pytest.raises(DatasetError, match=pattern):
            RISBench(root, "test")
    # a line whose `split` field disagrees with its file: kept (the file decides), reported when lenient
    path.write_text(good + _line("val", "a.png", "x", _rle(MASKS["3"])) + "\n")
    assert len(RISBench(root, "test")) == 5
    lenient = RISBench(root, "test", strict=False)
    assert len(lenient) == 5 and [p.kind for p in lenient.problems] == ["bad_entry"]


def _png(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def test_evaluate_predictions_by_hand(root, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    _png(pred / "0.png", MASKS["0"])                 # exact: I 16, U 16 -> IoU 1
    _png(pred / "2.png", np.zeros((8, 8), bool))     # nothing: I 0, U 16 -> IoU 0
    _png(pred / "3.png", _box((0, 7), (0, 3)))       # 32 px over the 16 px band: I 16, U 32 -> IoU 0.5
    _png(pred / "4.png", _box((0, 2), (6, 7)))       # 6 px over the 4 px corner: I 4, U 6 -> IoU 2/3
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--predictions", str(pred), "--dataset", "risbench", "--data", str(root),
               "--split", "test", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    ious = [1.0, 0.0, 0.5, 2 / 3]
    expected = {"Pr@0.5": 75.0, "Pr@0.6": 50.0, "Pr@0.7": 25.0, "Pr@0.8": 25.0, "Pr@0.9": 25.0,
                "mIoU": 100 * sum(ious) / 4, "oIoU": 100 * (16 + 0 + 16 + 4) / (16 + 16 + 32 + 6)}
    for block in (report, report["original_resolution"]):  # 8 -> 1024 scales every count alike
        for key, value in expected.items():
            assert block[key] == pytest.approx(value), key
        assert block["num_expressions"] == 4 and block["cIoU"] == block["oIoU"]
    assert report["dataset"] == "risbench" and "per_category" not in report
    rows = list(csv.DictReader(per_expression_csv_path(out).open()))
    assert [(r["id"], r["I_original"], r["U_original"]) for r in rows] == [
        ("0", "16", "16"), ("2", "0", "16"), ("3", "16", "32"), ("4", "4", "6")]
    assert "oIoU" in capsys.readouterr().out


def test_train_and_evaluate_on_the_synth_layout(tmp_path):
    """`rs2sam2 synth` writes RISBench; `rs2sam2 train` (--dataset risbench) runs on it and
    `rs2sam2 evaluate --checkpoint` scores the run."""
    data = tmp_path / "data"
    summary = generate("risbench", data, num_images=6, seed=3, image_size=128)
    assert sorted(p.name for p in data.glob("risbench_*.jsonl")) == [
        "risbench_test.jsonl", "risbench_train.jsonl", "risbench_val.jsonl"]
    assert len(build_dataset("risbench", data, "train")) == summary["splits"]["train"]["expressions"]
    run = tmp_path / "run"
    rc = main(["train", "--preset", "nano", "--dataset", "risbench", "--data", str(data), "--out", str(run),
               "--tokenizer", str(TOKENIZER), "--num-workers", "0", "--no-progress", "--no-tensorboard",
               "--set", "model.image_size=64", "--set", "model.beit3.img_size=32",
               "--set", "model.beit3.vocab_size=128", "--freeze", "none", "--max-steps", "2", "--batch-size", "2",
               "--val-limit", "2", "--set", "eval_at_end=false"])
    assert rc == 0
    assert json.loads((run / "summary.json").read_text())["global_step"] == 2
    assert read_yaml(run / "train_config.yaml")["dataset"] == "risbench"
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--checkpoint", str(run), "--dataset", "risbench", "--data", str(data), "--split", "test",
               "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["num_expressions"] == summary["splits"]["test"]["expressions"]
    assert 0.0 <= report["mIoU"] <= 100.0 and report["cIoU"] == report["oIoU"]
