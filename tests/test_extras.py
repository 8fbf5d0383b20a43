import sys

import pytest

from rs2sam2.errors import UserError
from rs2sam2.extras import MissingExtraError, require


def test_an_installed_extra_is_imported():
    assert require("matplotlib.pyplot").__name__ == "matplotlib.pyplot"


def test_a_missing_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyogrio", None)  # as if not installed
    with pytest.raises(MissingExtraError) as exc:
        require("pyogrio", "a .gpkg output")
    assert isinstance(exc.value, UserError)
    assert str(exc.value) == "a .gpkg output needs pyogrio, which is not installed: pip install 'rs2sam2[gis]'"


def test_only_the_extras_modules_are_asked_for():
    with pytest.raises(ValueError, match="not the module of an optional extra"):
        require("torch")
