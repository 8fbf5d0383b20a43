"""``python -m rs2sam2``: the command line (also what ``torchrun -m rs2sam2`` starts)."""

from .cli import entry

if __name__ == "__main__":  # guarded: spawned training processes import this module
    entry()
