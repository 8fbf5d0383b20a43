"""The exception types of user errors: bad input from the person running rs2sam2.

A :class:`UserError` means the input is wrong, not the program: a file that is missing or is not what
its name says, a value out of its allowed range, an output folder that cannot be written. Its message
names the file, key or argument and says what was expected. ``rs2sam2 <command>`` prints it as
``rs2sam2 <command>: error: <message>`` and exits with status 2, without a traceback; every other
exception is a bug and keeps its traceback (:func:`rs2sam2.cli.main`).

The subclasses also derive from the built-in type that callers caught before they existed
(``ValueError``, ``FileNotFoundError``), so ``except ValueError`` keeps working. Other modules add
their own: ``DatasetError`` (:mod:`rs2sam2.data.base`), ``CheckpointError``
(:mod:`rs2sam2.checkpoints`).
"""

from __future__ import annotations

__all__ = ["ConfigError", "FileFormatError", "MissingFileError", "OutputError", "UserError", "user_message"]


class UserError(Exception):
    """Bad input from the user; the message names it and says what was expected."""


class ConfigError(UserError, ValueError):
    """A setting (command-line argument, model configuration key) has a value that is not allowed."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class FileFormatError(UserError, ValueError):
    """A file the user named exists but does not hold what was expected (a SentencePiece model, a mask image...)."""


class OutputError(UserError):
    """An output location cannot be used: not a folder, not writable, or not empty without ``--overwrite``."""


def user_message(exc: BaseException) -> str:
    """The message of a user error, without the traceback that a DataLoader worker adds to it.

    PyTorch re-raises an exception from a worker process as the same type, with a message made of
    "Caught <type> in DataLoader worker process N", the worker's traceback, and last
    "<module>.<type>: <message>"; the user needs only that last message.
    """
    text = str(exc)
    if "\nOriginal Traceback" not in text:
        return text
    marker = f"\n{type(exc).__module__}.{type(exc).__qualname__}: "
    start = text.rfind(marker)
    return text[start + len(marker):].rstrip() if start >= 0 else text.rstrip().splitlines()[-1]
