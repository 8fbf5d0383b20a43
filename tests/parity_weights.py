"""Deterministic weights of the parity fixtures, rebuilt from a manifest (see tests/fixtures/parity/README.md)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def manifest_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The published-layout state dict for ``tiny`` or ``paper``, with the manifest's deterministic values."""
    entries = json.loads((FIXTURES / f"{name}_manifest.json").read_text())
    out = {}
    for e in entries:
        shape = tuple(e["shape"])
        n = int(np.prod(shape)) if shape else 1
        u = np.random.Generator(np.random.PCG64(zlib.crc32(e["key"].encode()))).random(n) * 2.0 - 1.0
        init = e["init"]
        if init == "ln_weight":
            v = 1.0 + 0.1 * u
        elif init == "ln_bias":
            v = 0.05 * u
        elif init == "bias":
            v = 0.02 * u
        elif init == "unit":
            v = u * np.sqrt(3.0)
        elif init == "fan_in":
            v = u * np.sqrt(3.0 / np.prod(shape[1:])) if len(shape) >= 2 else 0.02 * u
        else:
            raise ValueError(f"unknown init {init!r} for {e['key']}")
        out[e["key"]] = torch.from_numpy(v.reshape(shape).astype(np.float32))
    return out
