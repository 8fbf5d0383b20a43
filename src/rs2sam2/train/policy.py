"""The published training recipe as rules: which parameters train, at which learning rate, on which loss.

* **Freeze**: the SAM2 image encoder (Hiera trunk and FPN neck) is frozen except the two BHFM
  adapters of every block; everything else trains, except parameters no loss can reach (DDP needs
  a gradient for every trainable parameter).
* **Optimiser**: AdamW with weight decay on every trainable parameter and two learning rates,
  ``lr_fusion`` for the adapters, the MPG and the decoder's text guidance (the published
  ``lr_bifit`` names), ``lr`` for the rest; both decay by ``lr_gamma`` at every milestone epoch.
* **Loss**: the published loss of each sample alone, averaged over the batch. The published Dice
  term is summed over a batch, so a batch's loss is not the mean of its samples' losses; the
  published run took one sample per GPU and averaged gradients over the GPUs, i.e. minimised this
  mean. Hence ranks x batch size x accumulation steps of the same product take the same steps.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..checkpoints import parameter_counts
from ..losses import LossOutput, RS2SAM2Loss
from .config import TrainConfig

# published freeze: parameters under these prefixes are frozen ...
FROZEN_PREFIXES = ("image_encoder.",)
# ... except those inside these modules (the BHFM adapters)
TRAINED_INSIDE_FROZEN = (".space_adapter.", ".mlp_adapter.")
# trained at lr_fusion: names containing a marker, or inside one of the modules
FUSION_NAME_MARKERS = ("space_adapter", "mlp_adapter", "mask_decoder.text_guidance")
FUSION_MODULES = ("mpg",)
# outputs that never reach the loss, whatever the input and configuration
UNREACHABLE_PREFIXES = (
    "mask_decoder.iou_prediction_head.",
    "mask_decoder.pred_obj_score_head.",
    "prompt_encoder.point_embeddings.",
    "prompt_encoder.not_a_point_embed.",
)
# the object-score head: reached by the presence loss, when a run trains with absent samples
PRESENCE_HEAD_PREFIX = "mask_decoder.pred_obj_score_head."


def _core(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def unreachable_parameter_names(model: nn.Module, presence: bool = False) -> list[str]:
    """Parameters that no output used by the loss depends on, whatever the input (``presence``: the
    run has the presence loss, which reaches the object-score head).

    * :data:`UNREACHABLE_PREFIXES`: the mask decoder's IoU and object-score heads, the prompt
      encoder's point embeddings (no point prompts);
    * the hypernetwork MLPs of the multimask tokens (``output_hypernetworks_mlps[1:]``: only the
      first mask token's mask is used);
    * ``no_mask_embed`` when the MPG supplies the dense prompt (without the MPG: the
      ``mask_downscaling`` convs instead);
    * with the bidirectional BHFM, the last Hiera block's text-update path
      (``space_adapter.attend_image``, ``space_adapter.text_out``): the text state it produces is
      discarded after the last block.

    Freezing them changes no prediction. The published run gives them no gradient, except the
    multimask hypernetworks, whose masks it computes and drops: they get an all-zero gradient, so
    AdamW only decays their weights.
    """
    core = _core(model)
    cfg = core.config
    prefixes = [p for p in UNREACHABLE_PREFIXES if not (presence and p == PRESENCE_HEAD_PREFIX)]
    prefixes += [f"mask_decoder.output_hypernetworks_mlps.{i}." for i in range(1, cfg.num_multimask_outputs + 1)]
    if getattr(core, "mpg", None) is not None:
        prefixes.append("prompt_encoder.no_mask_embed.")
    else:  # no mask prompt: the dense prompt is no_mask_embed and the mask-downscaling convs are idle
        prefixes.append("prompt_encoder.mask_downscaling.")
    if cfg.fusion.bhfm == "bi":
        last = sum(cfg.hiera.stages) - 1
        prefixes += [f"image_encoder.trunk.blocks.{last}.space_adapter.attend_image.",
                     f"image_encoder.trunk.blocks.{last}.space_adapter.text_out."]
    return [n for n, _ in core.named_parameters() if n.startswith(tuple(prefixes))]


def freeze_unreachable(model: nn.Module, presence: bool = False) -> list[str]:
    """Freeze :func:`unreachable_parameter_names`; returns their names."""
    names = set(unreachable_parameter_names(model, presence))
    for n, p in _core(model).named_parameters():
        if n in names:
            p.requires_grad_(False)
    return sorted(names)


def _published_trainable(name: str) -> bool:
    return not name.startswith(FROZEN_PREFIXES) or any(m in name for m in TRAINED_INSIDE_FROZEN)


def freeze_published(model: nn.Module, presence: bool = False) -> dict[str, dict[str, int]]:
    """Apply the published freeze policy in place and return :func:`~rs2sam2.checkpoints.parameter_counts`.

    The SAM2 image encoder (``image_encoder.*``: Hiera trunk + FPN neck) is frozen except every
    block's ``space_adapter`` and ``mlp_adapter``; every other parameter trains (BEiT-3, text
    projection, sparse prompt, MPG, prompt encoder, mask decoder with its text guidance, boundary
    head, ``no_mem_embed``), except the unreachable ones (:func:`unreachable_parameter_names`; with
    ``presence`` the object-score head trains too).
    """
    core = _core(model)
    for n, p in core.named_parameters():
        p.requires_grad_(_published_trainable(n))
    freeze_unreachable(core, presence)
    return parameter_counts(core)


def apply_freeze(model: nn.Module, freeze: str, presence: bool = False) -> dict[str, dict[str, int]]:
    """``published`` (:func:`freeze_published`) or ``none`` (only the unreachable parameters are
    frozen); ``presence`` trains the object-score head. Returns
    :func:`~rs2sam2.checkpoints.parameter_counts`."""
    if freeze == "published":
        return freeze_published(model, presence)
    for p in model.parameters():
        p.requires_grad_(True)
    freeze_unreachable(model, presence)
    return parameter_counts(model)


def is_fusion_parameter(name: str) -> bool:
    """True for the parameters trained at ``lr_fusion`` (BHFM adapters, MPG, decoder text guidance)."""
    return any(m in name for m in FUSION_NAME_MARKERS) or any(
        name.startswith(f"{m}.") or f".{m}." in name for m in FUSION_MODULES)


def param_groups(model: nn.Module, lr: float, lr_fusion: float, weight_decay: float) -> list[dict[str, Any]]:
    """The two AdamW groups over the trainable parameters: ``fusion`` (``lr_fusion``) and ``base`` (``lr``).
    Weight decay applies to every trainable parameter, as published."""
    fusion, base = [], []
    for n, p in _core(model).named_parameters():
        if p.requires_grad:
            (fusion if is_fusion_parameter(n) else base).append(p)
    groups = [{"name": "fusion", "params": fusion, "lr": lr_fusion, "weight_decay": weight_decay},
              {"name": "base", "params": base, "lr": lr, "weight_decay": weight_decay}]
    return [g for g in groups if g["params"]]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` with the configuration's learning rates, betas and eps.

    The fused implementation (one kernel over all parameters instead of a few per parameter) is used
    where torch has it: plain float tensors on the CPU or a CUDA device. FSDP's sharded parameters
    keep the default implementation."""
    groups = param_groups(model, cfg.lr, cfg.lr_fusion, cfg.weight_decay)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda")
                                 and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay, fused=fused or None)


def lr_factor(milestones: Sequence[int], gamma: float):
    """Epoch -> learning-rate factor: ``gamma`` to the number of milestones reached (``[50]``:
    epochs 50, 51, ... (0-based) run at ``gamma``)."""
    ms = sorted(int(m) for m in milestones)
    return lambda epoch: gamma ** bisect.bisect_right(ms, epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The step decay of :func:`lr_factor`, stepped once per epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.lr_milestones, cfg.lr_gamma))


def build_loss(cfg: TrainConfig) -> RS2SAM2Loss:
    """The published loss with the configuration's weights and boundary mode."""
    return RS2SAM2Loss(cfg.w_ce, cfg.w_dice, cfg.w_tbl, boundary=cfg.boundary_loss)


def per_sample_loss(loss_fn: RS2SAM2Loss, logits: torch.Tensor, target: torch.Tensor,
                    boundary_weight: torch.Tensor) -> LossOutput:
    """Mean over the batch of the published loss computed on each sample alone (see the module
    docstring: this is what the published 1-sample-per-GPU run optimises, for any batch size)."""
    terms = [loss_fn(logits[i : i + 1], target[i : i + 1], boundary_weight[i : i + 1]) for i in range(logits.shape[0])]
    mean = lambda name: torch.stack([getattr(t, name) for t in terms]).mean()  # noqa: E731
    return LossOutput(total=mean("total"), ce=mean("ce"), dice=mean("dice"), boundary=mean("boundary"))
