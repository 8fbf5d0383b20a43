import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/parity_weights.py

# parity and precision tests also run on a GPU (benchmarks/gpu.sh sets RS2SAM2_TEST_DEVICE=cuda)
DEVICE = os.environ.get("RS2SAM2_TEST_DEVICE", "cpu")
if DEVICE == "cuda":
    # fp32 parity means real fp32: no TF32 in convolutions or matmuls
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="session", autouse=True)
def auto_precision_is_fp32():
    """``precision='auto'`` resolves to fp32 in every test, whatever the CPU: on one with AMX /
    AVX512-BF16 units it would be bf16, which rounds a batch differently from its samples one by one
    and so breaks the equalities the API tests assert. The bf16 paths have their own tests
    (test_precision.py, test_auto_precision.py, which set the CPU probe themselves)."""
    from rs2sam2 import runtime

    before = runtime._cpu_bf16
    runtime._cpu_bf16 = (False, "the tests run auto as fp32 (tests/conftest.py)")  # the probe's cached answer
    try:
        yield
    finally:
        runtime._cpu_bf16 = before


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests with one intra-op thread, restored afterwards: the nano model is too small
    to gain from threads, and on a shared 2-core machine spinning OpenMP workers make each forward
    pass ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_published_state_dict():
    from parity_weights import manifest_state_dict

    return manifest_state_dict("tiny")


@pytest.fixture(scope="session")
def tiny_parity_model(tiny_published_state_dict):
    import rs2sam2

    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    return model.to(DEVICE)


@pytest.fixture()
def two_blobs() -> np.ndarray:
    """A 48 x 64 mask with two separate foreground blobs; the second has a 2x3 hole (geo and vector tests)."""
    m = np.zeros((48, 64), dtype=bool)
    m[3:11, 4:14] = True  # 80 px
    m[20:40, 30:55] = True  # 500 px
    m[25:27, 40:43] = False  # hole: 6 px
    return m
