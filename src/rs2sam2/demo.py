"""``rs2sam2 demo``: the whole method end to end on a CPU, with nothing to download.

1. generate synthetic data in the JSONL layout: single aerial-like scenes with referring expressions
   for every describable object (``data/single``), and mosaics of 3 x 3 scenes described at the scale
   of the whole mosaic, each with a sentence that describes nothing in it (``data/scenes``,
   :mod:`rs2sam2.data.synth.mosaic`); the training file ``data/train.jsonl`` lists both;
2. build a small SentencePiece vocabulary from its training sentences (no ``beit3.spm`` needed);
3. train the ``nano`` preset from scratch with the published losses, after a grounding warm-up of the
   union encoder and the MPG (:mod:`rs2sam2.train.grounding`), with absent-object samples
   (``negatives``), so that its object score says whether a sentence describes anything;
4. evaluate the best checkpoint on the held-out single scenes with the published protocol, and on
   the held-out mosaics as a scene answer's global look sees them (the whole mosaic shrunk to the
   model input): mask IoU, whether the answer lies in the target's cell, and how often a sentence
   that describes nothing gets an empty answer (object score below 0);
5. write ``report.json``, ``training_curve.png`` and ``gallery.png`` (single-scene rows, then
   whole-mosaic rows) into ``--out``.

Mosaics are made of 128 px scenes, so that shrunk to the 128 px model input a 3 x 3 mosaic shows its
objects at the scale at which a 3 x 3 mosaic of 256 px scenes (768 px) appears in a scene answer's
global look. Their validation and test lines carry the splits ``scene_val`` and ``scene_test``, so
that the trainer's validation stays on single scenes.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .data import build_dataset
from .data.synth import generate
from .evaluate import evaluate_model
from .fsutil import atomic_write_text
from .metrics import intersection_union
from .predict import Predictor
from .results import Prediction
from .runtime import available_cores
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
    "dataset": "jsonl",
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
    "negatives": 0.1,  # absent-object samples: the object score learns whether a sentence describes anything
}
DEMO_NUM_IMAGES = 1000
DEMO_BATCH = 8  # global batch, split over the training processes
DEMO_WARMUP_BATCH = 16  # global batch of the grounding warm-up
DEMO_NUM_MOSAICS = 100
DEMO_MOSAIC = 3  # mosaics of 3 x 3 scenes ...
DEMO_MOSAIC_CELL = 128  # ... of 128 px (module docstring)
QUICK = {"num_images": 24, "num_mosaics": 6, "max_steps": 6, "grounding_warmup_steps": 4}  # --quick: a smoke run for tests (seconds)


def demo_processes() -> int:
    """Training processes: two data-parallel ranks sharing the cores when the machine has two or more
    (more samples per second than one process, see benchmarks/README.md;
    :func:`rs2sam2.train.train_cpu_processes`)."""
    return 2 if available_cores() >= 2 else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 demo``."""
    p.add_argument("--out", default="rs2sam2-demo", help="output folder (default: ./rs2sam2-demo)")
    p.add_argument("--num-images", type=int, default=None, help=f"generated scenes (default {DEMO_NUM_IMAGES})")
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {DEMO_RECIPE['epochs']})")
    p.add_argument("--max-steps", type=int, default=None, help="stop training after this many steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds; metrics meaningless)")
    p.add_argument("--gallery-size", type=int, default=6)


def run_demo(out: str | Path = "rs2sam2-demo", num_images: int | None = None, epochs: int | None = None,
             max_steps: int | None = None, seed: int = 0, quick: bool = False, gallery_size: int = 6) -> dict:
    """Generate data, train the nano preset, evaluate it on held-out scenes and mosaics and write the
    report, curve and gallery into ``out``; returns the report."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quick:
        num_images = num_images or QUICK["num_images"]
        max_steps = max_steps or QUICK["max_steps"]
    num_images = num_images or DEMO_NUM_IMAGES
    num_mosaics = QUICK["num_mosaics"] if quick else DEMO_NUM_MOSAICS

    data = out / "data"
    print(f"[1/4] generating {num_images} synthetic scenes and {num_mosaics} mosaics of {DEMO_MOSAIC} x "
          f"{DEMO_MOSAIC} scenes -> {data}")
    train_file = _generate_data(data, num_images, num_mosaics, seed)

    print("[2/4] training the nano preset from scratch on the CPU")
    t_train_start = time.perf_counter()
    summary = _train(train_file, out / "run", seed, epochs, max_steps, quick)
    t_train = time.perf_counter() - t_train_start

    print("[3/4] evaluating the best checkpoint on the held-out test scenes and mosaics")
    best = Path(summary["checkpoints"]["best"] or summary["checkpoints"]["last"])
    predictor = Predictor.from_pretrained(best, device="cpu")
    test = build_dataset("jsonl", data / "single", "test")
    report = evaluate_model(predictor.model, test, predictor.tokenizer, batch_size=8, device="cpu")
    scenes, scene_rows = _scene_figures(predictor, build_dataset("jsonl", data / "scenes", "test"), gallery_size)

    print("[4/4] writing the report, the training curve and the gallery")
    curve = plot_curves(_curves(out / "run" / "logs"), out / "training_curve.png", title="nano on synthetic scenes")
    gallery_path = gallery(_single_rows(predictor, test, gallery_size) + scene_rows, out / "gallery.png")
    elapsed = time.perf_counter() - t0
    result = {
        "split": "test",
        **{k: report[k] for k in ("Pr@0.5", "Pr@0.6", "Pr@0.7", "Pr@0.8", "Pr@0.9", "oIoU", "mIoU", "num_expressions")},
        "original_resolution": report.get("original_resolution"),
        "scenes": scenes,
        "train": {"global_step": summary.get("global_step"), "best": summary.get("best"),
                  "seconds": round(t_train, 1), "negatives": DEMO_RECIPE["negatives"]},
        "num_images": num_images,
        "num_mosaics": num_mosaics,
        "seconds_total": round(elapsed, 1),
        "checkpoint": str(best),
        "files": {"training_curve": str(curve), "gallery": str(gallery_path)},
    }
    atomic_write_text(out / "report.json", json.dumps(result, indent=2))
    print(f"held-out test: mIoU {result['mIoU']:.2f}  oIoU {result['oIoU']:.2f}  Pr@0.5 {result['Pr@0.5']:.2f} "
          f"({result['num_expressions']} expressions); mosaics: mIoU {scenes['mIoU']:.2f}, in the right cell "
          f"{scenes['right_cell']:.0%}, sentences of nothing left empty {scenes['absent_empty']:.0%}; "
          f"in {elapsed / 60:.1f} min -> {out / 'report.json'}")
    print(_next_commands(best, test.load(0)))
    return result


def _next_commands(checkpoint: Path, sample: dict[str, Any]) -> str:
    """What to run next with the demo's checkpoint: predict on a held-out scene, the web demo."""
    text = sample["text"].replace('"', "'")
    return ("next, with the trained checkpoint:\n"
            f"  rs2sam2 predict --checkpoint {checkpoint} --image {sample['meta']['image_path']} "
            f"--text \"{text}\" --out mask.png\n"
            f"  rs2sam2 serve --checkpoint {checkpoint}      # web demo (needs the [app] extra)")


def _generate_data(data: Path, num_images: int, num_mosaics: int, seed: int) -> Path:
    """Write the single scenes and the mosaics (module docstring) and the training file listing
    both; returns the training file."""
    # every describable object of a single scene a target: more expressions per scene for the
    # grounding warm-up
    generate("jsonl", data / "single", num_images=num_images, seed=seed, image_size=256, overwrite=True,
             all_targets=True)  # the demo owns its data folder
    generate("jsonl", data / "scenes", num_images=num_mosaics, seed=seed, image_size=DEMO_MOSAIC_CELL,
             overwrite=True, mosaic=DEMO_MOSAIC, absent=1)
    lines = []
    for part in ("single", "scenes"):
        for line in (data / part / "data.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            record["image"], record["mask"] = f"{part}/{record['image']}", f"{part}/{record['mask']}"
            record["id"] = f"{part}/{record['id']}"
            if part == "scenes" and record["split"] != "train":
                record["split"] = f"scene_{record['split']}"
            lines.append(json.dumps(record))
    atomic_write_text(data / "train.jsonl", "".join(line + "\n" for line in lines))
    return data / "train.jsonl"


def _train(train_file: Path, run: Path, seed: int, epochs: int | None, max_steps: int | None, quick: bool) -> dict:
    """Train :data:`DEMO_RECIPE` on ``train_file`` in :func:`demo_processes` processes."""
    recipe = dict(DEMO_RECIPE, data=str(train_file), out=str(run), seed=seed)
    if max_steps is not None:
        recipe.update(max_steps=max_steps, epochs=None)
    elif epochs is not None:
        recipe["epochs"] = epochs
    if quick:
        recipe.update(val_limit=8, eval_every_epochs=1, grounding_warmup_steps=QUICK["grounding_warmup_steps"])
    processes = demo_processes()
    recipe["batch_size"] = DEMO_BATCH // processes  # the same global batches on any machine
    recipe["grounding_warmup_batch_size"] = DEMO_WARMUP_BATCH // processes
    return train_cpu_processes(TrainConfig.from_dict(recipe), processes)


def _single_rows(predictor: Predictor, test, count: int) -> list[dict[str, Any]]:
    """Gallery rows of ``count`` held-out single-scene expressions, evenly spread."""
    rows = []
    for i in np.linspace(0, len(test) - 1, num=min(count, len(test))).astype(int):
        sample = test.load(int(i))
        pred = predictor.predict(sample["image"], sample["text"])
        inter, union = intersection_union(pred.mask, sample["mask"])
        rows.append(dict(image=sample["image"], text=sample["text"], pred=pred.mask, target=sample["mask"],
                         iou=inter / union if union else 0.0))
    return rows


def _global_look(predictor: Predictor, image: np.ndarray, texts: list[str]) -> list[Prediction]:
    """The whole mosaic read as one model input (shrunk), as a scene answer's global look reads it."""
    with warnings.catch_warnings():  # the note that the image is shrunk: that is the point here
        warnings.simplefilter("ignore")
        return predictor.predict(image, texts, mode="whole", with_prior=False)


def _scene_figures(predictor: Predictor, mosaics, count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Figures of the held-out mosaics' expressions (global look) and ``count`` gallery rows of them.

    ``mIoU`` over the sentences that describe an object; ``right_cell``: the share of those whose
    highest mask logit lies in the target's cell; ``absent_empty``: the share of sentences that
    describe nothing whose object score is below 0 (an empty answer); ``present_kept``: the share of
    the others whose object score is 0 or more."""
    by_image: dict[str, list[int]] = {}
    for i, (ref_index, _, _) in enumerate(mosaics.expressions):
        by_image.setdefault(str(mosaics.refs[ref_index].image_path), []).append(i)
    ious, cells, kept, empty, rows = [], [], [], [], []
    for indices in by_image.values():
        samples = [mosaics.load(i) for i in indices]
        image = samples[0]["image"]
        cell = image.shape[0] // DEMO_MOSAIC
        for sample, pred in zip(samples, _global_look(predictor, image, [s["text"] for s in samples])):
            target = sample["mask"]
            if not target.any():
                empty.append(pred.object_score < 0)
                continue
            inter, union = intersection_union(pred.mask, target)
            ious.append(inter / union)
            peak = np.unravel_index(int(np.argmax(pred.logits)), pred.logits.shape)
            ys, xs = np.nonzero(target)
            cells.append((peak[0] // cell, peak[1] // cell) == (ys[0] // cell, xs[0] // cell))
            kept.append(pred.object_score >= 0)
            if len(rows) < count:
                rows.append(dict(image=image, text=f"[mosaic] {sample['text']}", pred=pred.mask, target=target,
                                 iou=ious[-1]))
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    figures = {"mosaic": f"{DEMO_MOSAIC} x {DEMO_MOSAIC} scenes of {DEMO_MOSAIC_CELL} px, whole mosaic shrunk to "
                         f"the model input", "images": len(by_image), "expressions": len(ious),
               "absent_expressions": len(empty), "mIoU": 100 * mean(ious), "right_cell": mean(cells),
               "present_kept": mean(kept), "absent_empty": mean(empty)}
    return figures, rows


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
