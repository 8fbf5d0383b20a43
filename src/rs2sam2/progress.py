"""Progress bars (tqdm) that a stop signal cannot leave half-built.

Inside a command, SIGTERM and SIGINT raise an exception wherever the program is
(:mod:`rs2sam2.signals`). Raised inside tqdm's constructor, it leaves a bar whose destructor fails
and prints "'tqdm' object has no attribute 'pos'" after the command's stop message. The bars are
built with stop signals held, so the signal is raised once the bar is whole.
"""

from __future__ import annotations

from tqdm.auto import tqdm

from .signals import stops_held

__all__ = ["progress_bar"]


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """``tqdm(iterable, **kwargs)`` (``tqdm.auto``: a widget in a notebook), built with stops held."""
    with stops_held():
        return tqdm(iterable, **kwargs)
