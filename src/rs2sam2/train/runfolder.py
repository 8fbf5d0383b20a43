"""The run folder of ``rs2sam2 train`` (``--out``): only ever written by its own run.

The first file a run writes there is :data:`MARKER`, which names the run (a random id). Then:

* a folder that does not exist, or is empty, becomes a new run's;
* a folder with the marker is that run's: ``--resume`` continues it from ``checkpoints/last``;
  without ``--resume`` it is refused, naming what is there, unless ``--overwrite`` is given, which
  removes the run's files (:data:`RUN_ENTRIES`, nothing else) and starts a new run there (as
  ``--resume`` does when the run stopped before saving any checkpoint);
* a folder that holds anything rs2sam2 did not write is refused, naming those files, whatever the
  flags: a run never writes over, nor removes, a file it did not write.

A folder of a run from before the marker existed (no marker, only :data:`RUN_ENTRIES`, and a
``checkpoints/last`` whose trainer state is rs2sam2's) counts as a run's: it is marked when resumed
or overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from ..checkpoints import CheckpointError
from ..errors import OutputError
from ..fsutil import atomic_write_text
from .state import find_last_checkpoint, load_trainer_state

#: the file that says which run wrote the folder
MARKER = ".rs2sam2-run"
#: what a run writes in its folder, besides the marker
RUN_ENTRIES = ("checkpoints", "logs", "tb", "summary.json", "train_config.yaml", "tokenizer.model")
# the temporary files of rs2sam2.fsutil.atomic_write for those names (".summary.json.<random>.tmp.json")
_TEMPORARY = re.compile(r"^\.(" + "|".join(re.escape(n) for n in (*RUN_ENTRIES, MARKER)) + r")\..+\.tmp.*$")


@dataclass(frozen=True)
class RunFolder:
    """A run folder checked for one run (:func:`check_run_folder`), to be claimed with :meth:`claim`.

    Attributes:
        path: the folder.
        resume_from: the checkpoint to resume from; None for a new run.
        remove: the entries of an earlier run that a new run removes first (``--overwrite``).
        run_id: the run's id once claimed (a resumed run keeps its id).
    """

    path: Path
    resume_from: Path | None = None
    remove: tuple[str, ...] = ()
    run_id: str | None = None

    def claim(self) -> RunFolder:
        """Remove the earlier run's entries, write the marker of a new run (the first file it writes)
        and return the folder with its run id."""
        if self.resume_from is not None:
            return replace(self, run_id=_run_id(self.path) or _mark(self.path))
        for name in self.remove:
            _remove(self.path / name)
        return replace(self, remove=(), run_id=_mark(self.path))


def check_run_folder(path: str | Path, resume: bool, overwrite: bool) -> RunFolder:
    """Check ``path`` against the rules of the module docstring, without writing anything; raises
    :class:`~rs2sam2.errors.OutputError` naming the folder and what is in it when it may not be used."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"--out {path}: a file, not a folder; give the folder for the run")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--out {path}: the run folder cannot be written ({existing} is read-only for this user)")
    entries = sorted(p.name for p in path.iterdir()) if path.is_dir() else []
    foreign = [n for n in entries if n not in (*RUN_ENTRIES, MARKER) and not _TEMPORARY.match(n)]
    if foreign:
        raise OutputError(f"--out {path}: holds files that rs2sam2 did not write ({_listed(foreign)}); a run "
                          "never writes over them: choose another --out, e.g. a new folder")
    ours = [n for n in entries if n != MARKER]
    if ours and not _is_a_run(path):
        raise OutputError(f"--out {path}: holds {_listed(ours)} but is not the folder of an rs2sam2 run (no "
                          f"{MARKER}, no readable checkpoints/last); choose another --out")
    last = find_last_checkpoint(path)
    if resume and last is not None:
        return RunFolder(path, resume_from=last)
    # --resume of a run that stopped before its first checkpoint starts it again (nothing is lost)
    restart = resume and (path / MARKER).is_file() and not any((path / "checkpoints").glob("*"))
    if ours and not (overwrite or restart):
        raise OutputError(_taken(path, ours, resume))
    return RunFolder(path, remove=tuple(ours))


def claim_run_folder(path: str | Path, resume: bool, overwrite: bool) -> RunFolder:
    """:func:`check_run_folder`, then :meth:`RunFolder.claim`."""
    return check_run_folder(path, resume, overwrite).claim()


def _is_a_run(path: Path) -> bool:
    """Whether the folder is an rs2sam2 run's: it has the marker, or (a run from before markers) a
    ``checkpoints/last`` with rs2sam2's trainer state."""
    if (path / MARKER).is_file():
        return True
    last = find_last_checkpoint(path)
    try:
        return last is not None and bool(load_trainer_state(last))
    except CheckpointError:
        return False


def _taken(path: Path, ours: list[str], resume: bool) -> str:
    checkpoints = sorted(f"checkpoints/{p.name}" for p in (path / "checkpoints").glob("*") if p.is_dir())
    held = _listed(checkpoints + [n for n in ours if n != "checkpoints"])
    if resume:
        return (f"--out {path}: --resume finds no checkpoints/last to continue from, but the folder holds another "
                f"run's files ({held}); pass --overwrite to remove them and start a new run, or choose another --out")
    return (f"--out {path}: already holds a training run ({held}); pass --resume to continue it, --overwrite to "
            "remove its files and start a new run, or choose another --out")


def _listed(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... (+{len(names) - n} more)" if len(names) > n else "")


def _run_id(path: Path) -> str | None:
    try:
        return str(json.loads((path / MARKER).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _mark(path: Path) -> str:
    """Write the marker of a new run (creating the folder); returns the run's id."""
    run_id = uuid.uuid4().hex
    record = {"run_id": run_id, "written_by": "rs2sam2 train", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / MARKER, json.dumps(record, indent=2) + "\n")
    except OSError as e:
        raise OutputError(f"--out {path}: the run folder cannot be written ({_reason(e)})") from None
    return run_id


def _remove(entry: Path) -> None:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except OSError as e:
        raise OutputError(f"--overwrite: cannot remove {entry} ({_reason(e)})") from None


def _reason(e: OSError) -> str:
    """An OSError as words, without the errno number and the repeated path."""
    return (e.strerror or type(e).__name__).lower() + (f": {e.filename}" if e.filename else "")
