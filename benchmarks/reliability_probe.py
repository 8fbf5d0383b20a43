"""Issue 30's command-line probe cases (arguments, environment variables, serve's address): for
each, the exit status and the last line of stderr (``[traceback]`` when there was one), one JSON
list per line.

    python benchmarks/reliability_probe.py SRC WORK CKPT DATA

SRC: the ``src`` folder of the tree to probe; WORK: a scratch folder (the working folder of the
commands); CKPT: a checkpoint folder; DATA: an RRSIS-D dataset root (``rs2sam2 synth --format rrsisd``).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path


def run(work: Path, env: dict, args: list[str], extra_env: dict | None = None) -> tuple[int | str, str]:
    """``rs2sam2 ARGS`` in ``work``: the exit status and the last line of stderr."""
    try:
        r = subprocess.run([sys.executable, "-m", "rs2sam2", *args], cwd=work, capture_output=True, text=True,
                           env={**env, **(extra_env or {})}, timeout=240)
    except subprocess.TimeoutExpired:
        return "timeout", "(still running after 240 s)"
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    return r.returncode, ("[traceback] " if "Traceback" in r.stderr else "") + (lines[-1][:150] if lines else "")


def cases(ckpt: str, data: str, busy_port: int) -> list[tuple[str, list[str], dict | None]]:
    evaluate = ["evaluate", "--checkpoint", ckpt, "--dataset", "rrsisd", "--data", data, "--split", "test",
                "--out", "r/r.json", "--no-progress"]
    bench = ["benchmark", "--preset", "nano", "--runs", "1"]
    return [
        ("evaluate, RS2SAM2_MAX_PIXELS=abc", evaluate, {"RS2SAM2_MAX_PIXELS": "abc"}),
        ("check-data, RS2SAM2_MAX_PIXELS=-5", ["check-data", "--dataset", "rrsisd", "--data", data],
         {"RS2SAM2_MAX_PIXELS": "-5"}),
        ("benchmark --batch 0", [*bench, "--batch", "0"], None),
        ("benchmark --texts 0", [*bench, "--texts", "0"], None),
        ("benchmark --runs 0", [*bench, "--runs", "0"], None),
        ("benchmark --text-len 0", [*bench, "--text-len", "0"], None),
        ("benchmark --text-len 100000", [*bench, "--text-len", "100000"], None),
        ("benchmark --device cuda (no CUDA)", [*bench, "--device", "cuda"], None),
        ("evaluate --threshold nan", [*evaluate, "--threshold", "nan"], None),
        ("serve --host 203.0.113.7", ["serve", "--checkpoint", ckpt, "--host", "203.0.113.7"], None),
        ("serve --port (in use)", ["serve", "--checkpoint", ckpt, "--port", str(busy_port)], None),
    ]


def main() -> None:
    src, work, ckpt, data = sys.argv[1], Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=src)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        for name, args, extra in cases(ckpt, data, busy.getsockname()[1]):
            print(json.dumps([name, *run(work, env, args, extra)]), flush=True)


if __name__ == "__main__":
    main()
