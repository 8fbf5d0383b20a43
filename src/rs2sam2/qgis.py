"""``rs2sam2 qgis install|package``: the QGIS plugin into a QGIS profile, or into a zip.

The plugin (a Processing provider with the algorithms "Segment by sentence" and "Segment many")
ships inside this package as data, in ``qgis_plugin/rs2sam2_qgis``; this package never imports it
(QGIS's Python has no PyTorch: the plugin runs the ``rs2sam2`` program instead). ``install`` copies it
into a profile's ``python/plugins`` folder and enables it there; ``package`` writes the zip that
QGIS's Plugins > Manage and Install Plugins > Install from ZIP takes.

The profile folder is found as QGIS finds it: ``$QGIS_CUSTOM_CONFIG_PATH/profiles`` when that is set,
else ``QGIS/QGIS3/profiles`` in the user's application data folder (Linux: ``$XDG_DATA_HOME`` or
``~/.local/share``; macOS: ``~/Library/Application Support``; Windows: ``%APPDATA%``), and the profile
is the one named, else the default of ``profiles.ini`` (``default`` when it names none).
"""

from __future__ import annotations

import argparse
import configparser
import os
import secrets
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from . import __version__
from .errors import MissingFileError, OutputError, UserError
from .fsutil import atomic_write, atomic_write_text, check_writable

PLUGIN_NAME = "rs2sam2_qgis"
PLUGIN_DIR = Path(__file__).resolve().parent / "qgis_plugin" / PLUGIN_NAME
SKIPPED = ("__pycache__",)


def plugin_files() -> dict[str, bytes]:
    """The plugin's files, by their path inside the plugin folder; ``metadata.txt`` carries this
    package's version."""
    if not (PLUGIN_DIR / "metadata.txt").is_file():
        raise MissingFileError(f"the QGIS plugin files are missing from this installation ({PLUGIN_DIR}); "
                               "reinstall rs2sam2")
    files = {}
    for path in sorted(PLUGIN_DIR.rglob("*")):
        if path.is_file() and not any(part in SKIPPED for part in path.parts) and path.suffix != ".pyc":
            files[path.relative_to(PLUGIN_DIR).as_posix()] = path.read_bytes()
    lines = files["metadata.txt"].decode("utf-8").splitlines()
    files["metadata.txt"] = "\n".join(f"version={__version__}" if line.startswith("version=") else line
                                      for line in lines).encode("utf-8") + b"\n"
    return files


def profiles_root(env: dict[str, str] | None = None, platform: str = sys.platform,
                  home: Path | None = None) -> Path:
    """The folder that holds the QGIS profiles, found the way QGIS finds it (see the module docstring)."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    if env.get("QGIS_CUSTOM_CONFIG_PATH"):
        return Path(env["QGIS_CUSTOM_CONFIG_PATH"]) / "profiles"
    if platform == "win32":
        base = Path(env["APPDATA"]) if env.get("APPDATA") else home / "AppData" / "Roaming"
    elif platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(env["XDG_DATA_HOME"]) if env.get("XDG_DATA_HOME") else home / ".local" / "share"
    return base / "QGIS" / "QGIS3" / "profiles"


def default_profile(root: Path) -> str:
    """The profile QGIS starts with: ``defaultProfile`` of ``root/profiles.ini``, else ``default``."""
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(root / "profiles.ini", encoding="utf-8")
    return ini.get("core", "defaultProfile", fallback="default") or "default"


def profile_folder(name: str | None, root: Path | None = None) -> Path:
    """The folder of the QGIS profile ``name`` (None: the default one); it must exist."""
    root = profiles_root() if root is None else root
    name = name or default_profile(root)
    folder = root / name
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f"profiles there: {', '.join(known)}" if known else "start QGIS once to create it"
        raise MissingFileError(f"no QGIS profile {name!r} in {root} ({hint}); or give the plugins folder "
                               "with --plugins-dir")
    return folder


def install(plugins_dir: Path) -> Path:
    """Put the plugin into ``plugins_dir`` as ``rs2sam2_qgis/``, replacing an older copy whole: the new
    copy is written beside it and renamed into place."""
    if plugins_dir.exists() and not plugins_dir.is_dir():
        raise OutputError(f"{plugins_dir} is a file, not a folder to install the plugin into")
    plugins_dir.mkdir(parents=True, exist_ok=True)
    dest = plugins_dir / PLUGIN_NAME
    work = plugins_dir / f".{PLUGIN_NAME}.{secrets.token_hex(4)}.tmp"
    work.mkdir()  # not mkdtemp: the folder gets the usual permissions, as QGIS's own would
    try:
        for name, data in plugin_files().items():
            (work / name).parent.mkdir(parents=True, exist_ok=True)
            (work / name).write_bytes(data)
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{PLUGIN_NAME}.", suffix=".old", dir=plugins_dir))
            dest.rename(old / PLUGIN_NAME)
        work.rename(dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return dest


def enable(profile: Path) -> Path:
    """Mark the plugin enabled in the profile's settings (``[PythonPlugins] rs2sam2_qgis=true`` in
    ``QGIS/QGIS3.ini``), the way the plugin manager does; the other lines stay as they are."""
    ini = profile / "QGIS" / "QGIS3.ini"
    lines = ini.read_text(encoding="utf-8").splitlines() if ini.is_file() else []
    key = f"{PLUGIN_NAME}="
    try:
        start = lines.index("[PythonPlugins]") + 1
    except ValueError:
        lines += ([""] if lines else []) + ["[PythonPlugins]"]
        start = len(lines)
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("[")), len(lines))
    section = [line for line in lines[start:end] if not line.startswith(key)]
    while section and not section[-1].strip():
        section.pop()
    lines[start:end] = [*section, f"{key}true", *([""] if end < len(lines) else [])]
    atomic_write_text(ini, "\n".join(lines) + "\n")
    return ini


def package(out: Path) -> Path:
    """Write the plugin as a zip for QGIS's "Install from ZIP" (one top folder, ``rs2sam2_qgis/``)."""
    if out.suffix.lower() != ".zip":
        raise UserError(f"--out {out}: give a file name ending in .zip")
    check_writable(out, "--out")
    with atomic_write(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in plugin_files().items():
            zf.writestr(f"{PLUGIN_NAME}/{name}", data)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``install`` and ``package`` subcommands."""
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("install", help="put the plugin into a QGIS profile and enable it (restart QGIS after)",
                       description="put the plugin into a QGIS profile and enable it (restart QGIS after)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--profile", metavar="NAME", help="the QGIS profile (default: QGIS's default profile)")
    where.add_argument("--plugins-dir", type=Path, metavar="DIR",
                       help="install into this folder instead (a profile's python/plugins); not enabled")
    p = sub.add_parser("package", help="write the plugin as a zip for Install from ZIP",
                       description="write the plugin as a zip for Plugins > Manage and Install Plugins > "
                       "Install from ZIP")
    p.add_argument("--out", type=Path, default=Path(f"{PLUGIN_NAME}.zip"), metavar="ZIP",
                   help=f"the zip to write (default {PLUGIN_NAME}.zip)")


def run(args: argparse.Namespace) -> int:
    """Install or package the plugin; prints where it went and what to do next."""
    if args.action == "package":
        out = package(args.out)
        print(f"wrote {out}: in QGIS, Plugins > Manage and Install Plugins > Install from ZIP")
        return 0
    if args.plugins_dir is not None:
        dest = install(args.plugins_dir)
        print(f"installed the QGIS plugin in {dest}; enable it in Plugins > Manage and Install Plugins")
        return 0
    profile = profile_folder(args.profile)
    dest = install(profile / "python" / "plugins")
    enable(profile)
    print(f"installed and enabled the QGIS plugin in {dest}; restart QGIS, then find rs2sam2 in the "
          "Processing Toolbox")
    return 0
