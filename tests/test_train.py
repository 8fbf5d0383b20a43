"""Trainer: collate, loss normalisation, resume, DDP / FSDP equivalence, NaN stop, CLI, CPU smoke run."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rs2sam2 import build_model
from rs2sam2.cli import main
from rs2sam2.data import build_dataset
from rs2sam2.data.collate import collate, model_inputs
from rs2sam2.data.synth import generate
from rs2sam2.data.transforms import SampleTransform
from rs2sam2.losses import RS2SAM2Loss, rs2sam2_loss
from rs2sam2.text import load_tokenizer
from rs2sam2.train import NonFiniteLossError, TrainConfig, train, train_cpu_processes
from rs2sam2.train.config import model_config_from, read_yaml
from rs2sam2.train.policy import lr_factor, per_sample_loss
from rs2sam2.train.state import load_trainer_state

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"
# nano at 128x128 (BEiT-3 view 64x64) with a small vocabulary: fast on a CPU
SMALL_MODEL = {"image_size": 128, "beit3": {"img_size": 64, "vocab_size": 128}}


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    out = {}
    for fmt in ("rrsisd", "refsegrs", "jsonl"):
        generate(fmt, root / fmt, num_images=8, seed=1, image_size=128)
        out[fmt] = root / fmt
    return out


def _config(data: Path, out: Path, dataset: str = "rrsisd", **kw) -> TrainConfig:
    base = dict(preset="nano", dataset=dataset, data=str(data), out=str(out), model=SMALL_MODEL,
                tokenizer=str(TOKENIZER), freeze="none", lr=1e-3, lr_fusion=2e-3, num_workers=0, progress=False,
                tensorboard=False, eval_at_end=False, random_boxes=True, val_limit=2, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


# --------------------------------------------------------------------------------------------------
# pieces
# --------------------------------------------------------------------------------------------------


def test_collate_stacks_and_tokenizes(synth_data):
    ds = build_dataset("rrsisd", synth_data["rrsisd"], "train")
    tok = load_tokenizer(TOKENIZER)
    t = SampleTransform(128, 64, keep_original_mask=True)
    samples = [t(ds.load(i)) for i in range(3)]
    batch = collate(samples, tok, max_len=12)
    assert batch["images"].shape == (3, 3, 128, 128) and batch["images_evf"].shape == (3, 3, 64, 64)
    assert batch["masks"].shape == (3, 128, 128) and batch["masks"].dtype == torch.float32
    assert batch["input_ids"].shape[0] == 3 and batch["input_ids"].shape[1] <= 12
    assert batch["attention_mask"].dtype == torch.bool
    assert (batch["input_ids"][:, 0] == 0).all()  # BOS
    assert torch.equal(batch["attention_mask"], batch["input_ids"] != 3)  # published mask rule
    assert batch["texts"] == [s["text"] for s in samples]
    assert batch["expression_ids"] == [str(s["expression_id"]) for s in samples]
    assert len(batch["masks_orig"]) == 3
    assert set(model_inputs(batch)) == {"images", "images_evf", "input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="at least one"):
        collate([], tok)


def test_per_sample_loss_is_the_mean_of_single_sample_losses():
    torch.manual_seed(0)
    logits = torch.randn(3, 1, 16, 16)
    target = (torch.rand(3, 16, 16) > 0.6).float()
    w = torch.randn(3)
    loss = per_sample_loss(RS2SAM2Loss(), logits, target, w)
    singles = [rs2sam2_loss(logits[i : i + 1], target[i : i + 1], w[i : i + 1]).total for i in range(3)]
    assert loss.total.item() == pytest.approx(float(torch.stack(singles).mean()), rel=1e-6)
    one = per_sample_loss(RS2SAM2Loss(), logits[:1], target[:1], w[:1])
    assert one.total.item() == pytest.approx(singles[0].item(), rel=1e-7)


def test_lr_step_decay_after_epoch_49():
    f = lr_factor([50], 0.1)
    assert f(0) == 1.0 and f(49) == 1.0
    assert f(50) == pytest.approx(0.1) and f(59) == pytest.approx(0.1)
    assert lr_factor([2, 4], 0.5)(4) == pytest.approx(0.25)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    a = build_model("nano", image_size=128)
    b = build_model("nano", image_size=128)
    b.load_state_dict(a.state_dict())
    assert b.set_grad_checkpointing() == sum(a.config.hiera.stages) + a.config.beit3.depth
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 128, 128, generator=g)
    e = torch.randn(2, 3, a.config.beit3.img_size, a.config.beit3.img_size, generator=g)
    ids = torch.randint(4, 100, (2, 6), generator=g)
    for m in (a, b):
        m(x, e, ids).logits.square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        if pa.grad is not None:
            torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-4, atol=1e-6, msg=n)
    assert list(a.state_dict()) == list(b.state_dict())  # names unchanged


def test_config_files_hold_the_published_recipe():
    rr = TrainConfig.from_dict(read_yaml(REPO / "configs" / "rrsisd.yaml"))
    rs = TrainConfig.from_dict(read_yaml(REPO / "configs" / "refsegrs.yaml"))
    for c in (rr, rs):
        assert c.preset == "paper" and c.freeze == "published" and c.batch_size == 1
        assert (c.lr, c.lr_fusion, c.weight_decay) == (5e-5, 1e-4, 0.01)
        assert c.lr_milestones == [50] and c.lr_gamma == 0.1
        assert (c.w_ce, c.w_dice, c.w_tbl, c.boundary_loss) == (0.9, 0.1, 0.2, "hard")
        assert c.eval_threshold == 0.5 and c.best_metric == "mIoU+oIoU" and c.mask_rule == "published"
    assert rr.epochs == 40 and rr.random_boxes is True and rr.dataset == "rrsisd"
    assert rs.epochs == 60 and rs.random_boxes is False and rs.dataset == "refsegrs"
    nano = TrainConfig.from_dict(read_yaml(REPO / "configs" / "nano.yaml"))
    assert nano.preset == "nano" and nano.train_tokenizer
    # defaults without a file follow the dataset, as published
    auto = TrainConfig(dataset="refsegrs", data="x", out="y").resolved()
    assert auto.epochs == 60 and auto.random_boxes is False
    assert TrainConfig(dataset="rrsisd", data="x", out="y").resolved().random_boxes is True
    with pytest.raises(ValueError, match="unknown training config keys"):
        TrainConfig.from_dict({"learning_rate": 1})


def test_every_config_key_is_a_flag():
    """`rs2sam2 train` has a flag for every TrainConfig key, its dest the key itself."""
    import argparse
    import dataclasses

    from rs2sam2.train.cli import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert {f.name for f in dataclasses.fields(TrainConfig)} <= set(vars(parser.parse_args([])))
    args = parser.parse_args(["--out", "run", "--betas", "0.8", "0.9", "--lr-milestones", "3", "5",
                              "--no-eval-at-end", "--model", "{fusion: {bhfm: uni}}", "--eval-every-epochs", "2",
                              "--no-progress", "--set", "w_tbl=0"])
    cfg = config_from_args(args)
    assert cfg.betas == (0.8, 0.9) and cfg.lr_milestones == [3, 5] and cfg.eval_at_end is False
    assert cfg.model == {"fusion": {"bhfm": "uni"}} and cfg.eval_every_epochs == 2
    assert cfg.progress is False and cfg.w_tbl == 0 and cfg.tensorboard is True  # flags not given: defaults


def test_missing_tokenizer_is_a_clear_error(synth_data, tmp_path):
    with pytest.raises(ValueError, match="--tokenizer"):
        train(_config(synth_data["rrsisd"], tmp_path / "run", tokenizer=None, max_steps=1))


# --------------------------------------------------------------------------------------------------
# resume, CLI, evaluation of a run
# --------------------------------------------------------------------------------------------------


def _cli_train(data: Path, out: Path, *extra: str) -> int:
    return main(["train", "--preset", "nano", "--dataset", "rrsisd", "--data", str(data), "--out", str(out),
                 "--tokenizer", str(TOKENIZER), "--num-workers", "0", "--no-progress", "--no-tensorboard",
                 "--set", "model.image_size=128", "--set", "model.beit3.img_size=64",
                 "--set", "model.beit3.vocab_size=128", "--freeze", "none", "--lr", "1e-3", "--lr-fusion", "2e-3",
                 "--val-limit", "2", "--set", "eval_at_end=false", "--set", "lr_milestones=[1]", *extra])


def test_resume_continues_exactly(synth_data, tmp_path):
    """4 steps in one go == 2 steps, stop, --resume for 2 more: identical weights and optimizer state.
    The batch size gives 3 steps per epoch, so the resumed part crosses an epoch end (scheduler step,
    validation, best checkpoint) and the LR decay (milestone 1). The uninterrupted run keeps its
    decoded images in memory (``--image-cache-mb``), which changes nothing either."""
    data = synth_data["rrsisd"]
    refs = build_dataset("rrsisd", data, "train").num_refs
    bs = str(math.ceil(refs / 3))
    full, part = tmp_path / "full", tmp_path / "part"
    assert _cli_train(data, full, "--max-steps", "4", "--batch-size", bs, "--image-cache-mb", "1") == 0
    assert _cli_train(data, part, "--max-steps", "2", "--batch-size", bs) == 0
    assert load_trainer_state(part / "checkpoints" / "last")["global_step"] == 2
    # continuing without --resume is refused (the run would be overwritten)
    assert _cli_train(data, part, "--max-steps", "4", "--batch-size", bs) == 2
    # resume: the saved train_config.yaml is the base; only --max-steps is new
    rc = main(["train", "--out", str(part), "--resume", "--max-steps", "4", "--no-progress"])
    assert rc == 0
    wa, wb = _weights(full), _weights(part)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa, sb = load_trainer_state(full / "checkpoints" / "last"), load_trainer_state(part / "checkpoints" / "last")
    assert sa["global_step"] == sb["global_step"] == 4 and sa["epoch"] == sb["epoch"] == 1
    assert sa["optimizer"]["state"].keys() == sb["optimizer"]["state"].keys()
    for name, st in sa["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], sb["optimizer"]["state"][name]["exp_avg_sq"]), name
    lrs = {g["name"]: g["lr"] for g in sb["optimizer"]["param_groups"]}
    assert lrs["base"] == pytest.approx(1e-4) and lrs["fusion"] == pytest.approx(2e-4)  # x0.1 after epoch 0
    assert sb["scheduler"]["last_epoch"] == 1
    # the trainer state is plain data: it loads with weights_only=True (load_trainer_state does)
    torch.load(part / "checkpoints" / "last" / "trainer_state.pt", weights_only=True)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["global_step"] == 4 and summary["status"] == "completed"
    assert summary["best"]["step"] == 3 and "mIoU" in summary["best"]["metrics"]  # validated at the epoch end
    assert (part / "checkpoints" / "best" / "model.safetensors").is_file()
    # the model card of the best checkpoint names the training data and the validation metrics it was kept for
    card = (part / "checkpoints" / "best" / "README.md").read_text()
    assert "rrsisd" in card and "val split, best at step 3" in card
    assert f"{summary['best']['metrics']['mIoU']:.4g}" in card
    rows = list(csv.DictReader((part / "logs" / "train.csv").open()))
    assert [int(r["step"]) for r in rows] == [2, 4]  # logged at each stop (log_every_steps is 10)
    assert {"loss", "ce", "dice", "boundary", "lr_fusion", "lr_base", "samples_per_s"} <= set(rows[0])
    val_rows = list(csv.DictReader((part / "logs" / "val.csv").open()))
    assert [int(r["step"]) for r in val_rows] == [3]

    # evaluate the run folder (uses checkpoints/best and the tokenizer saved with it)
    report_path = tmp_path / "eval" / "report.json"
    rc = main(["evaluate", "--checkpoint", str(part), "--data", str(data), "--dataset", "rrsisd", "--split", "val",
               "--out", str(report_path), "--limit", "3", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["num_expressions"] == 3 and "original_resolution" in report
    assert report["protocol"]["resolution"] == 128
    assert (tmp_path / "eval" / "report_per_expression.csv").is_file()


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(synth_data, tmp_path):
    run = tmp_path / "nan"
    cfg = _config(synth_data["jsonl"], run, dataset="jsonl", max_steps=6, batch_size=2, save_every_steps=1,
                  debug_nonfinite_at_step=3, eval_at_end=True)
    with pytest.raises(NonFiniteLossError, match=r"step 3"):
        train(cfg)
    state = load_trainer_state(run / "checkpoints" / "last")
    assert state["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in _weights(run).values())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "stopped_nonfinite_loss" and "step 3" in summary["message"]
    assert summary["global_step"] == 2
    # the message says what is on disk and how to go on
    assert f"{run / 'checkpoints' / 'last'} (step 2)" in summary["message"] and "--resume" in summary["message"]


def test_gradient_accumulation_matches_the_larger_batch(synth_data, tmp_path):
    """batch 1 x 2 accumulated micro-batches == batch 2 (per-sample loss normalisation); the clipping
    code path runs too (with a bound that never clips)."""
    common = dict(dataset="refsegrs", max_steps=2, random_boxes=True, adam_eps=ADAM_EPS, clip_grad_norm=1e6)
    train(_config(synth_data["refsegrs"], tmp_path / "big", batch_size=2, **common))
    train(_config(synth_data["refsegrs"], tmp_path / "acc", batch_size=1, grad_accum_steps=2, **common))
    _assert_close_weights(_weights(tmp_path / "big"), _weights(tmp_path / "acc"))
    rows = list(csv.DictReader((tmp_path / "acc" / "logs" / "train.csv").open()))
    assert rows[-1]["step"] == "2" and float(rows[-1]["grad_norm"]) > 0


# --------------------------------------------------------------------------------------------------
# data parallel
# --------------------------------------------------------------------------------------------------


# Adam divides by sqrt(v) + eps: with the default eps 1e-8 a gradient that is mathematically zero but
# numerically ~1e-9 (e.g. attention key biases, which softmax ignores) becomes a full lr-sized step
# in a noise-determined direction, so two correct runs that only differ in fp32 summation order differ
# by ~lr there. eps 1e-6 keeps such noise out of the comparison without changing the real updates much.
ADAM_EPS = 1e-6


def _torchrun(data: Path, out: Path, steps: int, *extra: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "rs2sam2", "train", "--preset", "nano", "--dataset", "refsegrs", "--data", str(data),
           "--out", str(out), "--max-steps", str(steps), "--batch-size", "1", "--tokenizer", str(TOKENIZER),
           "--num-workers", "0", "--no-progress", "--no-tensorboard", "--device", "cpu",
           "--set", "model.image_size=128", "--set", "model.beit3.img_size=64", "--set", "model.beit3.vocab_size=128",
           "--freeze", "none", "--lr", "1e-3", "--lr-fusion", "2e-3", "--set", "eval_at_end=false",
           "--set", f"adam_eps={ADAM_EPS}", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


@pytest.fixture(scope="module")
def single_process_reference(synth_data, tmp_path_factory):
    """3 steps of one process with batch 2 (= the global batch of 2 ranks x batch 1)."""
    run = tmp_path_factory.mktemp("single") / "run"
    torch.manual_seed(123)  # the trainer seeds itself; this must not matter
    summary = train(_config(synth_data["refsegrs"], run, dataset="refsegrs", max_steps=3, batch_size=2,
                            random_boxes=True, device="cpu", adam_eps=ADAM_EPS))
    assert summary["world_size"] == 1 and summary["global_step"] == 3
    return _weights(run)


def _initial_weights() -> dict[str, torch.Tensor]:
    """The weights the trainer starts from (it seeds torch with ``seed`` right before building)."""
    from rs2sam2.models import RS2SAM2

    torch.manual_seed(0)
    return RS2SAM2(model_config_from("nano", SMALL_MODEL)).state_dict()


def _assert_close_weights(ref: dict[str, torch.Tensor], got: dict[str, torch.Tensor]) -> None:
    assert ref.keys() == got.keys()
    init = _initial_weights()
    moved = sum((ref[k] - init[k]).abs().sum().item() for k in ref)
    differ = sum((ref[k] - got[k]).abs().sum().item() for k in ref)
    assert moved > 100  # the runs did train (lr ~1e-3 on ~3M weights)
    assert differ < 1e-5 * moved, (differ, moved)
    for k in ref:
        diff = (ref[k] - got[k]).abs().max().item() if ref[k].numel() else 0.0
        # fp32 summation-order noise; a genuine difference (another batch, unsynchronised gradients)
        # moves weights by ~lr = 1e-3
        assert diff < 3e-5, (k, diff)


def test_cpu_processes_match_one_process(synth_data, tmp_path, single_process_reference):
    """train_cpu_processes (no torchrun: ranks spawned in-process, as `rs2sam2 demo` does),
    2 ranks x batch 1 == 1 process x batch 2, after 3 steps."""
    run = tmp_path / "spawned"
    summary = train_cpu_processes(_config(synth_data["refsegrs"], run, dataset="refsegrs", max_steps=3,
                                          batch_size=1, random_boxes=True, device="cpu", adam_eps=ADAM_EPS), 2)
    assert summary["world_size"] == 2 and summary["global_step"] == 3
    _assert_close_weights(single_process_reference, _weights(run))


def test_cli_cpu_processes(synth_data, tmp_path):
    """`rs2sam2 train --cpu-processes 2`: two ranks, batch per process; a bad rank fails with exit code 2."""
    data = synth_data["rrsisd"]
    assert _cli_train(data, tmp_path / "run", "--max-steps", "2", "--batch-size", "1", "--cpu-processes", "2") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    # the same command on a folder that is not a dataset: the ranks fail, the launcher reports it
    error_files = set(Path(tempfile.gettempdir()).glob("pytorch-errorfile-*"))
    assert _cli_train(tmp_path / "nothing", tmp_path / "bad", "--max-steps", "2", "--cpu-processes", "2") == 2
    # a non-finite loss in the ranks stops the run with the same exit code as in one process
    assert _cli_train(data, tmp_path / "nan", "--max-steps", "2", "--batch-size", "1", "--cpu-processes", "2",
                      "--set", "debug_nonfinite_at_step=2") == 3
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["status"] == "stopped_nonfinite_loss"
    # the tracebacks the failed ranks pickled for the launcher are not left behind
    assert set(Path(tempfile.gettempdir()).glob("pytorch-errorfile-*")) == error_files


def test_cpu_processes_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="processes"):
        train_cpu_processes(_config(tmp_path, tmp_path / "run"), 0)


def test_ddp_two_processes_match_one_process(synth_data, tmp_path, single_process_reference):
    """torchrun, 2 CPU processes (gloo) x batch 1 == 1 process x batch 2, after 3 steps."""
    run = tmp_path / "ddp"
    proc = _torchrun(synth_data["refsegrs"], run, 3, "--random-boxes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 3 and not summary["fsdp"]
    _assert_close_weights(single_process_reference, _weights(run))
    state = load_trainer_state(run / "checkpoints" / "last")
    assert state["world_size"] == 2 and state["refs_done_in_epoch"] == 6


@pytest.mark.slow  # ~30 s: two torchrun launches
def test_fsdp_two_processes_match_one_process(synth_data, tmp_path, single_process_reference):
    """--fsdp (gradient + optimizer-state sharding) takes the same steps; its full checkpoint resumes."""
    run = tmp_path / "fsdp"
    proc = _torchrun(synth_data["refsegrs"], run, 2, "--random-boxes", "--fsdp", "--grad-checkpointing")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fsdp"] and summary["grad_checkpointing"] and summary["world_size"] == 2
    state = load_trainer_state(run / "checkpoints" / "last")
    assert state["global_step"] == 2 and len(state["optimizer"]["state"]) > 0
    proc = _torchrun(synth_data["refsegrs"], run, 3, "--resume", "--fsdp", "--grad-checkpointing")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _assert_close_weights(single_process_reference, _weights(run))


# --------------------------------------------------------------------------------------------------
# CPU smoke run
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_nano_training_lowers_loss_and_raises_val_miou(tmp_path):
    """configs/nano.yaml on generated data (60 scenes, 128x128): in 100 steps (~35 s on 2 free cores)
    the training loss falls and val mIoU rises (validated every epoch; the best epoch is kept)."""
    data = tmp_path / "data"
    generate("rrsisd", data, num_images=60, seed=0, image_size=128)
    cfg = TrainConfig.from_dict({
        **read_yaml(REPO / "configs" / "nano.yaml"),
        "data": str(data), "out": str(tmp_path / "run"), "model": {"image_size": 128, "beit3": {"img_size": 64}},
        "max_steps": 100, "epochs": None, "eval_at_start": True, "eval_every_epochs": 1, "progress": False,
        "tensorboard": True,
    })
    start = time.perf_counter()
    summary = train(cfg)
    seconds = time.perf_counter() - start
    history = summary["val_history"]
    first, last = history[0], history[-1]
    best = max(h["mIoU"] for h in history)
    print(f"\nsmoke: {seconds:.0f}s, loss {summary['train_loss_first']:.4f} -> {summary['train_loss_last']:.4f}, "
          f"val mIoU {first['mIoU']:.2f} -> {last['mIoU']:.2f} (best {best:.2f}), "
          f"oIoU {first['oIoU']:.2f} -> {last['oIoU']:.2f}; history "
          + ", ".join(f"{h['step']}:{h['mIoU']:.1f}" for h in history))
    assert summary["global_step"] == 100 and first["step"] == 0
    assert summary["train_loss_last"] < 0.5 * summary["train_loss_first"]
    assert best > first["mIoU"] + 2.0
    assert last["mIoU"] > first["mIoU"]
    assert summary["best"]["metrics"]["mIoU"] == pytest.approx(
        max(history, key=lambda h: h["mIoU"] + h["oIoU"])["mIoU"])
    # the trained tokenizer sets the vocabulary, recorded in the saved model config
    saved = json.loads((tmp_path / "run" / "checkpoints" / "best" / "config.json").read_text())
    vocab = len(load_tokenizer(tmp_path / "run" / "tokenizer.model"))
    assert saved["rs2sam2_config"]["beit3"]["vocab_size"] == vocab == summary["vocab_size"]
    assert read_yaml(tmp_path / "run" / "train_config.yaml")["model"]["beit3"]["vocab_size"] == vocab
    assert list((tmp_path / "run" / "tb").iterdir())  # TensorBoard events


def test_grounding_warmup_trains_only_the_union_encoder_and_the_mpg(synth_data, tmp_path):
    """grounding_warmup_steps: before step 1 the union encoder and the MPG train alone (every other
    weight is left as built); w_grounding then adds the grounding term to each step, logged as
    `grounding`, in one process and in two (whose warm-up averages the ranks' gradients, see
    test_runtime's test_average_gradients_over_two_processes)."""
    run = tmp_path / "warm"
    summary = train(_config(synth_data["rrsisd"], run, max_steps=0, grounding_warmup_steps=6,
                            grounding_warmup_batch_size=2, device="cpu"))
    warm = summary["grounding_warmup"]
    assert warm["steps"] == 6 and warm["loss_first"] > 0 and summary["global_step"] == 0
    init, got = _initial_weights(), _weights(run)
    moved = {k for k in init if not torch.equal(init[k], got[k])}
    assert moved and all(k.startswith(("union_encoder.", "mpg.")) for k in moved), sorted(moved)[:5]
    assert any(k.startswith("mpg.") for k in moved)

    run2 = tmp_path / "warm2"
    summary = train_cpu_processes(_config(synth_data["rrsisd"], run2, max_steps=2, grounding_warmup_steps=3,
                                          grounding_warmup_batch_size=1, w_grounding=0.5, batch_size=1,
                                          device="cpu", log_every_steps=1), 2)
    assert summary["world_size"] == 2 and summary["global_step"] == 2
    with open(run2 / "logs" / "train.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["grounding"]) > 0 for r in rows)


@pytest.mark.parametrize("bad,match", [({"w_grounding": -1.0}, "w_grounding"),
                                       ({"grounding_warmup_steps": -2}, "grounding_warmup_steps"),
                                       ({"grounding_warmup_batch_size": 0}, "grounding_warmup_batch_size"),
                                       ({"grounding_warmup_steps": 5, "fsdp": True}, "fsdp"),
                                       ({"image_cache_mb": -1}, "image_cache_mb")])
def test_grounding_and_cache_settings_are_checked(synth_data, tmp_path, bad, match):
    from rs2sam2.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        _config(synth_data["rrsisd"], tmp_path / "r", **bad).resolved()
