"""Metrics: published evaluation protocol, checked on hand-computed examples."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from rs2sam2.metrics import (
    METRIC_NAMES,
    ReferringMetrics,
    binarize,
    intersection_union,
    per_category,
    report_metrics,
    resize_target_nearest,
)


def test_intersection_union_torch_and_numpy() -> None:
    pred = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    tgt = np.array([[0, 1, 1], [0, 0, 1]], dtype=np.uint8)
    assert intersection_union(pred, tgt) == (1, 4)
    assert intersection_union(torch.from_numpy(pred), torch.from_numpy(tgt)) == (1, 4)
    assert intersection_union(torch.from_numpy(pred), tgt) == (1, 4)
    with pytest.raises(ValueError):
        intersection_union(pred, tgt[:, :2])


def test_binarize_published_rule() -> None:
    x = torch.tensor([-1.0, 0.0, 0.3, 0.5, 0.5001, 2.0])
    fg = binarize(x)
    # must equal the published argmax over cat([1-x, x]) (ties -> background)
    argmax = torch.stack([1 - x, x]).argmax(0).bool()
    assert torch.equal(fg, argmax)
    assert fg.tolist() == [False, False, False, False, True, True]
    assert binarize(x, threshold=0.0).tolist() == [False, False, True, True, True, True]
    assert binarize(x.numpy()).tolist() == fg.tolist()


def test_resize_target_nearest_pixel_centres() -> None:
    m = torch.arange(4).view(1, 2, 2)
    assert resize_target_nearest(m, 4).tolist() == [[[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]]
    # downsampling 4 -> 2 samples the pixel centres 1 and 3 (not 0 and 2 as torch "nearest")
    row = np.arange(4).reshape(1, 4)
    assert resize_target_nearest(row, (1, 2)).tolist() == [[1, 3]]
    # same as PIL NEAREST, which the published transforms use (800 -> 1024 for RRSIS-D)
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    mask = (rng.random((80, 50)) > 0.5).astype(np.uint8) * 255
    ref = np.array(Image.fromarray(mask).resize((128, 96), Image.NEAREST))
    assert np.array_equal(resize_target_nearest(mask, (96, 128)), ref)
    assert torch.equal(resize_target_nearest(torch.from_numpy(mask), (96, 128)), torch.from_numpy(ref))
    big = (rng.random((800, 800)) > 0.5).astype(np.uint8)
    ref_big = np.array(Image.fromarray(big).resize((1024, 1024), Image.NEAREST))
    assert np.array_equal(resize_target_nearest(big, 1024), ref_big)


def test_empty_prediction_and_empty_union() -> None:
    m = ReferringMetrics()
    tgt = np.zeros((4, 4), bool)
    tgt[:2, :2] = True
    assert m.update_masks("empty_pred", np.zeros((4, 4), bool), tgt) == 0.0
    assert m.update_masks("empty_union", np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0
    r = m.compute()
    assert r["num_expressions"] == 2
    assert r["mIoU"] == 0.0 and r["oIoU"] == 0.0
    assert all(r[f"Pr@{t}"] == 0.0 for t in ("0.5", "0.6", "0.7", "0.8", "0.9"))
    assert [row["U"] for row in m.rows()] == [4, 0]


def test_perfect_prediction() -> None:
    m = ReferringMetrics()
    tgt = torch.zeros(8, 8, dtype=torch.bool)
    tgt[2:5, 3:7] = True
    m.update_masks(0, tgt.clone(), tgt, text="a tank")
    r = m.compute()
    assert r == {"Pr@0.5": 100.0, "Pr@0.6": 100.0, "Pr@0.7": 100.0, "Pr@0.8": 100.0, "Pr@0.9": 100.0,
                 "mIoU": 100.0, "oIoU": 100.0, "num_expressions": 1}


def test_two_expressions_by_hand() -> None:
    m = ReferringMetrics()
    m.update("a", 3, 4, text="the ship")  # IoU 0.75
    m.update("b", 1, 6, text="the dam")  # IoU 1/6
    r = m.compute()
    assert r["mIoU"] == pytest.approx(100 * (0.75 + 1 / 6) / 2)  # 45.8333
    assert r["oIoU"] == pytest.approx(100 * 4 / 10)  # sum I / sum U = 40
    assert r["Pr@0.5"] == 50.0 and r["Pr@0.6"] == 50.0 and r["Pr@0.7"] == 50.0
    assert r["Pr@0.8"] == 0.0 and r["Pr@0.9"] == 0.0
    assert r["num_expressions"] == 2


def test_thresholds_are_inclusive() -> None:
    m = ReferringMetrics()
    m.update(0, 1, 2)  # exactly 0.5
    m.update(1, 3, 5)  # exactly 0.6
    m.update(2, 9, 10)  # exactly 0.9
    r = m.compute()
    assert r["Pr@0.5"] == pytest.approx(100.0)
    assert r["Pr@0.6"] == pytest.approx(200 / 3)
    assert r["Pr@0.7"] == pytest.approx(100 / 3)
    assert r["Pr@0.9"] == pytest.approx(100 / 3)


def test_invalid_and_duplicate_updates() -> None:
    m = ReferringMetrics()
    m.update("x", 1, 2)
    with pytest.raises(ValueError):
        m.update("x", 1, 2)
    with pytest.raises(ValueError):
        m.update("y", 3, 2)
    with pytest.raises(ValueError):
        ReferringMetrics().compute()


def test_merge_equals_single_accumulator() -> None:
    rng = np.random.default_rng(1)
    data = []
    for k in range(10):
        u = int(rng.integers(0, 50))
        data.append((f"e{k}", int(rng.integers(0, u + 1)), u, f"text {k}"))
    single = ReferringMetrics()
    for d in data:
        single.update(*d)
    rank0, rank1 = ReferringMetrics(), ReferringMetrics()
    for k, d in enumerate(data):
        (rank0 if k % 2 == 0 else rank1).update(*d)
    # DistributedSampler-style padding: rank1 evaluates e0 again; merging drops it
    rank1.update(*data[0])
    states = [pickle.loads(pickle.dumps(r.state_dict())) for r in (rank0, rank1)]
    merged = ReferringMetrics.from_states(states)
    assert merged.compute() == pytest.approx(single.compute())
    assert merged.compute()["num_expressions"] == 10
    assert sorted(r["id"] for r in merged.rows()) == sorted(r["id"] for r in single.rows())
    via_merge = ReferringMetrics().merge(rank0).merge(rank1)
    assert via_merge.compute() == pytest.approx(single.compute())


def test_rows() -> None:
    m = ReferringMetrics()
    m.update(7, 2, 8, text='the "big" roof, left')
    m.update(8, 0, 0)
    rows = m.rows()
    assert rows[0] == {"id": 7, "text": 'the "big" roof, left', "I": 2, "U": 8, "IoU": 0.25}
    assert rows[1]["IoU"] == 0.0 and rows[1]["text"] == ""


def test_report_metrics_carries_cIoU_and_no_gIoU() -> None:
    m = ReferringMetrics()
    m.update("a", 3, 4)
    m.update("b", 1, 6)
    r = report_metrics(m)
    assert r["cIoU"] == r["oIoU"] == pytest.approx(40.0)
    assert "gIoU" not in r and list(r)[:7] == ["Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "mIoU", "oIoU"]
    assert report_metrics(ReferringMetrics()) == {"num_expressions": 0}
    assert "cIoU" in METRIC_NAMES["oIoU"] and "gIoU" in METRIC_NAMES["mIoU"] and "DiCoR" in METRIC_NAMES["oIoU"]


def test_per_category_by_hand() -> None:
    m = ReferringMetrics()
    for eid, i, u in (("1", 9, 10), ("2", 1, 4), ("3", 5, 10), ("4", 0, 0), ("5", 7, 7)):
        m.update(eid, i, u)
    cats = per_category(m, {"1": "ship", "2": "ship", "3": "tank", "4": "tank", "5": ""})
    assert list(cats) == ["(none)", "ship", "tank"]
    ship, tank, none = cats["ship"], cats["tank"], cats["(none)"]
    # ship: IoUs 0.9 and 0.25; oIoU 10 / 14
    assert ship["num_expressions"] == 2 and ship["mIoU"] == pytest.approx(57.5)
    assert ship["oIoU"] == ship["cIoU"] == pytest.approx(100 * 10 / 14)
    assert (ship["Pr@0.5"], ship["Pr@0.9"]) == (50.0, 50.0)
    # tank: IoUs 0.5 and 0 (empty union); oIoU 5 / 10
    assert tank["mIoU"] == pytest.approx(25.0) and tank["oIoU"] == pytest.approx(50.0)
    assert (tank["Pr@0.5"], tank["Pr@0.6"]) == (50.0, 0.0)
    assert none["num_expressions"] == 1 and none["mIoU"] == pytest.approx(100.0)

