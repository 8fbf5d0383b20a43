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


# two gloo ranks: each sets its own gradients (rank r: r + 1 everywhere; no gradient on the second
# tensor of rank 1), averages them, and prints the result
AVERAGE = r"""
import sys, torch, torch.distributed as dist
from rs2sam2.runtime import Dist
rank, store = int(sys.argv[1]), sys.argv[2]
dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
params = [torch.zeros(2, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
params[0].grad = torch.full((2, 3), rank + 1.0)
if rank == 0:
    params[1].grad = torch.arange(4.0)
Dist(rank=rank, world_size=2).average_gradients(params)
print(params[0].grad.flatten().tolist(), params[1].grad.tolist(), flush=True)
dist.destroy_process_group()
"""


def test_average_gradients_over_two_processes(tmp_path):
    """Dist.average_gradients (the grounding warm-up's gradient sync): the mean over the ranks, a
    missing gradient counted as zeros, the same values on every rank."""
    store = tmp_path / "store"
    procs = [subprocess.Popen([sys.executable, "-c", AVERAGE, str(r), str(store)], stdout=subprocess.PIPE, text=True)
             for r in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    expected = str([1.5] * 6) + " " + str([0.0, 0.5, 1.0, 1.5])
    assert outs == [expected, expected]


def test_average_gradients_is_a_no_op_in_one_process():
    import torch

    from rs2sam2.runtime import Dist

    p = torch.zeros(3, requires_grad=True)
    p.grad = torch.tensor([1.0, 2.0, 3.0])
    Dist().average_gradients([p])
    assert p.grad.tolist() == [1.0, 2.0, 3.0]


# how a process ended: an exit handler touches `atexit<name>`; an object in a module global touches
# `finalized<name>` when the interpreter tears the module down at finalization
MARKERS = r"""
import atexit, pathlib
def markers(folder, name):
    class Finalized:
        def __del__(self):
            (folder / f"finalized{name}").touch()
    atexit.register((folder / f"atexit{name}").touch)
    return Finalized()
"""

# a gloo rank that ends as the rs2sam2 program does: a device mesh holds the group past
# destroy_process_group (as FSDP's does), the last collective's tensor was made in Python, and the
# last line printed is not flushed
RANK_END = MARKERS + r"""
import sys
from torch.distributed.device_mesh import init_device_mesh
from rs2sam2.runtime import end_process, init_distributed
rank, folder = int(sys.argv[1]), pathlib.Path(sys.argv[2])
keep = markers(folder, rank)
d = init_distributed("cpu", rank=rank, world_size=2, rendezvous=folder / "rendezvous")
mesh = init_device_mesh("cpu", (2,))
assert not d.any(False)
d.close()
print(f"rank {rank} done", end="")
end_process(0)
"""


def test_a_rank_ends_without_finalization(tmp_path):
    """end_process in a process that joined a group: exit status as given, output flushed, exit
    handlers run, and no interpreter finalization, during which a gloo thread still freeing a tensor
    aborts the process (how often: benchmarks/README.md, "A rank's end")."""
    procs = [subprocess.Popen([sys.executable, "-c", RANK_END, str(r), str(tmp_path)], stdout=subprocess.PIPE,
                              text=True) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == ["rank 0 done", "rank 1 done"]
    assert (tmp_path / "atexit0").is_file() and (tmp_path / "atexit1").is_file()
    assert not list(tmp_path.glob("finalized*"))


def test_a_process_without_a_group_ends_normally(tmp_path):
    code = MARKERS + (f"from rs2sam2.runtime import end_process\n"
                      f"keep = markers(pathlib.Path({str(tmp_path)!r}), 'single')\nend_process(3)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 3
    assert (tmp_path / "atexitsingle").is_file() and (tmp_path / "finalizedsingle").is_file()
