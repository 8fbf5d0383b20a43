"""SIGTERM and SIGINT as an exception, so a stopped command cleans up after itself.

By default SIGTERM ends a Python process on the spot: no ``finally`` block runs, so the temporary
files of :func:`rs2sam2.fsutil.atomic_write` and the work folders of a command stay behind. Inside
:func:`stop_on_signals` both signals raise :class:`Stopped` instead, which unwinds the stack like
Ctrl-C: every ``with`` and ``finally`` runs, then ``rs2sam2`` (:func:`rs2sam2.cli.main`) prints one
line, ``rs2sam2 CMD: stopped by SIGTERM``, and returns ``128 + signal number`` (143 for SIGTERM, 130
for SIGINT, the statuses a shell shows for a process those signals ended).

:class:`Stopped` derives from ``KeyboardInterrupt``, so code that already cleans up on Ctrl-C (a
data-loader worker that ends quietly on it, for instance) does the same on SIGTERM.

While the stack unwinds, a second signal of the same kind ends the process at once (pressing
Ctrl-C twice, or ``kill`` twice, is how a user insists); a signal of the other kind is ignored, since
launchers pass a Ctrl-C on to their children as SIGTERM and that must not cut the clean-up short.
A process forked inside the block (a data-loader worker) keeps the behaviour it had before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["STOP_SIGNALS", "Stopped", "stop_on_signals", "stops_held"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# while a stops_held() block runs in the main thread: the stop signals that came meanwhile
_held: list[int] | None = None


class Stopped(KeyboardInterrupt):
    """The process was asked to stop by a signal (SIGTERM or SIGINT); raised where it was running."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"stopped by {self.name}")

    @property
    def name(self) -> str:
        """The signal's name, ``"SIGTERM"`` or ``"SIGINT"``."""
        return signal.Signals(self.signum).name

    @property
    def status(self) -> int:
        """The exit status of a process the signal stopped: ``128 + signal number``."""
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(signums: tuple[int, ...] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, each of ``signums`` raises :class:`Stopped` in the main thread.

    The previous handlers come back when the block ends. Outside the main thread (where Python
    cannot install handlers) the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # getsignal gives None for a handler not set from Python: the default action
    previous = {s: signal.getsignal(s) or signal.SIG_DFL for s in signums}
    owner = os.getpid()
    first: list[int] = []

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:  # a forked child: behave as it would have without this block
            _pass_on(signum, frame, previous[signum])
        elif not first:
            first.append(signum)
            if _held is None:
                raise Stopped(signum)
            _held.append(signum)  # raised when the stops_held() block ends
        elif signum == first[0]:  # the same request again: the user insists
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in signums:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def stops_held() -> Iterator[None]:
    """Within the block, a stop signal waits: :class:`Stopped` is raised when the block ends.

    For the few steps that create a file and hand it to the code that removes it again (a temporary
    file and the name that ``finally`` cleans up): a signal between the two would leave the file
    behind. Outside the main thread, or nested, the block runs unchanged."""
    global _held
    if threading.current_thread() is not threading.main_thread() or _held is not None:
        yield
        return
    _held = []
    try:
        yield
    finally:
        pending, _held = _held, None
        if pending:
            raise Stopped(pending[0])


def _pass_on(signum: int, frame, previous) -> None:
    """Handle ``signum`` the way the handler ``previous`` (a function, SIG_DFL or SIG_IGN) would."""
    signal.signal(signum, previous)
    if callable(previous):
        previous(signum, frame)
    elif previous != signal.SIG_IGN:
        os.kill(os.getpid(), signum)  # SIG_DFL: now delivered with the default action
