"""`rs2sam2 check-data`: generated datasets with planted faults; it finds each one, and only those."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as coco_mask

from rs2sam2.cli import main
from rs2sam2.data.checks import check_dataset
from rs2sam2.data.synth import generate


def _empty_rle(height: int, width: int) -> dict:
    rle = coco_mask.encode(np.zeros((height, width), np.uint8, order="F"))
    return {"size": [height, width], "counts": rle["counts"].decode("ascii")}


def _problems(report: dict, split: str) -> dict[str, list[str]]:
    return report["splits"][split]["problems"]


def test_clean_dataset_exits_zero(tmp_path, capsys):
    generate("rrsisd", tmp_path, num_images=6, seed=4, image_size=64)
    assert main(["check-data", "--dataset", "rrsisd", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count(": clean (") == 3


def test_rrsisd_planted_faults(tmp_path, capsys):
    root = tmp_path / "rr"
    generate("rrsisd", root, num_images=12, seed=5, image_size=64)
    instances_path, refs_path = root / "rrsisd" / "instances.json", root / "rrsisd" / "refs(unc).p"
    image_dir = root / "images" / "rrsisd" / "JPEGImages"
    instances = json.loads(instances_path.read_text())
    refs = pickle.loads(refs_path.read_bytes())
    files = {img["id"]: img["file_name"] for img in instances["images"]}
    train = [r for r in refs if r["split"] == "train"]
    by_image: dict[int, list[dict]] = {}
    for r in train:
        by_image.setdefault(r["image_id"], []).append(r)
    images = sorted(by_image)
    assert len(images) >= 7
    # 1. a missing image
    (image_dir / files[images[0]]).unlink()
    # 2. an unreadable image: the download stopped half-way
    cut = image_dir / files[images[1]]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    # 3. an image one row taller than its annotation (RRSIS-D's 800x801 case), and one far off
    Image.fromarray(np.full((65, 64, 3), 90, np.uint8)).save(image_dir / files[images[2]])
    Image.fromarray(np.full((96, 64, 3), 90, np.uint8)).save(image_dir / files[images[3]])
    # 4. an empty mask
    empty_ref = by_image[images[4]][0]
    for ann in instances["annotations"]:
        if ann["id"] == empty_ref["ann_id"]:
            ann["segmentation"] = _empty_rle(64, 64)
    # 5. a duplicate expression id: a sentence of another train ref reuses the first one's sent_id
    dup_ref = by_image[images[5]][0]
    first_sent = train[0]["sentences"][0]["sent_id"]
    dup_ref["sentences"][0]["sent_id"] = first_sent
    # 6. a sentence without a mask: its ann_id is absent from instances.json
    by_image[images[6]][0]["ann_id"] = 99999
    instances_path.write_text(json.dumps(instances))
    refs_path.write_bytes(pickle.dumps(refs, protocol=2))

    report = check_dataset("rrsisd", root, ["train", "val", "test"])
    found = _problems(report, "train")
    assert sorted(found) == ["duplicate_id", "empty_mask", "missing_image", "no_mask", "size_mismatch",
                             "unreadable_image"]
    assert found["missing_image"] == [str(image_dir / files[images[0]])]
    assert len(found["unreadable_image"]) == 1 and "truncated" in found["unreadable_image"][0]
    assert files[images[1]] in found["unreadable_image"][0]
    mismatches = sorted(found["size_mismatch"])
    assert len(mismatches) == 2
    assert any(files[images[2]] in m and "image 65x64, mask 64x64" in m and "resized to the image" in m
               for m in mismatches)
    assert any(files[images[3]] in m and "image 96x64" in m and "loading fails" in m for m in mismatches)
    assert len(found["empty_mask"]) == 1 and f"ref {empty_ref['ref_id']!r}" in found["empty_mask"][0]
    assert len(found["duplicate_id"]) == 1 and f"sent_id {first_sent!r}" in found["duplicate_id"][0]
    assert len(found["no_mask"]) == 1 and "ann_id 99999" in found["no_mask"][0]
    assert report["splits"]["val"]["clean"] and report["splits"]["test"]["clean"] and not report["clean"]

    out = tmp_path / "check.json"
    assert main(["check-data", "--dataset", "rrsisd", "--data", str(root), "--json", str(out)]) == 1
    assert json.loads(out.read_text())["splits"]["train"]["problems"] == found
    console = capsys.readouterr().out
    for title in ("missing images: 1", "unreadable images: 1", "image/mask size mismatches: 2", "empty masks: 1",
                  "duplicate ids: 1", "sentences without a mask: 1"):
        assert title in console
    assert "rrsisd val: clean" in console


def test_risbench_and_jsonl_planted_faults(tmp_path, capsys):
    root = tmp_path / "rb"
    generate("risbench", root, num_images=4, seed=6, image_size=64, splits=(1, 0, 0))
    path = root / "risbench_train.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    names = sorted({r["file_name"] for r in lines})
    (root / "images" / names[0]).unlink()                                          # missing image
    Image.fromarray(np.zeros((64, 66, 3), np.uint8)).save(root / "images" / names[1])  # 2 columns wider
    lines[-1]["segmentation"] = _empty_rle(64, 64)                                 # empty mask
    del lines[-2]["segmentation"]                                                   # sentence without a mask
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + "{not json\n")   # malformed line
    report = check_dataset("risbench", root, ["train"])
    found = _problems(report, "train")
    assert sorted(found) == ["bad_entry", "empty_mask", "missing_image", "no_mask", "size_mismatch"]
    assert found["bad_entry"] == [f"{path}, line {len(lines) + 1}: not valid JSON (Expecting property name "
                                  "enclosed in double quotes)"]
    assert found["no_mask"] == [f"{path}, line {len(lines) - 1}: no 'segmentation'"]
    assert "image 64x66, mask 64x64" in found["size_mismatch"][0]
    assert main(["check-data", "--dataset", "risbench", "--data", str(root), "--split", "train", "val"]) == 1
    assert "risbench val: cannot be read: " in capsys.readouterr().out  # synth wrote it empty

    # JSONL: a mask file that is missing, an unreadable image, a duplicate id
    jroot = tmp_path / "js"
    generate("jsonl", jroot, num_images=3, seed=6, image_size=64)
    records = [json.loads(line) for line in (jroot / "data.jsonl").read_text().splitlines()]
    (jroot / records[0]["mask"]).unlink()
    (jroot / records[-1]["image"]).write_bytes(b"not an image")
    records[1]["id"] = records[2]["id"] if records[2]["mask"] != records[0]["mask"] else records[-1]["id"]
    (jroot / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    found = _problems(check_dataset("jsonl", jroot, [None]), "all")
    assert sorted(found) == ["duplicate_id", "no_mask", "unreadable_image"]
    assert records[0]["mask"].split("/")[-1] in found["no_mask"][0]
    assert "cannot read the header" in found["unreadable_image"][0]


@pytest.mark.parametrize("args", [["--dataset", "rrsisd", "--data", "/no/such/folder"],
                                  ["--dataset", "refsegrs", "--data", "."]])
def test_unreadable_dataset_exits_two(args, capsys):
    assert main(["check-data", *args]) == 2
    assert "error:" in capsys.readouterr().err


def test_decode_finds_a_corrupt_body(tmp_path):
    """A PNG whose header and IEND chunk are intact but whose pixel data is garbage passes the cheap
    checks; --decode reads the pixels and reports it."""
    root = tmp_path / "rb"
    generate("risbench", root, num_images=1, seed=7, image_size=64, splits=(1, 0, 0))
    image = next((root / "images").iterdir())
    data = bytearray(image.read_bytes())
    start = data.index(b"IDAT") + 8
    data[start : start + 40] = bytes(40)
    image.write_bytes(bytes(data))
    assert Path(image).stat().st_size == len(data)
    assert check_dataset("risbench", root, ["train"])["clean"]
    found = _problems(check_dataset("risbench", root, ["train"], decode=True), "train")
    assert list(found) == ["unreadable_image"] and image.name in found["unreadable_image"][0]
