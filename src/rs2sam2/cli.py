"""``rs2sam2`` command line. Each subcommand lives in its own module, which provides
``add_arguments(parser)`` and ``run(args) -> int``; modules are imported only when used.

Exit status: 0 done; 1 what the command reports as a finding (``check-data``: problems found); 2 a
user error (a bad argument, file or setting: :mod:`rs2sam2.errors`), printed here as
``rs2sam2 <command>: error: <message>`` without a traceback; 3 training stopped on a non-finite loss;
143 / 130 stopped by SIGTERM / SIGINT, after the command cleaned up (:mod:`rs2sam2.signals`), with
one line ``rs2sam2 <command>: stopped by SIGTERM``. Any other exception is a bug and propagates with
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

from .cliargs import check_environment
from .errors import UserError, user_message
from .signals import Stopped, stop_on_signals

COMMANDS = {
    "demo": ("rs2sam2.demo", "generate data, train the nano preset on the CPU, evaluate, write a report"),
    "train": ("rs2sam2.train.cli", "train a model (single process or torchrun)"),
    "evaluate": ("rs2sam2.evaluate", "evaluate a checkpoint or a folder of predicted masks"),
    "predict": ("rs2sam2.predict", "segment the object a sentence describes in an image / GeoTIFF"),
    "serve": ("rs2sam2.app", "web demo (Gradio)"),
    "synth": ("rs2sam2.data.synth", "write a generated dataset in the RRSIS-D / RefSegRS / JSONL layout"),
    "check-data": ("rs2sam2.datacheck", "list missing or broken images and masks, size mismatches, duplicates"),
    "benchmark": ("rs2sam2.benchmark", "time a forward pass and report the ratio to the matmul floor"),
    "qgis": ("rs2sam2.qgis", "install the QGIS plugin into a QGIS profile, or package it as a zip"),
}


DESCRIPTION = "RS2-SAM2: segment the object a sentence describes in an aerial or satellite image."
EPILOG = """start with `rs2sam2 demo` (nothing to download); `rs2sam2 COMMAND --help` gives a command's options.
exit status: 0 done; 1 a finding (check-data: problems found); 2 a user error, printed as one line
naming the argument, file or setting; 3 training stopped on a non-finite loss."""


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser of every subcommand; only the one ``argv`` names imports its module and adds its arguments."""
    parser = argparse.ArgumentParser(prog="rs2sam2", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # only the chosen subcommand's module is imported, so a missing optional dependency of one
    # command (gradio for `serve`) does not break the others
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``rs2sam2 ARGV`` and return its exit status; a user error is printed as one line with status 2."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    if args.command != "benchmark":  # benchmark decides itself (it can compare both settings)
        from .runtime import tune_cpu_allocator  # noqa: PLC0415 - torch, not needed by --help

        tune_cpu_allocator()
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        check_environment()  # RS2SAM2_* variables, before any work
        with stop_on_signals():
            return int(module.run(args) or 0)
    except Stopped as stop:
        print(f"rs2sam2 {args.command}: {stop}", file=sys.stderr)
        return stop.status
    except Exception as exc:
        if not is_user_error(exc):
            raise
        print(f"rs2sam2 {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2


def entry() -> NoReturn:
    """The ``rs2sam2`` program (console script, ``python -m rs2sam2``, what torchrun starts):
    :func:`main` on ``sys.argv``, then the end of the process with its status
    (:func:`rs2sam2.runtime.end_process`)."""
    status = main()
    from .runtime import end_process  # noqa: PLC0415 - torch, not needed by --help

    end_process(status)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the user's doing (exit status 2 with its message) rather than a bug."""
    return isinstance(exc, UserError)


if __name__ == "__main__":
    entry()
