"""``precision="auto"``: bf16 only where the device multiplies bf16 faster than fp32; an explicit bf16
on a CPU without bf16 units warns once. The CPU probe is monkeypatched both ways."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

import helpers_ckpt as h
from rs2sam2 import runtime
from rs2sam2.cli import main as cli_main
from rs2sam2.predict import InputError, Predictor


@pytest.fixture
def cpu(monkeypatch):
    """Set what the CPU reports: ``cpu(flags)`` with a set of /proc/cpuinfo flags, or ``cpu(None,
    speedup)`` for a system without them, where the bf16/fp32 matmul probe decides."""

    def set_cpu(flags, speedup=None):
        monkeypatch.setattr(runtime, "_cpu_bf16", None)  # the cached answer
        monkeypatch.setattr(runtime, "_bf16_warned", False)
        monkeypatch.setattr(runtime, "_cpu_flags", lambda: None if flags is None else set(flags))

        def probe(*args, **kwargs):
            if speedup is None:
                raise AssertionError("the CPU flags decide: no probe expected")
            return speedup

        monkeypatch.setattr(runtime, "_bf16_matmul_speedup", probe)

    return set_cpu


def test_cpu_flags_decide(cpu):
    cpu({"fpu", "avx2", "fma"})
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    cpu({"avx2", "avx512f", "avx512_bf16"})
    assert runtime.resolve_precision("auto", "cpu") == "bf16"
    cpu({"avx2", "amx_tile", "amx_bf16"})
    assert runtime.resolve_precision("auto", torch.device("cpu")) == "bf16"
    assert runtime.resolve_precision("fp32", "cpu") == "fp32"  # an explicit choice is kept


def test_probe_decides_without_cpu_flags(cpu):
    cpu(None, speedup=1 / 70)  # bf16 emulated in software: 70x slower
    assert runtime.resolve_precision("auto", "cpu") == "fp32"
    cpu(None, speedup=2.5)
    assert runtime.resolve_precision("auto", "cpu") == "bf16"


def test_answer_is_cached(cpu, monkeypatch):
    cpu({"avx512_bf16"})
    assert runtime.cpu_has_bf16_units()
    monkeypatch.setattr(runtime, "_cpu_flags", lambda: set())  # would now say "no": the cached answer stands
    assert runtime.cpu_has_bf16_units()


def test_explicit_bf16_on_cpu_without_units_warns_once(cpu):
    cpu({"avx2"}, speedup=1 / 70)
    with pytest.warns(RuntimeWarning, match=r"about 70x slower than fp32"):
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"  # kept, but warned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"  # once per process
    cpu({"amx_bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"  # no warning with bf16 units


def test_no_warning_where_bf16_is_not_slow_despite_the_flags(cpu):
    cpu({"avx2", "avx512f"}, speedup=2.4)  # a VM that hides its bf16 flags: the measured rate speaks
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("bf16", "cpu") == "bf16"


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, int8; got 'fp16'"):
        runtime.resolve_precision("fp16", "cpu")


def test_cuda_auto_follows_bf16_support(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.resolve_precision("auto", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.resolve_precision("auto", "cuda") == "fp32"


def test_predictor_auto(cpu, tmp_path):
    ckpt = h.build_checkpoint(tmp_path / "nano")
    cpu({"avx2"})
    p = Predictor.from_pretrained(ckpt)  # auto is the default
    assert p.precision == "fp32" and p.model.image_encoder.trunk.blocks[0].attn.qkv.weight.dtype == torch.float32
    cpu({"avx2", "amx_bf16"})
    p = Predictor.from_pretrained(ckpt, precision="auto")
    assert p.precision == "bf16" and p.model.image_encoder.trunk.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert "precision=bf16" in repr(p)
    with pytest.raises(InputError, match="precision must be one of auto, fp32, bf16, int8"):
        Predictor.from_pretrained(ckpt, precision="int4")


def test_benchmark_reports_the_precision_used(cpu, capsys):
    cpu({"avx2"})
    before = torch.get_num_threads()
    try:
        assert cli_main(["benchmark", "--preset", "nano", "--runs", "1", "--threads", "1", "--json"]) == 0
    finally:
        torch.set_num_threads(before)
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["precision"] == "fp32"  # auto, resolved on a CPU without bf16 units
    assert r["linear_tflop_per_forward"] > 0 and r["ratio_to_linear_floor"] >= r["ratio_to_floor"] > 0


def test_the_choice_is_explained(cpu):
    cpu({"avx2", "avx512_bf16"})
    precision, why = runtime.precision_choice("auto", "cpu")
    assert precision == "bf16" and why.startswith("auto: this CPU lists bf16 units (avx512_bf16); int8 only when asked")
    cpu({"avx2"})
    assert runtime.precision_choice("auto", "cpu")[1].startswith("auto: this CPU lists no bf16 units")
    cpu(None, speedup=2.5)
    assert runtime.precision_choice("auto", "cpu") == (
        "bf16", "auto: a bf16 matrix multiply ran 2.5x as fast as fp32 here; int8 only when asked for: it was not "
        "faster than bf16 on the CPUs measured (benchmarks/README.md)")
    assert runtime.precision_choice("int8", "cpu") == ("int8", "as asked")


def test_predict_verbose_says_which_precision_and_why(cpu, tmp_path, capsys):
    ckpt = h.build_checkpoint(tmp_path / "nano")
    h.write_geotiff(tmp_path / "scene.tif", height=64, width=64)
    cpu({"avx2"})
    argv = ["predict", "--checkpoint", str(ckpt), "--image", str(tmp_path / "scene.tif"), "--text", "the red building",
            "--out", str(tmp_path / "mask.tif"), "--quiet"]
    assert cli_main([*argv, "--verbose"]) == 0
    err = capsys.readouterr().err
    assert "rs2sam2 predict: device cpu, precision fp32 (auto: this CPU lists no bf16 units" in err
    assert cli_main(argv) == 0
    assert "precision" not in capsys.readouterr().err
