"""Evaluation protocol on hand-computed cases (predictions folder, stub models, CLI)."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from rs2sam2.cli import main
from rs2sam2.config import Beit3Config
from rs2sam2.data import build_dataset
from rs2sam2.evaluate import (
    _shard,
    evaluate_model,
    evaluate_predictions,
    per_expression_csv_path,
    write_per_expression_csv,
)
from rs2sam2.text import load_tokenizer

TOKENIZER = Path(__file__).parent / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"


def _square(x0, y0, x1, y1):
    """COCO polygon of the axis-aligned square with corners (x0, y0), (x1, y1); pycocotools fills
    pixels x0..x1-1, y0..y1-1."""
    return [x0, y0, x1, y0, x1, y1, x0, y1]


# Four test expressions on 8x8 images (ids = sent_id):
#   "10": one polygon, rows 2..5 x cols 2..5 (16 px)
#   "11": two polygons (union rule), rows 0..1 x cols 0..1 and rows 6..7 x cols 6..7 (8 px)
#   "12": one polygon, rows 4..7 x cols 0..3 (16 px)
#   "13": an empty mask (uncompressed RLE of 64 zeros)
SEGMENTATIONS = {
    10: [_square(2, 2, 6, 6)],
    11: [_square(0, 0, 2, 2), _square(6, 6, 8, 8)],
    12: [_square(0, 4, 4, 8)],
    13: {"size": [8, 8], "counts": [64]},
}
TEXTS = {10: "the square in the middle", 11: "the two corners", 12: "the bottom left block", 13: "nothing"}


@pytest.fixture(scope="module")
def rrsisd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rrsisd_hand")
    (root / "rrsisd").mkdir()
    images_dir = root / "images" / "rrsisd" / "JPEGImages"
    images_dir.mkdir(parents=True)
    images, annotations, refs = [], [], []
    rng = np.random.default_rng(0)
    for k, (sid, seg) in enumerate(SEGMENTATIONS.items()):
        name = f"img{k}.png"
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(images_dir / name)
        images.append({"id": k, "file_name": name, "height": 8, "width": 8})
        annotations.append({"id": 100 + k, "image_id": k, "segmentation": seg, "category_id": 1})
        refs.append({"ref_id": k, "ann_id": 100 + k, "image_id": k, "split": "test",
                     "sentences": [{"raw": TEXTS[sid], "sent": TEXTS[sid], "sent_id": sid}], "sent_ids": [sid]})
    (root / "rrsisd" / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    with open(root / "rrsisd" / "refs(unc).p", "wb") as f:
        pickle.dump(refs, f)
    return root


def _mask(rows, cols, size=8) -> np.ndarray:
    m = np.zeros((size, size), dtype=bool)
    m[rows[0] : rows[1] + 1, cols[0] : cols[1] + 1] = True
    return m


def _write_png(path: Path, mask: np.ndarray, value: int = 255) -> None:
    Image.fromarray(mask.astype(np.uint8) * value).save(path)


@pytest.fixture()
def predictions(tmp_path) -> Path:
    d = tmp_path / "pred"
    d.mkdir()
    _write_png(d / "10.png", _mask((2, 5), (2, 5)))  # exact: I 16, U 16
    _write_png(d / "11.png", np.zeros((8, 8), bool))  # empty prediction: I 0, U 8
    _write_png(d / "12.png", _mask((4, 7), (0, 1)), value=1)  # half (value 1 = foreground): I 8, U 16
    _write_png(d / "13.png", np.zeros((8, 8), bool))  # empty and empty: U 0 -> IoU 0
    return d


def test_dataset_masks_follow_the_polygon_and_union_rules(rrsisd_root):
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    masks = {ds.load(i)["expression_id"]: ds.load(i)["mask"] for i in range(len(ds))}
    assert np.array_equal(masks["10"], _mask((2, 5), (2, 5)))
    assert np.array_equal(masks["11"], _mask((0, 1), (0, 1)) | _mask((6, 7), (6, 7)))
    assert np.array_equal(masks["12"], _mask((4, 7), (0, 3)))
    assert not masks["13"].any()


@pytest.mark.parametrize("image_size", [8, 16, 1024])
def test_predictions_hand_computed(rrsisd_root, predictions, image_size):
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    report = evaluate_predictions(predictions, ds, image_size=image_size, return_metrics=True)
    # IoUs 1, 0, 0.5, 0
    assert report["num_expressions"] == 4
    assert report["Pr@0.5"] == pytest.approx(50.0)  # IoU 0.5 counts (>=)
    for thr in ("0.6", "0.7", "0.8", "0.9"):
        assert report[f"Pr@{thr}"] == pytest.approx(25.0)
    assert report["mIoU"] == pytest.approx(37.5)
    assert report["oIoU"] == pytest.approx(100 * 24 / 40)
    orig = report["original_resolution"]
    assert orig["mIoU"] == pytest.approx(37.5) and orig["oIoU"] == pytest.approx(60.0)
    acc_model, acc_orig = report["_metrics"]
    scale = (image_size // 8) ** 2
    rows = {r["id"]: r for r in acc_model.rows()}
    assert (rows["10"]["I"], rows["10"]["U"]) == (16 * scale, 16 * scale)
    assert (rows["11"]["I"], rows["11"]["U"]) == (0, 8 * scale)
    assert (rows["12"]["I"], rows["12"]["U"]) == (8 * scale, 16 * scale)
    assert (rows["13"]["I"], rows["13"]["U"]) == (0, 0)
    assert {r["id"]: (r["I"], r["U"]) for r in acc_orig.rows()} == {"10": (16, 16), "11": (0, 8), "12": (8, 16),
                                                                   "13": (0, 0)}


def test_prediction_of_another_size_is_nearest_resized(rrsisd_root, predictions):
    big = np.kron(_mask((2, 5), (2, 5)), np.ones((2, 2), dtype=bool))  # 16x16 version of the exact mask
    _write_png(predictions / "10.png", big)
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    report = evaluate_predictions(predictions, ds, image_size=8, return_metrics=True)
    rows = {r["id"]: r for r in report["_metrics"][1].rows()}
    assert (rows["10"]["I"], rows["10"]["U"]) == (16, 16)


def test_missing_prediction_is_named(rrsisd_root, predictions):
    (predictions / "12.png").unlink()
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    with pytest.raises(FileNotFoundError, match=r"12\.png"):
        evaluate_predictions(predictions, ds)


def test_cli_predictions_writes_report_and_csv(rrsisd_root, predictions, tmp_path, capsys):
    out = tmp_path / "reports" / "report.json"
    rc = main(["evaluate", "--predictions", str(predictions), "--data", str(rrsisd_root), "--dataset", "rrsisd",
               "--split", "test", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU", "num_expressions",
                "original_resolution"):
        assert key in report
    assert report["num_expressions"] == 4 and report["mIoU"] == pytest.approx(37.5)
    assert report["protocol"]["resolution"] == 1024
    csv_path = per_expression_csv_path(out)
    assert csv_path.parent == out.parent and report["per_expression_csv"] == csv_path.name
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["id"] for r in rows] == ["10", "11", "12", "13"]
    assert list(rows[0])[:5] == ["id", "text", "I", "U", "IoU"]
    assert rows[0]["text"] == TEXTS[10] and float(rows[2]["IoU"]) == pytest.approx(0.5)
    assert rows[2]["I_original"] == "8" and rows[2]["U_original"] == "16"


@pytest.fixture()
def rrsisd_categories_root(rrsisd_root, tmp_path) -> Path:
    """The hand-made RRSIS-D with named categories: 10 and 11 are vehicles, 12 and 13 ships (the
    annotations' category_id, resolved through instances.json's categories)."""
    import shutil

    root = tmp_path / "with_categories"
    shutil.copytree(rrsisd_root, root)
    path = root / "rrsisd" / "instances.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 1, "name": "vehicle"}, {"id": 2, "name": "ship"}]
    for ann in data["annotations"]:
        ann["category_id"] = 1 if ann["id"] in (100, 101) else 2
    path.write_text(json.dumps(data))
    return root


def test_cli_per_category_by_hand(rrsisd_categories_root, predictions, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--predictions", str(predictions), "--data", str(rrsisd_categories_root),
               "--dataset", "rrsisd", "--split", "test", "--out", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    # IoUs: "10" 16/16 = 1 and "11" 0/8 (vehicle); "12" 8/16 = 0.5 and "13" 0/0 -> 0 (ship)
    vehicle = {"Pr@0.5": 50.0, "Pr@0.6": 50.0, "Pr@0.9": 50.0, "mIoU": 50.0, "oIoU": 100 * 16 / 24}
    ship = {"Pr@0.5": 50.0, "Pr@0.6": 0.0, "Pr@0.9": 0.0, "mIoU": 25.0, "oIoU": 100 * 8 / 16}
    for block in (report["per_category"], report["original_resolution"]["per_category"]):
        assert list(block) == ["ship", "vehicle"]
        for name, expected in (("vehicle", vehicle), ("ship", ship)):
            assert block[name]["num_expressions"] == 2 and block[name]["cIoU"] == block[name]["oIoU"]
            for key, value in expected.items():
                assert block[name][key] == pytest.approx(value), (name, key)
    assert report["mIoU"] == pytest.approx(37.5)  # the overall figures are unchanged
    rows = list(csv.DictReader(per_expression_csv_path(out).open()))
    assert [(r["id"], r["category"]) for r in rows] == [("10", "vehicle"), ("11", "vehicle"), ("12", "ship"),
                                                         ("13", "ship")]
    console = capsys.readouterr().out
    assert "per category" in console
    assert any(line.split(":")[0].strip() == "vehicle" and "mIoU  50.00" in line and "(n=2)" in line
               for line in console.splitlines())


def test_report_names_the_metrics_across_papers(rrsisd_root, predictions):
    report = evaluate_predictions(predictions, build_dataset("rrsisd", rrsisd_root, "test"))
    for block in (report, report["original_resolution"]):
        assert block["cIoU"] == block["oIoU"] and "gIoU" not in block
    names = report["metric_names"]
    assert "cIoU" in names["oIoU"] and "overall IoU" in names["oIoU"] and "DiCoR" in names["oIoU"]
    assert "SegEarth" in names["mIoU"] and "RSRefSeg 2" in names["mIoU"]


def test_cli_missing_prediction_fails_with_the_name(rrsisd_root, predictions, tmp_path, capsys):
    (predictions / "11.png").unlink()
    rc = main(["evaluate", "--predictions", str(predictions), "--data", str(rrsisd_root), "--dataset", "rrsisd",
               "--split", "test", "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert rc != 0
    assert "11.png" in capsys.readouterr().err


# --- model evaluation with stub models ------------------------------------------------------------


class _StubModel(torch.nn.Module):
    """Returns fixed logits at a 16x16 "model resolution": a constant, or +1 on the left half."""

    def __init__(self, mode: str, value: float = 0.0) -> None:
        super().__init__()
        self.config = SimpleNamespace(name="stub", image_size=16,
                                      beit3=Beit3Config(img_size=8, vocab_size=500_000, max_text_positions=66))
        self.mode, self.value = mode, value
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.seen_batches: list[int] = []

    def forward(self, images, images_evf, input_ids, attention_mask):
        b = images.shape[0]
        self.seen_batches.append(b)
        assert images.shape[-1] == 16 and images_evf.shape[-1] == 8 and input_ids.shape[0] == b
        if self.mode == "const":
            logits = torch.full((b, 1, 16, 16), self.value)
        else:  # left half foreground
            logits = -torch.ones(b, 1, 16, 16)
            logits[..., :8] = 1.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TOKENIZER)


@pytest.mark.parametrize("value,threshold,foreground", [(0.6, 0.5, True), (0.5, 0.5, False), (0.4, 0.5, False),
                                                        (0.4, 0.0, True)])
def test_threshold_rule(rrsisd_root, tokenizer, value, threshold, foreground):
    """logit > threshold is foreground (strict: 0.5 is background under the published rule)."""
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    report = evaluate_model(_StubModel("const", value), ds, tokenizer, threshold=threshold, return_metrics=True)
    rows = {r["id"]: r for r in report["_metrics"][0].rows()}
    if foreground:  # everything predicted: U = 256 at 16x16, I = target area (x4)
        assert (rows["10"]["I"], rows["10"]["U"]) == (64, 256)
        assert (rows["13"]["I"], rows["13"]["U"]) == (0, 256)
        assert report["mIoU"] == pytest.approx(100 * (64 + 32 + 64 + 0) / 256 / 4)
    else:  # empty prediction: I = 0, U = target area; the empty-target expression has U = 0 -> IoU 0
        assert (rows["10"]["I"], rows["10"]["U"]) == (0, 64)
        assert (rows["13"]["I"], rows["13"]["U"]) == (0, 0)
        assert report["mIoU"] == 0.0 and report["oIoU"] == 0.0 and report["Pr@0.5"] == 0.0


def test_spatial_prediction_at_both_resolutions(rrsisd_root, tokenizer):
    """Prediction = left half. Model resolution (16x16, target nearest-resized) and original resolution
    (8x8: logits bilinear-resized, then thresholded) give the same hand-computed IoUs."""
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    stub = _StubModel("left")
    report = evaluate_model(stub, ds, tokenizer, batch_size=3, return_metrics=True)
    assert stub.seen_batches == [3, 1]
    model_rows = {r["id"]: r for r in report["_metrics"][0].rows()}
    orig_rows = {r["id"]: r for r in report["_metrics"][1].rows()}
    # "10": rows 2..5 x cols 2..5 vs left half (cols 0..3): I = 4x2 = 8, U = 32 + 16 - 8 = 40
    # "11": corners rows 0..1 x cols 0..1 (in) and rows 6..7 x cols 6..7 (out): I = 4, U = 32 + 8 - 4 = 36
    # "12": rows 4..7 x cols 0..3: I = 16, U = 32
    # "13": empty target: I = 0, U = 32
    expected = {"10": (8, 40), "11": (4, 36), "12": (16, 32), "13": (0, 32)}
    assert {k: (r["I"], r["U"]) for k, r in orig_rows.items()} == expected
    assert {k: (r["I"], r["U"]) for k, r in model_rows.items()} == {k: (4 * i, 4 * u) for k, (i, u) in expected.items()}
    ious = [8 / 40, 4 / 36, 16 / 32, 0.0]
    assert report["mIoU"] == pytest.approx(100 * sum(ious) / 4)
    assert report["original_resolution"]["oIoU"] == pytest.approx(100 * 28 / 140)
    assert report["Pr@0.5"] == pytest.approx(25.0)


def test_limit_and_csv(rrsisd_root, tokenizer, tmp_path):
    ds = build_dataset("rrsisd", rrsisd_root, "test")
    report = evaluate_model(_StubModel("left"), ds, tokenizer, limit=2, csv_path=tmp_path / "x.csv")
    assert report["num_expressions"] == 2 and report["protocol"]["limited_to_first"] == 2
    assert len(list(csv.DictReader((tmp_path / "x.csv").open()))) == 2


def test_per_expression_csv(tmp_path):
    from rs2sam2.metrics import ReferringMetrics

    m = ReferringMetrics()
    m.update(7, 2, 8, text='the "big" roof, left')
    m.update(8, 0, 0)
    path = write_per_expression_csv(tmp_path / "out" / "per_expression.csv", m)
    with path.open(newline="", encoding="utf-8") as f:
        read = list(csv.DictReader(f))
    assert read[0]["text"] == 'the "big" roof, left' and float(read[0]["IoU"]) == 0.25


def test_vocabulary_mismatch_is_an_error(rrsisd_root, tokenizer):
    stub = _StubModel("left")
    stub.config.beit3.vocab_size = 10
    with pytest.raises(ValueError, match="tokenizer"):
        evaluate_model(stub, build_dataset("rrsisd", rrsisd_root, "test"), tokenizer)


def test_distributed_shards_are_padded_to_equal_length():
    assert _shard(range(5), 0, 2) == [0, 2, 4]
    assert _shard(range(5), 1, 2) == [1, 3, 0]
    assert _shard(range(4), 1, 2) == [1, 3]
    assert _shard(range(3), 0, 1) == [0, 1, 2]


def test_cli_checkpoint_without_tokenizer_is_a_clear_error(rrsisd_root, tmp_path, capsys):
    from rs2sam2 import build_model
    from rs2sam2.checkpoints import save_pretrained

    ckpt = save_pretrained(build_model("nano", image_size=128), tmp_path / "ckpt")
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(rrsisd_root), "--dataset", "rrsisd",
               "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "tokenizer" in err and "--tokenizer" in err
