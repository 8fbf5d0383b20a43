"""User errors end as one message naming the file or argument and exit status 2, with nothing written:
the CLI-wide rule, checkpoint config values, ``--image-size``, JSONL files that are not images,
unreadable dataset images, truncated or over-budget masks and predictions, and bad arguments of
``evaluate`` (``synth``'s cases are in test_synth.py)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

import helpers_ckpt as h
from rs2sam2.cli import main
from rs2sam2.config import ModelConfig, get_config
from rs2sam2.data import DatasetError, build_dataset, synth
from rs2sam2.errors import ConfigError, OutputError, UserError, user_message
from rs2sam2.fsutil import check_writable


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return h.build_checkpoint(tmp_path_factory.mktemp("ckpt") / "nano")


@pytest.fixture(scope="module")
def rrsisd(tmp_path_factory):
    root = tmp_path_factory.mktemp("rrsisd")
    synth.generate("rrsisd", root, 3, seed=0, image_size=64)
    return root


def _evaluate(tmp_path, ckpt, data, *extra: str, dataset: str = "rrsisd", split: str = "train"):
    """``rs2sam2 evaluate`` into ``tmp_path/report/r.json``; returns (exit status, report path)."""
    out = tmp_path / "report" / "r.json"
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", dataset, "--data", str(data), "--split", split,
               "--out", str(out), "--no-progress", *extra])
    return rc, out


def _error(capsys, command: str = "evaluate") -> str:
    """The one error line of stderr, without its prefix; no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"rs2sam2 {command}: error: ")]
    assert len(lines) == 1, err
    return lines[0].removeprefix(f"rs2sam2 {command}: error: ")


# --- the CLI-wide rule -----------------------------------------------------------------------------


def test_cli_turns_user_errors_into_exit_two_and_lets_bugs_through(monkeypatch, capsys):
    from rs2sam2.imageio import ImageReadError

    def fails_with(exc):
        def run(args):
            raise exc
        return run

    argv = ["synth", "--format", "jsonl", "--out", "unused"]
    for exc in (DatasetError("data.jsonl, line 3: bad"), ConfigError("--x must be >= 1"),
                ImageReadError("cannot read image a.png")):  # an older user-error type, not a UserError yet
        monkeypatch.setattr(synth, "run", fails_with(exc))
        assert main(argv) == 2
        assert _error(capsys, "synth") == str(exc)
    monkeypatch.setattr(synth, "run", fails_with(KeyError("a bug")))
    with pytest.raises(KeyError):  # anything else is a bug: its traceback stays visible
        main(argv)


def test_user_message_drops_the_dataloader_worker_traceback():
    from torch._utils import ExceptionWrapper

    try:
        raise DatasetError("a.png: cannot read\nsecond line")
    except DatasetError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DatasetError) as caught:
        wrapped.reraise()
    assert "Traceback" in str(caught.value)
    assert user_message(caught.value) == "a.png: cannot read\nsecond line"
    assert user_message(ConfigError("plain")) == "plain"


# --- model configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("change, message", [
    ({"image_size": "big"}, "image_size: expected an integer, got 'big'"),
    ({"image_size": True}, "image_size: expected an integer, got True"),
    ({"hidden_dim": 0}, "hidden_dim: expected an integer in [1, 8192], got 0"),
    ({"colour": "red"}, "colour: unknown key (valid keys: image_size, "),
    ({"hiera": {"window_spec": [8, "x", 8, 4]}}, "hiera.window_spec: expected an integer, got 'x'"),
    ({"hiera": {"stages": 4}}, "hiera.stages: expected a list of integers, got 4"),
    ({"hiera": {"depth": 4}}, "hiera.depth: unknown key"),
    ({"beit3": [1, 2]}, "beit3: expected a mapping of Beit3Config keys"),
    ({"fusion": {"alpha_t": math.nan}}, "fusion.alpha_t: expected a finite number in [0, 100], got nan"),
    ({"fusion": {"bhfm": "sideways"}}, "fusion.bhfm: must be one of bi, uni, linear, off"),
    ({"fusion": {"mpg": "yes"}}, "fusion.mpg: expected true or false"),
    ({"beit3": {"pos_embed_init": "zeros"}}, "beit3.pos_embed_init: must be one of normal, sincos"),
    ({"beit3": {"pos_embed_init": "sincos", "embed_dim": 130}}, "beit3.pos_embed_init: sincos needs an embed_dim"),
])
def test_config_values_are_checked_and_named(change, message):
    d = get_config("nano").to_dict()
    for key, value in change.items():
        d[key] = {**d[key], **value} if isinstance(value, dict) and isinstance(d.get(key), dict) else value
    with pytest.raises(ConfigError) as caught:
        ModelConfig.from_dict(d)
    assert str(caught.value).startswith(message)
    assert isinstance(caught.value, ValueError)  # callers that caught ValueError still do


def test_config_from_json_round_trips_and_converts_types():
    cfg = get_config("nano")
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    d = cfg.to_dict()
    d["fusion"]["alpha_t"] = 1  # an integer where a float is expected
    assert ModelConfig.from_dict(d).fusion.alpha_t == 1.0 and isinstance(ModelConfig.from_dict(d).fusion.alpha_t, float)


def test_allowed_image_sizes():
    cfg = get_config("nano")
    assert cfg.image_size_step == 32  # stride 4 x first window 8 = 32; 3 poolings: 4 * 2**3 = 32
    wide = dataclasses.replace(cfg, hiera=dataclasses.replace(cfg.hiera, window_spec=(16, 4, 8, 4)), image_size=256)
    assert wide.image_size_step == 64
    for bad, nearest in ((100, "96 or 128"), (16, "32")):
        with pytest.raises(ConfigError, match=rf"image_size: {bad} is not allowed .* multiple of 32 \(nearest: {nearest}\)"):
            dataclasses.replace(cfg, image_size=bad)
    for bad in (0, -32):
        with pytest.raises(ConfigError, match=r"image_size: expected an integer in \[1, 8192\]"):
            dataclasses.replace(cfg, image_size=bad)
    # a size the message allows runs
    from rs2sam2 import build_model

    model = build_model(dataclasses.replace(cfg, image_size=96)).eval()
    with torch.no_grad():
        out = model(images=torch.zeros(1, 3, 96, 96), images_evf=torch.zeros(1, 3, 128, 128),
                    input_ids=torch.tensor([[0, 5, 2]]), attention_mask=torch.ones(1, 3, dtype=torch.bool))
    assert out.logits.shape[-1] == 96


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.update(image_size="big"), "rs2sam2_config.image_size: expected an integer, got 'big'"),
    (lambda c: c.update(colour="red"), "rs2sam2_config.colour: unknown key"),
    (lambda c: c["hiera"].update(window_spec="8,4"), "rs2sam2_config.hiera.window_spec: expected a list of integers"),
])
def test_bad_checkpoint_config_json_is_exit_two(tmp_path, ckpt, rrsisd, capsys, edit, message):
    bad = tmp_path / "ckpt"
    bad.mkdir()
    for f in ckpt.iterdir():
        if f.is_file():
            (bad / f.name).write_bytes(f.read_bytes())
    raw = json.loads((bad / "config.json").read_text())
    edit(raw["rs2sam2_config"])
    (bad / "config.json").write_text(json.dumps(raw))
    rc, out = _evaluate(tmp_path, bad, rrsisd)
    assert rc == 2
    assert _error(capsys).startswith(f"{bad / 'config.json'}: {message}")
    assert not out.parent.exists()


def test_image_size_the_model_cannot_take_is_exit_two(tmp_path, ckpt, rrsisd, capsys):
    rc, out = _evaluate(tmp_path, ckpt, rrsisd, "--image-size", "100")
    assert rc == 2
    error = _error(capsys)
    assert error.startswith("image_size: 100 is not allowed for this model, which takes a multiple of 32 "
                            "(nearest: 96 or 128)")
    assert not out.parent.exists()


# --- datasets --------------------------------------------------------------------------------------


@pytest.fixture()
def jsonl(tmp_path):
    root = tmp_path / "js"
    synth.generate("jsonl", root, 2, seed=0, image_size=64)
    return root


def _rewrite_line(root, number: int, **changes) -> None:
    path = root / "data.jsonl"
    lines = path.read_text().splitlines()
    lines[number - 1] = json.dumps({**json.loads(lines[number - 1]), **changes})
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_line_naming_a_file_that_is_not_an_image(tmp_path, jsonl, ckpt, capsys):
    (jsonl / "notes.txt").write_text("not an image\n")
    _rewrite_line(jsonl, 2, image="notes.txt")
    with pytest.raises(DatasetError, match=rf"data\.jsonl, line 2: image {jsonl.resolve() / 'notes.txt'} is not a "
                                           "readable image"):
        build_dataset("jsonl", jsonl, None)
    rc, out = _evaluate(tmp_path, ckpt, jsonl, dataset="jsonl", split="all")
    assert rc == 2 and "data.jsonl, line 2: image" in _error(capsys) and not out.parent.exists()
    _rewrite_line(jsonl, 2, image="images/00000.png", mask="masks/gone.png")
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 2: mask file not found: .*gone\.png"):
        build_dataset("jsonl", jsonl, None)


@pytest.mark.parametrize("text", ["\u200b\u200b", " \u00a0\ufeff "])
def test_dataset_text_without_visible_characters_is_empty(jsonl, text):
    _rewrite_line(jsonl, 1, text=text)
    with pytest.raises(DatasetError, match=r"data\.jsonl, line 1: 'text' must be a non-empty string"):
        build_dataset("jsonl", jsonl, None)
    lenient = build_dataset("jsonl", jsonl, None, strict=False)
    assert [p.kind for p in lenient.problems] == ["bad_entry"]
    assert all(t.strip() for _, t, _ in lenient.expressions)


def test_dataset_texts_are_normalised(jsonl):
    _rewrite_line(jsonl, 1, text="  the\u200b red\u00a0\u00a0car ")
    assert build_dataset("jsonl", jsonl, None).expressions[0][1] == "the red car"


@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_image_inside_a_dataset_during_evaluate(tmp_path, ckpt, rrsisd, capsys, workers):
    data = tmp_path / "data"
    data.mkdir()
    for f in rrsisd.rglob("*"):
        if f.is_file():
            (data / f.relative_to(rrsisd)).parent.mkdir(parents=True, exist_ok=True)
            (data / f.relative_to(rrsisd)).write_bytes(f.read_bytes())
    dataset = build_dataset("rrsisd", data, "train")
    broken = dataset.refs[-1].image_path
    broken.write_bytes(b"not a jpeg")
    rc, out = _evaluate(tmp_path, ckpt, data, "--num-workers", workers)
    assert rc == 2
    error = _error(capsys)  # no traceback, even from a DataLoader worker
    assert error.startswith("rrsisd train, expression ") and f"cannot read image {broken}" in error
    assert not out.parent.exists()


def _cut(path) -> None:
    """Cut a file in half: a PNG's header stays whole, its pixel data does not."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_mask_inside_a_dataset_during_evaluate(tmp_path, jsonl, ckpt, capsys):
    """A PNG mask cut short is an error naming it (GDAL would have read it as if it were whole)."""
    mask = jsonl / "masks" / "00000_1.png"
    _cut(mask)
    with pytest.raises(DatasetError, match=rf"mask file: cannot read image {mask}.*truncated"):
        build_dataset("jsonl", jsonl, None).load(1)
    rc, out = _evaluate(tmp_path, ckpt, jsonl, dataset="jsonl", split="all")
    assert rc == 2
    error = _error(capsys)
    assert error.startswith(f"mask file: cannot read image {mask}") and "truncated" in error
    assert not out.parent.exists()


def test_mask_over_the_decode_budget_during_evaluate(tmp_path, jsonl, ckpt, capsys, monkeypatch):
    mask = jsonl / "masks" / "00000_1.png"
    from PIL import Image

    Image.new("L", (66, 66)).save(mask)  # within the mask size rule of the 64 x 64 image, over the budget
    monkeypatch.setenv("RS2SAM2_MAX_PIXELS", "4200")
    rc, out = _evaluate(tmp_path, ckpt, jsonl, dataset="jsonl", split="all")
    assert rc == 2
    error = _error(capsys)
    assert error.startswith(f"mask file: {mask}: decoding this image takes 66 x 66 = 4,356 pixels") and \
        "decode budget of 4,200 pixels" in error and "RS2SAM2_MAX_PIXELS=N" in error, error
    assert not out.parent.exists()


def test_truncated_prediction_is_exit_two(tmp_path, rrsisd, capsys):
    import numpy as np
    from PIL import Image

    dataset = build_dataset("rrsisd", rrsisd, "train")
    pred = tmp_path / "pred"
    pred.mkdir()
    for _, _, eid in dataset.expressions:
        Image.fromarray(np.random.default_rng(0).integers(0, 2, (64, 64), np.uint8) * 255).save(pred / f"{eid}.png")
    broken = pred / f"{dataset.expressions[-1][2]}.png"
    _cut(broken)
    rc = main(["evaluate", "--predictions", str(pred), "--dataset", "rrsisd", "--data", str(rrsisd),
               "--split", "train", "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert rc == 2
    error = _error(capsys)
    assert error.startswith(f"prediction file: cannot read image {broken}") and "truncated" in error, error
    assert not (tmp_path / "r.json").exists()


# --- evaluate's arguments --------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--threshold", "nan"], "argument --threshold: expected a finite number, got 'nan'"),
    (["--threshold", "inf"], "argument --threshold: expected a finite number, got 'inf'"),
    (["--threshold=-inf"], "argument --threshold: expected a finite number, got '-inf'"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer in [1, 4096], got '0'"),
    (["--num-workers", "-1"], "argument --num-workers: expected an integer in [0, 256], got '-1'"),
    (["--limit", "0"], "argument --limit: expected an integer >= 1, got '0'"),
    (["--image-size", "-64"], "argument --image-size: expected an integer in [1, 8192], got '-64'"),
])
def test_bad_evaluate_arguments_are_refused_before_reading(tmp_path, capsys, extra, message):
    # refused as they are parsed: a checkpoint and data that do not exist are never looked at
    with pytest.raises(SystemExit) as exc:
        _evaluate(tmp_path, tmp_path / "no-ckpt", tmp_path / "no-data", *extra)
    assert exc.value.code == 2 and _error(capsys) == message
    assert not (tmp_path / "report").exists()


def test_evaluate_threshold_nan_in_python(ckpt, rrsisd):
    from rs2sam2 import load_pretrained
    from rs2sam2.evaluate import evaluate_model
    from rs2sam2.text import load_tokenizer

    model, tokenizer = load_pretrained(ckpt), load_tokenizer(ckpt / "tokenizer.model")
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        evaluate_model(model, build_dataset("rrsisd", rrsisd, "train"), tokenizer, threshold=float("nan"))


def test_unwritable_evaluate_out_is_refused_first(tmp_path, ckpt, rrsisd, capsys):
    (tmp_path / "file").write_text("x")
    under_file = tmp_path / "file" / "r.json"
    for out, message in ((tmp_path, f"--out {tmp_path} is a folder"),
                         (under_file, f"cannot write --out {under_file}: {tmp_path / 'file'} is a file, not a folder")):
        rc = main(["evaluate", "--checkpoint", str(ckpt), "--dataset", "rrsisd", "--data", str(rrsisd),
                   "--split", "train", "--out", str(out), "--no-progress"])
        assert rc == 2 and _error(capsys).startswith(message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_predictions_folder_is_exit_two(tmp_path, rrsisd, capsys):
    rc = main(["evaluate", "--predictions", str(tmp_path / "none"), "--dataset", "rrsisd", "--data", str(rrsisd),
               "--split", "train", "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert rc == 2 and _error(capsys) == f"--predictions {tmp_path / 'none'}: no such file or folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_exit_two(tmp_path, ckpt, rrsisd, capsys):
    rc, out = _evaluate(tmp_path, ckpt, rrsisd, "--device", "cuda")
    assert rc == 2 and "CUDA is not available" in _error(capsys) and not out.parent.exists()


# --- check_writable --------------------------------------------------------------------------------


def test_check_writable_creates_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "r.json"
    assert check_writable(target) == target
    assert list(tmp_path.iterdir()) == []  # no folder made, no probe left
    with pytest.raises(OutputError, match="is a folder"):
        check_writable(tmp_path, "--out")
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "r.json")
    assert issubclass(OutputError, UserError)
