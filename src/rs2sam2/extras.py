"""Optional extras: the one place where a module that comes with an extra is imported.

``pip install 'rs2sam2[app]'`` brings Gradio (``serve``), ``[gis]`` pyogrio (GeoPackage and Shapefile
outputs), ``[plot]`` matplotlib (``Prediction.plot``, the demo's figures), ``[hub]`` huggingface_hub
(Hub ids). The base install works without any of them, so they are imported when first needed, here,
and a missing one is a :class:`MissingExtraError` (a user error: one line, exit status 2) that names
the extra to install.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import UserError

__all__ = ["EXTRAS", "MissingExtraError", "require"]

#: top-level module -> the extra that installs it
EXTRAS = {"gradio": "app", "pyogrio": "gis", "matplotlib": "plot", "huggingface_hub": "hub"}


class MissingExtraError(UserError, ImportError):
    """A feature needs an optional extra that is not installed; the message names it."""


def require(module: str, feature: str | None = None) -> ModuleType:
    """Import ``module`` (``"matplotlib.pyplot"``, ``"pyogrio"``...), one of the extras' modules.

    Raises :class:`MissingExtraError` naming the extra (and ``feature``, what needed it) when the
    extra is not installed."""
    top = module.partition(".")[0]
    if top not in EXTRAS:
        raise ValueError(f"{module!r} is not the module of an optional extra ({', '.join(EXTRAS)})")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != top:
            raise  # the extra is there but one of its own dependencies is broken: a real error
        extra = EXTRAS[top]
        who = f"{feature} needs" if feature else "this needs"
        raise MissingExtraError(f"{who} {top}, which is not installed: pip install 'rs2sam2[{extra}]'") from None
