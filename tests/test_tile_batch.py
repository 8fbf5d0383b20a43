"""Tiles answered together (``Predictor(tile_batch=N)``, ``predict --tile-batch N``) give the masks of
tiles answered one by one."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

import helpers_ckpt as h
from rs2sam2.cli import main as cli_main
from rs2sam2.predict import InputError, Predictor

TEXTS = ["the bright building", "the road on the left"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return h.write_geotiff(tmp_path_factory.mktemp("scene") / "scene.tif", height=300, width=500)


def test_batched_tiles_equal_one_by_one(ckpt, scene):
    one = Predictor.from_pretrained(ckpt, precision="fp32").predict(scene, TEXTS, tile=128, overlap=16, threshold=0.0)
    # 5 x 3 = 15 tiles in groups of 4 (4, 4, 4, 3), both texts in one pass: 8 samples per forward
    many = Predictor.from_pretrained(ckpt, precision="fp32", tile_batch=4)
    batched = many.predict(scene, TEXTS, tile=128, overlap=16, threshold=0.0, batch_size=2)
    for a, b in zip(one, batched, strict=True):
        assert a.tiles == b.tiles == 15
        np.testing.assert_allclose(b.logits, a.logits, atol=1e-4)
        np.testing.assert_array_equal(b.mask, a.mask)
        assert 0 < a.mask.sum() < a.mask.size
    assert not np.array_equal(batched[0].mask, batched[1].mask)  # each text keeps its own answer
    answers = many.answers_tiles([np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 200, np.uint8)], TEXTS)
    assert [len(a) for a in answers] == [2, 2] and not np.allclose(answers[0][0].logits, answers[1][0].logits)


def test_cli_tile_batch(ckpt, scene, tmp_path, capsys):
    out = tmp_path / "m.tif"
    rc = cli_main(["predict", "--checkpoint", str(ckpt), "--image", str(scene), "--text", TEXTS[0], "--out", str(out),
                   "--tile", "128", "--overlap", "16", "--tile-batch", "3", "--threshold", "0", "--precision", "fp32"])
    assert rc == 0, capsys.readouterr().err
    expected = Predictor.from_pretrained(ckpt, precision="fp32").predict(scene, TEXTS[0], tile=128, overlap=16,
                                                                          threshold=0.0).mask
    with rasterio.open(out) as m:
        np.testing.assert_array_equal(m.read(1) == 255, expected)
    with pytest.raises(InputError, match="tile_batch must be >= 1"):
        Predictor.from_pretrained(ckpt, tile_batch=0)
    with pytest.raises(SystemExit) as exc:
        cli_main(["predict", "--checkpoint", str(ckpt), "--image", str(scene), "--text", "x", "--tile-batch", "0"])
    assert exc.value.code == 2 and "--tile-batch" in capsys.readouterr().err
