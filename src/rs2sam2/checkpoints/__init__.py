"""Loading checkpoints into the model: released RS2-SAM2 weights, official SAM2 / BEiT-3 weights, ours.

Loading is always: find the files (:func:`~.folders.locate`; a Hugging Face Hub id is fetched into
the Hub cache first, :mod:`.hub`) -> read them without executing pickled
code (:func:`~.folders.read_state_dict`) -> detect the layout and rewrite keys into our names
(:mod:`.convert`) -> check every key and shape -> ``load_state_dict(strict=True)``.

This module is the only one of the package that imports the model; :mod:`.convert` (key mapping,
config inference), :mod:`.folders` (files and folders), :mod:`.hub` (Hub repositories) and
:mod:`.card` (the README.md model card) know nothing of it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import ModelConfig, get_config
from ..models import RS2SAM2
from .card import CardInfo, parameter_counts
from .convert import (
    IGNORED_PUBLISHED_PREFIXES,
    CheckpointError,
    convert_beit3_state_dict,
    convert_published_state_dict,
    convert_sam2_state_dict,
    detect_layout,
    infer_config,
    unwrap_state_dict,
)
from .folders import (
    CHECKPOINT_HELP,
    CONFIG_MARKER,
    TOKENIZER_HELP,
    TOKENIZER_NAMES,
    WEIGHTS_NAMES,
    Located,
    add_hub_arguments,
    find_tokenizer,
    locate,
    read_config,
    read_shapes,
    read_state_dict,
    save_pretrained,
    save_state_dict,
    shard_names,
)

__all__ = [
    "CHECKPOINT_HELP",
    "CONFIG_MARKER",
    "IGNORED_PUBLISHED_PREFIXES",
    "TOKENIZER_HELP",
    "TOKENIZER_NAMES",
    "WEIGHTS_NAMES",
    "CardInfo",
    "CheckpointError",
    "LoadReport",
    "Located",
    "add_hub_arguments",
    "convert_beit3_state_dict",
    "convert_published_state_dict",
    "convert_sam2_state_dict",
    "detect_layout",
    "find_tokenizer",
    "infer_config",
    "init_from_official",
    "load_beit3_checkpoint",
    "load_official_state_dict",
    "load_pretrained",
    "load_sam2_checkpoint",
    "locate",
    "parameter_counts",
    "read_config",
    "read_shapes",
    "read_state_dict",
    "save_pretrained",
    "save_state_dict",
    "shard_names",
    "unwrap_state_dict",
]


@dataclass
class LoadReport:
    """What a load did: the layout found, keys dropped on purpose, and model keys left untouched."""

    layout: str
    loaded: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    newly_initialised: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = sorted({k.split(".")[0] for k in self.newly_initialised})
        return (
            f"{self.layout}: loaded {len(self.loaded)} tensors, ignored {len(self.ignored)} unused published keys, "
            f"{len(self.newly_initialised)} model tensors newly initialised"
            + (f" (in {', '.join(parts)})" if parts else "")
        )


def _check_fit(model: torch.nn.Module, sd: Mapping[str, Tensor], layout: str, partial: bool,
               source: str = "") -> list[str]:
    """The model keys ``sd`` leaves out (with ``partial``; else that is an error); raises
    :class:`CheckpointError` naming the keys when ``sd`` has keys the model lacks or other shapes.
    Works on meta tensors as well (shapes only), so a checkpoint is checked before anything is allocated."""
    own = model.state_dict()
    unexpected = sorted(k for k in sd if k not in own)
    missing = sorted(k for k in own if k not in sd)
    wrong = sorted(
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in sd.items() if k in own and v.shape != own[k].shape
    )
    problems = []
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_short(unexpected)}")
    if missing and not partial:
        problems.append(f"missing keys ({len(missing)}): {_short(missing)}")
    if wrong:
        problems.append(f"wrongly shaped keys ({len(wrong)}): {_short(wrong)}")
    if problems:
        raise CheckpointError(
            f"{layout} checkpoint {source + ' ' if source else ''}does not fit this model "
            f"({getattr(model, 'config', None) and model.config.name}): " + "; ".join(problems))
    return missing


def _check_and_load(model: torch.nn.Module, sd: dict[str, Tensor], layout: str, ignored: list[str],
                    partial: bool) -> LoadReport:
    own = model.state_dict()
    missing = _check_fit(model, sd, layout, partial)
    if partial:
        merged = dict(own)
        merged.update({k: v.to(own[k].dtype) for k, v in sd.items()})
        model.load_state_dict(merged, strict=True)
    else:
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return LoadReport(layout, loaded=sorted(sd), ignored=ignored, newly_initialised=missing if partial else [])


def _short(items: list[str], n: int = 12) -> str:
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n} more)" if len(items) > n else "")


def _our_layout(state_dict: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor], list[str]]:
    """(layout, the state dict in our key names, published keys dropped on purpose) of a complete
    RS2-SAM2 state dict; works on meta tensors."""
    state_dict = unwrap_state_dict(state_dict)
    layout = detect_layout(state_dict)
    if layout == "rs2sam2-published":
        return (layout, *convert_published_state_dict(state_dict))
    if layout == "rs2sam2":
        return layout, dict(state_dict), []
    raise CheckpointError(
        f"this is a {layout} checkpoint, which initialises only part of RS2-SAM2: use "
        f"load_{layout}_checkpoint (or init_from_official) instead"
    )


def load_official_state_dict(model: torch.nn.Module, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Load a complete RS2-SAM2 state dict, in the released (published) layout or ours.

    Every model key must be present and every checkpoint key used, except the documented
    :data:`IGNORED_PUBLISHED_PREFIXES`; shapes must match. Errors name the offending keys.
    """
    layout, sd, ignored = _our_layout(state_dict)
    return _check_and_load(model, sd, layout, ignored, partial=False)


def _load_part(model: torch.nn.Module, source, convert, layout: str) -> LoadReport:
    """Initialise part of ``model`` from a path or an in-memory state dict through ``convert``; a
    path's tensors are checked on their shapes (from the file's header) before they are read."""
    if not isinstance(source, (str, os.PathLike)):
        return _check_and_load(model, *convert(unwrap_state_dict(source), "state dict"), layout, partial=True)
    _check_fit(model, convert(read_shapes(source), str(source))[0], layout, partial=True, source=str(source))
    converted, ignored = convert(read_state_dict(source), str(source))
    return _check_and_load(model, converted, layout, ignored, partial=True)


def load_sam2_checkpoint(model: torch.nn.Module, source) -> LoadReport:
    """Initialise the SAM2 parts (image encoder, prompt encoder, mask decoder, ``no_mem_embed``) from
    an official SAM2 / SAM2.1 checkpoint (``sam2_hiera_large.pt`` etc.). The BHFM adapters, the
    decoder's text guidance and everything outside SAM2 stay as initialised (listed in the report)."""
    return _load_part(model, source, convert_sam2_state_dict, "sam2")


def load_beit3_checkpoint(model: torch.nn.Module, source) -> LoadReport:
    """Initialise the union encoder from an official BEiT-3 checkpoint (``beit3_large_patch16_224.pth``,
    keys ``beit3.*``). Keys outside ``beit3.`` (task heads of fine-tuned checkpoints) are reported
    as ignored."""
    return _load_part(model, source, convert_beit3_state_dict, "beit3")


def load_pretrained(path: str | os.PathLike, image_size: int | None = None, *, subfolder: str | None = None,
                    revision: str | None = None) -> RS2SAM2:
    """Build and load a model from anything :func:`locate` accepts: our folder, a released RS2-SAM2
    folder, a single weights file, a training run folder, or a Hugging Face Hub id such as
    ``"ReeF2025/RS2-SAM2"`` with ``subfolder="rrsisd"`` (and ``revision=``, default ``main``).
    ``image_size`` overrides the SAM2 input size (default: the recorded one; 1024 for released weights).

    Nothing is allocated before the checkpoint is known to fit: the configuration's values are
    bounded (:data:`rs2sam2.config.BOUNDS`), the model is built on the meta device and every tensor's
    shape, read from the files' headers, is compared with it; only then are the model and the
    weights materialised, so memory stays within the weights' size plus the model's."""
    located = locate(path, subfolder=subfolder, revision=revision)
    layout, shapes, _ = _our_layout(read_shapes(located.weights))
    if located.config is None:  # a released folder: its config.json does not say which SAM2 size was used
        cfg = infer_config(shapes, image_size=1024 if image_size is None else image_size)
    else:
        cfg = located.config if image_size is None else dataclasses.replace(located.config, image_size=image_size)
    with torch.device("meta"):
        skeleton = RS2SAM2(cfg)
    try:
        _check_fit(skeleton, shapes, layout, partial=False, source=str(located.weights))
    except CheckpointError as e:
        if located.config is None:
            raise
        config_file = (located.path if located.path.is_dir() else located.path.parent) / "config.json"
        raise CheckpointError(f"{e} (the model was built from {config_file}, which does not describe these "
                              "weights)") from None
    model = RS2SAM2(cfg)
    load_official_state_dict(model, read_state_dict(located.weights))
    return model


def init_from_official(preset: str | ModelConfig = "paper", sam2: str | None = None, beit3: str | None = None):
    """A model ready for training from the official SAM2 and BEiT-3 checkpoints (the published init).
    Returns (model, [reports])."""
    cfg = get_config(preset) if isinstance(preset, str) else preset
    model = RS2SAM2(cfg)
    reports = []
    if sam2:
        reports.append(load_sam2_checkpoint(model, sam2))
    if beit3:
        reports.append(load_beit3_checkpoint(model, beit3))
    return model, reports
