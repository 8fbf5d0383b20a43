"""Dataset readers (RRSIS-D, RefSegRS, JSONL), build_dataset, and the sample transform."""

from __future__ import annotations

import hashlib
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from rs2sam2.data import (
    RRSISD,
    DatasetError,
    JsonlDataset,
    MaskSizeWarning,
    RefSegRS,
    SampleTransform,
    add_random_boxes,
    build_dataset,
    synth,
)
from rs2sam2.data.rrsisd import load_refs_pickle
from rs2sam2.data.segmentation import decode_segmentation
from rs2sam2.imageio import read_image as _real_read

SEED, NUM_IMAGES = 11, 24


def _digest(mask: np.ndarray) -> str:
    return hashlib.sha1(np.packbits(mask.astype(bool)).tobytes() + str(mask.shape).encode()).hexdigest()


@pytest.fixture(scope="module")
def scene_truth():
    """mask digest -> expressions, for every target of the synthetic scenes."""
    truth: dict[str, set[str]] = {}
    for scene in synth.iter_scenes(NUM_IMAGES, SEED):
        for obj_index, texts in scene.targets:
            truth.setdefault(_digest(scene.objects[obj_index].mask), set()).update(texts)
    return truth


@pytest.fixture(scope="module", params=["rrsisd", "refsegrs", "jsonl", "risbench"])
def synthetic(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    summary = synth.generate(request.param, out, NUM_IMAGES, SEED)
    return request.param, out, summary


# --------------------------------------------------------------------------------------------
# round trip: synth -> reader
# --------------------------------------------------------------------------------------------


def test_round_trip_counts_and_masks(synthetic, scene_truth):
    fmt, out, summary = synthetic
    for split in ("train", "val", "test"):
        ds = build_dataset(fmt, out, split)
        counts = summary["splits"][split]
        assert len(ds) == counts["expressions"]
        assert ds.num_refs == (counts["expressions"] if fmt == "refsegrs" else counts["refs"])
        assert sum(len(ds.ref_expressions(r)) for r in range(ds.num_refs)) == len(ds)
        for i in range(len(ds)):
            sample = ds.load(i)
            assert sample["image"].dtype == np.uint8 and sample["image"].shape == (256, 256, 3)
            mask = sample["mask"]
            assert mask.dtype == bool and mask.shape == (256, 256) and mask.any()
            # the mask is exactly the pixels of the object the sentence was written for
            assert sample["text"] in scene_truth[_digest(mask)]
            assert sample["meta"]["orig_size"] == (256, 256)
            assert sample["expression_id"] == ds.expressions[i][2]


def test_expression_ids(synthetic):
    fmt, out, _ = synthetic
    ds = build_dataset(fmt, out, "val")
    ids = [e[2] for e in ds.expressions]
    assert len(set(ids)) == len(ids) and all(isinstance(x, str) for x in ids)
    if fmt == "rrsisd":
        refs = pickle.loads((out / "rrsisd" / "refs(unc).p").read_bytes())
        sent_ids = {str(s["sent_id"]): s["raw"] for r in refs if r["split"] == "val" for s in r["sentences"]}
        assert {i: t for _, t, i in ds.expressions} == sent_ids
    elif fmt == "refsegrs":
        lines = (out / "output_phrase_val.txt").read_text().splitlines()
        for ref_index, text, eid in ds.expressions:
            stem, sentence = lines[int(eid)].split(" ", 1)
            assert sentence == text and stem == ds.refs[ref_index].ref_id
    elif fmt == "risbench":  # id = zero-based line number of the split file
        lines = (out / "risbench_val.jsonl").read_text().splitlines()
        for ref_index, text, eid in ds.expressions:
            record = json.loads(lines[int(eid)])
            assert record["sent"] == text and record["split"] == "val"
            assert ds.refs[ref_index].image_path == out / "images" / record["file_name"]
    else:
        records = [json.loads(line) for line in (out / "data.jsonl").read_text().splitlines()]
        by_id = {r["id"]: r["text"] for r in records if r["split"] == "val"}
        assert {i: t for _, t, i in ds.expressions} == by_id


def test_refs_group_expressions(synthetic):
    fmt, out, _ = synthetic
    ds = build_dataset(fmt, out, "train", **({"group_by_id": True} if fmt == "refsegrs" else {}))
    multi = [r for r in range(ds.num_refs) if len(ds.ref_expressions(r)) > 1]
    assert multi, "synthetic refs should sometimes carry two sentences"
    first, second = ds.ref_expressions(multi[0])[:2]
    np.testing.assert_array_equal(ds.load(first)["mask"], ds.load(second)["mask"])
    assert ds.load(first)["text"] != ds.load(second)["text"]


def test_plot_writes_png(synthetic, tmp_path):
    fmt, out, _ = synthetic
    ds = build_dataset(fmt, out, "test")
    path = ds.plot(0, tmp_path / "sub" / "p.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width == 256 and img.height > 256


def test_image_cache_decodes_each_image_once_within_its_budget(synthetic, monkeypatch):
    import rs2sam2.data.base as base

    fmt, out, _ = synthetic
    ds = build_dataset(fmt, out, "train")
    decoded = []
    monkeypatch.setattr(base, "read_image", lambda path: (decoded.append(path) or _real_read(path)))
    images = sorted({r.image_path for r in ds.refs})
    first = {i: ds.load(i)["image"] for i in range(len(ds))}
    assert len(decoded) == len(ds)  # no cache by default
    image_bytes = first[0].nbytes
    ds.cache_images(2 * image_bytes)  # room for two images
    decoded.clear()
    for i in range(len(ds)):
        image = ds.load(i)["image"]
        assert np.array_equal(image, first[i]) and not image.flags.writeable
        with pytest.raises(ValueError):
            image[0, 0, 0] = 0  # a cached image cannot be changed under the next reader
    # expressions of one image follow each other, so each image is decoded once ...
    assert len(decoded) == len(images) == len(set(decoded))
    assert len(ds._images) == 2 and ds._images_bytes == 2 * image_bytes  # ... and the oldest dropped
    decoded.clear()
    last = ds.refs[ds.expressions[-1][0]].image_path
    ds.load(len(ds) - 1)
    assert decoded == []  # the most recent images are still there
    ds.cache_images(0)
    ds.load(len(ds) - 1)
    assert decoded == [last] and not ds._images


def test_jsonl_without_split_reads_everything(tmp_path):
    summary = synth.generate("jsonl", tmp_path, 6, 3)
    ds = JsonlDataset(tmp_path / "data.jsonl")
    assert len(ds) == sum(c["expressions"] for c in summary["splits"].values())


def test_jsonl_default_ids_are_line_numbers(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "im.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 3:6] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    lines = [json.dumps({"image": "im.png", "mask": "m.png", "text": "a"}), "",
             json.dumps({"image": str(tmp_path / "im.png"), "mask": "m.png", "text": "b"})]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    ds = JsonlDataset(tmp_path / "x.jsonl")
    assert [e[2] for e in ds.expressions] == ["0", "2"]
    assert ds.num_refs == 1  # same image and mask: one object
    assert ds.load(1)["mask"].sum() == 9


# --------------------------------------------------------------------------------------------
# RRSIS-D by hand: RLE, polygons, union rule
# --------------------------------------------------------------------------------------------


def _rle_str(mask: np.ndarray) -> dict:
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _uncompressed_rle(mask: np.ndarray) -> dict:
    flat = mask.astype(np.uint8).flatten(order="F")  # COCO RLE runs go down the columns
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


H, W = 40, 50


def _rrsisd_root(tmp_path, annotations, refs, images=None):
    root = tmp_path / "rr"
    (root / "rrsisd").mkdir(parents=True)
    img_dir = root / "images" / "rrsisd" / "JPEGImages"
    img_dir.mkdir(parents=True)
    Image.fromarray(np.full((H, W, 3), 128, np.uint8)).save(img_dir / "a.jpg")
    images = images or [{"id": 1, "file_name": "a.jpg", "height": H, "width": W}]
    (root / "rrsisd" / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    with open(root / "rrsisd" / "refs(unc).p", "wb") as fh:
        pickle.dump(refs, fh, protocol=2)
    return root


def _ref(ref_id, ann_id, split="train", texts=("x",), first_sent=0):
    sents = [{"raw": t, "sent": t, "sent_id": first_sent + k} for k, t in enumerate(texts)]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": 1, "split": split, "sentences": sents,
            "sent_ids": [s["sent_id"] for s in sents]}


def _box(y0, y1, x0, x1):
    m = np.zeros((H, W), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_rrsisd_rle_polygon_and_union(tmp_path):
    a, b = _box(2, 10, 3, 12), _box(20, 30, 30, 45)
    poly_left = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]
    poly_right = [30.0, 20.0, 40.0, 20.0, 40.0, 30.0, 30.0, 30.0]
    annotations = [
        {"id": 1, "image_id": 1, "segmentation": _rle_str(a)},                  # compressed RLE
        {"id": 2, "image_id": 1, "segmentation": _uncompressed_rle(b)},         # uncompressed RLE
        {"id": 3, "image_id": 1, "segmentation": [poly_left, poly_right]},      # two polygons
        {"id": 4, "image_id": 1, "segmentation": [_rle_str(a), _rle_str(b)]},   # two RLE parts
    ]
    refs = [_ref(10, 1, texts=("left box", "the box"), first_sent=100), _ref(11, 2, first_sent=200),
            _ref(12, 3, first_sent=300), _ref(13, 4, first_sent=400), _ref(14, [1, 2], first_sent=500),
            _ref(15, 1, split="val", first_sent=600)]
    ds = RRSISD(_rrsisd_root(tmp_path, annotations, refs), "train")
    assert len(ds) == 6 and ds.num_refs == 5
    assert [e[2] for e in ds.expressions] == ["100", "101", "200", "300", "400", "500"]
    assert ds.ref_expressions(0) == [0, 1]
    masks = {ds.expressions[i][2]: ds.load(i)["mask"] for i in range(len(ds))}
    np.testing.assert_array_equal(masks["100"], a)
    np.testing.assert_array_equal(masks["200"], b)
    # polygons: each square covers about its 10x10 area, and the mask is the union of both
    poly = masks["300"]
    assert poly[6:15, 6:15].all() and poly[21:30, 31:40].all() and not poly[18, 20]
    left = decode_segmentation([poly_left], H, W)
    right = decode_segmentation(poly_right, H, W)  # a flat polygon is accepted too
    np.testing.assert_array_equal(poly, left | right)
    assert 90 <= left.sum() <= 130
    # union rule: several parts in one segmentation, or several annotations in one ref
    np.testing.assert_array_equal(masks["400"], a | b)
    np.testing.assert_array_equal(masks["500"], a | b)
    assert ds.load(0)["meta"]["ref_id"] == 10


def test_rrsisd_errors_name_the_file(tmp_path):
    good = [{"id": 1, "image_id": 1, "segmentation": _rle_str(_box(1, 5, 1, 5))}]
    root = _rrsisd_root(tmp_path, good, [_ref(1, 1)])
    with pytest.raises(DatasetError, match=r"refs\(unc\)\.p.*split 'test'.*train"):
        RRSISD(root, "test")
    (root / "rrsisd" / "instances.json").write_text("{not json")
    with pytest.raises(DatasetError, match="instances.json"):
        RRSISD(root, "train")
    (root / "rrsisd" / "instances.json").unlink()
    with pytest.raises(DatasetError, match="instances.json"):
        RRSISD(root, "train")


def test_rrsisd_bad_references_and_sizes(tmp_path):
    good = [{"id": 1, "image_id": 1, "segmentation": _rle_str(_box(1, 5, 1, 5))}]
    with pytest.raises(DatasetError, match="ann_id 7"):
        RRSISD(_rrsisd_root(tmp_path / "a", good, [_ref(1, 7)]), "train")
    wrong_size = [{"id": 1, "file_name": "a.jpg", "height": H + 1, "width": W}]
    ds = RRSISD(_rrsisd_root(tmp_path / "b", good, [_ref(1, 1)], images=wrong_size), "train")
    with pytest.raises(DatasetError, match="instances.json"):
        ds.load(0)
    missing_image = [{"id": 1, "file_name": "gone.jpg", "height": H, "width": W}]
    with pytest.raises(DatasetError, match="gone.jpg"):
        RRSISD(_rrsisd_root(tmp_path / "c", good, [_ref(1, 1)], images=missing_image), "train")


def test_mask_size_rule_resizes_a_nearly_matching_mask_with_a_counted_warning(tmp_path):
    """RRSIS-D's quirk: instances.json (and the RLE) say 40x50, the image file is 41x50. The mask is
    resized to the image with nearest neighbour (pixel centres): output row j samples mask row
    floor((j + 0.5) * 40 / 41), so rows 25..34 land on rows 26..35 (padding would keep 25..34)."""
    box = _box(25, 35, 10, 20)
    good = [{"id": 1, "image_id": 1, "segmentation": _rle_str(box)}]
    root = _rrsisd_root(tmp_path, good, [_ref(1, 1, texts=("a", "b"))])
    image = root / "images" / "rrsisd" / "JPEGImages" / "a.jpg"
    Image.fromarray(np.full((H + 1, W, 3), 128, np.uint8)).save(image)
    ds = RRSISD(root, "train")
    assert ds.mask_size(0) == (H, W)
    with pytest.warns(MaskSizeWarning, match=r"a\.jpg is 41x50 but its mask 40x50.*so treated: 1"):
        sample = ds.load(0)
    expected = np.zeros((H + 1, W), bool)
    expected[26:36, 10:20] = True
    np.testing.assert_array_equal(sample["mask"], expected)
    assert ds.resized_masks == {str(image): ((H, W), (H + 1, W))}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second expression of the same image: no second warning
        np.testing.assert_array_equal(ds.load(1)["mask"], expected)
    # RRSIS-D's other case, fewer rows in the image (787 of 800 there): rows are dropped evenly
    Image.fromarray(np.full((H - 1, W, 3), 128, np.uint8)).save(image)
    with pytest.warns(MaskSizeWarning):
        assert RRSISD(root, "train").load(0)["mask"].shape == (H - 1, W)
    # beyond the tolerance (3% of the side, at least one pixel) the mask belongs to another image
    Image.fromarray(np.full((H + 3, W, 3), 128, np.uint8)).save(image)
    with pytest.raises(DatasetError, match="does not match"):
        RRSISD(root, "train").load(0)


def test_mask_size_fits():
    from rs2sam2.data.base import mask_size_fits

    assert mask_size_fits((800, 800), (801, 800)) and mask_size_fits((800, 800), (787, 800))
    assert mask_size_fits((8, 8), (9, 8)) and not mask_size_fits((8, 8), (10, 8))
    assert not mask_size_fits((800, 800), (760, 800)) and not mask_size_fits((8, 8), (16, 16))


def test_jsonl_inline_rle_and_polygon_masks(tmp_path):
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "im.png")
    a = _box(2, 10, 3, 12)
    poly = [5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]
    lines = [
        {"image": "im.png", "mask": _rle_str(a), "text": "rle", "category": "tank"},
        {"image": "im.png", "mask": _uncompressed_rle(a), "text": "uncompressed"},
        {"image": "im.png", "mask": [poly], "text": "polygon", "id": "p"},
        {"image": "im.png", "mask": [poly], "text": "same polygon"},
        {"image": "im.png", "mask": {"size": [H - 1, W], "counts": _rle_str(a[:-1])["counts"]}, "text": "short"},
    ]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    ds = JsonlDataset(tmp_path / "x.jsonl")
    assert ds.num_refs == 4  # the two polygon lines are one object
    with pytest.warns(MaskSizeWarning, match="40x50 but its mask 39x50"):  # "short": the mask size rule
        masks = {ds.expressions[i][1]: ds.load(i)["mask"] for i in range(len(ds))}
    np.testing.assert_array_equal(masks["short"], a)  # 39 rows stretched to 40: the last row repeats
    np.testing.assert_array_equal(masks["rle"], a)
    np.testing.assert_array_equal(masks["uncompressed"], a)
    np.testing.assert_array_equal(masks["polygon"], decode_segmentation([poly], H, W))
    assert 90 <= masks["polygon"].sum() <= 130
    assert ds.mask_size(0) == (H, W) and ds.mask_size(2) is None  # a polygon has no size of its own
    assert ds.expression_categories() == {"0": "tank", "1": "", "p": "", "3": "", "4": ""}
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "im.png", "mask": [[1.0, 2.0]], "text": "t"}) + "\n")
    with pytest.raises(DatasetError, match=r"bad\.jsonl \(inline mask.*polygon with 2 coordinates"):
        JsonlDataset(tmp_path / "bad.jsonl").load(0)


def test_lenient_reading_records_every_problem(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im.png")
    ok = {"image": "im.png", "mask": [[0, 0, 3, 0, 3, 3]], "text": "t"}
    lines = [json.dumps({**ok, "id": "a"}), "{oops", json.dumps({"image": "im.png", "text": "no mask"}),
             json.dumps({**ok, "id": "a"}), json.dumps({**ok, "id": "b"})]
    (tmp_path / "x.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match="line 2"):
        JsonlDataset(tmp_path / "x.jsonl")
    ds = JsonlDataset(tmp_path / "x.jsonl", strict=False)
    assert [e[2] for e in ds.expressions] == ["a", "b"]
    assert [p.kind for p in ds.problems] == ["bad_entry", "no_mask", "duplicate_id"]
    assert "line 4: id 'a' already used on line 1" in ds.problems[2].message


def test_rrsisd_categories_and_repeated_ids(tmp_path):
    seg = _rle_str(_box(1, 5, 1, 5))
    annotations = [{"id": 1, "image_id": 1, "segmentation": seg, "category_id": 7},
                   {"id": 2, "image_id": 1, "segmentation": seg, "category_id": 8},
                   {"id": 3, "image_id": 1, "segmentation": seg}]
    refs = [_ref(1, 1, first_sent=10), _ref(2, [1, 2], first_sent=20), {**_ref(3, 3, first_sent=30), "category_id": 9},
            _ref(4, 3, first_sent=40)]
    root = _rrsisd_root(tmp_path / "a", annotations, refs)
    path = root / "rrsisd" / "instances.json"
    data = json.loads(path.read_text())
    data["categories"] = [{"id": 7, "name": "ship"}, {"id": 8, "name": "harbor"}]
    data["images"].append(dict(data["images"][0]))  # the same image entry twice: harmless
    path.write_text(json.dumps(data))
    ds = RRSISD(root, "train")
    assert [r.category for r in ds.refs] == ["ship", "harbor+ship", "9", None]
    assert ds.expression_categories() == {"10": "ship", "20": "harbor+ship", "30": "9", "40": ""}
    assert ds.load(0)["meta"]["category"] == "ship"
    data["images"][1]["file_name"] = "b.jpg"  # the same id for another image: ambiguous
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"instances\.json: images\[1\] repeats id 1"):
        RRSISD(root, "train")
    assert [p.kind for p in RRSISD(root, "train", strict=False).problems] == ["duplicate_id"]
    dup = _rrsisd_root(tmp_path / "b", annotations, [_ref(1, 1, first_sent=10), _ref(2, 2, first_sent=10)])
    with pytest.raises(DatasetError, match="sent_id 10 of ref 2 is also in ref 1"):
        RRSISD(dup, "train")


def test_refs_pickle_cannot_run_code(tmp_path):
    path = tmp_path / "evil.p"
    marker = tmp_path / "ran"
    # protocol-0 pickle calling os.system: a normal pickle.load would run the command
    path.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DatasetError, match="os.system"):
        load_refs_pickle(path)
    assert not marker.exists()
    import datetime

    path.write_bytes(pickle.dumps([{"when": datetime.date(2020, 1, 1)}]))
    with pytest.raises(DatasetError, match="not allowed"):
        load_refs_pickle(path)


# --------------------------------------------------------------------------------------------
# RefSegRS / JSONL errors
# --------------------------------------------------------------------------------------------


def _refsegrs_root(tmp_path, lines, mask_shape=(16, 16)):
    root = tmp_path / "rs"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(root / "images" / "5.tif")
    mask = np.zeros(mask_shape, np.uint8)
    mask[:4, :4] = 200
    mask[4:6, :4] = 40  # below the threshold of 50: background
    Image.fromarray(mask).save(root / "masks" / "5.tif")
    (root / "output_phrase_train.txt").write_text("\n".join(lines) + "\n")
    return root


def test_refsegrs_threshold_and_line_ids(tmp_path):
    root = _refsegrs_root(tmp_path, ["5 the road", "", "5 the long road "])
    ds = RefSegRS(root, "train")
    assert [(e[1], e[2]) for e in ds.expressions] == [("the road", "0"), ("the long road", "2")]
    assert ds.num_refs == 2 and RefSegRS(root, "train", group_by_id=True).num_refs == 1
    assert ds.load(0)["mask"].sum() == 16


def test_refsegrs_errors(tmp_path):
    with pytest.raises(DatasetError, match=r"output_phrase_train\.txt, line 2"):
        RefSegRS(_refsegrs_root(tmp_path / "a", ["5 ok", "5"]), "train")
    with pytest.raises(DatasetError, match="output_phrase_val.txt"):
        RefSegRS(_refsegrs_root(tmp_path / "b", ["5 ok"]), "val")
    with pytest.raises(DatasetError, match="9.tif"):
        RefSegRS(_refsegrs_root(tmp_path / "c", ["9 missing image"]), "train")
    ds = RefSegRS(_refsegrs_root(tmp_path / "d", ["5 ok"], mask_shape=(8, 8)), "train")
    with pytest.raises(DatasetError, match=r"masks/5\.tif.*does not match"):
        ds.load(0)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "output_phrase_train.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match="no entries"):
        RefSegRS(tmp_path / "e", "train")


def test_jsonl_errors(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "im.png")
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "m.png")
    ok = json.dumps({"image": "im.png", "mask": "m.png", "text": "t", "split": "train"})
    cases = {
        "bad.jsonl": ([ok, "{oops"], r"bad\.jsonl, line 2: not valid JSON"),
        "key.jsonl": ([json.dumps({"image": "im.png", "text": "t"})], r"key\.jsonl, line 1: missing \['mask'\]"),
        "dup.jsonl": ([ok.replace('"t"', '"t", "id": 1'), ok.replace('"t"', '"u", "id": 1')], "already used"),
        "gone.jsonl": ([ok.replace("im.png", "none.png")], "none.png"),
    }
    for name, (lines, pattern) in cases.items():
        (tmp_path / name).write_text("\n".join(lines) + "\n")
        with pytest.raises(DatasetError, match=pattern):
            JsonlDataset(tmp_path / name)
    (tmp_path / "ok.jsonl").write_text(ok + "\n")
    with pytest.raises(DatasetError, match=r"ok\.jsonl: no entries for split 'val' \(splits present: train\)"):
        JsonlDataset(tmp_path / "ok.jsonl", "val")
    with pytest.raises(DatasetError, match="missing.jsonl"):
        JsonlDataset(tmp_path / "missing.jsonl")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_mask_files_one_value_rule_strict_and_budgeted(tmp_path):
    """Mask values: one band as stored, palettes by their colours, the maximum over colour bands with
    alpha left out -- alike for PNG (PIL) and GeoTIFF (GDAL); truncated or over-budget masks are
    DatasetErrors naming the file."""
    import rasterio

    from rs2sam2.data import read_mask_file
    from rs2sam2.imageio import set_max_pixels

    index = np.array([[0, 1, 2, 0]], np.uint8).repeat(3, axis=0)  # 3 x 4
    colours = {0: (0, 0, 0), 1: (200, 0, 0), 2: (0, 0, 255)}
    expected = np.array([[0, 200, 255, 0]], np.uint8).repeat(3, axis=0)
    pal = Image.fromarray(index, mode="P")
    pal.putpalette([c for k in range(3) for c in colours[k]] + [0] * (253 * 3))
    pal.save(tmp_path / "pal.png")
    with rasterio.open(tmp_path / "pal.tif", "w", driver="GTiff", width=4, height=3, count=1, dtype="uint8",
                       photometric="palette") as dst:
        dst.write(index, 1)
        dst.write_colormap(1, {k: (*c, 255) for k, c in colours.items()})
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black: background, whatever the alpha
    rgba[0, 1, 0] = 90
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    la = np.zeros((3, 4, 2), np.uint8)
    la[..., 1] = 255
    la[2, 3, 0] = 7
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    with rasterio.open(tmp_path / "rgba.tif", "w", driver="GTiff", width=4, height=3, count=4, dtype="uint8",
                       photometric="rgb", alpha="unassociated") as dst:
        dst.write(rgba.transpose(2, 0, 1))
    Image.fromarray(index.astype(bool)).save(tmp_path / "bits.png")  # mode "1"
    np.testing.assert_array_equal(read_mask_file(tmp_path / "pal.png"), expected)
    np.testing.assert_array_equal(read_mask_file(tmp_path / "pal.tif"), expected)
    for name in ("rgba.png", "rgba.tif"):
        got = read_mask_file(tmp_path / name)
        assert got.shape == (3, 4) and got[0, 1] == 90 and got.sum() == 90, name
    got = read_mask_file(tmp_path / "la.png")
    assert got[2, 3] == 7 and got.sum() == 7
    np.testing.assert_array_equal(read_mask_file(tmp_path / "bits.png"), (index > 0) * 255)

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 2, (120, 160), np.uint8) * 255).save(tmp_path / "m.png")
    data = (tmp_path / "m.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"mask file: cannot read image .*cut\.png.*truncated"):
        read_mask_file(tmp_path / "cut.png")
    with pytest.raises(DatasetError, match=r"mask file not found: .*none\.png"):
        read_mask_file(tmp_path / "none.png")
    set_max_pixels(10_000)
    try:
        with pytest.raises(DatasetError, match=r"m\.png: decoding this image takes 160 x 120.*--max-pixels"):
            read_mask_file(tmp_path / "m.png")
    finally:
        set_max_pixels(None)


def test_build_dataset_names():
    with pytest.raises(ValueError, match="rrsisd, refsegrs, jsonl"):
        build_dataset("coco", "/nowhere", "train")
    with pytest.raises(DatasetError, match="output_phrase_train.txt"):
        build_dataset("RefSegRS", "/nowhere", "train")


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------


def _sample(h=48, w=64, value=None):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3)).astype(np.uint8) if value is None else np.full((h, w, 3), value, np.uint8)
    mask = np.zeros((h, w), bool)
    mask[10:30, 20:50] = True
    return {"image": image, "mask": mask, "text": "t", "expression_id": "7", "meta": {"orig_size": (h, w)}}


def test_transform_shapes_and_normalisation():
    out = SampleTransform(32, 16)(_sample())
    assert out["image"].shape == (3, 32, 32) and out["image"].dtype == torch.float32
    assert out["image_evf"].shape == (3, 16, 16) and out["image_evf"].dtype == torch.float32
    assert out["mask"].shape == (32, 32) and out["mask"].dtype == torch.float32
    assert set(out["mask"].unique().tolist()) == {0.0, 1.0}
    assert (out["text"], out["expression_id"], out["meta"]) == ("t", "7", {"orig_size": (48, 64)})
    # a uniform image at the ImageNet mean comes out as zeros; one at mean + std as ones
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    for target, value in ((0.0, mean), (1.0, mean + std)):
        sample = _sample()
        sample["image"] = np.broadcast_to((value * 255).astype(np.float32), (48, 64, 3)).round().astype(np.uint8)
        image = SampleTransform(8, 8)(sample)["image"]
        assert torch.allclose(image, torch.full_like(image, target), atol=0.01)


def test_mask_resize_is_nearest_and_keeps_the_object():
    out = SampleTransform(96, 8, keep_original_mask=True)(_sample(48, 48))  # 2x upsampling
    np.testing.assert_array_equal(out["mask"][20:60, 40:96].numpy(), 1)
    assert out["mask"].sum() == 4 * 20 * 28 and out["mask_orig"].shape == (48, 48)


def test_random_boxes_are_black_32px_and_seeded():
    white = np.full((200, 180, 3), 255, np.uint8)
    out, boxes = add_random_boxes(white, np.random.default_rng(5), return_boxes=True)
    assert 20 <= len(boxes) <= 60
    expect = np.zeros((200, 180), bool)
    for x, y, w, h in boxes:
        assert (w, h) == (32, 32) and 0 <= x <= 180 - 32 and 0 <= y <= 200 - 32
        expect[y:y + h, x:x + w] = True
    np.testing.assert_array_equal((out == 0).all(axis=2), expect)
    assert ((out == 0).all(axis=2) | (out == 255).all(axis=2)).all()
    assert (white == 255).all()  # the input is left alone
    again = add_random_boxes(white, np.random.default_rng(5))
    np.testing.assert_array_equal(out, again)


def test_random_boxes_in_the_transform():
    sample = _sample(64, 64, value=255)
    always = SampleTransform(64, 8, train=True, random_boxes=True, rng=3, box_prob=1.0)
    a = always(sample)["image"]
    b = SampleTransform(64, 8, train=True, random_boxes=True, rng=3, box_prob=1.0)(sample)["image"]
    assert torch.equal(a, b) and (a < 0).any()  # black boxes present, same for the same seed
    evaluation = SampleTransform(64, 8, train=False, random_boxes=True, rng=3, box_prob=1.0)
    assert (evaluation(sample)["image"] > 0).all()
    hits = SampleTransform(8, 8, train=True, random_boxes=True, rng=0)
    share = np.mean([(hits(sample)["image"] < 0).any().item() for _ in range(400)])
    assert 0.13 < share < 0.27  # published rate: 20% of samples
