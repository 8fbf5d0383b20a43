"""Every shell command README.md and the docs pages (docs/*.md) show works as written.

The commands run in order (README.md, then the pages in the order of mkdocs.yml's nav) in one scratch
folder that holds small stand-ins under the names the pages use (``CKPT`` and the demo's run
``rs2sam2-demo/run``: a seeded nano checkpoint; ``scene.tif`` and ``big.tif``: generated GeoTIFFs;
the demo's test image; ``jobs.csv``; ``configs/``), so a command that reads what an earlier one wrote
(``data/synth``, ``runs/risbench``) finds it. A command shown on several pages runs once.

Not every command can run here, and each one that does not is named with its reason:

- ``SKIPPED``: what is not an ``rs2sam2`` command this test can run (installing packages, the test
  suite itself, the ten-minute demo, building the docs site), each run elsewhere (CI, test_demo.py);
- ``PARSE_ONLY``: ``rs2sam2`` commands that need what cannot exist here (released weights, a real
  dataset under ``/data``, the Hugging Face Hub, GPUs, the paper-size model on a 2-core CPU, a server
  that runs until stopped) are checked through the command line's own parser instead.
"""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from helpers_ckpt import build_checkpoint, write_geotiff
from helpers_scene import write_scene

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
INSTALL = "pip install torch==2.13.0 && pip install -e "
DEMO_IMAGE = "rs2sam2-demo/data/images/rrsisd/JPEGImages/00846.jpg"

# (pattern in the command, why it is not run here); the first match decides
SKIPPED = (
    (r"^pip install ", "installs packages: CI runs the README's second command on a fresh machine"),
    (r"^python -m pytest\b", "the test suite itself: CI runs it"),
    (r"^rs2sam2 demo$", "ten minutes of training: tests/test_demo.py runs demo --quick"),
    (r"^mkdocs ", "builds or serves the docs site: .ci/run runs mkdocs build --strict"),
)
PARSE_ONLY = (
    (r"^torchrun ", "needs 8 GPUs"),
    (r"\s/data/", "needs the real dataset under /data"),
    (r"ReeF2025/", "needs the Hugging Face Hub (tests/test_hub.py loads a cached Hub id)"),
    (r"--preset paper", "the paper-size model: official weights, and minutes per image on this CPU"),
    (r"^rs2sam2 serve ", "a server that runs until stopped (tests/test_app.py starts and drives it)"),
    (r"^rs2sam2 qgis install", "writes into the user's QGIS profile (tests/test_qgis.py installs into a fresh one)"),
)


def doc_pages() -> list[Path]:
    """README.md, then the docs pages in the order of mkdocs.yml's nav, then any page the nav lacks."""
    def walk(entries) -> list[str]:
        out: list[str] = []
        for entry in entries:
            for value in (entry.values() if isinstance(entry, dict) else [entry]):
                out += walk(value) if isinstance(value, list) else [value]
        return out

    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]
    pages = [ROOT / "docs" / name for name in walk(nav)]
    pages += sorted(set((ROOT / "docs").glob("*.md")) - set(pages))
    return [README, *pages]


def page_commands(page: Path) -> list[str]:
    """The shell commands of a page's ``bash`` blocks: continuation lines joined, comments dropped."""
    commands, block = [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            block = [] if block is None and line.strip() == "```bash" else None
            continue
        if block is None:
            continue
        text = line.split(" #")[0].rstrip() if not line.lstrip().startswith("#") else ""
        if not text:
            continue
        if commands and commands[-1].endswith("\\"):
            commands[-1] = commands[-1][:-1].rstrip() + " " + text.strip()
        else:
            commands.append(text.strip())
    return commands


def readme_commands() -> list[str]:
    """The shell commands of README.md."""
    return page_commands(README)


def all_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every command of every page, each command once (its first page)."""
    seen, out = set(), []
    for page in doc_pages():
        for command in page_commands(page):
            if command not in seen:
                seen.add(command)
                out.append((page.relative_to(ROOT).as_posix(), command))
    return out


def cli_args(command: str) -> list[str]:
    """The arguments after ``rs2sam2`` (or ``torchrun ... -m rs2sam2``)."""
    argv = shlex.split(command)
    if argv[0] == "rs2sam2":
        return argv[1:]
    assert argv[0] == "torchrun" and "-m" in argv, f"documented command of an unknown kind: {command}"
    i = argv.index("-m")
    assert argv[i + 1] == "rs2sam2", command
    return argv[i + 2:]


def _reason(rules, command: str) -> str | None:
    return next((why for pattern, why in rules if re.search(pattern, command)), None)


def why_skipped(command: str) -> str | None:
    return _reason(SKIPPED, command)


def why_parsed_only(command: str) -> str | None:
    return _reason(PARSE_ONLY, command)


def test_readme_starts_with_the_two_commands() -> None:
    commands = readme_commands()
    assert commands[0] == INSTALL + '".[all]" && rs2sam2 demo'
    assert commands[1] == INSTALL + '".[dev]" && python -m pytest'
    assert not any(c.startswith("pip ") for c in commands[2:])
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q torch==2.13.0 && pip install -q -e ".[dev]"' in ci and "\npython -m pytest" in ci


def test_commands_not_run_are_few_and_each_has_a_reason() -> None:
    commands = [c for _, c in all_commands()]
    skipped = [c for c in commands if why_skipped(c)]
    parsed = [c for c in commands if not why_skipped(c) and why_parsed_only(c)]
    # every rule still names a command the pages show (no stale reasons), and the rules stay a short list
    for pattern, why in (*SKIPPED, *PARSE_ONLY):
        assert any(re.search(pattern, c) for c in commands), f"no documented command needs the rule {why!r}"
    assert len(skipped) <= 8, skipped
    assert len(commands) - len(skipped) - len(parsed) > len(parsed), (skipped, parsed)


def _sandbox(folder: Path) -> None:
    """The files the documented commands name, small and generated."""
    shutil.copytree(ROOT / "configs", folder / "configs")
    build_checkpoint(folder / "CKPT")
    build_checkpoint(folder / "rs2sam2-demo" / "run")
    image = folder / DEMO_IMAGE
    image.parent.mkdir(parents=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)).save(image)
    write_geotiff(folder / "scene.tif", height=96, width=128)
    write_scene(folder / "big.tif", 4096)
    with open(folder / "jobs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "out"])
        w.writerow(["scene.tif", "the bright square", "jobs_out/square.tif"])
        w.writerow(["scene.tif", "the dark field on the left", "jobs_out/field.tif"])


def _outputs(args: list[str]) -> list[str]:
    """The files a predict command promises to write."""
    flags = ("--out", "--vector", "--geojson", "--overlay", "--prob")
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a in flags and args[0] == "predict"]


def _parses(args: list[str]) -> int | None:
    """None when the command line's parser takes ``args``, else its exit status."""
    from rs2sam2.cli import build_parser

    try:
        build_parser(args).parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return None


@pytest.mark.slow
def test_every_documented_command_runs_as_written(tmp_path: Path) -> None:
    commands = all_commands()
    assert len(commands) >= 30, "the pages lost their command examples?"
    _sandbox(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    exe = Path(sys.executable).with_name("rs2sam2")
    ran, parsed = [], []
    for page, command in commands:
        if why_skipped(command):
            continue
        args = cli_args(command)
        if why_parsed_only(command):
            status = _parses(args)
            assert status is None, f"{page}: command does not parse (exit {status}): {command}"
            parsed.append(command)
            continue
        proc = subprocess.run([str(exe), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{page}: command failed ({proc.returncode}): {command}\n{proc.stderr[-3000:]}"
        for out in _outputs(args):
            assert (tmp_path / out).is_file(), f"{page}: {command} did not write {out}"
        ran.append(command)
    assert (tmp_path / "jobs_out" / "square.tif").is_file() and (tmp_path / "jobs_out" / "field.tif").is_file()
    # most of what the pages show really runs here; only what needs the outside world is parsed
    assert len(ran) > len(parsed) and len(ran) >= 15, (ran, parsed)


def test_help_opens_with_a_whole_sentence() -> None:
    from rs2sam2.cli import build_parser

    text = build_parser([]).format_help()
    description = text.split("\n\n")[1]
    assert description.startswith("RS2-SAM2: ") and description.endswith("."), description
    assert "rs2sam2 demo" in text and "COMMAND --help" in text
