"""The README.md model card written with every saved checkpoint: front matter, content, and load
commands that run as written."""

from __future__ import annotations

import re
import shlex

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import helpers_ckpt as h
import rs2sam2
from rs2sam2.checkpoints import CardInfo, parameter_counts, save_state_dict
from rs2sam2.checkpoints.card import TOKENIZER_STANDIN
from rs2sam2.cli import build_parser
from rs2sam2.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = {"Pr@0.5": 29.1, "mIoU": 33.8125, "oIoU": 31.5, "num_expressions": 488, "orig_mIoU": None,
           "per_category": {"ship": {"mIoU": 40.0}}}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _table(card: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading``: first cell -> the other cells."""
    section = card.split(heading, 1)[1]
    rows = [line for line in section.split("\n\n", 2)[1].splitlines() if line.startswith("|")][2:]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    return {c[0]: c[1:] for c in cells}


def _blocks(card: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", card, flags=re.S)


def _nano():
    torch.manual_seed(0)
    return rs2sam2.build_model("nano").eval()


def test_card_of_save_pretrained(tmp_path):
    model = _nano()
    model.image_encoder.requires_grad_(False)  # as when training with a frozen SAM2 trunk
    spm = h.build_checkpoint(tmp_path / "tok") / "tokenizer.model"
    folder = rs2sam2.save_pretrained(model, tmp_path / "ckpt", tokenizer_path=spm,
                                     card={"dataset": "rrsisd", "metrics": METRICS,
                                           "metrics_source": "val split, step 1200"})
    card = (folder / "README.md").read_text()

    meta = _front_matter(card)
    assert meta["library_name"] == "rs2sam2" and meta["pipeline_tag"] == "image-segmentation"
    assert {"rs2sam2", "referring-image-segmentation", "remote-sensing", "sam2"} <= set(meta["tags"])
    assert "# RS2-SAM2 `nano` model" in card

    spec = _table(card, "## Model")
    assert spec["preset"] == ["`nano`"]
    assert spec["SAM2 image input"][0].startswith("256 x 256")
    assert spec["BEiT-3 image input"] == ["128 x 128"]
    assert spec["text"][0].startswith("up to 64 tokens")
    assert spec["mask logits"][0].startswith("64 x 64")
    assert spec["union encoder"] == ["BEiT-3, 3 layers, width 128"]

    counts = {part: [int(v.replace(",", "")) for v in cells] for part, cells in _table(card, "## Parameters").items()}
    by_hand: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        entry = by_hand.setdefault(f"`{name.split('.')[0]}`", [0, 0])
        entry[0] += p.numel()
        entry[1] += p.numel() * p.requires_grad
    total = sum(p.numel() for p in model.parameters())
    assert counts == {**by_hand, "**total**": [total, total - by_hand["`image_encoder`"][0]]}
    assert counts["`image_encoder`"][1] == 0 and counts["`mask_decoder`"][0] == counts["`mask_decoder`"][1] > 0
    sd = model.state_dict()
    assert (f"Weights: `model.safetensors`, {len(sd)} tensors, {sum(t.numel() for t in sd.values()):,} values "
            "(float32).") in card

    assert "Trained on: `rrsisd`." in card and "Metrics (val split, step 1200):" in card
    assert _table(card, "Metrics (val split") == {"Pr@0.5": ["29.1"], "mIoU": ["33.81"], "oIoU": ["31.5"],
                                                   "num_expressions": ["488"]}
    assert "The SentencePiece tokenizer is saved with it" in card and TOKENIZER_STANDIN not in card


def test_card_load_commands_run_as_written(tmp_path, monkeypatch):
    """The card's Python block and ``rs2sam2 predict`` line, run from the checkpoint folder."""
    folder = h.build_checkpoint(tmp_path / "nano")
    card = (folder / "README.md").read_text()
    monkeypatch.chdir(folder)
    h.write_geotiff(folder / "scene.tif")

    (python,) = _blocks(card, "python")
    namespace: dict = {}
    exec(python, namespace)
    assert namespace["pred"].mask.shape == (200, 300) and namespace["model"].config.name == "nano"

    (bash,) = _blocks(card, "bash")
    argv = shlex.split(bash)
    assert argv[:2] == ["rs2sam2", "predict"] and argv[argv.index("--checkpoint") + 1] == "."
    assert cli_main(argv[1:]) == 0
    with Image.open(folder / "mask.tif") as m:
        np.testing.assert_array_equal(np.asarray(m) == 255, namespace["pred"].mask)


def test_card_without_training_info_or_tokenizer(tmp_path):
    """save_state_dict (training's path, no model at hand) without card info says what is not recorded,
    and its load commands ask for the tokenizer."""
    model = _nano()
    folder = save_state_dict(model.state_dict(), model.config, tmp_path / "bare")
    card = (folder / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "rs2sam2"
    assert "Training data: not recorded." in card and "Metrics: not recorded." in card
    assert "Parameter counts by part were not recorded." in card
    assert f'tokenizer="{TOKENIZER_STANDIN}"' in _blocks(card, "python")[0]
    argv = shlex.split(_blocks(card, "bash")[0])
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert (args.checkpoint, args.tokenizer, args.subfolder) == (".", TOKENIZER_STANDIN, None)


def test_card_with_hub_id_and_counts_from_training(tmp_path):
    """A card for a Hub upload names the repository and subfolder in its commands; counts computed
    before training wrapped the model are passed in."""
    model = _nano()
    counts = parameter_counts(model)
    info = CardInfo(dataset="refsegrs", repo_id="ReeF2025/RS2-SAM2", subfolder="refseg", parameters=counts)
    folder = save_state_dict(model.state_dict(), model.config, tmp_path / "up", tokenizer_path=None, card=info)
    card = (folder / "README.md").read_text()
    assert 'rs2sam2.load_pretrained("ReeF2025/RS2-SAM2", subfolder="refseg")' in card
    assert "`ReeF2025/RS2-SAM2` is this model's Hugging Face Hub id" in card
    argv = shlex.split(_blocks(card, "bash")[0])
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert (args.checkpoint, args.subfolder, args.revision) == ("ReeF2025/RS2-SAM2", "refseg", None)
    assert _table(card, "## Parameters")["**total**"] == [f"{counts['total']['total']:,}"] * 2
    assert "Trained on: `refsegrs`." in card and "Metrics: not recorded." in card

    with pytest.raises(TypeError, match="card: expected the fields of CardInfo"):
        rs2sam2.save_pretrained(model, tmp_path / "typo", card={"datset": "rrsisd"})


def test_card_is_rewritten_whole(tmp_path):
    model = _nano()
    folder = rs2sam2.save_pretrained(model, tmp_path / "c", card={"dataset": "first"})
    rs2sam2.save_pretrained(model, folder, card={"dataset": "second"})
    card = (folder / "README.md").read_text()
    assert "Trained on: `second`." in card and "first" not in card and card.endswith("\n")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
