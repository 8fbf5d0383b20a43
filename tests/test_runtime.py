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

