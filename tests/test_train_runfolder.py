"""`rs2sam2 train`: a run folder is only ever written by its own run, and every argument is checked
before any work (issue 30). Nothing here trains: each case stops before step 1."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rs2sam2.cli import main
from rs2sam2.errors import ConfigError, OutputError
from rs2sam2.train import TrainConfig
from rs2sam2.train.config import RANGES
from rs2sam2.train.runfolder import MARKER, claim_run_folder

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _train(tmp_path: Path, out: Path, *extra: str) -> int:
    return main(["train", "--preset", "nano", "--dataset", "rrsisd", "--data", str(tmp_path / "no-data"),
                 "--out", str(out), "--tokenizer", str(TOKENIZER), "--no-progress", "--no-tensorboard", *extra])


def _earlier_run(folder: Path, checkpoints=("best",)) -> Path:
    """The files a run of rs2sam2 leaves (its marker, logs, summary, checkpoints without trainer state)."""
    claim_run_folder(folder, resume=False, overwrite=False)
    for name in checkpoints:
        (folder / "checkpoints" / name).mkdir(parents=True)
        (folder / "checkpoints" / name / "model.safetensors").write_bytes(b"weights of the earlier run")
    (folder / "logs").mkdir()
    (folder / "logs" / "train.csv").write_text("step,loss\n1,0.5\n")
    (folder / "summary.json").write_text("{}")
    return folder


def test_a_new_folder_gets_the_marker_first(tmp_path):
    claimed = claim_run_folder(tmp_path / "a" / "run", resume=False, overwrite=False)
    marker = json.loads((tmp_path / "a" / "run" / MARKER).read_text())
    assert marker["run_id"] == claimed.run_id and claimed.resume_from is None
    assert os.listdir(tmp_path / "a" / "run") == [MARKER]
    assert claim_run_folder(tmp_path / "a" / "run", resume=False, overwrite=False).run_id != claimed.run_id  # empty


def test_user_files_are_never_written_over(tmp_path, capsys):
    """A folder of the user's files that have a run's names (summary.json, tokenizer.model,
    logs/train.csv): refused with exit 2 naming them, every byte unchanged, with or without the flags."""
    user = tmp_path / "mine"
    (user / "logs").mkdir(parents=True)
    (user / "summary.json").write_text('{"my": "results"}')
    (user / "tokenizer.model").write_bytes(b"my tokenizer")
    (user / "logs" / "train.csv").write_text("my,log\n")
    before = _snapshot(user)
    for flags in ([], ["--overwrite"], ["--resume"]):
        assert _train(tmp_path, user, *flags) == 2
        err = capsys.readouterr().err
        assert f"--out {user}: holds logs, summary.json, tokenizer.model but is not the folder of an rs2sam2 run" \
               in err and "Traceback" not in err
        assert _snapshot(user) == before
    (user / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"holds files that rs2sam2 did not write \(notes\.txt\)"):
        claim_run_folder(user, resume=False, overwrite=True)


def test_another_runs_checkpoints_need_resume_or_overwrite(tmp_path, capsys):
    """checkpoints/best but no last: a new run is refused, --resume has nothing to continue from;
    --overwrite removes only the run's files and starts a new run."""
    run = _earlier_run(tmp_path / "run")
    (run / "notes-of-mine").mkdir()  # not ours: --overwrite keeps it ... and is refused
    assert _train(tmp_path, run) == 2
    assert "holds files that rs2sam2 did not write (notes-of-mine)" in capsys.readouterr().err
    (run / "notes-of-mine").rmdir()
    before = _snapshot(run)
    assert _train(tmp_path, run) == 2
    err = capsys.readouterr().err
    assert f"--out {run}: already holds a training run (checkpoints/best, logs, summary.json); pass --resume" in err
    assert _train(tmp_path, run, "--resume") == 2
    assert "--resume finds no checkpoints/last to continue from" in capsys.readouterr().err
    assert _snapshot(run) == before
    old_id = json.loads((run / MARKER).read_text())["run_id"]
    claimed = claim_run_folder(run, resume=False, overwrite=True)
    assert os.listdir(run) == [MARKER] and claimed.run_id != old_id


def test_out_that_is_a_file_or_cannot_be_written(tmp_path, capsys, monkeypatch):
    """Both refused with one line; a file before any work."""
    (tmp_path / "file").write_text("x")
    assert _train(tmp_path, tmp_path / "file") == 2
    assert f"--out {tmp_path / 'file'}: a file, not a folder" in capsys.readouterr().err

    def refuse(*args, **kwargs):  # a read-only folder (tests may run as root, who may write anywhere)
        raise PermissionError(13, "Permission denied", str(tmp_path / "ro"))

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(OutputError) as caught:
        claim_run_folder(tmp_path / "ro" / "run", resume=False, overwrite=False)
    assert str(caught.value).startswith(f"--out {tmp_path / 'ro' / 'run'}: the run folder cannot be written "
                                        "(permission denied: ")
    assert "[Errno" not in str(caught.value)


@pytest.mark.parametrize("flags", [["--lr", "-1"], ["--lr-fusion", "nan"], ["--betas", "2", "2"],
                                   ["--weight-decay", "-1"], ["--adam-eps", "0"], ["--eval-threshold", "nan"],
                                   ["--eval-threshold", "inf"], ["--max-text-len", "1"], ["--box-prob", "2"],
                                   ["--batch-size", "0"], ["--epochs", "0"], ["--max-steps", "-1"],
                                   ["--num-workers", "-1"], ["--cpu-processes", "0"], ["--seed", "-3"]])
def test_bad_arguments_are_refused_before_anything_is_created(tmp_path, capsys, flags):
    with pytest.raises(SystemExit) as exc:
        _train(tmp_path, tmp_path / "run", *flags)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flags[0]}" in err and "expected " in err
    assert not (tmp_path / "run").exists()


def test_yaml_and_set_values_have_the_same_ranges(tmp_path, capsys):
    """Every key of RANGES refuses a value out of it from --set or YAML, naming the key, before the
    run folder exists."""
    base = dict(data="d", out=str(tmp_path / "run"))
    for key, bounds in RANGES.items():
        if "high" not in bounds:
            bad = bounds["low"] if bounds.get("low_open") else bounds["low"] - 1
        else:
            bad = bounds["high"] * 2 if bounds["kind"] is float else bounds["high"] + 1
        value = [bad, bad] if key in ("betas", "lr_milestones") else bad
        with pytest.raises(ConfigError, match=rf"^{key}: expected "):
            TrainConfig.from_dict({**base, key: value}).resolved()
    assert _train(tmp_path, tmp_path / "run", "--set", "lr=-1") == 2
    assert "rs2sam2 train: error: lr: expected a finite number > 0, got '-1'" in capsys.readouterr().err
    assert _train(tmp_path, tmp_path / "run", "--set", "eval_threshold=.nan") == 2
    assert "eval_threshold: expected a finite number in [0, 1], got 'nan'" in capsys.readouterr().err
    assert _train(tmp_path, tmp_path / "run", "--set", "betas=[0.9]") == 2
    assert "betas: expected two numbers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
