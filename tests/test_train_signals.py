"""SIGTERM to `rs2sam2 train --cpu-processes 2` with data-loader workers: every process it started
ends within 10 s, it exits 143 with one line, and the last complete checkpoint resumes (issue 30)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs2sam2.data.synth import generate
from rs2sam2.train.launch import _descendants
from rs2sam2.train.state import load_trainer_state

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"


def _train_argv(data: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "rs2sam2", "train", "--preset", "nano", "--dataset", "rrsisd", "--data", str(data),
            "--out", str(run), "--tokenizer", str(TOKENIZER), "--no-progress", "--no-tensorboard", "--freeze", "none",
            "--set", "model.image_size=128", "--set", "model.beit3.img_size=64", "--set", "model.beit3.vocab_size=128",
            "--batch-size", "1", "--no-eval-at-end", "--val-limit", "1", *extra]


def _alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (not ended, nor zombies waiting for their parent)."""
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


@pytest.mark.slow  # two spawned ranks to a first checkpoint, then a resumed step: ~1.5 min on 2 busy cores
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_sigterm_stops_cpu_ranks_and_their_loader_workers(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    generate("rrsisd", data, num_images=4, seed=1, image_size=128)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(_train_argv(data, run, "--cpu-processes", "2", "--num-workers", "2", "--max-steps", "1000",
                                        "--save-every", "1"), env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run / "checkpoints" / "last" / "trainer_state.pt").is_file():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.2)
        started = _descendants(proc.pid)
        assert len(started) >= 4  # 2 ranks, each with its loader workers (and the resource tracker)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        status = proc.wait(timeout=30)
        while _alive(started) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        left = _alive(started)
        assert not left, f"still running 10 s after SIGTERM: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive(_descendants(proc.pid)):
            os.kill(pid, signal.SIGKILL)
    err = proc.stderr.read()
    assert status == 143 and "rs2sam2 train: stopped by SIGTERM" in err and "Traceback" not in err, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["message"] == "stopped by SIGTERM"
    step = load_trainer_state(run / "checkpoints" / "last")["global_step"]
    assert not (run / "checkpoints" / "last.new").exists()
    # the last complete checkpoint resumes: one more step on top of it
    done = subprocess.run([sys.executable, "-m", "rs2sam2", "train", "--out", str(run), "--resume", "--max-steps",
                           str(step + 1), "--cpu-processes", "2", "--num-workers", "0", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["global_step"] == step + 1
