"""Value types for command-line arguments: one rule and one message for every range check.

argparse calls a type on each value as it parses, so a value out of range is refused before any work
starts, as ``rs2sam2 CMD: error: argument --flag: expected ..., got '...'`` with exit status 2::

    parser.add_argument("--lr", type=number(float, low=0, low_open=True))       # a finite float > 0
    parser.add_argument("--batch", type=number(int, low=1, high=4096))           # an int in [1, 4096]
    parser.add_argument("--negatives", type=number(float, low=0, high=1, high_open=True))  # [0, 1)

Floats are always finite: ``nan`` and ``inf`` are refused whatever the bounds.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["describe_range", "number"]


def describe_range(kind: type, low: float | None, high: float | None, low_open: bool = False,
                   high_open: bool = False) -> str:
    """``"an integer in [1, 4096]"``, ``"a finite number > 0"``...: what a range check expects."""
    what = "an integer" if kind is int else "a finite number"
    low, high = (_shown(kind, b) for b in (low, high))
    if low is not None and high is not None:
        return f"{what} in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{what} {'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{what} {'<' if high_open else '<='} {high}"
    return what


def _shown(kind: type, bound: float | None) -> str | None:
    """A bound as written in messages: integers in full (4294967295), other numbers short (1e-08)."""
    return None if bound is None else str(int(bound)) if kind is int else f"{bound:g}"


def number(kind: type = float, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Callable[[str], int | float]:
    """An argparse ``type`` that reads an ``int`` or a finite ``float`` within the given bounds."""
    expected = describe_range(kind, low, high, low_open, high_open)

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if (kind is float and not math.isfinite(value)) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse
