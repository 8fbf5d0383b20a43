"""Atomic writes: the file appears whole or not at all, the old version survives a failed write."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PIL import Image

from rs2sam2 import fsutil
from rs2sam2.fsutil import atomic_write, atomic_write_bytes, atomic_write_text


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def test_atomic_write_failure_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text('{"half": ')
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_previous_version(tmp_path: Path) -> None:
    target = atomic_write_text(tmp_path / "ckpt.bin", "v1")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp, open(tmp, "wb") as f:
            f.write(b"v2 partial")
            raise KeyboardInterrupt
    assert target.read_text() == "v1"
    assert _leftovers(tmp_path) == []


def test_atomic_write_text_binary_and_path_writers(tmp_path: Path) -> None:
    t = atomic_write_text(tmp_path / "a" / "b" / "note.txt", "héllo\n")
    assert t.read_text(encoding="utf-8") == "héllo\n"
    b = atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01\x02")
    assert b.read_bytes() == b"\x00\x01\x02"
    # a writer that picks its format from the extension sees the destination's suffix
    with atomic_write(tmp_path / "img.png", fsync=False) as tmp:
        assert tmp.suffix == ".png"
        Image.new("L", (3, 2)).save(tmp)
    with Image.open(tmp_path / "img.png") as im:
        assert im.format == "PNG" and im.size == (3, 2)
    # overwrite replaces the content; a new file does not keep mkstemp's 0o600
    atomic_write_text(t, "second")
    assert t.read_text() == "second"
    if os.name == "posix":
        assert stat.S_IMODE(b.stat().st_mode) == 0o666 & ~fsutil._UMASK
    assert _leftovers(tmp_path) == []


def test_atomic_write_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IsADirectoryError):
        with atomic_write(tmp_path):
            pass
