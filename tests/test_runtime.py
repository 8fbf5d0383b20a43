"""Process-level helpers of rs2sam2.runtime."""

import os
import signal
import subprocess
import sys
import time

import pytest

# a parent that starts a child calling exit_with_parent(), reports the child's pid, then waits
PARENT = r"""
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import time; from rs2sam2.runtime import exit_with_parent; "
    "assert exit_with_parent(); print('ready', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "ready"
print(child.pid, flush=True)
child.wait()
"""


def test_autocast_rule_is_bf16_on_cuda_only():
    """One rule for training, evaluation and the benchmark: bf16 autocast on CUDA for auto / bf16."""
    import torch

    from rs2sam2.runtime import autocast, autocast_enabled

    assert autocast_enabled("cuda", "auto") and autocast_enabled(torch.device("cuda", 1), "bf16")
    assert not autocast_enabled("cuda", "fp32")
    assert not any(autocast_enabled("cpu", p) for p in ("auto", "bf16", "fp32"))
    with autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl(PR_SET_PDEATHSIG) is Linux-only")
def test_worker_exits_when_its_launcher_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while _alive(child_pid) and time.time() < deadline:
        time.sleep(0.05)
    assert not _alive(child_pid)

