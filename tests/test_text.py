"""Tokenizer: published XLM-R conventions, checked against tokenizer_golden.json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from rs2sam2.text import (
    SEG_TOKEN,
    TextTruncatedWarning,
    Tokenizer,
    load_tokenizer,
    normalize_text,
    text_preview,
    train_tokenizer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "parity" / "tokenizer"
MODEL = FIXTURES / "test_xlmr.model"
GOLDEN = json.loads((FIXTURES / "tokenizer_golden.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_tokenizer(MODEL)


def test_special_ids_match_meta(tok: Tokenizer) -> None:
    meta = GOLDEN["meta"]
    assert tok.pad_id == meta["pad_token_id"] == 3
    assert tok.unk_id == meta["unk_token_id"] == 3
    assert tok.bos_id == meta["bos_token_id"] == 0
    assert tok.eos_id == meta["eos_token_id"] == 2
    assert tok.seg_id == meta["seg_token_id"]
    assert len(tok) == tok.vocab_size == meta["len"]
    assert tok.mask_id == tok.seg_id - 1


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: repr(c["text"][:24]))
def test_encode_matches_golden(tok: Tokenizer, case: dict) -> None:
    assert tok.encode(case["text"]) == case["input_ids"]


def test_empty_text(tok: Tokenizer) -> None:
    assert tok.encode("") == [0, 2]


def test_seg_token_anywhere(tok: Tokenizer) -> None:
    a, b = tok.encode("the road"), tok.encode("the building")
    ids = tok.encode(f"the road {SEG_TOKEN} the building")
    assert ids == a[:-1] + [tok.seg_id] + b[1:]
    assert tok.encode(f"{SEG_TOKEN}{SEG_TOKEN}") == [0, tok.seg_id, tok.seg_id, 2]
    assert tok.encode(f"dam{SEG_TOKEN}") == tok.encode("dam")[:-1] + [tok.seg_id, 2]


def test_truncation_keeps_bos_eos(tok: Tokenizer) -> None:
    full = tok.encode(GOLDEN["cases"][0]["text"])
    cut = tok.encode(GOLDEN["cases"][0]["text"], max_len=6)
    assert cut == full[:5] + [2]
    assert tok.encode("dam", max_len=100) == tok.encode("dam")
    assert tok.encode("dam", max_len=2) == [0, 2]
    with pytest.raises(ValueError):
        tok.encode("dam", max_len=1)


def test_batch_padding_and_mask_rules(tok: Tokenizer) -> None:
    texts = ["The WHITE storage tank near the road.", "dam", ""]
    ids, mask = tok.batch(texts)
    expected = [tok.encode(t) for t in texts]
    length = max(len(e) for e in expected)
    assert ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids.shape == mask.shape == (3, length)
    for row, e in enumerate(expected):
        assert ids[row, : len(e)].tolist() == e
        assert (ids[row, len(e):] == 3).all()
    # published: every id 3 (padding *and* unknown pieces) is masked out
    assert torch.equal(mask, ids != 3)
    assert not mask[0].all() and (ids[0, : len(expected[0])] == 3).any()
    # clean: only padding is masked
    _, clean = tok.batch(texts, mask_rule="clean")
    for row, e in enumerate(expected):
        assert clean[row, : len(e)].all() and not clean[row, len(e):].any()
    ids_t, _ = tok.batch(texts, max_len=5)
    assert ids_t.shape == (3, 5) and ids_t[0, -1].item() == 2
    with pytest.raises(ValueError):
        tok.batch(texts, mask_rule="other")  # type: ignore[arg-type]


def test_missing_or_bad_model_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "beit3.spm"
    with pytest.raises(FileNotFoundError, match="beit3.spm"):
        load_tokenizer(missing)
    bad = tmp_path / "garbage.spm"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ValueError, match="garbage.spm"):
        load_tokenizer(bad)


def test_decode_roundtrip(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("a ship next to the river")) == "a ship next to the river"


def test_train_tokenizer_deterministic_and_usable(tmp_path: Path) -> None:
    corpus = [
        "the large red vehicle on the left",
        "a ship next to the river",
        "the long bridge in the upper left corner of the image",
        "white storage tank near the road",
        "the harbor on the right side",
    ] * 10
    p1 = train_tokenizer(corpus, tmp_path / "a" / "demo.model", vocab_size=60)
    p2 = train_tokenizer(corpus, tmp_path / "b" / "demo.model", vocab_size=60)
    assert p1.read_bytes() == p2.read_bytes()
    assert sorted(x.name for x in p1.parent.iterdir()) == ["demo.model"]  # no temp file left
    t = load_tokenizer(p1)
    ids = t.encode(f"{SEG_TOKEN} the red ship")
    assert ids[0] == 0 and ids[1] == t.seg_id and ids[-1] == 2
    assert 3 not in ids  # all characters were in the corpus
    assert t.vocab_size <= 60 + 3
    bpe = load_tokenizer(train_tokenizer(corpus, tmp_path / "bpe.model", vocab_size=60, model_type="bpe"))
    assert bpe.encode("the river")[0] == 0
    with pytest.raises(ValueError):
        train_tokenizer(["", "  "], tmp_path / "empty.model")


# --- the shared text rules: normalisation, long texts ----------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\u200b", "\u200b\u200c \ufeff\u2060", "\u00a0\u3000\t\n", "\x00\x07"])
def test_invisible_text_is_empty(text: str) -> None:
    assert normalize_text(text) == ""


def test_normalize_text_keeps_words_and_joiners() -> None:
    assert normalize_text("  the\u200b red\u00a0 car\n ") == "the red car"
    assert normalize_text("the\x00car") == "the car"  # a control character separates words
    assert normalize_text("\ufeffthe tank") == "the tank"  # byte-order mark of a pasted text
    # zero-width (non-)joiners shape words in some scripts: kept inside a word
    assert normalize_text("\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645") == "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"
    assert normalize_text("\u200d") == ""  # ...but alone they are nothing visible


def test_text_preview() -> None:
    assert text_preview("the red  car") == "the red car"
    long = "the red car " * 500
    short = text_preview(long, max_chars=30)
    assert short.startswith("the red car the red car") and short.endswith("characters)")
    head, _, rest = short.partition(" ... (+")
    assert len(head) <= 30 and not head.endswith(" ")
    assert int(rest.split()[0]) == len(normalize_text(long)) - len(head)


def test_long_text_warned_once_with_its_token_count(tok: Tokenizer) -> None:
    text = "the large red vehicle on the left " * 40
    full = len(tok.encode(text))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):  # the same text from the same place (a loop over batches): warned once
            ids, _ = tok.batch([text, "the car"], max_len=10)
        assert ids.shape == (2, 10) and ids[0, -1].item() == tok.eos_id
    found = [w for w in caught if issubclass(w.category, TextTruncatedWarning)]
    assert len(found) == 1
    message = str(found[0].message)
    assert f"a text of {full} tokens" in message and "limit of 10" in message
    assert "the large red vehicle" in message and len(message) < 300  # a preview, not the whole text
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        tok.batch([text, text + " again", "the car"], max_len=10)
        tok.encode("the car", max_len=10)  # short enough: no warning
    found = [w for w in caught if issubclass(w.category, TextTruncatedWarning)]
    assert len(found) == 1 and str(found[0].message).startswith("2 texts of up to")
