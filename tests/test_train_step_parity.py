"""One training step against the published implementation (``tiny_step_case0.json``).

The tiny-parity model, loaded through the public loader with the manifest weights, takes one step on
``tiny_golden.npz`` case0 with the trainer's own freeze, parameter groups, loss and optimiser. Per
part of the model (defined in the published key layout, mapped onto our names by the converter the
loader uses), the gradient and the AdamW update are compared with the published step through their
norms and their projections on fixed random directions: a wrong freeze, learning-rate group, loss
term or gradient path shows up in the part it belongs to.

The step runs in a child process with PyTorch's CPU kernels pinned to their AVX2 variants (ATen's
vectorised kernels and oneDNN's). The published step is itself fp32 arithmetic: on the Hiera adapters'
gradient projection it lies farther from the exact (float64) step than GRAD_RTOL, which was derived
from its thread noise; the comparison holds within GRAD_RTOL because our step runs the same kernels'
arithmetic. Those kernels change their rounding with the CPU's vector width, and on an AVX-512 CPU our
step lands about as far from the published one as the published one lies from the exact step. The
published step agrees with the AVX2 kernels' arithmetic, so pinning them keeps the comparison as
tight as the tolerances on every x86 CPU (figures in benchmarks/README.md); on other CPUs the
variables name no kernel set and change nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import rs2sam2
from parity_weights import FIXTURES, manifest_state_dict
from rs2sam2.checkpoints import convert_published_state_dict
from rs2sam2.train import TrainConfig
from rs2sam2.train.policy import build_loss, build_optimizer, freeze_published, is_fusion_parameter, per_sample_loss

# Tolerances from the published step's own noise (fixture README, 1 vs 2 threads: 3e-5 relative on
# gradient norms and projections, 1e-6 on update norms, up to 3e-3 on update projections), times ~3
# for our different (equally fp32) order of operations.
GRAD_RTOL = 1e-4
DELTA_NORM_RTOL = 3e-6
DELTA_PROJ_RTOL = 1e-2
# The mask decoder's update norm is the exception: some of its gradients are exactly zero in exact
# arithmetic (key-projection biases: softmax ignores a shift shared by all keys), so in fp32 they are
# rounding residue of the order of AdamW's eps, which its first step (lr * g / (|g| + eps)) turns
# into updates anywhere in [-lr, lr]. The published step's mask-decoder update norm lies 2.1e-5 from
# the same step computed in float64 (ours: 5e-6), more than its thread noise shows.
DELTA_NORM_RTOL_PART = {"mask_decoder": 3e-5}

# Published keys of the multimask hypernetworks: the published decoder computes all four masks and
# keeps the first, so these receive an all-zero gradient, under which AdamW only applies its weight
# decay. Nothing they compute reaches the loss; our policy freezes them.
ZERO_GRAD_PUBLISHED = tuple(f"visual_model.sam_mask_decoder.output_hypernetworks_mlps.{i}." for i in (1, 2, 3))

# The kernel set the step runs on, in the child process (read when torch is imported and oneDNN starts).
PINNED_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _published_part(key: str) -> str | None:
    """The part of a published key, as the fixture defines them (None: not in any part)."""
    if key.startswith("mm_extractor."):
        return "union_encoder"
    if key.startswith(("text_hidden_fcs.", "text_feat_linear.", "text2one_linear.")):
        return "text_heads"
    if key.startswith(("mask_linear.", "mask_product.", "vmtoken.")):
        return "mpg"
    if key.startswith("visual_model.image_encoder."):
        return "hiera_adapters" if "Adapter" in key else "image_encoder_frozen"
    if key.startswith("visual_model.sam_mask_decoder."):
        return "mask_decoder"
    if key.startswith("visual_model.sam_prompt_encoder.") or key == "visual_model.no_mem_embed":
        return "prompt_encoder"
    return None


def _direction(key: str, shape) -> torch.Tensor:
    n = int(np.prod(shape)) if len(shape) else 1
    u = np.random.Generator(np.random.PCG64(zlib.crc32(f"dir:{key}".encode()))).random(n) * 2.0 - 1.0
    return torch.from_numpy(u.astype(np.float32).reshape(tuple(shape)))


def _published_directions() -> dict[str, dict[str, torch.Tensor]]:
    """``{part: {published key: direction}}`` for every manifest key that belongs to a part."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for entry in json.loads((FIXTURES / "tiny_manifest.json").read_text()):
        part = _published_part(entry["key"])
        if part is not None:
            out.setdefault(part, {})[entry["key"]] = _direction(entry["key"], entry["shape"])
    return out


def _ours(published: dict[str, torch.Tensor], params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Published-layout tensors renamed (and fused in-projections split) onto our parameters by the
    converter that the weight loader uses; buffers, which hold no gradient, are left out."""
    converted, _ = convert_published_state_dict(published)
    return {n: v for n, v in converted.items() if n in params}


def _measure(values: dict[str, torch.Tensor], directions: dict[str, torch.Tensor]) -> tuple[float, float]:
    sq, proj = 0.0, 0.0
    for name, d in directions.items():
        if name in values:
            v = values[name].double()
            sq += float(v.square().sum())
            proj += float((v * d.double()).sum())
    return sq**0.5, proj


def _rel(ours: float, ref: float) -> float:
    return abs(ours - ref) / abs(ref)


def _step_measures() -> dict[str, list[float]]:
    """One training step of the trainer on case0: per part, [elements with a gradient, gradient norm,
    gradient projection, update norm, update projection]."""
    expected = json.loads((FIXTURES / "tiny_step_case0.json").read_text())
    golden = np.load(FIXTURES / "tiny_golden.npz")
    model = rs2sam2.build_model("tiny-parity")
    rs2sam2.load_official_state_dict(model, manifest_state_dict("tiny"))
    model.train()
    cfg = TrainConfig()  # the published recipe
    freeze_published(model)
    optimizer, loss_fn = build_optimizer(model, cfg), build_loss(cfg)  # as the trainer builds them
    assert optimizer.defaults["fused"]  # the trainer's fused AdamW; it still reproduces the published update

    params = dict(model.named_parameters())
    published = _published_directions()
    parts = {part: _ours(sd, params) for part, sd in published.items()}
    assert sorted(n for p in parts.values() for n in p) == sorted(params), "every parameter in exactly one part"
    zero_grad = _ours({k: v for sd in published.values() for k, v in sd.items() if k.startswith(ZERO_GRAD_PUBLISHED)},
                      params)
    assert len(zero_grad) == 3 * 3 * 2 and not any(params[n].requires_grad for n in zero_grad)  # 3 MLPs x 3 layers

    ids = torch.from_numpy(golden["case0_input_ids"])
    out = model(torch.from_numpy(golden["case0_images"]).float(), torch.from_numpy(golden["case0_images_evf"]).float(),
                ids, ids != 3)
    target = torch.from_numpy(golden["case0_target"]).float()
    loss = per_sample_loss(loss_fn, out.logits.float(), target, out.boundary_weight.float())
    assert loss.total.item() == pytest.approx(expected["loss_total"], rel=1e-5)  # forward noise ~1e-6
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    grads = {n: p.grad for n, p in params.items() if p.grad is not None}
    before = {n: params[n].detach().clone() for n in grads}
    optimizer.step()
    deltas = {n: params[n].detach() - b for n, b in before.items()}
    # the published update of the all-zero-gradient parameters: AdamW's decoupled weight decay alone
    for n in zero_grad:
        p, lr = params[n].detach(), cfg.lr_fusion if is_fusion_parameter(n) else cfg.lr
        deltas[n] = p * (1 - lr * cfg.weight_decay) - p
    return {part: [sum(params[n].numel() for n in dirs if n in grads or n in zero_grad),
                   *_measure(grads, dirs), *_measure(deltas, dirs)] for part, dirs in parts.items()}


def _pinned_step_measures() -> dict[str, list[float]]:
    """``_step_measures`` run in a child process on the pinned kernel set."""
    env = {**os.environ, **PINNED_KERNELS}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(rs2sam2.__file__).parents[1]), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(run.stdout.splitlines()[-1])


@pytest.mark.slow  # a forward and backward of the tiny-parity model at 1024x1024 on the CPU (minutes)
def test_one_training_step_matches_the_published_step():
    expected = json.loads((FIXTURES / "tiny_step_case0.json").read_text())
    measures = _pinned_step_measures()
    for part, ref in expected["parts"].items():
        with_grad, grad_norm, grad_proj, delta_norm, delta_proj = measures[part]
        assert with_grad == ref["elements_with_grad"], part
        if ref["elements_with_grad"] == 0:
            assert (grad_norm, grad_proj, delta_norm, delta_proj) == (0.0, 0.0, 0.0, 0.0), part
            continue
        delta_norm_rtol = DELTA_NORM_RTOL_PART.get(part, DELTA_NORM_RTOL)
        assert _rel(grad_norm, ref["grad_norm"]) <= GRAD_RTOL, (part, grad_norm, ref["grad_norm"])
        assert _rel(grad_proj, ref["grad_proj"]) <= GRAD_RTOL, (part, grad_proj, ref["grad_proj"])
        assert _rel(delta_norm, ref["delta_norm"]) <= delta_norm_rtol, (part, delta_norm, ref["delta_norm"])
        assert _rel(delta_proj, ref["delta_proj"]) <= DELTA_PROJ_RTOL, (part, delta_proj, ref["delta_proj"])


if __name__ == "__main__":  # the child process of _pinned_step_measures
    print(json.dumps(_step_measures()))
