"""The ``README.md`` model card saved with every checkpoint folder, as Hugging Face model folders carry.

The card says what the folder holds (preset, input sizes, parameter counts), how to load it in
Python and on the command line, and, when the saver knows them, the training data and metrics
(:class:`CardInfo`). Its YAML front matter (``library_name: rs2sam2``, tags) is what the Hub
indexes. Pure text: nothing here reads or writes files.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from ..config import ModelConfig

#: the Hub tags of every card
TAGS = ("rs2sam2", "referring-image-segmentation", "remote-sensing", "sam2", "beit-3", "pytorch")
#: the example image and expression of the card's load commands
EXAMPLE_IMAGE, EXAMPLE_TEXT = "scene.tif", "the white storage tank at the top"
#: what the load commands name the tokenizer when none is saved with the weights
TOKENIZER_STANDIN = "path/to/tokenizer.model"


@dataclass(frozen=True)
class CardInfo:
    """What a model card says beyond the configuration and the weights; every field is optional.

    Attributes:
        dataset: the training data (e.g. ``rrsisd``).
        metrics: metric name -> value (e.g. the best validation ``mIoU``, ``oIoU``, ``Pr@0.5`` in
            percent); entries that are not numbers are left out of the card.
        metrics_source: where the metrics come from (e.g. ``val split, step 1200``).
        parameters: ``{part: {"total": n, "trainable": n}}`` as :func:`parameter_counts` returns;
            :func:`~.folders.save_pretrained` fills it from the model.
        repo_id: the Hub id the folder is published under, used in the load commands (else ``.``,
            the folder itself), with ``subfolder`` inside that repository.
    """

    dataset: str | None = None
    metrics: Mapping[str, Any] | None = None
    metrics_source: str | None = None
    parameters: Mapping[str, Mapping[str, int]] | None = None
    repo_id: str | None = None
    subfolder: str | None = None


def parameter_counts(model) -> dict[str, dict[str, int]]:
    """``{top-level part: {"total": n, "trainable": n}}`` plus a ``"total"`` entry (element counts;
    trainable = ``requires_grad``). A wrapper with ``.module`` (DDP) is looked through."""
    core = getattr(model, "module", model)
    out: dict[str, dict[str, int]] = {}
    for name, p in core.named_parameters():
        part = out.setdefault(name.split(".")[0], {"total": 0, "trainable": 0})
        part["total"] += p.numel()
        part["trainable"] += p.numel() if p.requires_grad else 0
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("total", "trainable")}
    return out


def model_card(config: ModelConfig, tensors: Mapping[str, Tensor], info: CardInfo, tokenizer: bool) -> str:
    """The card of a checkpoint folder holding ``tensors`` (``model.safetensors``) of a model with
    ``config``; ``tokenizer``: whether ``tokenizer.model`` is saved with it. The load commands name
    the folder ``.`` (it may be renamed or moved after saving) unless ``info.repo_id`` is known."""
    front = "\n".join(["---", "library_name: rs2sam2", "pipeline_tag: image-segmentation", "tags:",
                       *(f"- {t}" for t in TAGS), "---"])
    sections = [front, f"# RS2-SAM2 `{config.name}` model",
                "Referring segmentation of remote-sensing images: the mask of the object a sentence describes. "
                "RS2-SAM2 (AAAI 2026) adapts SAM2 with a BEiT-3 union encoder that reads image and text together, "
                "bidirectional hierarchical fusion adapters in the SAM2 image encoder and a mask prompt generator. "
                "Saved by rs2sam2, a plain-PyTorch implementation.",
                _model_section(config), _parameters_section(tensors, info.parameters),
                _training_section(info), _load_section(info, tokenizer)]
    return "\n\n".join(sections) + "\n"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], align: str = "---") -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + [align] * (len(header) - 1)) + " |"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _model_section(config: ModelConfig) -> str:
    h, b, f = config.hiera, config.beit3, config.fusion
    on = lambda flag: "on" if flag else "off"  # noqa: E731
    rows = [
        ("preset", f"`{config.name}`"),
        ("SAM2 image input", f"{config.image_size} x {config.image_size} (images are resized to it; masks come "
                             "back at the image's own size)"),
        ("BEiT-3 image input", f"{b.img_size} x {b.img_size}"),
        ("text", f"up to {b.max_text_len} tokens, BOS and EOS included (SentencePiece, vocabulary {b.vocab_size})"),
        ("mask logits", f"{config.mask_size} x {config.mask_size}, upsampled to the input"),
        ("SAM2 image encoder", f"Hiera, width {h.embed_dim}, blocks per stage {'-'.join(map(str, h.stages))}"),
        ("union encoder", f"BEiT-3, {b.depth} layers, width {b.embed_dim}"),
        ("fusion", f"BHFM `{f.bhfm}`, mask prompt generator {on(f.mpg)}, decoder text guidance "
                   f"{on(f.text_guidance)}, sparse CLS prompt {on(f.sparse_prompt)}"),
    ]
    return "## Model\n\n" + _table(("", ""), rows) + (
        "\n\nThe full configuration is `rs2sam2_config` in `config.json`.")


def _parameters_section(tensors: Mapping[str, Tensor], parameters: Mapping[str, Mapping[str, int]] | None) -> str:
    values = sum(t.numel() for t in tensors.values())
    dtypes = ", ".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}))
    weights = f"Weights: `model.safetensors`, {len(tensors)} tensors, {values:,} values ({dtypes or 'empty'})."
    if not parameters:
        return "## Parameters\n\n" + weights + " Parameter counts by part were not recorded."
    rows = [("**total**" if part == "total" else f"`{part}`", f"{c['total']:,}", f"{c['trainable']:,}")
            for part, c in sorted(parameters.items(), key=lambda item: item[0] == "total")]
    return ("## Parameters\n\n" + _table(("part", "parameters", "trainable when saved"), rows, "---:")
            + "\n\n" + weights)


def _training_section(info: CardInfo) -> str:
    lines = ["## Training data and metrics", ""]
    lines.append(f"Trained on: `{info.dataset}`." if info.dataset else "Training data: not recorded.")
    metrics = [(k, v) for k, v in (info.metrics or {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if metrics:
        source = f" ({info.metrics_source})" if info.metrics_source else ""
        lines += ["", f"Metrics{source}:", "", _table(("metric", "value"), [(k, f"{v:.4g}") for k, v in metrics],
                                                      "---:")]
        if any(k in ("mIoU", "oIoU") for k, _ in metrics):
            lines += ["", "oIoU is the cumulative IoU (also called overall IoU or cIoU); mIoU the mean "
                      "per-expression IoU; Pr@X the percentage of expressions with IoU >= X."]
    else:
        lines += ["", "Metrics: not recorded."]
    return "\n".join(lines)


def _load_section(info: CardInfo, tokenizer: bool) -> str:
    where = info.repo_id or "."
    sub_py = f", subfolder={json.dumps(info.subfolder)}" if info.subfolder else ""
    sub_cli = f" --subfolder {shlex.quote(info.subfolder)}" if info.subfolder else ""
    tok_py = "" if tokenizer else f", tokenizer={json.dumps(TOKENIZER_STANDIN)}"
    tok_cli = "" if tokenizer else f" --tokenizer {TOKENIZER_STANDIN}"
    if info.repo_id:
        intro = (f"`{where}` is this model's Hugging Face Hub id (loading by id needs `pip install "
                 "'rs2sam2[hub]'`; `HF_HUB_OFFLINE=1` reads only the local cache).")
    else:
        intro = ("Run from this folder (`.`), or give its path in place of `.`; once uploaded to the Hugging "
                 "Face Hub, its id `owner/name` works there too (with `pip install 'rs2sam2[hub]'`).")
    note = ("The SentencePiece tokenizer is saved with it (`tokenizer.model`)." if tokenizer else
            f"No tokenizer is saved with it: give the SentencePiece model the weights were trained with "
            f"(`{TOKENIZER_STANDIN}` above stands for it).")
    return "\n".join([
        "## How to load", "", intro, "", "```python", "import rs2sam2", "from rs2sam2 import Predictor", "",
        f"model = rs2sam2.load_pretrained({json.dumps(where)}{sub_py})",
        f"predictor = Predictor.from_pretrained({json.dumps(where)}{sub_py}{tok_py})",
        f'pred = predictor.predict("{EXAMPLE_IMAGE}", "{EXAMPLE_TEXT}")  # pred.mask: HxW bool', "```", "",
        "```bash",
        f"rs2sam2 predict --checkpoint {shlex.quote(where)}{sub_cli}{tok_cli} --image {EXAMPLE_IMAGE} "
        f'--text "{EXAMPLE_TEXT}" --out mask.tif', "```", "", note,
    ])
