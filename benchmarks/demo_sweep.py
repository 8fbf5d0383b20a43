"""Recipe sweep for ``rs2sam2 demo`` (issue 14): variants of the demo recipe trained side by side.

Every variant trains the demo's model on the demo's data (1000 synthetic RRSIS-D scenes of seed 0,
generated into ``--data`` when absent) with :data:`rs2sam2.demo.DEMO_RECIPE` plus its own overrides,
in one process each (``--jobs`` at a time), then scores its best checkpoint on the held-out test
split. On a GPU machine the variants share the GPU; on the CPU each process gets one thread.

Each variant writes ``OUT/<name>/result.json`` (test metrics, steps, seconds, the val curve); the
sweep prints one line per variant and writes ``OUT/summary.jsonl``. A variant still running at
``--budget-s`` is stopped and reported with the val curve it reached.

    python benchmarks/demo_sweep.py --out sweep --device cuda --jobs 12 --budget-s 500
    python benchmarks/demo_sweep.py --out sweep --device cpu --jobs 2 --variants base,ce1 --max-steps 4
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# name -> overrides of the demo recipe ("model" is merged key by key into the recipe's model overrides)
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "seed1": {"seed": 1},
    "ep26": {"epochs": 26, "lr_milestones": [22]},
    "ep39": {"epochs": 39, "lr_milestones": [34]},
    "ce1": {"w_ce": 1.0},
    "px192": {"model": {"image_size": 192}},
    "beit6": {"model": {"beit3": {"depth": 6}}},
    "beitp8": {"model": {"beit3": {"patch_size": 8}}},
    "hiera48": {"model": {"hiera": {"embed_dim": 48}}},
    "deep3": {"model": {"hiera": {"stages": [1, 2, 5, 1], "global_att_blocks": [5, 7, 8]}}},
    "beit256": {"model": {"beit3": {"embed_dim": 256, "ffn_dim": 1024}}},
    "dec128": {"model": {"hidden_dim": 128, "decoder_mlp_dim": 512}},
    "b16": {"batch_size": 16, "lr": 6e-4, "lr_fusion": 6e-4},
    "b16ep39": {"batch_size": 16, "lr": 6e-4, "lr_fusion": 6e-4, "epochs": 39, "lr_milestones": [34]},
    "b32ep39": {"batch_size": 32, "lr": 6e-4, "lr_fusion": 6e-4, "epochs": 39, "lr_milestones": [34]},
}


def _val_curve(run: Path) -> list[tuple[int, float]]:
    path = run / "logs" / "val.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [(int(r["step"]), round(float(r["mIoU"]), 2)) for r in csv.DictReader(f) if r.get("mIoU")]


def run_one(name: str, data: Path, out: Path, device: str, max_steps: int | None) -> None:
    """Train variant ``name`` and score its best checkpoint on the test split (child process)."""
    import torch

    from rs2sam2.data import build_dataset
    from rs2sam2.demo import DEMO_BATCH, DEMO_RECIPE
    from rs2sam2.evaluate import evaluate_model
    from rs2sam2.fsutil import atomic_write_text
    from rs2sam2.predict import Predictor
    from rs2sam2.train import TrainConfig, train
    from rs2sam2.train.config import merge_dicts

    torch.set_num_threads(1)
    run = out / name / "run"
    recipe = merge_dicts(dict(DEMO_RECIPE, data=str(data), out=str(run), seed=0, batch_size=DEMO_BATCH,
                              device=device, tensorboard=False, progress=False), VARIANTS[name])
    if max_steps is not None:
        recipe.update(max_steps=max_steps, epochs=None)
    t0 = time.perf_counter()
    summary = train(TrainConfig.from_dict(recipe))
    t_train = time.perf_counter() - t0
    best = Path(summary["checkpoints"]["best"] or summary["checkpoints"]["last"])
    predictor = Predictor.from_pretrained(best, device=device)
    report = evaluate_model(predictor.model, build_dataset("rrsisd", data, "test"), predictor.tokenizer,
                            batch_size=8, device=device)
    result = {"variant": name, "overrides": VARIANTS[name], "test_mIoU": round(report["mIoU"], 2),
              "test_oIoU": round(report["oIoU"], 2), "steps": summary.get("global_step"),
              "train_s": round(t_train, 1), "total_s": round(time.perf_counter() - t0, 1), "val": _val_curve(run)}
    atomic_write_text(out / name / "result.json", json.dumps(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--data", default=None, help="the demo's dataset (default OUT/data; generated when absent)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=3600.0, help="stop variants still running after this")
    p.add_argument("--max-steps", type=int, default=None, help="a smoke run: this many steps per variant")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    out = Path(args.out)
    data = Path(args.data) if args.data else out / "data"
    if args.one:
        run_one(args.one, data, out, args.device, args.max_steps)
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    t0 = time.perf_counter()
    if not data.exists():
        from rs2sam2.data.synth import generate

        generate("rrsisd", data, num_images=1000, seed=0, image_size=256, overwrite=True)
    print(f"data ready after {time.perf_counter() - t0:.0f} s", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    pending, running, stopped = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            (out / name).mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--one", name, "--out", str(out), "--data", str(data),
                   "--device", args.device] + (["--max-steps", str(args.max_steps)] if args.max_steps else [])
            log = open(out / name / "log.txt", "w")
            running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        for name, (proc, log) in list(running.items()):
            if proc.poll() is not None or time.perf_counter() - t0 > args.budget_s:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                    stopped[name] = "the budget ran out"
                elif proc.returncode:
                    stopped[name] = f"failed with exit status {proc.returncode} (see {name}/log.txt)"
                log.close()
                del running[name]
        time.sleep(2)
    from rs2sam2.fsutil import atomic_write_text

    rows = []
    for name in names:
        path = out / name / "result.json"
        rows.append(json.loads(path.read_text()) if path.exists() else {
            "variant": name, "stopped": stopped.get(name, "no result"), "val": _val_curve(out / name / "run")})
        print(json.dumps(rows[-1]), flush=True)
    atomic_write_text(out / "summary.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"sweep done in {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
