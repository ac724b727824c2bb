#!/usr/bin/env python3
"""One-command set-up for people and CI: needs nothing but Python 3.11+.

    python3 dev.py serve [receiver serve options]   # set up, then run on the embedded PostgreSQL
    python3 dev.py test  [pytest options]           # set up, then run the whole test suite
    python3 dev.py bench [bench options]            # set up, then run the benchmarks

Set-up is a virtual environment in .venv with the project installed in editable mode; it is
redone only when pyproject.toml changes.
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
STAMP = VENV / ".receiver-installed"


def ensure_venv(with_tests: bool) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"receiver needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    have = STAMP.read_text().split() if STAMP.exists() else []
    if have[:1] == [digest] and (not with_tests or "test" in have):
        return
    target = f"{ROOT}[test]" if with_tests else str(ROOT)
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing receiver into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "-e", target], check=True)
    STAMP.write_text(f"{digest} test" if with_tests else digest)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test", "bench"}:
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    ensure_venv(with_tests=command != "serve")
    os.chdir(ROOT)
    if command == "serve":
        argv = [str(BIN / "receiver"), "serve", *rest]
    elif command == "test":
        argv = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        argv = [str(BIN / "python"), "-m", "bench", *rest]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
