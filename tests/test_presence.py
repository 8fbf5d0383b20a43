"""Presence learned: ``train --negatives P`` mixes in absent-object samples (another image's sentence,
an empty target) and trains SAM2's object-score head; at P = 0 the published step is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from rs2sam2.cli import main as cli_main
from rs2sam2.config import ModelConfig, get_config
from rs2sam2.data import build_dataset
from rs2sam2.data.collate import collate, model_inputs
from rs2sam2.data.synth import generate
from rs2sam2.losses import presence_loss
from rs2sam2.models import RS2SAM2
from rs2sam2.text import load_tokenizer
from rs2sam2.train import TrainConfig, train
from rs2sam2.train.config import model_config_from
from rs2sam2.train.policy import (
    apply_freeze,
    build_loss,
    build_optimizer,
    freeze_published,
    per_sample_loss,
    unreachable_parameter_names,
)
from rs2sam2.train.sampling import TrainSamples, train_loader

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "tests" / "fixtures" / "parity" / "tokenizer" / "test_xlmr.model"
SMALL_MODEL = {"image_size": 128, "beit3": {"img_size": 64, "vocab_size": 128}}
HEAD = "mask_decoder.pred_obj_score_head."


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("presence") / "jsonl"
    generate("jsonl", root, num_images=10, seed=3, image_size=128, splits=(1, 0, 0))
    return root


def _config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(preset="nano", dataset="jsonl", data=str(data), out=str(out), model=SMALL_MODEL,
                tokenizer=str(TOKENIZER), freeze="published", num_workers=0, progress=False, tensorboard=False,
                eval_at_end=False, random_boxes=False, seed=0, train_split="all", val_split=None, batch_size=2)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def _saved_config(run: Path) -> dict:
    saved = json.loads((run / "checkpoints" / "last" / "config.json").read_text())
    return saved.get("rs2sam2_config", saved)


# --------------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------------


def test_negatives_sampling_share_sentence_and_empty_target(data):
    ds = build_dataset("jsonl", data, None)
    texts_of: dict[str, set[str]] = {}
    for ref_index, text, _ in ds.expressions:
        texts_of.setdefault(str(ds.refs[ref_index].image_path), set()).add(text.lower())
    plain = TrainSamples(ds, 128, 64, seed=0, random_boxes=False)
    zero = TrainSamples(ds, 128, 64, seed=0, random_boxes=False, negatives=0.0)
    mixed = TrainSamples(ds, 128, 64, seed=0, random_boxes=False, negatives=0.3)
    # the share, over many samples (the decision alone, on stand-in samples)
    absent = 0
    keys = [(epoch, ref) for epoch in range(100) for ref in range(ds.num_refs)]
    for epoch, ref in keys:
        sample = {"text": "", "mask": np.ones((4, 4), bool), "meta": {}}
        mixed._maybe_absent(sample, epoch, ref)
        if sample["meta"].get("absent"):
            absent += 1
            image = str(ds.refs[ref].image_path)
            assert not sample["mask"].any()
            assert sample["text"].lower() not in texts_of[image]  # never a sentence said of this image
            assert any(sample["text"].lower() in t for p, t in texts_of.items() if p != image)
    assert abs(absent / len(keys) - 0.3) < 0.03, absent / len(keys)
    # whole samples: P = 0 gives the published ones; an absent one keeps its image, empties its target
    seen_absent = 0
    for key in [(epoch, ref) for epoch in range(2) for ref in range(ds.num_refs)]:
        base, same, sample = plain[key], zero[key], mixed[key]
        assert same["text"] == base["text"] and torch.equal(same["mask"], base["mask"])
        assert torch.equal(same["image"], base["image"]) and torch.equal(sample["image"], base["image"])
        if sample["meta"].get("absent"):
            seen_absent += 1
            assert not sample["mask"].any() and sample["text"] != base["text"]
        else:
            assert sample["text"] == base["text"] and torch.equal(sample["mask"], base["mask"])
    assert seen_absent >= 1


def test_the_datasets_own_absent_sentences_are_the_negatives_of_their_image(tmp_path):
    """``synth --absent 2``: the reader marks those refs absent; they are no samples of their own
    (the epoch has the object refs only), an absent sample of an image takes one of its own absent
    sentences, and evaluation leaves them out of the mask metrics."""
    from rs2sam2.evaluate import evaluate_model
    from rs2sam2.train.sampling import RefSampler

    root = tmp_path / "rrsisd"
    summary = generate("rrsisd", root, num_images=12, seed=5, image_size=96, splits=(1, 0, 0), absent=2)
    ds = build_dataset("rrsisd", root, "train")
    absent = [r for r in range(ds.num_refs) if ds.refs[r].absent]
    assert len(absent) == summary["splits"]["train"]["absent"] > 0
    assert all(not ds.ref_mask(r, 96, 96).any() for r in absent)
    assert all(ds.ref_mask(r, 96, 96).any() for r in ds.object_refs)
    epoch = sorted(ref for _, ref in RefSampler(ds.object_refs, 0, 1, seed=0))
    assert epoch == ds.object_refs
    own = {}
    for r in absent:
        own.setdefault(str(ds.refs[r].image_path), set()).update(
            ds.expressions[i][1] for i in ds.refs[r].expression_indices)
    mixed = TrainSamples(ds, 96, 64, seed=0, random_boxes=False, negatives=0.5)
    drawn = 0
    for ref in ds.object_refs:
        for epoch in range(5):
            sample = {"text": "", "mask": np.ones((4, 4), bool), "meta": {}}
            mixed._maybe_absent(sample, epoch, ref)
            image = str(ds.refs[ref].image_path)
            if sample["meta"].get("absent") and image in own:
                drawn += 1
                assert sample["text"] in own[image] and not sample["mask"].any()
    assert drawn > 0
    model = RS2SAM2(model_config_from("nano", {"image_size": 96, "beit3": {"img_size": 64, "vocab_size": 128}})).eval()
    report = evaluate_model(model, ds, load_tokenizer(TOKENIZER), batch_size=4, original_resolution=False)
    assert report["num_expressions"] == len(ds.object_expressions) < len(ds)
    assert report["absent_expressions_left_out"] == len(ds) - len(ds.object_expressions)


def test_negatives_need_two_images(tmp_path):
    generate("jsonl", tmp_path / "one", num_images=1, seed=0, image_size=64)
    ds = build_dataset("jsonl", tmp_path / "one", None)
    with pytest.raises(ValueError, match="needs sentences of at least two images"):
        TrainSamples(ds, 64, 64, seed=0, random_boxes=False, negatives=0.5)


# --------------------------------------------------------------------------------------------------
# loss and freeze
# --------------------------------------------------------------------------------------------------


def test_presence_loss_targets_whether_the_object_is_there():
    target = torch.zeros(2, 8, 8)
    target[0, 2:4, 2:4] = 1  # sample 0 real, sample 1 absent
    right = presence_loss(torch.tensor([[6.0], [-6.0]]), target)
    wrong = presence_loss(torch.tensor([[-6.0], [6.0]]), target)
    assert right.item() < 0.01 < 5 < wrong.item()
    assert presence_loss(torch.zeros(2, 1), target).item() == pytest.approx(np.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="one logit per sample"):
        presence_loss(torch.zeros(3, 1), target)


def test_presence_trains_only_the_object_score_head_more():
    model = RS2SAM2(model_config_from("nano", SMALL_MODEL))
    freeze_published(model)
    published = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.startswith(HEAD) for n in published)
    apply_freeze(model, "published", presence=True)
    with_presence = {n for n, p in model.named_parameters() if p.requires_grad}
    assert with_presence - published == {n for n, _ in model.named_parameters() if n.startswith(HEAD)}
    assert published <= with_presence
    assert not any(n.startswith(HEAD) for n in unreachable_parameter_names(model, presence=True))


def test_presence_head_flag_in_the_model_config():
    assert ModelConfig().presence_head is False
    old = get_config("nano").to_dict()
    old.pop("presence_head")  # a config.json written before the flag existed
    assert ModelConfig.from_dict(old).presence_head is False


# --------------------------------------------------------------------------------------------------
# training runs
# --------------------------------------------------------------------------------------------------


def _published_step(cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """One step done by hand with the published recipe's pieces (those the published-step parity
    test holds), in the order in which the trainer draws from torch's generator."""
    cfg = cfg.resolved()
    torch.manual_seed(cfg.seed)
    model = RS2SAM2(model_config_from(cfg.preset, cfg.model))
    freeze_published(model)
    model.train()
    optimizer, loss_fn = build_optimizer(model, cfg), build_loss(cfg)
    ds = build_dataset("jsonl", cfg.data, None)
    sampler, loader = train_loader(ds, cfg, model.config, 0, 1, pin_memory=False)
    sampler.set_epoch(0)
    samples = next(iter(loader))
    batch = collate(samples, load_tokenizer(TOKENIZER), max_len=model.config.beit3.text_len(cfg.max_text_len),
                    mask_rule=cfg.mask_rule)
    out = model(**model_inputs(batch))
    loss = per_sample_loss(loss_fn, out.logits.float(), batch["masks"], out.boundary_weight.float())
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    optimizer.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_negatives_zero_keeps_the_published_training_step(data, tmp_path):
    """``--negatives 0``: the trainer's step is the published recipe's step (same samples, no
    presence term, the object-score head untouched), and the checkpoint says its head is untrained."""
    cfg = _config(data, tmp_path / "zero", max_steps=1, negatives=0.0)
    train(cfg)
    got, want = _weights(tmp_path / "zero"), _published_step(cfg)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=0, atol=1e-6), k
    torch.manual_seed(0)
    init = RS2SAM2(model_config_from("nano", SMALL_MODEL)).state_dict()
    assert all(torch.equal(got[k], init[k]) for k in got if k.startswith(HEAD))
    assert _saved_config(tmp_path / "zero")["presence_head"] is False


def test_negatives_train_the_presence_head_and_say_so(data, tmp_path):
    run = tmp_path / "neg"
    rc = cli_main(["train", "--preset", "nano", "--dataset", "jsonl", "--data", str(data), "--out", str(run),
                   "--max-steps", "2", "--batch-size", "2", "--tokenizer", str(TOKENIZER), "--num-workers", "0",
                   "--no-progress", "--no-tensorboard", "--device", "cpu", "--negatives", "0.5",
                   "--set", "model.image_size=128", "--set", "model.beit3.img_size=64",
                   "--set", "model.beit3.vocab_size=128", "--set", "eval_at_end=false", "--set", "train_split=all",
                   "--set", "val_split=null"])
    assert rc == 0
    got = _weights(run)
    torch.manual_seed(0)
    init = RS2SAM2(model_config_from("nano", SMALL_MODEL)).state_dict()
    assert any(not torch.equal(got[k], init[k]) for k in got if k.startswith(HEAD))  # the presence loss reached it
    assert _saved_config(run)["presence_head"] is True


@pytest.mark.parametrize("value", ["1", "-0.1", "nan", "x"])
def test_bad_negatives_is_one_message_and_exit_2(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        cli_main(["train", "--preset", "nano", "--dataset", "jsonl", "--data", str(tmp_path), "--out",
                  str(tmp_path / "run"), "--negatives", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"argument --negatives: expected a finite number in [0, 1), got "
                                                 f"'{value}'")
    assert not (tmp_path / "run").exists()
