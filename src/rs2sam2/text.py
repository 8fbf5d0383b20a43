"""Sentence tokenization with the XLM-R conventions used by the published RS2-SAM2 code.

The published implementation builds a HuggingFace ``XLMRobertaTokenizer`` on BEiT-3's
SentencePiece model (``beit3.spm``), sets its pad token to the unknown token and adds a
``[SEG]`` token. This module reproduces the resulting ids directly on top of
``sentencepiece`` (no dependency on ``transformers``):

* SentencePiece ids are shifted by the fairseq offset (+1), because fairseq reserves
  ``<s>`` = 0, ``<pad>`` = 1, ``</s>`` = 2, ``<unk>`` = 3 at the start of the vocabulary;
* a SentencePiece unknown (sp id 0) becomes ``<unk>`` = 3;
* ``<mask>`` = ``len(sp) + 1``; ``[SEG]`` = ``len(sp) + 2``; ``len(tokenizer)`` = ``len(sp) + 3``;
* because the pad token was set to ``<unk>``, padding uses id 3 and the published
  attention mask ``input_ids != 3`` also hides genuine unknown tokens.

:func:`train_tokenizer` trains a small SentencePiece model for offline demos where
``beit3.spm`` is unavailable; the resulting file is used through the same conventions.

Two rules about texts that every reader of user sentences shares (predict, serve, evaluate, the
dataset readers):

* :func:`normalize_text` is the one normalisation: invisible format characters (zero-width space,
  byte-order mark, word joiner, bidirectional marks...) are removed, except the zero-width
  (non-)joiners that shape words in some scripts, control characters count as spaces, and runs of
  whitespace become one space. A text left with no visible character is empty (``""``).
* A text with more tokens than the model reads is cut to its beginning, and a
  :class:`TextTruncatedWarning` says so with the token count: one warning per call of
  :meth:`Tokenizer.encode` / :meth:`Tokenizer.batch`, attributed to its caller, so that Python shows it
  once however often the same text comes from the same place. :func:`text_preview` gives the short
  form to echo a long text.
"""

from __future__ import annotations

import io
import os
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch

from .errors import FileFormatError, MissingFileError
from .fsutil import atomic_write_bytes

try:  # guarded so that a missing dependency gives an actionable message
    import sentencepiece as spm
except ImportError as exc:  # pragma: no cover - dependency is declared in pyproject
    raise ImportError("rs2sam2.text needs the 'sentencepiece' package (pip install sentencepiece)") from exc

__all__ = [
    "SEG_TOKEN",
    "MaskRule",
    "TextTruncatedWarning",
    "Tokenizer",
    "load_tokenizer",
    "normalize_text",
    "text_preview",
    "train_tokenizer",
]

SEG_TOKEN = "[SEG]"
MaskRule = Literal["published", "clean"]

# fairseq's reserved ids at the head of the XLM-R vocabulary.
_BOS_ID = 0
_FAIRSEQ_PAD_ID = 1  # never emitted: the published code replaced the pad token by <unk>
_EOS_ID = 2
_UNK_ID = 3
_FAIRSEQ_OFFSET = 1


# zero-width (non-)joiners change how letters join in Arabic-script, Indic and emoji text: kept
_KEPT_FORMAT_CHARACTERS = frozenset("\u200c\u200d")


def normalize_text(text: str) -> str:
    """``text`` as every command reads a sentence (module docstring); ``""`` when nothing visible is
    left, which callers treat as an empty text."""
    chars = []
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cf" and ch not in _KEPT_FORMAT_CHARACTERS:
            continue
        chars.append(" " if category == "Cc" else ch)
    words = "".join(chars).split()
    if not any(unicodedata.category(ch)[0] not in "ZC" for word in words for ch in word):
        return ""
    return " ".join(words)


def text_preview(text: str, max_chars: int = 80) -> str:
    """A short form of ``text`` to echo: normalised, and when longer than ``max_chars``, cut at a word
    boundary with the number of characters left out, e.g. ``'the red car next to ... (+4912 characters)'``."""
    text = normalize_text(text)
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    if " " in head and not text[max_chars].isspace():
        head = head[: head.rindex(" ")]
    head = head.rstrip()
    return f"{head} ... (+{len(text) - len(head)} characters)"


class TextTruncatedWarning(UserWarning):
    """A text had more tokens than the model reads; only its beginning was used."""


def _warn_truncated(lengths: Sequence[int], texts: Sequence[str], max_len: int) -> None:
    """One warning for the texts of one call whose ``lengths`` (tokens, BOS/EOS included) exceed ``max_len``."""
    over = [(n, t) for n, t in zip(lengths, texts) if n > max_len]
    if not over:
        return
    longest, text = max(over, key=lambda item: item[0])
    if len(over) == 1:
        what, whose, which = f"a text of {longest} tokens (BOS and EOS included) is", "its", ""
    else:
        what = f"{len(over)} texts of up to {longest} tokens (BOS and EOS included) are"
        whose, which = "their", "longest: "
    warnings.warn(f"{what} longer than the limit of {max_len}: only {whose} first {max_len} tokens are read "
                  f"({which}{text_preview(text, 60)!r})", TextTruncatedWarning, stacklevel=4)


class Tokenizer:
    """XLM-R style tokenizer over a SentencePiece model (see the module docstring).

    Args:
        sp: a loaded ``SentencePieceProcessor``.
        source: where the model came from (used in messages only).
    """

    def __init__(self, sp: spm.SentencePieceProcessor, source: str = "<memory>") -> None:
        self._sp = sp
        self.source = source
        n = int(sp.get_piece_size())
        if n < 1:
            raise ValueError(f"SentencePiece model {source!r} has an empty vocabulary")
        self._sp_len = n
        self.mask_id = n + _FAIRSEQ_OFFSET
        self._seg_id = n + _FAIRSEQ_OFFSET + 1
        self._len = n + _FAIRSEQ_OFFSET + 2

    # ------------------------------------------------------------------ properties
    def __len__(self) -> int:
        return self._len

    @property
    def vocab_size(self) -> int:
        """Number of ids (SentencePiece pieces + fairseq offset + ``<mask>`` + ``[SEG]``)."""
        return self._len

    @property
    def pad_id(self) -> int:
        """Padding id; equal to :attr:`unk_id` (3), as in the published code."""
        return _UNK_ID

    @property
    def unk_id(self) -> int:
        return _UNK_ID

    @property
    def bos_id(self) -> int:
        return _BOS_ID

    @property
    def eos_id(self) -> int:
        return _EOS_ID

    @property
    def seg_id(self) -> int:
        return self._seg_id

    # ------------------------------------------------------------------ encoding
    def _encode_piece(self, text: str) -> list[int]:
        """Ids of a text fragment without specials, with the fairseq offset applied."""
        if not text:
            return []
        sp_ids: list[int] = self._sp.encode(text, out_type=int)
        # sp id 0 is SentencePiece's <unk>; XLM-R maps it to its own <unk> (3) instead
        # of shifting it to 1 (which is fairseq's <pad>).
        return [i + _FAIRSEQ_OFFSET if i != 0 else _UNK_ID for i in sp_ids]

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """Encode one sentence as ``[BOS] ids [EOS]``.

        A literal ``[SEG]`` in the text becomes :attr:`seg_id`; the fragments around it
        are encoded separately (SentencePiece's normalizer drops the surrounding spaces).

        Args:
            text: the sentence (may be empty: gives ``[0, 2]``).
            max_len: if given, the result is at most this long; ids between BOS and EOS are
                cut at the end so that BOS and EOS are kept (with a :class:`TextTruncatedWarning`
                giving the token count). Must be >= 2.
        """
        [ids] = self._encode_all([text], max_len)
        return ids

    def _encode_all(self, texts: Sequence[str], max_len: int | None) -> list[list[int]]:
        """:meth:`encode` of each text, with one :class:`TextTruncatedWarning` for those cut."""
        if max_len is not None and max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold BOS and EOS, got {max_len}")
        encoded = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"text must be a str, got {type(text).__name__}")
            ids: list[int] = [_BOS_ID]
            for k, fragment in enumerate(text.split(SEG_TOKEN)):
                if k > 0:
                    ids.append(self._seg_id)
                ids.extend(self._encode_piece(fragment))
            encoded.append([*ids, _EOS_ID])
        if max_len is None:
            return encoded
        _warn_truncated([len(ids) for ids in encoded], texts, max_len)
        return [ids if len(ids) <= max_len else [*ids[: max_len - 1], _EOS_ID] for ids in encoded]

    def batch(
        self,
        texts: Sequence[str],
        max_len: int | None = None,
        mask_rule: MaskRule = "published",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode and right-pad several sentences.

        Args:
            texts: the sentences.
            max_len: optional truncation length per sentence (see :meth:`encode`).
            mask_rule: ``"published"``: attention mask = ``input_ids != 3``, so unknown
                tokens are hidden like padding (what the published code does; use it for
                parity); ``"clean"``: only padding positions are hidden.

        Returns:
            ``input_ids`` LongTensor (B, L) padded with 3, and ``attention_mask`` BoolTensor
            (B, L), True where the token is attended to.
        """
        if isinstance(texts, str):
            raise TypeError("batch() takes a sequence of strings; use encode() for one string")
        if mask_rule not in ("published", "clean"):
            raise ValueError(f"mask_rule must be 'published' or 'clean', got {mask_rule!r}")
        if len(texts) == 0:
            raise ValueError("batch() needs at least one text")
        encoded = self._encode_all(texts, max_len)
        length = max(len(e) for e in encoded)
        input_ids = torch.full((len(encoded), length), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(encoded), length), dtype=torch.bool)
        for row, ids in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            valid[row, : len(ids)] = True
        if mask_rule == "published":
            attention_mask = input_ids != self.pad_id
        else:
            attention_mask = valid
        return input_ids, attention_mask

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Best-effort inverse of :meth:`encode` (for logs and debugging)."""
        out: list[str] = []
        pieces: list[int] = []

        def flush() -> None:
            if pieces:
                out.append(self._sp.decode(pieces))
                pieces.clear()

        specials = {_BOS_ID: "<s>", _FAIRSEQ_PAD_ID: "<pad>", _EOS_ID: "</s>", _UNK_ID: "<unk>",
                    self.mask_id: "<mask>", self._seg_id: SEG_TOKEN}
        for i in ids:
            i = int(i)
            if i in specials:
                flush()
                if i == self._seg_id or i == _UNK_ID or not skip_special:
                    out.append(specials[i])
            elif _FAIRSEQ_OFFSET <= i - _FAIRSEQ_OFFSET < self._sp_len:
                pieces.append(i - _FAIRSEQ_OFFSET)
            else:
                raise ValueError(f"id {i} is outside the vocabulary (size {self._len})")
        flush()
        return " ".join(s for s in out if s)

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self._len}, seg_id={self._seg_id})"


def load_tokenizer(spm_path: str | os.PathLike[str]) -> Tokenizer:
    """Load a SentencePiece model file (e.g. BEiT-3's ``beit3.spm``) as a :class:`Tokenizer`.

    Raises:
        MissingFileError (a ``FileNotFoundError``): the file does not exist.
        FileFormatError (a ``ValueError``): the file exists but is not a readable SentencePiece model.
    """
    path = Path(spm_path)
    if not path.is_file():
        raise MissingFileError(f"SentencePiece model not found: {str(path)!r}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"cannot read SentencePiece model {str(path)!r}: {exc}") from exc
    sp = spm.SentencePieceProcessor()
    try:
        # load from bytes so that non-ASCII paths and odd file systems behave identically
        sp.LoadFromSerializedProto(data)
    except Exception as exc:  # sentencepiece raises RuntimeError/OSError with C++ text
        raise FileFormatError(f"{str(path)!r} is not a valid SentencePiece model: {exc}") from exc
    return Tokenizer(sp, source=str(path))


def train_tokenizer(
    texts: Iterable[str],
    out_path: str | os.PathLike[str],
    vocab_size: int = 1000,
    model_type: Literal["unigram", "bpe"] = "bpe",
) -> Path:
    """Train a small SentencePiece model from sentences (for demos without ``beit3.spm``).

    Training is single-threaded and does not sample sentences, so the same input gives
    the same model file. The file is written to a temporary file in the target folder and
    renamed into place, so a reader never sees a partial model.

    Args:
        texts: training sentences (empty ones are ignored).
        out_path: where to write the ``.model`` file (parent folders are created).
        vocab_size: requested size; treated as an upper bound when the corpus is small.
        model_type: ``"bpe"`` (default) or ``"unigram"`` (as XLM-R). On the small, closed
            vocabularies this is for, the unigram trainer collapses to near-character pieces (80
            pieces for the 55 words of the demo's sentences: "airplane" became 4 tokens) while BPE
            keeps whole words, which a small text encoder trained from scratch learns far faster.

    Returns:
        The path of the written model.
    """
    sentences = [t.strip() for t in texts if t and t.strip()]
    if not sentences:
        raise ValueError("train_tokenizer needs at least one non-empty sentence")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8, got {vocab_size}")
    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        vocab_size=vocab_size,
        model_type=model_type,
        # same special layout as XLM-R's model: <unk>=0, <s>=1, </s>=2, no pad piece
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,  # small corpora cannot always fill the requested size
        num_threads=1,  # determinism
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,  # quiet
    )

    return atomic_write_bytes(out, buffer.getvalue())
