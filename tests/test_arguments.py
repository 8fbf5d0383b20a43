"""The argument walk: every option of every command, given a bad value, is refused before any work
with exit status 2, one ``error:`` line, no traceback, and nothing created in the working folder.

The options come from the parsers themselves (rs2sam2.cli builds each command's parser), so an
option added later is walked too: a number must use ``rs2sam2.cliargs.number`` (its bounds give the
bad values), a choice gets an unknown one, and any other option needs a bad value in
:data:`RUN_CASES` (run through ``rs2sam2.cli.main`` in-process, with the other arguments valid) or
a line in :data:`UNCHECKED` saying why it has none.
"""

from __future__ import annotations

import argparse
import math
import sys

import pytest
import torch

from rs2sam2.cli import COMMANDS, build_parser, main
from rs2sam2.cliargs import ENVIRONMENT

#: options that take a value this test cannot make bad, and why
UNCHECKED = {
    # any text is an expression, a split name is checked by the dataset reader (RUN_CASES has one for evaluate)
    ("predict", "--text"): "any text is a valid expression (empty ones are refused: tests/test_predict.py)",
    # Hub options: without a network and a Hub id there is nothing to look up
    ("evaluate", "--subfolder"): "a Hub or folder path inside --checkpoint: tests/test_hub.py",
    ("evaluate", "--revision"): "a Hub revision: tests/test_hub.py",
    ("predict", "--subfolder"): "a Hub or folder path inside --checkpoint: tests/test_hub.py",
    ("predict", "--revision"): "a Hub revision: tests/test_hub.py",
    ("serve", "--subfolder"): "a Hub or folder path inside --checkpoint: tests/test_hub.py",
    ("serve", "--revision"): "a Hub revision: tests/test_hub.py",
    # were its check to regress, a run-level case would start the ten-minute demo
    ("demo", "--out"): "an output folder: tests/test_demo.py",
    # a split the dataset lacks means a run without validation (said on stderr), as before
    ("train", "--val-split"): "a missing validation split is a run without validation: tests/test_train.py",
}

#: commands whose numbers still have bare int/float types today, as their owners move them to
#: cliargs.number (their numbers that use it are walked already)
PENDING: dict[str, str] = {}

#: (command, option) -> a bad value, tried with the command's other arguments valid ({missing}: a
#: path that does not exist; {file}: a plain file where a folder or another kind of file is wanted)
RUN_CASES = {
    ("train", "--out"): "{file}",
    ("train", "--config"): "{missing}",
    ("train", "--set"): "no-equals-sign",
    ("train", "--model"): "[1, 2]",
    ("train", "--preset"): "no-such-preset",
    ("train", "--data"): "{missing}",
    ("train", "--train-split"): "no-such-split",
    ("train", "--device"): "cuda:x",
    ("train", "--tokenizer"): "{missing}",
    ("train", "--init"): "{missing}",
    ("train", "--sam2-checkpoint"): "{missing}",
    ("train", "--beit3-checkpoint"): "{missing}",
    ("evaluate", "--checkpoint"): "{missing}",
    ("evaluate", "--predictions"): "{missing}",
    ("evaluate", "--data"): "{missing}",
    ("evaluate", "--split"): "no-such-split",
    ("evaluate", "--out"): "{file}/report.json",
    ("evaluate", "--tokenizer"): "{missing}",
    ("evaluate", "--device"): "cuda:x",
    ("check-data", "--data"): "{missing}",
    ("check-data", "--split"): "no-such-split",
    ("check-data", "--json"): "{file}/report.json",
    ("serve", "--checkpoint"): "{missing}",
    ("serve", "--tokenizer"): "{missing}",
    ("serve", "--device"): "cuda:x",
    ("serve", "--host"): "203.0.113.7",  # TEST-NET-3: an address no machine here has
    ("synth", "--out"): "{file}",
    ("predict", "--checkpoint"): "{missing}",
    ("predict", "--tokenizer"): "{missing}",
    ("predict", "--device"): "cuda:x",
    ("predict", "--image"): "{missing}",
    ("predict", "--out"): "{file}/mask.png",
    ("predict", "--vector"): "polygons.xyz",
    ("predict", "--geojson"): "polygons.txt",
    ("predict", "--overlay"): "{file}/overlay.png",
    ("predict", "--prob"): "prob.jpg",
    ("predict", "--batch"): "{missing}",
    ("predict", "--bbox-crs"): "EPSG:0",
    ("predict", "--bands"): "9,9,9",
    ("predict", "--summary"): "{file}/summary.json",
    ("qgis install", "--plugins-dir"): "{file}",
    ("qgis install", "--profile"): "no-such-profile",
    ("qgis package", "--out"): "{file}/plugin.zip",
}


def _leaves(name: str, parser: argparse.ArgumentParser):
    """``(command, parser)`` of every command that runs: ``qgis install``, not ``qgis``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
        return
    for sub_name, sub in subs[0].choices.items():
        yield from _leaves(f"{name} {sub_name}", sub)


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    found = {}
    for command in COMMANDS:
        parser = build_parser([command])  # only the command named adds its arguments
        top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        found.update(_leaves(command, top.choices[command]))
    return found


PARSERS = _all_parsers()


def _options(command: str) -> list[argparse.Action]:
    """The options of ``command`` that take a value."""
    return [a for a in PARSERS[command]._actions if a.option_strings and a.nargs != 0]


def _walk(kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    found = []
    for command in PARSERS:
        for action in _options(command):
            flag = action.option_strings[0]
            kind = "number" if hasattr(action.type, "high_open") else "choice" if action.choices else "run"
            if kind in kinds:
                found.append((command, flag))
    return found


def _bad_numbers(rule) -> list[str]:
    """Values that break a cliargs.number rule: outside its bounds, not a number, not finite."""
    bad = ["abc"]
    step = 1 if rule.kind is int else 1e-3
    if rule.low is not None:
        bad.append(repr(rule.low if rule.low_open else rule.low - step))
    if rule.high is not None:
        bad.append(repr(rule.high if rule.high_open else rule.high + step))
    bad += ["nan", "inf"] if rule.kind is float else ["1.5"]
    return bad


def _good_number(rule) -> str:
    low = -math.inf if rule.low is None else rule.low
    high = math.inf if rule.high is None else rule.high
    value = 1 if low <= 1 <= high and not (rule.low_open and low == 1) else low + 1 if low > -math.inf else high - 1
    return str(int(value) if rule.kind is int else float(value))


def _one_error(err: str, command: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and lines[0].startswith(f"rs2sam2 {command}"), err
    return lines[0]


def _refused(argv: list[str], capsys) -> str:
    """Run ``rs2sam2 ARGV`` in-process; it must end with status 2; returns its one error line."""
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code
    assert status == 2, argv
    return _one_error(capsys.readouterr().err, argv[0])  # argparse names the subcommand, rs2sam2.cli the command


def test_every_option_is_walked():
    """Every option that takes a value is a checked number, a choice, a run case, or listed as unchecked."""
    for command in PARSERS:
        for action in _options(command):
            flag = action.option_strings[0]
            if action.type in (int, float) and command not in PENDING:
                pytest.fail(f"rs2sam2 {command} {flag}: a bare {action.type.__name__}; use rs2sam2.cliargs.number "
                            "so that its range is checked as it is parsed")
    walked = set(_walk(("number", "choice", "run")))
    pending = {case for case in _walk(("run",)) if case not in RUN_CASES and case not in UNCHECKED
               and case[0] not in PENDING}
    assert not pending, f"options without a bad value (add them to RUN_CASES or UNCHECKED): {sorted(pending)}"
    assert set(RUN_CASES) <= walked and set(UNCHECKED) <= walked  # no stale entries


@pytest.mark.parametrize("command, flag", _walk(("number",)))
def test_numbers_out_of_range_are_refused_as_parsed(command, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    action = next(a for a in _options(command) if flag in a.option_strings)
    count = action.nargs if isinstance(action.nargs, int) else 1
    for bad in _bad_numbers(action.type):
        values = [bad] + [_good_number(action.type)] * (count - 1)
        line = _refused([*command.split(), flag, *values], capsys)
        assert f"argument {flag}" in line and "expected" in line and repr(bad) in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, flag", _walk(("choice",)))
def test_unknown_choices_are_refused_as_parsed(command, flag, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _refused([*command.split(), flag, "no-such-choice"], capsys)
    assert f"argument {flag}" in line and "invalid choice: 'no-such-choice'" in line, line
    assert list(tmp_path.iterdir()) == []


# --- values only the command can judge: run in-process, with every other argument valid ---------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    from helpers_ckpt import build_checkpoint, write_png
    from rs2sam2.data.synth import generate

    root = tmp_path_factory.mktemp("inputs")
    generate("rrsisd", root / "rrsisd", num_images=6, seed=0, image_size=64)
    (root / "plain.txt").write_text("not what was asked for\n")
    return {"ckpt": str(build_checkpoint(root / "ckpt")), "data": str(root / "rrsisd"),
            "image": str(write_png(root / "scene.png", 64, 64)), "file": str(root / "plain.txt")}


def _base(command: str, inputs: dict[str, str]) -> list[str]:
    """Valid arguments of ``command`` (outputs relative to the working folder)."""
    return {
        "demo": ["--out", "demo"],
        "train": ["--preset", "nano", "--dataset", "rrsisd", "--data", inputs["data"], "--out", "run"],
        "evaluate": ["--checkpoint", inputs["ckpt"], "--dataset", "rrsisd", "--data", inputs["data"],
                     "--split", "test", "--out", "report.json"],
        "predict": ["--checkpoint", inputs["ckpt"], "--image", inputs["image"], "--text", "the red building",
                    "--out", "mask.png"],
        "serve": ["--checkpoint", inputs["ckpt"]],
        "synth": ["--format", "jsonl", "--out", "synth"],
        "check-data": ["--dataset", "rrsisd", "--data", inputs["data"]],
        "benchmark": ["--preset", "nano"],
        "qgis install": ["--plugins-dir", "plugins"],
        "qgis package": ["--out", "plugin.zip"],
    }[command]


def _with(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced where it is there, else added); a
    --checkpoint replaced by --predictions (evaluate's either-or) is dropped."""
    out, i = [], 0
    exclusive = {"--predictions": "--checkpoint"}.get(flag)
    while i < len(argv):
        if argv[i] in (flag, exclusive):
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return [*out, flag, value]


@pytest.mark.parametrize("command, flag", sorted(RUN_CASES))
def test_bad_paths_and_values_are_refused_before_any_work(command, flag, inputs, capsys, tmp_path, monkeypatch):
    import rs2sam2.app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(rs2sam2.app, "launch", lambda *a, **k: pytest.fail("serve started its server"))
    value = RUN_CASES[command, flag].format(missing=str(tmp_path / "missing"), file=inputs["file"])
    line = _refused([*command.split(), *_with(_base(command, inputs), flag, value)], capsys)
    assert flag.lstrip("-") in line or value in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", list(PARSERS))
@pytest.mark.parametrize("variable, value", [(name, v) for name in ENVIRONMENT for v in ("abc", "-5", "nan")])
def test_bad_environment_variables_are_refused_at_the_start(command, variable, value, inputs, capsys, tmp_path,
                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(variable, value)
    line = _refused([*command.split(), *_base(command, inputs)], capsys)
    assert f"environment variable {variable}: expected" in line and repr(value) in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, extra, module, install", [
    ("serve", [], "gradio", "rs2sam2[app]"),
    ("predict", ["--vector", "polygons.gpkg"], "pyogrio", "rs2sam2[gis]"),
    ("predict", ["--vector", "polygons.shp"], "pyogrio", "rs2sam2[gis]"),
])
def test_a_missing_extra_is_exit_2_naming_it(command, extra, module, install, inputs, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra gives: no module
    line = _refused([command, *_base(command, inputs), *extra], capsys)
    assert f"pip install '{install}'" in line and module in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("extra, message", [
    (["--text-len", "65"], "--text-len 65: the nano preset reads at most 64 tokens"),
    (["--batch", "100", "--texts", "3"], "--batch 100 x --texts 3: at most 256 expressions per pass"),
    pytest.param(["--device", "cuda"], "device 'cuda' requested but CUDA is not available; use --device cpu",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
])
def test_benchmark_checks_its_arguments_together_before_any_work(extra, message, capsys):
    line = _refused(["benchmark", "--preset", "nano", *extra], capsys)
    assert line == f"rs2sam2 benchmark: error: {message}"
