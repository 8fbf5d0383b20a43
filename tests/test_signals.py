"""SIGTERM and SIGINT stop a command cleanly: its temporary files are removed, it prints one line and
exits 143 or 130 (rs2sam2.signals, rs2sam2.cli.main). The commands run as real processes, signalled
while they work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rs2sam2 import fsutil
from rs2sam2.signals import Stopped, stop_on_signals, stops_held

ROOT = Path(__file__).resolve().parents[1]


def test_sigterm_raises_stopped_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    cleaned = []
    with pytest.raises(Stopped) as caught:
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler raises before this ends
            finally:
                cleaned.append(True)
    assert cleaned == [True]
    assert (caught.value.name, caught.value.status, str(caught.value)) == ("SIGTERM", 143, "stopped by SIGTERM")
    assert isinstance(caught.value, KeyboardInterrupt)  # code that cleans up on Ctrl-C does so on SIGTERM
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_signal_of_the_other_kind_does_not_cut_the_clean_up_short():
    with pytest.raises(Stopped) as caught, stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a launcher passing the Ctrl-C on: ignored
            time.sleep(0.05)
    assert caught.value.status == 130


def test_the_same_signal_twice_ends_the_process_at_once():
    # the module alone, without the package (and torch), keeps this process quick to start
    code = (f"import importlib.util, os, signal, time\n"
            f"spec = importlib.util.spec_from_file_location('signals', {str(ROOT / 'src/rs2sam2/signals.py')!r})\n"
            "signals = importlib.util.module_from_spec(spec); spec.loader.exec_module(signals)\n"
            "with signals.stop_on_signals():\n    try:\n        os.kill(os.getpid(), signal.SIGTERM)\n"
            "    finally:\n        os.kill(os.getpid(), signal.SIGTERM)\n        time.sleep(5)\n        print('late')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -signal.SIGTERM and "late" not in r.stdout


def test_a_stop_inside_stops_held_comes_when_the_block_ends():
    steps = []
    with pytest.raises(Stopped) as caught, stop_on_signals():
        with stops_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the handler has run by now
            steps.append("the block went on")
        steps.append("after the block")
    assert steps == ["the block went on"] and caught.value.status == 143


@pytest.mark.parametrize("job", ["atomic_write", "check_writable", "work_folder"])
def test_a_stop_while_a_temporary_file_is_made_leaves_nothing(job, tmp_path, monkeypatch):
    """The signal comes the moment the file or folder exists, before its name is known to the code
    that removes it."""
    def then_signal(make):
        def make_then_signal(*args, **kwargs):
            made = make(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            return made
        return make_then_signal

    for name in ("mkstemp", "mkdtemp"):
        monkeypatch.setattr(fsutil.tempfile, name, then_signal(getattr(fsutil.tempfile, name)))
    with pytest.raises(Stopped), stop_on_signals():
        if job == "atomic_write":
            fsutil.atomic_write_text(tmp_path / "report.json", "{}")
        elif job == "check_writable":
            fsutil.check_writable(tmp_path / "report.json", "the report")
        else:
            with fsutil.work_folder(tmp_path, prefix=".vectors."):
                pass
    assert list(tmp_path.iterdir()) == []


# --- real commands ------------------------------------------------------------------------------


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has its own SIGTERM handler, i.e. the command is running (Linux: SigCgt)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


# ``rs2sam2`` on a disk that stalls at the first image it opens: the command cannot end before the
# signal comes, however fast the machine (a small dataset is otherwise read in a fraction of a second)
_STALLED_DISK = ("import sys, time, PIL.Image\n"
                 "PIL.Image.open = lambda *args, **kwargs: time.sleep(3600)\n"
                 "sys.argv[0] = 'rs2sam2'\n"
                 "from rs2sam2.cli import entry\nentry()\n")


def _stop_while(argv: list[str], cwd: Path, ready, signum: int = signal.SIGTERM, timeout: float = 120,
                stall_images: bool = False):
    """Start ``rs2sam2 ARGV`` in ``cwd`` (``stall_images``: with every image read stalling), wait until
    it runs its command and ``ready()`` holds, send ``signum``; returns ``(exit status, stderr)``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    start = ["-c", _STALLED_DISK] if stall_images else ["-m", "rs2sam2"]
    proc = subprocess.Popen([sys.executable, *start, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not (_catches_sigterm(proc.pid) and ready()):
            assert proc.poll() is None, f"ended before the signal: {proc.stderr.read()}"
            assert time.monotonic() < deadline, "the command never got to the point to stop it at"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from helpers_ckpt import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from rs2sam2.data.synth import generate

    root = tmp_path_factory.mktemp("data") / "rrsisd"
    generate("rrsisd", root, num_images=40, seed=0, image_size=64)
    return root


def test_sigterm_during_predict_removes_the_temporary_mask(checkpoint, tmp_path):
    from helpers_ckpt import write_geotiff

    write_geotiff(tmp_path / "scene.tif", height=1536, width=1536)
    out = tmp_path / "out"
    status, err = _stop_while(
        ["predict", "--checkpoint", str(checkpoint), "--image", "scene.tif", "--text", "the red building",
         "--tile", "128", "--out", "out/mask.tif", "--prob", "out/prob.tif"], tmp_path,
        ready=lambda: out.is_dir() and any(".tmp" in p.name for p in out.iterdir()))
    assert status == 143, err
    assert err.strip().splitlines()[-1] == "rs2sam2 predict: stopped by SIGTERM"
    assert "Traceback" not in err
    assert list(out.iterdir()) == []  # no hidden .tmp.tif, no half mask


def test_sigint_during_synth_removes_its_work_folder(tmp_path):
    out = tmp_path / "synth"
    status, err = _stop_while(["synth", "--format", "rrsisd", "--out", "synth", "--num-images", "5000"], tmp_path,
                              ready=lambda: len(list(out.rglob("*"))) > 5, signum=signal.SIGINT)
    assert status == 130, err
    assert err.strip().splitlines() == ["rs2sam2 synth: stopped by SIGINT"]
    assert not out.exists()  # synth made the folder, so it goes


def test_sigterm_during_evaluate_and_check_data(checkpoint, dataset, tmp_path):
    for argv in (["evaluate", "--checkpoint", str(checkpoint), "--dataset", "rrsisd", "--data", str(dataset),
                  "--split", "test", "--out", "report.json"],
                 ["check-data", "--dataset", "rrsisd", "--data", str(dataset), "--json", "report.json"]):
        status, err = _stop_while(argv, tmp_path, ready=lambda: True, stall_images=True)
        assert status == 143, err
        assert err.strip().splitlines()[-1] == f"rs2sam2 {argv[0]}: stopped by SIGTERM"
        assert "Traceback" not in err
        assert list(tmp_path.iterdir()) == []


def test_a_stop_while_a_progress_bar_is_built_waits_until_it_is_whole(monkeypatch):
    """A SIGTERM inside tqdm's constructor left a half-built bar whose destructor failed ("'tqdm'
    object has no attribute 'pos'" after the stop message); rs2sam2.progress builds bars with stops held."""
    import gc

    import tqdm.std

    from rs2sam2.evaluate import _progress

    real_ema = tqdm.std.EMA
    sent = []

    def ema(*args):  # called between the bar's `disable` and its `pos` being set
        if not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return real_ema(*args)

    unraisable = []
    monkeypatch.setattr(tqdm.std, "EMA", ema)
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    with pytest.raises(Stopped), stop_on_signals():
        _progress(range(3), 3, "evaluate", True)
    gc.collect()
    assert sent and not unraisable, [str(u.exc_value) for u in unraisable]
