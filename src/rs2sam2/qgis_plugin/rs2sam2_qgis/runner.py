"""Run the user's ``rs2sam2`` program in a subprocess and follow its ``--progress json`` lines.

This module knows nothing of QGIS, so it runs in any Python: the algorithms give it callbacks
(progress, messages, "was Cancel pressed?"). The program's standard output carries one JSON object
per line (``start``, ``progress``, ``job``, ``end`` events); its standard error carries warnings and,
on a user error, the line ``rs2sam2 <command>: error: <message>`` with exit status 2. Both pipes are
read by threads into one queue, so the caller's loop never blocks on a pipe and can stop the program
within a moment of Cancel: terminate, then kill if it has not ended after ``KILL_AFTER`` seconds.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

USER_ERROR_STATUS = 2
KILL_AFTER = 1.0  # seconds between terminate and kill on Cancel
POLL = 0.1  # seconds between checks of Cancel while the program is quiet
_ERROR_LINE = re.compile(r"^rs2sam2(?: [\w-]+)?: error: (.*)$")


class ProgramError(Exception):
    """The program failed: a user error (its one-line message) or a crash (the end of its stderr)."""


class Canceled(Exception):
    """The user pressed Cancel and the program was stopped."""


@dataclass
class Feedback:
    """The callbacks a run reports to (all optional)."""

    progress: Callable[[float], None] = lambda percent: None
    info: Callable[[str], None] = lambda text: None
    warning: Callable[[str], None] = lambda text: None
    canceled: Callable[[], bool] = lambda: False
    started: Callable[[int], None] = lambda pid: None


@dataclass
class Result:
    """What a finished run reported: its job events and its end event."""

    jobs: list[dict] = field(default_factory=list)
    end: dict = field(default_factory=dict)


def find_program(setting: str | None) -> str:
    """The ``rs2sam2`` program to run: the provider setting when given, else the one on PATH."""
    if setting:
        if not os.path.isfile(setting):
            raise ProgramError(f"the rs2sam2 program {setting!r} (provider setting) does not exist")
        return setting
    found = shutil.which("rs2sam2")
    if found is None:
        raise ProgramError("the rs2sam2 program was not found on PATH: install rs2sam2 (pip install rs2sam2) "
                           "and give its path in Settings > Options > Processing > Providers > rs2sam2")
    return found


def _pump(stream, name: str, lines: queue.Queue) -> None:
    for line in iter(stream.readline, ""):
        lines.put((name, line.rstrip("\r\n")))
    lines.put((name, None))


def _start(command: Sequence[str]) -> subprocess.Popen:
    flags = subprocess.CREATE_NO_WINDOW if sys.platform == "win32" else 0  # no console window on Windows
    return subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                            creationflags=flags)


def stop(proc: subprocess.Popen) -> None:
    """End ``proc``: terminate, then kill when it is still running ``KILL_AFTER`` seconds later."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(KILL_AFTER)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


def _event(line: str, result: Result, feedback: Feedback) -> None:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        feedback.info(line)  # not a progress line: show it as it is
        return
    kind = event.get("event") if isinstance(event, dict) else None
    if kind == "progress" and event.get("total"):
        feedback.progress(100.0 * event["done"] / event["total"])
    elif kind == "start":
        feedback.info(f"rs2sam2: {event.get('jobs')} job(s)")
    elif kind == "job":
        result.jobs.append(event)
        feedback.info(f"{event.get('text')!r}: {event.get('foreground_px')} object pixels; "
                      f"wrote {', '.join(event.get('written') or [])}")
    elif kind == "end":
        result.end = event
        feedback.info(f"rs2sam2: ended with status {event.get('status')} after {event.get('seconds')} s")


def run(command: Sequence[str], feedback: Feedback | None = None) -> Result:
    """Run ``command`` (the program and its arguments) to its end, reporting to ``feedback``.

    Raises :class:`Canceled` when ``feedback.canceled()`` turns true (the program is stopped first),
    :class:`ProgramError` with the program's own message on exit status 2, or with the end of its
    standard error on any other failure."""
    feedback = feedback or Feedback()
    result, errors = Result(), []
    lines: queue.Queue = queue.Queue()
    try:
        proc = _start(command)
    except OSError as exc:
        raise ProgramError(f"cannot start {command[0]}: {exc.strerror or exc}") from exc
    feedback.started(proc.pid)
    pumps = [threading.Thread(target=_pump, args=(s, n, lines), daemon=True)
             for s, n in ((proc.stdout, "out"), (proc.stderr, "err"))]
    for t in pumps:
        t.start()
    open_pipes = 2
    try:
        while open_pipes:
            if feedback.canceled():
                stop(proc)
                raise Canceled("canceled: the rs2sam2 program was stopped")
            try:
                name, line = lines.get(timeout=POLL)
            except queue.Empty:
                continue
            if line is None:
                open_pipes -= 1
            elif name == "out":
                _event(line, result, feedback)
            else:
                errors.append(line)
                feedback.warning(line)
    finally:
        stop(proc)
    _check_status(proc.returncode, errors)
    return result


def _check_status(status: int, errors: list[str]) -> None:
    if status == 0:
        return
    messages = [m.group(1) for m in map(_ERROR_LINE.match, errors) if m]
    if status == USER_ERROR_STATUS and messages:
        raise ProgramError(messages[-1])
    tail = "\n".join(errors[-20:]) or "(nothing on stderr)"
    raise ProgramError(f"rs2sam2 failed with exit status {status}:\n{tail}")
