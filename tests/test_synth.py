"""rs2sam2.data.synth: scenes are deterministic, masks exact, sentences true and unambiguous."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from rs2sam2.cli import main as cli_main
from rs2sam2.data import build_dataset, synth
from rs2sam2.data.synth import CLASSES, COLOURS


@pytest.fixture(scope="module")
def scenes():
    return list(synth.iter_scenes(120, seed=4))


def test_objects_are_disjoint_whole_and_painted(scenes):
    for scene in scenes:
        assert scene.image.shape == (256, 256, 3) and scene.image.dtype == np.uint8
        assert 1 <= len(scene.targets) <= 3
        union = np.zeros((256, 256), int)
        for obj in scene.objects:
            assert obj.mask.any() and obj.area == obj.mask.sum()
            union += obj.mask
            # wholly inside the image (nothing cut at the border)
            assert not (obj.mask[0].any() or obj.mask[-1].any() or obj.mask[:, 0].any() or obj.mask[:, -1].any())
            # the object's pixels carry its colour: the learning signal is real
            nominal = np.asarray(CLASSES[obj.cls].rgb_override.get(obj.colour, COLOURS[obj.colour]), float)
            # (median: rims, lids and roof details are a minority of the pixels)
            typical = np.median(scene.image[obj.mask].astype(float), axis=0)
            assert np.linalg.norm(typical - nominal) < 40, (obj.cls, obj.colour, typical)
        assert union.max() <= 1  # no overlaps, so each mask is exactly its object's pixels


# --------------------------------------------------------------------------------------------
# an independent reading of the sentences
# --------------------------------------------------------------------------------------------

_NOUNS = sorted(((n, c) for c, spec in CLASSES.items() for n in spec.nouns), key=lambda x: -len(x[0]))
_REGIONS = {
    "at the top left": ("top", "left"), "in the top left corner": ("top", "left"),
    "at the top center": ("top", "center"), "at the top in the middle": ("top", "center"),
    "at the top right": ("top", "right"), "in the top right corner": ("top", "right"),
    "at the middle left": ("middle", "left"), "at the middle right": ("middle", "right"),
    "in the center of the image": ("middle", "center"), "in the middle of the image": ("middle", "center"),
    "at the bottom left": ("bottom", "left"), "in the bottom left corner": ("bottom", "left"),
    "at the bottom center": ("bottom", "center"), "at the bottom in the middle": ("bottom", "center"),
    "at the bottom right": ("bottom", "right"), "in the bottom right corner": ("bottom", "right"),
    "on the left side of the image": (None, "left"), "in the left part of the image": (None, "left"),
    "on the right side of the image": (None, "right"), "in the right part of the image": (None, "right"),
    "at the top of the image": ("top", None), "in the upper part of the image": ("top", None),
    "at the bottom of the image": ("bottom", None), "in the lower part of the image": ("bottom", None),
}
_THIRDS = {"left": 0, "center": 1, "right": 2, "top": 0, "middle": 1, "bottom": 2}
# selector word -> (attribute, target must be the minimum?, group size: "pair" or "many")
_SELECTORS = {
    "leftmost": ("cx", True, "many"), "rightmost": ("cx", False, "many"),
    "topmost": ("cy", True, "many"), "bottommost": ("cy", False, "many"),
    "upper": ("cy", True, "pair"), "lower": ("cy", False, "pair"),
    "larger": ("area", False, "pair"), "smaller": ("area", True, "pair"),
    "largest": ("area", False, "many"), "smallest": ("area", True, "many"),
    "on the left": ("cx", True, "pair"), "on the right": ("cx", False, "pair"),
    "closest to the road": ("road_distance", True, "any"), "closest to a road": ("road_distance", True, "any"),
    "farthest from the road": ("road_distance", False, "any"),
    "farthest from a road": ("road_distance", False, "any"),
}


def _parse(text: str) -> dict:
    words = text.split()
    if words[0] == "the":
        words = words[1:]
    text = " ".join(words)
    for noun, cls in _NOUNS:
        if f" {noun} " in f" {text} ":
            before, after = f" {text} ".split(f" {noun} ", 1)
            break
    else:
        raise AssertionError(f"no class noun in {text!r}")
    parsed = {"cls": cls, "colour": None, "size": None, "selector": None, "region": None}
    for word in before.split():
        if word in COLOURS:
            parsed["colour"] = word
        elif word in ("large", "small"):
            parsed["size"] = word
        else:
            assert word in _SELECTORS, f"unexpected word {word!r} in {text!r}"
            parsed["selector"] = word
    after = after.strip()
    for phrase in (p for p in _SELECTORS if " " in p):  # a trailing selector, then maybe a region
        rest = after[len(phrase):].strip()
        if after.startswith(phrase) and (not rest or rest in _REGIONS):
            parsed["selector"], after = phrase, rest
            break
    if after:
        assert after in _REGIONS, f"unexpected phrase {after!r} in {text!r}"
        parsed["region"] = _REGIONS[after]
    return parsed


def _in_third(coord: float, name: str, margin: float, side: int = 256) -> bool:
    k = _THIRDS[name]
    return k * side / 3 - margin <= coord <= (k + 1) * side / 3 + margin


def _check_sentence(scene, target_index: int, text: str) -> None:
    """``text`` is true of the target and of no other object of ``scene`` (margins scale with its side)."""
    side = scene.image.shape[0]
    sc = side / 256
    t = scene.objects[target_index]
    p = _parse(text)
    assert p["cls"] == t.cls, text
    if p["colour"]:
        assert p["colour"] == t.colour, text
    same = [o for o in scene.objects if o.cls == t.cls]
    others = [o for o in same if o is not t]
    if p["size"] == "large":
        assert others and all(t.area >= 1.5 * o.area for o in others), text
    if p["size"] == "small":
        assert others and all(1.5 * t.area <= o.area for o in others), text
    group = [o for o in same if p["colour"] is None or o.colour == p["colour"]]
    if p["region"]:
        v, h = p["region"]
        # the target is clearly in the named thirds; any object that might be read as being there counts
        assert (v is None or _in_third(t.cy, v, -5 * sc, side)) and (h is None or _in_third(t.cx, h, -5 * sc, side)), text
        group = [o for o in group if (v is None or _in_third(o.cy, v, 6 * sc, side))
                 and (h is None or _in_third(o.cx, h, 6 * sc, side))]
    if p["selector"] is None:
        assert group == [t] or p["size"] is not None, f"{text!r} is ambiguous"
        return
    key, smallest, arity = _SELECTORS[p["selector"]]
    rest = [getattr(o, key) for o in group if o is not t]
    assert rest, text
    assert arity == "any" or (len(group) == 2) == (arity == "pair"), text
    mine = getattr(t, key)
    assert (mine < min(rest)) if smallest else (mine > max(rest)), text


def test_sentences_are_true_and_unambiguous(scenes):
    checked = 0
    for scene in scenes:
        for obj_index, texts in scene.targets:
            assert 1 <= len(texts) <= 2
            for text in texts:
                _check_sentence(scene, obj_index, text)
                checked += 1
    assert checked > 150


def test_expression_variety(scenes):
    texts = [t for s in scenes for _, ts in s.targets for t in ts]
    parsed = [_parse(t) for t in texts]
    assert len(set(texts)) > 0.5 * len(texts)
    assert any(p["colour"] for p in parsed) and any(p["size"] for p in parsed)
    assert any(p["region"] for p in parsed) and any(p["selector"] for p in parsed)
    assert any(p["selector"] and "road" in p["selector"] for p in parsed)
    assert len({p["cls"] for p in parsed}) == len(CLASSES)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["rrsisd", "refsegrs", "jsonl"])
def test_same_seed_same_files(tmp_path, fmt):
    a = synth.generate(fmt, tmp_path / "a", 8, seed=21)
    b = synth.generate(fmt, tmp_path / "b", 8, seed=21)
    assert a["splits"] == b["splits"]
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    synth.generate(fmt, tmp_path / "c", 8, seed=22)
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_summary_matches_files(tmp_path):
    summary = synth.generate("refsegrs", tmp_path, 20, seed=1)
    assert sum(c["images"] for c in summary["splits"].values()) == 20
    assert [summary["splits"][s]["images"] for s in ("train", "val", "test")] == [14, 3, 3]
    for split, counts in summary["splits"].items():
        lines = (tmp_path / f"output_phrase_{split}.txt").read_text().splitlines()
        assert len(lines) == counts["expressions"]
        assert len({line.split()[0] for line in lines}) == counts["refs"]
    masks = list((tmp_path / "masks").glob("*.tif"))
    assert len(masks) == sum(c["refs"] for c in summary["splits"].values())


def test_splits_argument(tmp_path):
    only_train = synth.generate("jsonl", tmp_path / "t", 5, seed=0, splits=(1, 0, 0))
    assert only_train["splits"]["val"]["images"] == only_train["splits"]["test"]["images"] == 0
    three = synth.generate("jsonl", tmp_path / "s", 3, seed=0)
    assert [three["splits"][s]["images"] for s in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(ValueError, match="fractions"):
        synth.generate("jsonl", tmp_path / "x", 3, seed=0, splits=(1, -1, 0))
    with pytest.raises(ValueError, match="unknown synthetic format"):
        synth.generate("coco", tmp_path / "y", 3, seed=0)


def test_other_image_size_and_cli(tmp_path, capsys):
    rc = cli_main(["synth", "--format", "jsonl", "--out", str(tmp_path), "--num-images", "4", "--seed", "2",
                   "--image-size", "128"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_images"] == 4
    ds = build_dataset("jsonl", tmp_path, None)
    sample = ds.load(0)
    assert sample["image"].shape == (128, 128, 3) and sample["mask"].any()
    assert summary["image_size"] == 128


def test_two_hundred_images_are_fast(tmp_path):
    start = time.perf_counter()
    summary = synth.generate("rrsisd", tmp_path, 200, seed=0)
    elapsed = time.perf_counter() - start
    assert summary["splits"]["train"]["images"] == 140
    assert elapsed < 20, f"200 images took {elapsed:.1f}s"


def test_cli_documented_form_and_bad_arguments(tmp_path, capsys):
    """The README's form; a bad value is a one-line error with exit code 2 and writes nothing."""
    rc = cli_main(["synth", "--format", "rrsisd", "--out", str(tmp_path / "d"), "--num-images", "3", "--seed", "0"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["splits"]["train"]["images"] >= 1
    assert len(build_dataset("rrsisd", tmp_path / "d", "train")) > 0
    with pytest.raises(SystemExit) as exc:  # refused by argparse, before any work
        cli_main(["synth", "--format", "jsonl", "--out", str(tmp_path / "e"), "--num-images", "0"])
    assert exc.value.code == 2
    assert "argument --num-images: expected an integer in [1, 100000], got '0'" in capsys.readouterr().err
    assert cli_main(["synth", "--format", "jsonl", "--out", str(tmp_path / "f"), "--splits", "0", "0", "0"]) == 2
    assert "splits" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()
    with pytest.raises(SystemExit) as exc:  # the old positional form is gone
        cli_main(["synth", "jsonl", str(tmp_path / "g")])
    assert exc.value.code == 2


# --------------------------------------------------------------------------------------------
# output folder: refuse a non-empty one, --overwrite replaces the dataset cleanly, failures leave it
# --------------------------------------------------------------------------------------------


def _snapshot(folder):
    """Every file under ``folder`` (hidden ones included) with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _synth(out, fmt="jsonl", n=3, *extra):
    return cli_main(["synth", "--format", fmt, "--out", str(out), "--num-images", str(n), "--image-size", "64",
                     *map(str, extra)])


def _stderr_error(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().removeprefix("rs2sam2 synth: error: ")


def test_non_empty_output_is_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "d"
    assert _synth(out, "jsonl", 3) == 0
    before = _snapshot(out)
    capsys.readouterr()
    assert _synth(out, "jsonl", 2, "--seed", 5) == 2
    error = _stderr_error(capsys)
    assert error.startswith(f"output folder {out} is not empty (data.jsonl, images, masks)") and "--overwrite" in error
    assert _snapshot(out) == before


def test_overwrite_replaces_the_dataset_and_keeps_other_files(tmp_path, capsys):
    out = tmp_path / "d"
    assert _synth(out, "rrsisd", 6) == 0
    (out / "notes.txt").write_text("mine")
    assert _synth(out, "rrsisd", 2, "--overwrite") == 0  # fewer images: none of the old six may stay
    assert sorted(p.name for p in (out / "images" / "rrsisd" / "JPEGImages").iterdir()) == ["00000.jpg", "00001.jpg"]
    assert "kept in" in capsys.readouterr().err
    assert _synth(out, "jsonl", 2, "--overwrite") == 0  # another format: the RRSIS-D files go too
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert names == ["data.jsonl", "images/00000.png", "images/00001.png", *sorted(
        str(p.relative_to(out)) for p in (out / "masks").iterdir()), "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    err = capsys.readouterr().err
    assert "notes.txt" in err
    assert len(build_dataset("jsonl", out, None)) > 0


def test_a_failed_or_interrupted_write_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    import errno

    out = tmp_path / "d"
    assert _synth(out, "jsonl", 3) == 0
    before = _snapshot(out)
    real = synth.WRITERS["jsonl"].write_scene

    def full_disk_at_second_scene(self, index, scene, split):
        if index == 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, index, scene, split)

    monkeypatch.setattr(synth.WRITERS["jsonl"], "write_scene", full_disk_at_second_scene)
    capsys.readouterr()
    assert _synth(out, "jsonl", 4, "--overwrite") == 2
    assert _stderr_error(capsys) == (f"cannot write the dataset to {out}: No space left on device; the folder is left "
                                     "as it was")
    assert _snapshot(out) == before  # no temporary folder left either
    assert _synth(tmp_path / "new", "jsonl", 4) == 2
    assert not (tmp_path / "new").exists()

    def interrupted(self, index, scene, split):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth.WRITERS["jsonl"], "write_scene", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _synth(out, "jsonl", 4, "--overwrite")
    assert _snapshot(out) == before


@pytest.mark.parametrize("extra, message", [
    (["--num-images", "-3"], "argument --num-images: expected an integer in [1, 100000], got '-3'"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--image-size", "8"], "argument --image-size: expected an integer in [32, 4096], got '8'"),
    (["--image-size", "100000000"], "argument --image-size: expected an integer in [32, 4096], got '100000000'"),
    (["--splits", "nan", "1", "1"], "argument --splits: expected a finite number >= 0, got 'nan'"),
    (["--mosaic", "1"], "argument --mosaic: expected an integer in [2, 128], got '1'"),
    (["--absent", "-1"], "argument --absent: expected an integer in [0, 10], got '-1'"),
    (["--format", "rrsisd"], None),  # a valid call, for contrast
])
def test_bad_synth_arguments(tmp_path, capsys, extra, message):
    """Each argument's range is checked by argparse before any work: one line, exit 2, nothing written."""
    out = tmp_path / "d"
    argv = ["synth", "--format", "jsonl", "--out", str(out), "--num-images", "2", "--image-size", "64", *extra]
    if message is None:
        assert cli_main(argv) == 0
        return
    with pytest.raises(SystemExit) as exc:
        cli_main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"rs2sam2 synth: error: {message}"
    assert not out.exists()


def test_arguments_that_only_fail_together_and_api_checks(tmp_path, capsys):
    """A mosaic larger than 4096 px a side is refused as a user error before anything is written; the
    Python API checks its arguments the same way."""
    assert _synth(tmp_path / "m", "jsonl", 2, "--mosaic", 80) == 2  # 80 x 64 px
    assert _stderr_error(capsys).startswith("mosaic must be 0 (single scenes) or K >= 1 with K * image_size <= 4096")
    assert not (tmp_path / "m").exists()
    for kwargs, text in [({"num_images": 0}, "num_images must be >= 1"), ({"seed": -1}, "seed must be"),
                         ({"image_size": 10**8}, "image_size must be an integer in [32, 4096]"),
                         ({"absent": -1}, "absent must be")]:
        with pytest.raises(ValueError, match=re.escape(text)):
            synth.generate("jsonl", tmp_path / "api", **{"num_images": 2, "seed": 0, **kwargs})
    assert not (tmp_path / "api").exists()


def test_unusable_output_folder(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _synth(tmp_path / "file", "jsonl", 2) == 2
    assert _stderr_error(capsys) == f"output folder {tmp_path / 'file'} is a file, not a folder"
    assert _synth(tmp_path / "file" / "d", "jsonl", 2) == 2
    assert _stderr_error(capsys).startswith(f"cannot create output folder {tmp_path / 'file' / 'd'}: Not a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_all_targets_describes_every_describable_object(tmp_path):
    """all_targets (--all-targets): every object that some expression can single out gets 1-2
    expressions, each true and unambiguous; the default draws 1-3 targets per scene."""
    scenes = list(synth.iter_scenes(40, seed=4, all_targets=True))
    for scene in scenes:
        # describable without the road selectors (which depend on the scene's straight roads): a subset
        describable = {i for i in range(len(scene.objects)) if synth.describe(scene.objects, i, 256, 0)}
        assert describable <= {i for i, _ in scene.targets}
        for obj_index, texts in scene.targets:
            for text in texts:
                _check_sentence(scene, obj_index, text)
    some = sum(len(s.targets) for s in synth.iter_scenes(40, seed=4))
    assert sum(len(s.targets) for s in scenes) > 1.3 * some
    summary = synth.generate("rrsisd", tmp_path / "all", num_images=6, seed=0, image_size=128, all_targets=True)
    assert summary["all_targets"] is True
    assert cli_main(["synth", "--format", "jsonl", "--out", str(tmp_path / "cli"), "--num-images", "3",
                     "--all-targets"]) == 0


# --------------------------------------------------------------------------------------------
# mosaics: K x K scenes described as one, with absent sentences
# --------------------------------------------------------------------------------------------


def _check_absent(scene, cls: str, text: str) -> None:
    """An absent sentence names a class and colour that no object of the image has together."""
    p = _parse(text)
    assert p["cls"] == cls and p["colour"] is not None and p["selector"] is None, text
    assert not any(o.cls == p["cls"] and o.colour == p["colour"] for o in scene.objects), text


@pytest.mark.parametrize("k", [2, 3])
def test_mosaic_sentences_identify_one_object_in_the_whole_mosaic(k):
    size = 96
    mosaics = [synth.make_mosaic(seed, k, size, num_absent=2) for seed in range(4)]
    for mosaic in mosaics:
        side = k * size
        assert mosaic.image.shape == (side, side, 3) and mosaic.image.dtype == np.uint8
        union = np.zeros((side, side), int)
        for obj in mosaic.objects:
            assert obj.mask.shape == (side, side) and obj.mask.sum() == obj.area
            ys, xs = np.nonzero(obj.mask)
            assert abs(xs.mean() - obj.cx) < 1e-6 and abs(ys.mean() - obj.cy) < 1e-6
            assert len({int(y) // size for y in ys}) == 1 and len({int(x) // size for x in xs}) == 1  # one cell
            union += obj.mask
        assert union.max() <= 1 and len(mosaic.objects) >= k * k
        assert 1 <= len(mosaic.targets) <= 3 and len(mosaic.absent) >= 1
        for index, texts in mosaic.targets:
            for text in texts:
                _check_sentence(mosaic, index, text)
                assert "road" not in text  # a cell's road says nothing about the mosaic
        for cls, text in mosaic.absent:
            _check_absent(mosaic, cls, text)
    again = synth.make_mosaic(0, k, size, num_absent=2)
    assert np.array_equal(again.image, mosaics[0].image) and again.targets == mosaics[0].targets
    # the cells are generated scenes: cell (0, 0) is the first scene of the mosaic's generator
    first = synth.make_scene(np.random.default_rng([0, k, size]), size)
    assert np.array_equal(mosaics[0].image[:size, :size], first.image)


def test_absent_sentences_describe_nothing_and_keep_the_scenes(scenes):
    rng = np.random.default_rng(0)
    for scene in scenes[:60]:
        cls, text = synth.absent_sentence(scene.objects, rng)
        _check_absent(scene, cls, text)
    plain = list(synth.iter_dataset_scenes(5, seed=4))
    with_absent = list(synth.iter_dataset_scenes(5, seed=4, absent=2))
    for a, b in zip(plain, with_absent):  # the same scenes, only the absent sentences added
        assert np.array_equal(a.image, b.image) and a.targets == b.targets
        assert a.absent == [] and len(b.absent) >= 1


@pytest.mark.parametrize("fmt", ["rrsisd", "refsegrs", "jsonl", "risbench"])
def test_mosaic_datasets_carry_absent_sentences_with_empty_masks(tmp_path, fmt):
    from rs2sam2.imageio import read_info

    summary = synth.generate(fmt, tmp_path, 3, seed=5, image_size=64, mosaic=2, splits=(1, 0, 0))
    assert summary["mosaic"] == 2
    counts = summary["splits"]["train"]
    assert counts["images"] == 3 and counts["absent"] >= 3
    ds = build_dataset(fmt, tmp_path, "train")
    assert len(ds) == counts["expressions"]
    mosaics = list(synth.iter_dataset_scenes(3, 5, 64, mosaic=2))
    absent_texts = {text for m in mosaics for _, text in m.absent}
    empty = 0
    for i in range(len(ds)):
        sample = ds.load(i)
        assert sample["image"].shape == (128, 128, 3)
        if sample["text"].lower() in {t.lower() for t in absent_texts}:
            assert not sample["mask"].any()
            empty += 1
        else:
            assert sample["mask"].any()
    assert empty == counts["absent"]
    if fmt != "rrsisd":  # RRSIS-D keeps its JPEG layout; the others take GeoTIFFs
        info = read_info(ds.load(0)["meta"]["image_path"])
        assert info.crs is not None and str(info.crs).endswith("32633")


def test_mosaic_cli(tmp_path, capsys):
    assert _synth(tmp_path / "m", "jsonl", 2, "--mosaic", 2, "--absent", 2) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mosaic"] == 2 and summary["splits"]["train"]["absent"] + summary["splits"]["val"]["absent"] \
        + summary["splits"]["test"]["absent"] >= 3
    assert len(build_dataset("jsonl", tmp_path / "m", None)) > 0
