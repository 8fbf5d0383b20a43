"""Batching transformed samples into model inputs.

:class:`~rs2sam2.data.transforms.SampleTransform` turns one ``ds.load(i)`` dict into tensors of
fixed size; :func:`collate` stacks several of them and tokenizes their sentences in one go::

    batch = collate([transform(ds.load(i)) for i in idx], tokenizer)
    out = model(**model_inputs(batch))

Sentences are right-padded to the longest one of the batch with the tokenizer's pad id (3, as
published). With ``mask_rule="published"`` the attention mask is ``input_ids != 3`` (unknown
tokens are hidden like padding, as in the published code); ``"clean"`` hides only padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["collate", "list_collate", "model_inputs", "move_batch", "check_vocabulary"]

_TENSOR_KEYS = ("image", "image_evf", "mask")


def collate(samples: Sequence[dict[str, Any]], tokenizer, max_len: int | None = None,
            mask_rule: str = "published") -> dict[str, Any]:
    """Stack transformed samples and tokenize their texts.

    Args:
        samples: outputs of ``SampleTransform`` (keys ``image`` (3,S,S), ``image_evf`` (3,s,s),
            ``mask`` (S,S), ``text``, ``expression_id``, ``meta``; optional ``mask_orig``).
        tokenizer: a :class:`rs2sam2.text.Tokenizer` (anything with ``batch(texts, max_len, mask_rule)``).
        max_len: longest token sequence per sentence, BOS and EOS included (longer ones are cut,
            keeping BOS/EOS); ``None`` keeps whole sentences.
        mask_rule: ``"published"`` or ``"clean"`` (see the module docstring).

    Returns:
        ``images`` (B,3,S,S) float32, ``images_evf`` (B,3,s,s), ``input_ids`` (B,L) int64,
        ``attention_mask`` (B,L) bool, ``masks`` (B,S,S) float32 0/1 targets at the model size,
        ``texts``, ``expression_ids``, ``metas`` (lists), and ``masks_orig`` (a list of HxW bool
        tensors at the original sizes) when every sample has ``mask_orig``.
    """
    if len(samples) == 0:
        raise ValueError("collate() needs at least one sample")
    for key in _TENSOR_KEYS:
        shapes = {tuple(s[key].shape) for s in samples}
        if len(shapes) != 1:
            raise ValueError(f"samples have different {key!r} shapes {sorted(shapes)}; "
                             "transform them with the same SampleTransform")
    texts = [str(s["text"]) for s in samples]
    input_ids, attention_mask = tokenizer.batch(texts, max_len=max_len, mask_rule=mask_rule)
    batch: dict[str, Any] = {
        "images": torch.stack([torch.as_tensor(s["image"], dtype=torch.float32) for s in samples]),
        "images_evf": torch.stack([torch.as_tensor(s["image_evf"], dtype=torch.float32) for s in samples]),
        "input_ids": input_ids,
        "attention_mask": attention_mask.bool(),
        "masks": torch.stack([torch.as_tensor(s["mask"], dtype=torch.float32) for s in samples]),
        "texts": texts,
        "expression_ids": [str(s["expression_id"]) for s in samples],
        "metas": [s.get("meta", {}) for s in samples],
    }
    if all("mask_orig" in s for s in samples):
        batch["masks_orig"] = [torch.as_tensor(s["mask_orig"]).bool() for s in samples]
    return batch


def list_collate(samples: list) -> list:
    """``DataLoader`` ``collate_fn`` that hands the worker's samples over as a list: :func:`collate`
    runs in the main process, which holds the tokenizer."""
    return samples


def model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The keyword arguments of ``RS2SAM2.forward`` from a :func:`collate` batch."""
    return {k: batch[k] for k in ("images", "images_evf", "input_ids", "attention_mask")}


def move_batch(batch: dict[str, Any], device: torch.device | str, non_blocking: bool = False) -> dict[str, Any]:
    """A copy of ``batch`` with its stacked tensors on ``device`` (lists stay where they are)."""
    out = dict(batch)
    for key in ("images", "images_evf", "input_ids", "attention_mask", "masks"):
        out[key] = batch[key].to(device, non_blocking=non_blocking)
    return out


def check_vocabulary(tokenizer, vocab_size: int, what: str = "the model") -> None:
    """Raise :class:`~rs2sam2.errors.ConfigError` (a ``ValueError``) when the tokenizer can emit ids
    that ``vocab_size`` embeddings cannot hold."""
    n = len(tokenizer)
    if n > vocab_size:
        raise ConfigError(
            f"tokenizer {getattr(tokenizer, 'source', '')!r} has {n} ids but {what} embeds only {vocab_size}; "
            "use the tokenizer the model was trained with (or build the model with beit3.vocab_size >= "
            f"{n})")
