"""`rs2sam2 train` when things go wrong: a full disk, a corrupt or clashing run to resume, a non-finite
stop without checkpoint, dataset problems before and during the run; and `--cpu-processes` listening
on loopback only."""

from __future__ import annotations

import errno
import io
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rs2sam2.data import build_dataset
from rs2sam2.data.synth import generate
from rs2sam2.train import state as state_module
from rs2sam2.train import trainer as trainer_module
from rs2sam2.train.state import load_trainer_state
from test_train import REPO, TOKENIZER, _cli_train


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("errors") / "rrsisd"
    generate("rrsisd", root, num_images=8, seed=1, image_size=128)
    return root


@pytest.fixture(scope="module")
def saved_run(data, tmp_path_factory) -> Path:
    """A run of 1 step with its checkpoint (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("saved") / "run"
    assert _cli_train(data, run, "--max-steps", "1") == 0
    return run


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# --------------------------------------------------------------------------------------------------
# a full disk while saving a checkpoint
# --------------------------------------------------------------------------------------------------


def test_full_disk_while_saving_keeps_the_saved_checkpoint(data, tmp_path, monkeypatch, capsys):
    """The second save fails with ENOSPC after writing part of its files: exit 2 with a message naming
    the folder and "no space left", the partial folder removed, checkpoints/last as it was, and
    summary.json saying so."""
    run = tmp_path / "run"
    real_save, saved_before = state_module.save_state_dict, {}

    def save_until_the_disk_is_full(state_dict, config, folder, tokenizer_path=None, card=None):
        if not (run / "checkpoints" / "last").is_dir():
            return real_save(state_dict, config, folder, tokenizer_path, card=card)
        saved_before.update(_files(run / "checkpoints" / "last"))
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "model.safetensors").write_bytes(b"\0" * 1000)  # the part written before the disk filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state_module, "save_state_dict", save_until_the_disk_is_full)
    assert _cli_train(data, run, "--max-steps", "3", "--save-every", "1") == 2
    err = capsys.readouterr().err
    message = next(line for line in err.splitlines() if line.startswith("rs2sam2 train: error: "))
    assert "no space left" in message and str(run / "checkpoints") in message
    assert f"{run / 'checkpoints' / 'last'} (step 1)" in message  # what is kept
    assert "Traceback" not in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last"]  # last.new removed
    assert saved_before and _files(run / "checkpoints" / "last") == saved_before
    assert load_trainer_state(run / "checkpoints" / "last")["global_step"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "no space left" in summary["message"]
    assert summary["global_step"] == 2 and summary["checkpoints"]["last"] == str(run / "checkpoints" / "last")


def test_summary_that_cannot_be_written_is_said_on_stderr(data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_write = trainer_module.atomic_write_bytes

    def write_but_summary(path, content):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, content)

    monkeypatch.setattr(state_module, "save_state_dict", full_disk)
    monkeypatch.setattr(trainer_module, "atomic_write_bytes", write_but_summary)
    assert _cli_train(data, run, "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert f"{run / 'summary.json'} could not be written either" in err
    assert "no space left" in err and "No checkpoint of this run is on disk" in err
    assert not (run / "summary.json").exists() and not (run / "checkpoints" / "last.new").exists()


def test_full_disk_on_a_small_tmpfs(saved_run, data, tmp_path, capsys):
    """The real thing (root only): the run continues on a tmpfs with room for half a checkpoint more."""
    mount = tmp_path / "small"
    mount.mkdir()
    size_kb = sum(len(b) for b in _files(saved_run).values()) // 1024
    last_kb = sum(len(b) for b in _files(saved_run / "checkpoints" / "last").values()) // 1024
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb + last_kb // 2 + 256}k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        run = _copy(saved_run, mount / "run")
        before = _files(run / "checkpoints" / "last")
        code = _cli_train(data, run, "--resume", "--max-steps", "3", "--save-every", "1")
        err = capsys.readouterr().err
        assert code == 2, err
        assert "no space left" in err and str(run / "checkpoints") in err
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last"]
        assert _files(run / "checkpoints" / "last") == before
        assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# --------------------------------------------------------------------------------------------------
# --resume: a corrupt checkpoint, a command line that clashes with the run
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["model.safetensors", "trainer_state.pt"])
def test_corrupt_checkpoint_on_resume_names_the_file_and_changes_nothing(saved_run, data, tmp_path, capsys, name):
    run = _copy(saved_run, tmp_path / "run")
    broken = run / "checkpoints" / "last" / name
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])
    before = _files(run)
    assert _cli_train(data, run, "--resume", "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert f"rs2sam2 train: error: {broken}: cannot read" in err and "truncated" in err
    assert "Traceback" not in err
    assert _files(run) == before


@pytest.mark.parametrize("flags, clash", [
    (["--preset", "paper"], "preset: 'nano' in the run, 'paper' now"),
    (["--set", "model.image_size=256"], "model.image_size: 128 in the run, 256 now"),
    (["--dataset", "refsegrs"], "dataset: 'rrsisd' in the run, 'refsegrs' now"),
    (["--batch-size", "2"], "1 process(es) x batch 1 x 1 accumulation in the run, 1 x 2 x 1 now"),
])
def test_resume_refuses_a_clash_with_the_run(saved_run, tmp_path, capsys, flags, clash):
    """Another preset, image size, dataset or batch than the run's: exit 2 naming both values;
    train_config.yaml and summary.json (and everything else) unchanged."""
    from rs2sam2.cli import main

    run = _copy(saved_run, tmp_path / "run")
    before = _files(run)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "2", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert clash in err and "--resume" in err
    assert _files(run) == before


def test_init_with_another_preset_is_refused(saved_run, data, tmp_path, capsys):
    """--init loads the architecture of the checkpoint: a --preset that names another is an error, so
    that train_config.yaml and summary.json never record a wrong preset."""
    from rs2sam2.cli import main

    out = tmp_path / "new"
    code = main(["train", "--preset", "paper", "--dataset", "rrsisd", "--data", str(data), "--out", str(out),
                 "--init", str(saved_run / "checkpoints" / "last"), "--max-steps", "1", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "'paper' given" in err and "'nano' model" in err
    assert not (out / "train_config.yaml").exists() and not (out / "summary.json").exists()


# --------------------------------------------------------------------------------------------------
# a non-finite stop says what exists
# --------------------------------------------------------------------------------------------------


def test_nonfinite_stop_without_checkpoint_says_none_exists(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _cli_train(data, run, "--max-steps", "3", "--lr", "1e30", "--lr-fusion", "1e30") == 3
    err = capsys.readouterr().err
    assert "non-finite" in err and "No checkpoint of this run is on disk" in err
    assert "kept" not in err and "--resume" not in err
    assert not (run / "checkpoints").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_nonfinite_loss" and summary["checkpoints"] == {"last": None, "best": None}


# --------------------------------------------------------------------------------------------------
# dataset problems: before step 1, and found during the run (in a DataLoader worker)
# --------------------------------------------------------------------------------------------------


def _train_image(root: Path) -> Path:
    return build_dataset("rrsisd", root, "train").refs[0].image_path


def test_dataset_problem_found_before_step_1(data, tmp_path, capsys):
    """An image whose header says another size than its annotation: exit 2 before anything is written."""
    root = _copy(data, tmp_path / "data")
    image = _train_image(root)
    Image.fromarray(np.full((96, 64, 3), 90, np.uint8)).save(image, format="JPEG")
    run = tmp_path / "run"
    assert _cli_train(root, run, "--max-steps", "2") == 2
    err = capsys.readouterr().err
    assert f"{image}: image 96x64, mask 128x128 (too different: loading fails)" in err
    assert "rs2sam2 check-data --dataset rrsisd" in err
    assert not run.exists()


def test_dataset_problem_found_during_the_run_in_a_worker(data, tmp_path, capfd):
    """An image whose header and end are fine but whose pixel data is broken passes the checks
    before step 1 and fails when a DataLoader worker decodes it: one error line naming the file, no
    traceback, summary.json with the status and the message, exit 2."""
    root = _copy(data, tmp_path / "data")
    image = _train_image(root)
    buffer = io.BytesIO()
    Image.fromarray(np.full((128, 128, 3), 90, np.uint8)).save(buffer, format="PNG")
    broken = bytearray(buffer.getvalue())
    start = broken.index(b"IDAT") + 8
    broken[start : start + 40] = b"\xff" * 40
    image.write_bytes(bytes(broken))
    run = tmp_path / "run"
    steps = -(-build_dataset("rrsisd", root, "train").num_refs // 4)  # one epoch: every ref is loaded
    assert _cli_train(root, run, "--max-steps", str(steps), "--batch-size", "4", "--num-workers", "1") == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("rs2sam2 train: error: ")]
    assert len(errors) == 1 and str(image) in errors[0] and "could not be loaded at step" in errors[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and str(image) in summary["message"]


# --------------------------------------------------------------------------------------------------
# --cpu-processes: loopback only
# --------------------------------------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = {pid}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address of /proc/net/tcp{,6}: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    host = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, host))


def _listening(pids: set[int]) -> set[str]:
    """``address:port`` of the TCP sockets in LISTEN state that these processes hold."""
    inodes = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:  # the process ended meanwhile
            continue
        inodes |= {link[len("socket:["):-1] for link in links if link.startswith("socket:[")}
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address, port = fields[1].split(":")
                found.add(f"{_address(address)}:{int(port, 16)}")
    return found


def _loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_processes_listen_on_loopback_only(data, tmp_path):
    """Every listening socket of the launcher and its ranks during a `--cpu-processes 2` run is on a
    loopback address (the ranks' gloo connections); none on every interface."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "rs2sam2", "train", "--preset", "nano", "--dataset", "rrsisd", "--data", str(data),
           "--out", str(tmp_path / "run"), "--tokenizer", str(TOKENIZER), "--num-workers", "0", "--no-progress",
           "--no-tensorboard", "--set", "model.image_size=128", "--set", "model.beit3.img_size=64",
           "--set", "model.beit3.vocab_size=128", "--freeze", "none", "--max-steps", "2", "--batch-size", "1",
           "--no-eval-at-end", "--cpu-processes", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        seen |= _listening(_descendants(proc.pid))
        time.sleep(0.05)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert seen, "no listening socket seen: the ranks' gloo connections should listen (on loopback)"
    assert all(_loopback(a) for a in seen), seen


def test_launcher_gives_ranks_a_grace_period_then_terminates_them():
    """After a rank fails, the others get the grace period to stop on their own (and write
    summary.json), then are terminated; ranks that end by themselves are simply waited for."""
    import multiprocessing

    from rs2sam2.train.launch import _wait_for_ranks

    ctx = multiprocessing.get_context("fork")
    failed = ctx.Process(target=sys.exit, args=(1,))  # as a rank that raised
    finishing, hanging = (ctx.Process(target=time.sleep, args=(s,)) for s in (0.3, 60.0))
    for p in (failed, finishing, hanging):
        p.start()
    start = time.perf_counter()
    _wait_for_ranks([failed, finishing, hanging], grace_s=1.0)
    assert 0.9 < time.perf_counter() - start < 30
    assert finishing.exitcode == 0 and hanging.exitcode == -15  # SIGTERM
