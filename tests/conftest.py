import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # tests/parity_weights.py

torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_published_state_dict():
    from parity_weights import manifest_state_dict

    return manifest_state_dict("tiny")


@pytest.fixture(scope="session")
def tiny_parity_model(tiny_published_state_dict):
    import rs2sam2

    model = rs2sam2.build_model("tiny-parity").eval()
    rs2sam2.load_official_state_dict(model, tiny_published_state_dict)
    return model
