"""Training RS2-SAM2 with the published recipe (``rs2sam2 train``), on one process or many.

One process, torchrun ranks (``torchrun --nproc_per_node N -m rs2sam2 train ...``: NCCL on CUDA,
gloo on the CPU, DDP or FSDP2 with ``--fsdp``), or CPU ranks started here
(:func:`train_cpu_processes`). A run folder ``RUN/`` holds ``train_config.yaml`` (resolved),
``tokenizer.model``, ``checkpoints/last`` and ``checkpoints/best`` (``save_pretrained`` folders
with ``trainer_state.pt``), ``logs/train.csv``, ``logs/val.csv``, ``tb/`` and ``summary.json``.

Modules: :mod:`.config` (what a run is), :mod:`.policy` (the recipe: freeze, learning rates,
loss), :mod:`.sampling` (what each step sees), :mod:`.state` (saving and resuming),
:mod:`.trainer` (the loop), :mod:`.launch` (starting runs), :mod:`.cli` (the command line).
"""

from .config import TrainConfig
from .launch import train, train_cpu_processes
from .trainer import NonFiniteLossError

__all__ = ["NonFiniteLossError", "TrainConfig", "train", "train_cpu_processes"]
