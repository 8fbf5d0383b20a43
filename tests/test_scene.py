"""Scene answers (rs2sam2.scene): the plan logic with deterministic segment functions (a colour
detector that reads "leftmost"/"rightmost" in the frame it is shown), and the command on a tiny
real checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import helpers_ckpt as h
from rs2sam2.cli import main as cli_main
from rs2sam2.imageio import Raster, RasterInfo
from rs2sam2.results import assemble
from rs2sam2.scene import Decision, grow_into, iter_scene, label
from rs2sam2.tiles import Answer, iter_pieces, plan_region

MODEL = 64  # the model input of the segment functions below (pixels per side)


def _detector(texts: list[str]):
    """A segment function: per text, logits +8 on the pure-red pixels of the frame it is shown (-8
    elsewhere), only the leftmost / rightmost red part when the text says so, nothing for "blue"."""
    def segment(rgb: np.ndarray, some=None) -> list[Answer]:
        some = texts if some is None else some
        red = (rgb[..., 0] > 150) & (rgb[..., 1] < 100)
        out = []
        for text in some:
            mask = red.copy() if "blue" not in text else np.zeros_like(red)
            labels, n = label(mask)
            if n > 1 and ("leftmost" in text or "rightmost" in text):
                lefts = [np.nonzero(labels == i)[1].min() for i in range(1, n + 1)]
                pick = int(np.argmin(lefts) if "leftmost" in text else np.argmax(lefts)) + 1
                mask = labels == pick
            logits = torch.from_numpy(np.where(mask, 8.0, -8.0).astype(np.float32))
            out.append(Answer(logits=logits, iou_score=0.9, object_score=1.0))
        return out
    return segment


def _shape_detector(rgb: np.ndarray, texts: list[str]) -> list[Answer]:
    """A segment function blind to colour words: per text, logits +8 on every pixel that is not the
    grey ground (whatever its colour), -8 elsewhere."""
    mask = np.abs(rgb.astype(int) - 90).sum(-1) > 60
    logits = torch.from_numpy(np.where(mask, 8.0, -8.0).astype(np.float32))
    return [Answer(logits=logits, iou_score=0.9, object_score=1.0) for _ in texts]


def _scene(width: int, height: int, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    rgb = np.full((height, width, 3), 90, np.uint8)
    for c, r, w, hh in boxes:
        rgb[r:r + hh, c:c + w] = (220, 30, 30)
    return rgb


def _answer(rgb: np.ndarray, texts: list[str], presence_head: bool = False, segment=None, colour_check: bool = True):
    height, width = rgb.shape[:2]
    plan = plan_region(width, height, MODEL, scene=True)
    assert plan.mode == "scene"
    decisions: list[Decision] = []
    with Raster(rgb) as raster:
        region = (0, 0, width, height)
        pieces = iter_scene(raster, region, plan, segment or _detector(texts), texts=texts, threshold=0.0,
                            presence_threshold=0.5, presence_head=presence_head, model_size=MODEL,
                            colour_check=colour_check, decisions=decisions)
        preds = assemble(pieces, texts, RasterInfo(height=height, width=width), 0.0)
    return preds, decisions


def test_label_and_grow_into_follow_8_connected_parts():
    m = np.zeros((6, 8), bool)
    m[0:2, 0:2] = True
    m[2, 2] = True  # touches the first part at a corner
    m[4:6, 5:8] = True
    labels, n = label(m)
    assert n == 2 and len(set(labels[m].tolist())) == 2 and labels[2, 2] == labels[0, 0]
    seed = np.zeros_like(m)
    seed[5, 7] = True
    np.testing.assert_array_equal(grow_into(seed, m), labels == labels[5, 7])


def test_a_position_word_is_read_in_the_scene_frame():
    """Two identical red squares far apart: "the leftmost" keeps only the left one in scene mode,
    while tiles paint each tile's own leftmost red thing (both)."""
    rgb = _scene(512, 160, [(40, 60, 24, 24), (440, 60, 24, 24)])
    (pred,), (decision,) = _answer(rgb, ["the leftmost red square"])
    expected = np.zeros((160, 512), bool)
    expected[60:84, 40:64] = True
    np.testing.assert_array_equal(pred.mask, expected)
    assert decision.present and decision.box == (40, 60, 24, 24) and 1 <= len(decision.looks) <= 3
    (right,), _ = _answer(rgb, ["the rightmost red square"])
    assert right.mask[60:84, 440:464].all() and right.mask.sum() == 24 * 24
    with Raster(rgb) as raster:
        plan = plan_region(512, 160, MODEL, tile=MODEL, overlap=8)
        [tiled] = assemble(iter_pieces(raster, (0, 0, 512, 160), plan, _detector(["the leftmost red square"])),
                           ["the leftmost red square"], RasterInfo(height=160, width=512), 0.0)
    assert tiled.mask[60:84, 40:64].all() and tiled.mask[60:84, 440:464].all()


def test_a_region_and_a_size_are_read_in_the_scene_frame():
    """Identical red squares in the four corners of the scene, one larger: "at the top right" and
    "the largest" pick one each, in the frame of the whole scene (the looks hold one square each)."""
    rgb = _scene(512, 512, [(30, 30, 24, 24), (450, 30, 24, 24), (30, 450, 24, 24), (440, 440, 40, 40)])
    (corner, largest), (d_corner, d_largest) = _answer(rgb, ["the red square at the top right",
                                                            "the largest red square"])
    assert corner.mask[30:54, 450:474].all() and corner.mask.sum() == 24 * 24
    assert largest.mask[440:480, 440:480].all() and largest.mask.sum() == 40 * 40
    assert d_corner.as_dict()["scene_words"] == {"object": "the red square", "rows": "top", "columns": "right",
                                                 "pick": None}
    assert d_largest.words.pick == "larger" and d_largest.box == (440, 440, 40, 40)


def test_an_object_across_look_borders_comes_out_whole():
    """A red bar 5 model inputs long: several native looks, merged into one object and one polygon."""
    rgb = _scene(480, 200, [(30, 90, 320, 12)])
    (pred,), (decision,) = _answer(rgb, ["the red bar"])
    expected = np.zeros((200, 480), bool)
    expected[90:102, 30:350] = True
    np.testing.assert_array_equal(pred.mask, expected)
    assert len(decision.looks) >= 5 and len(pred.polygons()) == 1


def test_an_absent_sentence_writes_nothing():
    rgb = _scene(400, 300, [(40, 60, 24, 24)])
    (pred,), (decision,) = _answer(rgb, ["the blue square"])
    assert not pred.mask.any() and pred.polygons() == []
    assert not decision.present and decision.box is None


def test_a_colour_word_is_checked_against_the_pixels():
    """A model blind to colour words paints a red and a white square alike, in different looks: the
    colour the sentence names picks one, a colour that no object shows leaves the answer empty, and
    without the check the strongest square is kept whatever its colour."""
    rgb = _scene(512, 160, [(40, 60, 24, 24)])
    rgb[60:84, 440:464] = (235, 235, 230)
    (red, white, green), decisions = _answer(rgb, ["the red square", "the white square", "the green square"],
                                             segment=_shape_detector)
    assert red.mask[60:84, 40:64].all() and red.mask.sum() == 24 * 24
    assert white.mask[60:84, 440:464].all() and white.mask.sum() == 24 * 24
    assert not green.mask.any() and not decisions[2].present
    assert decisions[0].as_dict()["colour"] == "red" and decisions[0].colour_share == 1.0
    assert decisions[1].colour == "white" and decisions[1].box == (440, 60, 24, 24)
    (unchecked,), (d,) = _answer(rgb, ["the green square"], segment=_shape_detector, colour_check=False)
    assert unchecked.mask.sum() == 24 * 24 and d.present and d.colour is None


def test_the_presence_head_decides_when_the_checkpoint_has_one():
    """The detector's object-score logit is 1.0 (presence 0.73): kept with the head, whatever the score."""
    rgb = _scene(400, 300, [(40, 60, 24, 24)])
    _, (decision,) = _answer(rgb, ["the red square"], presence_head=True)
    assert decision.presence_source == "presence head" and decision.presence == pytest.approx(1 / (1 + np.exp(-1)))
    assert decision.present


# --------------------------------------------------------------------------------------------
# the command, on a tiny real checkpoint
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


@pytest.mark.usefixtures("one_thread")
def test_cli_scene_answer_is_the_default_for_large_areas(ckpt, tmp_path, capsys):
    """A 1100 x 400 GeoTIFF (> 2 x 256): the default is a scene answer; the summary beside the batch
    file says where it looked; the mask is empty exactly when the answer was found absent, and every
    polygon carries its provenance."""
    import rasterio

    image = h.write_geotiff(tmp_path / "wide.tif", height=400, width=1100)
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"image,text,out,vector\n{image},the building on the left,m.tif,m.geojson\n"
                    f"{image},the red building on the left,red.tif,\n")
    assert cli_main(["predict", "--checkpoint", str(ckpt), "--batch", str(jobs), "--threshold", "0", "-q"]) == 0
    summary = json.loads((tmp_path / "jobs.summary.json").read_text())
    job, red = summary["jobs"]
    assert job["mode"] == "scene" and job["decision"]["global_look"] and job["decision"]["looks"]
    assert job["decision"]["colour"] is None and red["decision"]["colour"] == "red"
    assert all(len(w) == 4 for w in job["decision"]["looks"])
    # the scan windows cover the whole area (1100 x 400, windows of 2 x 256 px)
    scans = job["decision"]["scan_looks"]
    assert len(scans) == 3 * 1 and {w[2] for w in scans} == {512} and max(w[0] + w[2] for w in scans) == 1100
    with rasterio.open(tmp_path / "m.tif") as m:
        written = m.read(1) == 255
    assert written.any() == job["decision"]["present"] and int(written.sum()) == job["foreground_px"]
    features = json.loads((tmp_path / "m.geojson").read_text())["features"]
    assert bool(features) == job["decision"]["present"]
    for f in features:
        props = f["properties"]
        assert props["mode"] == "scene" and props["image"] == str(image) and props["checkpoint"] == str(ckpt)
        assert props["presence"] == pytest.approx(job["presence"]) and props["text"] == job["text"]
    # with no presence threshold at all, the same run keeps its best candidate
    rc = cli_main(["predict", "--checkpoint", str(ckpt), "--image", str(image), "--text", "the red building",
                   "--out", str(tmp_path / "all.tif"), "--threshold", "0", "--presence-threshold", "0",
                   "--summary", str(tmp_path / "one.json"), "-q"])
    assert rc == 0
    [one] = json.loads((tmp_path / "one.json").read_text())["jobs"]
    assert one["decision"]["present"] == (one["decision"]["chosen"] is not None)


def test_cli_presence_threshold_out_of_range_exits_2(ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["predict", "--checkpoint", str(ckpt), "--image", "x.tif", "--text", "t", "--out", "m.tif",
                  "--presence-threshold", "1.5"])
    assert exc.value.code == 2 and "--presence-threshold" in capsys.readouterr().err
