"""Atomic file writes: every file the project writes appears whole under its final name or not at all.

:func:`atomic_write` yields a temporary path in the destination folder and renames it over the
destination only when the writer succeeds, so a crash, a full disk or an interrupt never leaves a
half-written checkpoint, report, mask or tokenizer behind, and an older version stays as it was.
It works with any writer that takes a path (torch, safetensors, PIL, rasterio, plain text).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError
from .signals import stops_held

__all__ = ["atomic_write", "atomic_write_text", "atomic_write_bytes", "check_writable", "work_folder"]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import (os.umask is process-global and not thread-safe to query later).
_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], *, suffix: str | None = None, fsync: bool = True
) -> Iterator[Path]:
    """Write ``path`` atomically: yield a temporary path in the same folder, rename on success.

    Usage::

        with atomic_write("out/model.pt") as tmp:
            torch.save(state, tmp)              # any writer that takes a path
        with atomic_write("report.json") as tmp:
            tmp.write_text(json.dumps(report))  # text
        with atomic_write("blob.bin") as tmp, open(tmp, "wb") as f:
            f.write(data)                       # binary file handle

    The temporary file is created (empty) in the destination folder, named
    ``.<name>.<random>.tmp<suffix>`` where ``suffix`` defaults to the destination's own suffix,
    so writers that pick a format from the extension (PIL, rasterio) behave as for ``path``.
    On normal exit it is (optionally) fsynced and ``os.replace``-d onto ``path`` -- an atomic
    rename on POSIX and Windows, since both live on the same file system.  If the block raises
    (anything, including ``KeyboardInterrupt``), the temporary file is removed, ``path`` is left
    untouched (an older version stays as it was), and the exception propagates.

    Missing parent folders are created.  The final file gets the permissions of the file it
    replaces, or the usual ``0o666 & ~umask`` for a new file (not ``mkstemp``'s ``0o600``).

    Args:
        path: destination file.
        suffix: suffix of the temporary file; defaults to ``Path(path).suffix``.
        fsync: flush the file (and, on POSIX, the folder entry) to disk before/after the rename,
            so the new content survives a crash.  Turn off for many small, unimportant files.
    """
    dest = Path(path)
    if dest.is_dir():
        raise IsADirectoryError(f"atomic_write: destination is a directory: {dest}")
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp_suffix = ".tmp" + (dest.suffix if suffix is None else suffix)
    tmp: Path | None = None
    try:
        with stops_held():  # a stop signal comes after ``tmp`` is named, so the clean-up below finds it
            fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=tmp_suffix, dir=parent)
            os.close(fd)
            tmp = Path(tmp_name)
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic_write: the writer removed the temporary file {tmp}")
        try:
            mode = dest.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~_UMASK
        with contextlib.suppress(OSError):
            os.chmod(tmp, mode)
        if fsync and tmp.is_file():
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if tmp is not None:
            _remove_quietly(tmp)
        raise
    if fsync:
        _fsync_dir(parent)


@contextlib.contextmanager
def work_folder(parent: str | os.PathLike[str], prefix: str, suffix: str = "") -> Iterator[Path]:
    """A new folder in ``parent`` for files on their way to their final names; removed with what is
    left in it when the block ends, also when a stop signal ends it (even one that comes as the
    folder is made)."""
    work: Path | None = None
    try:
        with stops_held():
            work = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
        yield work
    finally:
        if work is not None:
            _remove_quietly(work)


def _remove_quietly(p: Path) -> None:
    """Remove a file or folder left by a failed writer; never raises."""
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    except OSError:
        pass


def _fsync_dir(folder: Path) -> None:
    """Persist a rename in ``folder`` (POSIX only; a no-op where folders can't be opened)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path``; returns ``Path(path)``."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding=encoding)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically write ``data`` to ``path``; returns ``Path(path)``."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def check_writable(path: str | os.PathLike[str], what: str = "output") -> Path:
    """Check, before any long work, that a file can be written at ``path``; returns ``Path(path)``.

    Raises :class:`~rs2sam2.errors.OutputError` naming ``what`` (e.g. ``"--out"``) and the path when it
    is a folder, when a folder on its way is a file, or when the nearest existing folder does not take
    a new file (no permission, read-only or full file system). Leaves nothing behind: missing folders
    are not created, and the probe file made in the nearest existing folder is removed at once.
    """
    dest = Path(path)
    if dest.is_dir():
        raise OutputError(f"{what} {dest} is a folder; give a file name")
    folder = dest.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"cannot write {what} {dest}: {folder} is a file, not a folder")
    with stops_held():  # a stop signal waits until the probe is gone
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".probe", dir=folder)
        except OSError as exc:
            raise OutputError(f"cannot write {what} {dest}: {folder}: {exc.strerror or exc}") from exc
        os.close(fd)
        os.unlink(probe)
    return dest
