"""Value types for command-line arguments: one rule and one message for every range check.

argparse calls a type on each value as it parses, so a value out of range is refused before any work
starts, as ``rs2sam2 CMD: error: argument --flag: expected ..., got '...'`` with exit status 2::

    parser.add_argument("--lr", type=number(float, low=0, low_open=True))       # a finite float > 0
    parser.add_argument("--batch", type=number(int, low=1, high=4096))           # an int in [1, 4096]
    parser.add_argument("--negatives", type=number(float, low=0, high=1, high_open=True))  # [0, 1)

Floats are always finite: ``nan`` and ``inf`` are refused whatever the bounds. The returned type
keeps its rule as attributes (``kind``, ``low``, ``high``, ``low_open``, ``high_open``), so a test can
find an out-of-range value for every argument.

The ``RS2SAM2_*`` environment variables follow the same rules (:data:`ENVIRONMENT`): every command
checks them when it starts (:func:`check_environment`), so a bad value is one message naming the
variable and exit status 2 before any work, and is never blamed on the first file it is used for.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Mapping

from .errors import ConfigError

__all__ = ["ENVIRONMENT", "check_environment", "describe_range", "environment_value", "number"]


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
    parse.kind, parse.low, parse.high, parse.low_open, parse.high_open = kind, low, high, low_open, high_open
    return parse


#: The environment variables rs2sam2 reads, each with the rule of its value.
ENVIRONMENT: dict[str, Callable[[str], int | float]] = {
    "RS2SAM2_MAX_PIXELS": number(int, low=1),  # the decode budget (rs2sam2.imageio.max_pixels)
}


def environment_value(name: str, environ: Mapping[str, str] | None = None) -> int | float | None:
    """The value of the environment variable ``name`` (one of :data:`ENVIRONMENT`) read with its
    rule; None when it is unset or empty. Raises :class:`~rs2sam2.errors.ConfigError` naming the
    variable when the value breaks the rule."""
    text = (os.environ if environ is None else environ).get(name, "").strip()
    if not text:
        return None
    try:
        return ENVIRONMENT[name](text)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError(f"environment variable {name}: {exc}") from None


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Read every variable of :data:`ENVIRONMENT` that is set; the first bad one raises ConfigError."""
    for name in ENVIRONMENT:
        environment_value(name, environ)
