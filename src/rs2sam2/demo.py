"""``rs2sam2 demo``: the whole method end to end on a CPU, with nothing to download.

1. generate a synthetic RRSIS-D-layout dataset (aerial-like scenes + referring expressions for every
   describable object);
2. build a small SentencePiece vocabulary from its training sentences (no ``beit3.spm`` needed);
3. train the ``nano`` preset from scratch with the published losses, after a grounding warm-up of the
   union encoder and the MPG (:mod:`rs2sam2.train.grounding`);
4. evaluate the best checkpoint on the held-out test scenes with the published protocol;
5. write ``report.json``, ``training_curve.png`` and ``gallery.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cliargs import number
from .data import build_dataset
from .data.synth import generate
from .evaluate import evaluate_model
from .extras import require
from .fsutil import atomic_write_text
from .metrics import intersection_union
from .predict import Predictor
from .runtime import available_cores
from .scene_eval import mosaic_jobs, score
from .train import TrainConfig, train_cpu_processes
from .viz import gallery, plot_curves

# The demo's recipe (not a published one): everything is trained from scratch, so nothing is frozen
# and one learning rate serves both parameter groups; small inputs keep a CPU run within minutes;
# Dice is weighted up and cross-entropy down because the published weights collapse to "predict
# nothing" from scratch on these mostly-background scenes. The union encoder and the MPG first learn
# alone to point at the referred object (grounding warm-up; BEiT-3 sees the scene at 96 px in 8 px
# patches, a 12x12 grid on which small objects still show their size and colour, and its position
# table starts as a 2-D sine-cosine code so that position words have an order to read from the
# first step), and keep a grounding loss afterwards: without it the model follows colour words only.
# The sweeps behind each choice, and the figures a run gives, are in benchmarks/README.md ("Demo
# recipe").
DEMO_RECIPE: dict[str, Any] = {
    "preset": "nano",
    "dataset": "rrsisd",
    "model": {"image_size": 128, "beit3": {"img_size": 96, "patch_size": 8, "pos_embed_init": "sincos"}},
    "train_tokenizer": True,
    "tokenizer_vocab_size": 200,
    "epochs": 5,
    "lr": 3e-4,
    "lr_fusion": 3e-4,
    "weight_decay": 0.01,
    "lr_milestones": [4],
    "clip_grad_norm": 1.0,
    "w_ce": 0.5,
    "w_dice": 1.0,
    "w_tbl": 0.2,
    "w_grounding": 1.0,
    "grounding_warmup_steps": 400,
    "grounding_warmup_lr": 5e-4,
    "boundary_loss": "hard",
    "freeze": "none",
    "random_boxes": False,
    "precision": "fp32",
    "device": "cpu",
    "num_workers": 0,
    "image_cache_mb": 256,  # every training image decoded once (about 140 MB of them)
    "eval_every_epochs": 1,
    "val_limit": 150,
    "eval_batch_size": 8,
    "log_every_steps": 5,
}
DEMO_NUM_IMAGES = 1000
# the report's scene figures: mosaics of 3 x 3 and of 4 x 4 generated 256 px scenes (rs2sam2.scene_eval),
# drawn by their own generator (seeds from DEMO_SCENE_SEED), so none is a training scene
DEMO_SCENE_MOSAICS = 4
DEMO_SCENE_SEED = 1000
DEMO_BATCH = 8  # global batch, split over the training processes
DEMO_WARMUP_BATCH = 16  # global batch of the grounding warm-up
QUICK = {"num_images": 24, "max_steps": 6, "grounding_warmup_steps": 4}  # --quick: a smoke run for tests (seconds)


def demo_processes() -> int:
    """Training processes: two data-parallel ranks sharing the cores when the machine has two or more
    (more samples per second than one process, see benchmarks/README.md;
    :func:`rs2sam2.train.train_cpu_processes`)."""
    return 2 if available_cores() >= 2 else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 demo``."""
    p.add_argument("--out", default="rs2sam2-demo", help="output folder (default: ./rs2sam2-demo)")
    p.add_argument("--num-images", type=number(int, low=1, high=100_000), default=None, help=f"generated scenes (default {DEMO_NUM_IMAGES})")
    p.add_argument("--epochs", type=number(int, low=1, high=10_000), default=None, help=f"training epochs (default {DEMO_RECIPE['epochs']})")
    p.add_argument("--max-steps", type=number(int, low=1), default=None, help="stop training after this many steps")
    p.add_argument("--seed", type=number(int, low=0), default=0)
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds; metrics meaningless)")
    p.add_argument("--gallery-size", type=number(int, low=1, high=100), default=6)


def run_demo(out: str | Path = "rs2sam2-demo", num_images: int | None = None, epochs: int | None = None,
             max_steps: int | None = None, seed: int = 0, quick: bool = False, gallery_size: int = 6) -> dict:
    """Generate data, train the nano preset, evaluate it on held-out scenes and write the report, curve and gallery into ``out``; returns the report."""
    # the training curve needs the plot extra: say so before any work, not after ten minutes of training
    require("matplotlib.figure", "rs2sam2 demo (its training curve)")
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        num_images = num_images or QUICK["num_images"]
        max_steps = max_steps or QUICK["max_steps"]
    num_images = num_images or DEMO_NUM_IMAGES

    data = out / "data"
    print(f"[1/4] generating {num_images} synthetic scenes -> {data}")
    # every describable object a target: more expressions per scene for the grounding warm-up
    generate("rrsisd", data, num_images=num_images, seed=seed, image_size=256, overwrite=True,  # the demo owns it
             all_targets=True)

    print("[2/4] training the nano preset from scratch on the CPU")
    t_train_start = time.perf_counter()
    summary = _train(data, out / "run", seed, epochs, max_steps, quick)
    t_train = time.perf_counter() - t_train_start

    print("[3/4] evaluating the best checkpoint on the held-out test scenes")
    best = Path(summary["checkpoints"]["best"] or summary["checkpoints"]["last"])
    predictor = Predictor.from_pretrained(best, device="cpu")
    test = build_dataset("rrsisd", data, "test")
    report = evaluate_model(predictor.model, test, predictor.tokenizer, batch_size=8, device="cpu")

    scenes, scene_rows = _scene_figures(predictor, 1 if quick else DEMO_SCENE_MOSAICS)

    print("[4/4] writing the report, the training curve and the gallery")
    curve = plot_curves(_curves(out / "run" / "logs"), out / "training_curve.png", title="nano on synthetic RRSIS-D")
    rows = _gallery_rows(predictor, test, gallery_size)
    gallery_path = gallery(rows + scene_rows, out / "gallery.png")

    elapsed = time.perf_counter() - t0
    result = {
        "split": "test",
        **{k: report[k] for k in ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU", "num_expressions")},
        "original_resolution": report.get("original_resolution"),
        "scenes": scenes,
        "train": {"global_step": summary.get("global_step"), "best": summary.get("best"),
                  "seconds": round(t_train, 1)},
        "num_images": num_images,
        "seconds_total": round(elapsed, 1),
        "checkpoint": str(best),
        "files": {"training_curve": str(curve), "gallery": str(gallery_path)},
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=2))
    print(f"held-out test: mIoU {result['mIoU']:.2f}  oIoU {result['oIoU']:.2f}  Pr@0.5 {result['Pr@0.5']:.2f} "
          f"({result['num_expressions']} expressions) in {elapsed / 60:.1f} min -> {out / 'report.json'}")
    print(f"scenes: mIoU {scenes['mIoU']}  painted outside the target's cell {scenes['outside_cell_pct']}%  "
          f"absent sentences left empty {scenes['absent_empty_pct']}% ({scenes['targets']} + {scenes['absent']} "
          f"sentences on {scenes['mosaics']} mosaics)")
    print(next_commands(out, max(rows, key=lambda row: row["iou"])))
    return result


def _train(data: Path, run: Path, seed: int, epochs: int | None, max_steps: int | None, quick: bool) -> dict:
    """Train :data:`DEMO_RECIPE` on ``data`` into ``run``, on the same global batches on any machine."""
    recipe = dict(DEMO_RECIPE, data=str(data), out=str(run), seed=seed)
    if max_steps is not None:
        recipe.update(max_steps=max_steps, epochs=None)
    elif epochs is not None:
        recipe["epochs"] = epochs
    if quick:
        recipe.update(val_limit=8, eval_every_epochs=1, grounding_warmup_steps=QUICK["grounding_warmup_steps"])
    processes = demo_processes()
    recipe["batch_size"] = DEMO_BATCH // processes
    recipe["grounding_warmup_batch_size"] = DEMO_WARMUP_BATCH // processes
    return train_cpu_processes(TrainConfig.from_dict(recipe), processes)


def _gallery_rows(predictor: Predictor, test, count: int) -> list[dict[str, Any]]:
    """``count`` test samples spread over the split, each with its prediction and IoU."""
    rows = []
    for i in np.linspace(0, len(test) - 1, num=min(count, len(test))).astype(int):
        sample = test.load(int(i))
        pred = predictor.predict(sample["image"], sample["text"])
        inter, union = intersection_union(pred.mask, sample["mask"])
        rows.append(dict(image=sample["image"], text=sample["text"], pred=pred.mask, target=sample["mask"],
                         iou=inter / union if union else 0.0, path=sample["meta"]["image_path"]))
    return rows


def _scene_figures(predictor: Predictor, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scene answers (the default of ``predict`` on large images) on ``count`` mosaics of 3 x 3 and of
    4 x 4 scenes (rs2sam2.scene_eval): the report's figures, and a gallery row (the whole mosaic)
    for the first target sentence of each size."""
    jobs = mosaic_jobs(count, DEMO_SCENE_SEED)
    masks: dict[str, np.ndarray] = {}
    for image_jobs in _by_image(jobs):
        preds = predictor.predict(image_jobs[0].image, [job.text for job in image_jobs], mode="scene")
        masks.update((job.name, pred.mask) for job, pred in zip(image_jobs, preds))
    figures = score(jobs, [masks[job.name] for job in jobs])
    rows = []
    for k in (3, 4):
        job = next(j for j in jobs if not j.absent and j.name.startswith(f"{k}x{k}_"))
        inter, union = intersection_union(masks[job.name], job.target)
        rows.append(dict(image=job.image, text=f"{job.text} (a {k} x {k} mosaic: a scene answer)",
                         pred=masks[job.name], target=job.target, iou=inter / union if union else 0.0))
    return {"mosaics": 2 * count, "seed": DEMO_SCENE_SEED, "mode": "scene", **figures}, rows


def _by_image(jobs: list) -> list[list]:
    """``jobs`` grouped by mosaic, in order (one prediction per mosaic answers all its sentences)."""
    groups: list[list] = []
    for job in jobs:
        if groups and groups[-1][0].image is job.image:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def next_commands(out: Path, row: dict[str, Any]) -> str:
    """What to run after the demo: ``predict`` on one of its test scenes (``row``: its best gallery row)
    and ``serve``, both on the demo's checkpoint, the run folder ``out/run``."""
    run, q = out / "run", shlex.quote
    return (f"next: segment a sentence in one of the test scenes with this checkpoint, then open the web demo on it:\n"
            f"  rs2sam2 predict --checkpoint {q(str(run))} --image {q(str(row['path']))} --text {q(row['text'])} "
            f"--out {q(str(out / 'mask.png'))} --overlay {q(str(out / 'overlay.png'))}\n"
            f"  rs2sam2 serve --checkpoint {q(str(run))}")


def _curves(logs: Path) -> dict[str, list[tuple[float, float]]]:
    series: dict[str, list[tuple[float, float]]] = {"train loss": [], "val mIoU / 100": []}
    for name, column, key, scale in (("train.csv", "loss", "train loss", 1.0), ("val.csv", "mIoU", "val mIoU / 100", 0.01)):
        path = logs / name
        if path.exists():
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get(column) not in (None, ""):
                        series[key].append((float(row["step"]), float(row[column]) * scale))
    return series


def run(args: argparse.Namespace) -> int:
    """``rs2sam2 demo``."""
    run_demo(args.out, args.num_images, args.epochs, args.max_steps, args.seed, args.quick, args.gallery_size)
    return 0
