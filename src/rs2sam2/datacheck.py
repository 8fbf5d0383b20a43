"""``rs2sam2 check-data``: list what would stop or skew training and evaluation in a dataset.

The checks themselves are :mod:`rs2sam2.data.checks`; this command runs them on the splits asked
for, prints the first ``--max-list`` messages of each kind and, with ``--json``, writes every message.

Exit status: 0 when every split is clean, 1 when a problem was found, 2 when the dataset cannot be
read at all (wrong ``--data`` or ``--dataset``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .cliargs import number
from .data import DATASETS, DatasetError
from .data.checks import DEFAULT_SPLITS, KINDS, check_dataset
from .errors import MissingFileError
from .fsutil import atomic_write_text, check_writable

__all__ = ["add_arguments", "format_report", "run"]


def format_report(report: dict[str, Any], max_list: int = 10) -> str:
    """Console listing: one block per split, the first ``max_list`` messages of each kind."""
    lines = []
    for name, result in report["splits"].items():
        head = f"{report['dataset']} {name}"
        if "error" in result:
            lines.append(f"{head}: cannot be read: {result['error']}")
            continue
        counts = f"{result['expressions']} expressions, {result['refs']} refs, {result['images']} images"
        if result["clean"]:
            lines.append(f"{head}: clean ({counts})")
            continue
        lines.append(f"{head}: {counts}")
        for kind, messages in result["problems"].items():
            lines.append(f"  {KINDS.get(kind, kind)}: {len(messages)}")
            lines.extend(f"    {m}" for m in messages[:max_list])
            if len(messages) > max_list:
                lines.append(f"    ... and {len(messages) - max_list} more")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rs2sam2 check-data``."""
    parser.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    parser.add_argument("--data", required=True, help="dataset root (for jsonl: the .jsonl file or its folder)")
    parser.add_argument("--split", nargs="+", default=None,
                        help="splits to check (default: train val test; jsonl: all = every line)")
    parser.add_argument("--json", help="also write the full report (every message) to this JSON file")
    parser.add_argument("--max-list", type=number(int, low=0), default=10, help="messages shown per kind (default 10)")
    parser.add_argument("--decode", action="store_true", help="also decode every image (slow, thorough)")


def run(args: argparse.Namespace) -> int:
    """``rs2sam2 check-data``: exit status 0 when every split is clean, 1 when problems were found."""
    if not Path(args.data).exists():
        raise MissingFileError(f"--data {args.data}: no such file or folder")
    if args.json:
        check_writable(args.json, "--json")
    names = args.split or (["all"] if args.dataset == "jsonl" else list(DEFAULT_SPLITS))
    splits = [None if (args.dataset == "jsonl" and s in ("all", "none")) else s for s in names]
    report = check_dataset(args.dataset, args.data, splits, decode=args.decode)
    print(format_report(report, args.max_list))
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    if all("error" in s for s in report["splits"].values()):
        reasons = "; ".join(f"{name}: {result['error']}" for name, result in report["splits"].items())
        raise DatasetError(f"no split of {args.data} could be read as {args.dataset} ({reasons})")
    return 0 if report["clean"] else 1
