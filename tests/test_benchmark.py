"""`rs2sam2 benchmark` on the nano preset: both modes run and report consistent figures."""

import json

from rs2sam2.cli import main


def _run(capsys, *extra: str) -> dict:
    assert main(["benchmark", "--preset", "nano", "--runs", "2", "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_inference_benchmark(capsys):
    r = _run(capsys, "--texts", "2")
    assert r["preset"] == "nano" and len(r["runs"]) == 2
    assert r["seconds_per_forward"] > 0
    assert abs(2 * r["seconds_per_expression"] - r["seconds_per_forward"]) <= 2e-4  # both rounded to 1e-4
    assert r["tflop_per_forward"] > 0 and r["matmul_gflops"] > 0 and r["ratio_to_floor"] > 0
    assert r["peak_rss_mb"] > 0 and r["cuda_peak_mb"] is None and isinstance(r["malloc_tuned"], bool)


def test_training_step_benchmark(capsys):
    r = _run(capsys, "--train")
    assert r["mode"] == "train" and r["seconds_per_step"] > 0 and len(r["runs"]) == 2
    assert r["trainable_params"] > 0 and r["peak_rss_mb"] > 0 and r["torch"]
