#!/usr/bin/env python3
"""One-command set-up for people and CI: needs nothing but Python 3.11+.

    python3 dev.py serve [receiver serve options]   # set up, then run on the embedded PostgreSQL
    python3 dev.py test  [pytest options]           # set up, check, then run the test suite
    python3 dev.py check                            # set up, then only the checks
    python3 dev.py bench [bench options]            # set up, then run the benchmarks

The checks are `ruff check .` and `mypy` (strict; what they cover is in pyproject.toml). `test`
runs them first, every time, with or without pytest options (a subset of the tests too: they
take a second once mypy's cache is warm), and stops at the first finding: pytest runs only on
code that passes them. CI runs `python3 dev.py test` (.ci/run).

Set-up is a virtual environment in .venv with the project installed in editable mode, its
dependencies at the versions of constraints.txt (the image's); it is redone only when
pyproject.toml or constraints.txt changes. The `receiver` command is then .venv/bin/receiver
(or plain `receiver` after `. .venv/bin/activate`).
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
INPUTS = ("pyproject.toml", "constraints.txt")


def ensure_venv(extras: tuple[str, ...]) -> None:
    """The project installed in .venv with these extras (pyproject.toml's optional dependencies),
    and those installed before."""
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py runs on whatever python3 is, to say so
        sys.exit(f"receiver needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    digest = hashlib.sha256(b"".join((ROOT / name).read_bytes() for name in INPUTS)).hexdigest()
    have = STAMP.read_text().split() if STAMP.exists() else []
    if have[:1] == [digest] and set(extras) <= set(have[1:]):
        return
    wanted = sorted(set(extras) | set(have[1:]))
    target = f"{ROOT}[{','.join(wanted)}]" if wanted else str(ROOT)
    if not (BIN / "python").exists():
        print("dev.py: creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("dev.py: installing receiver into .venv", flush=True)
    pip = [str(BIN / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--constraint", str(ROOT / "constraints.txt"), "-e", target], check=True)
    STAMP.write_text(" ".join([digest, *wanted]))


CHECKS = (("ruff", "check", "."), ("mypy",))


def check() -> None:
    """Each of :data:`CHECKS`; exits at the first that finds something."""
    for tool, *args in CHECKS:
        print(f"dev.py: {tool} {' '.join(args)}".rstrip(), flush=True)
        if subprocess.run([str(BIN / tool), *args], check=False).returncode != 0:
            sys.exit(f"dev.py: {tool} found problems (above); nothing else ran")


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in {"serve", "test", "check", "bench"}:
        sys.exit(__doc__)
    command, rest = sys.argv[1], sys.argv[2:]
    ensure_venv({"serve": (), "test": ("test",), "check": ("test",), "bench": ("test", "bench")}[command])
    os.chdir(ROOT)
    if command == "serve":
        print(f"dev.py: in another terminal, the receiver command is {BIN.relative_to(ROOT) / 'receiver'}", flush=True)
        argv = [str(BIN / "receiver"), "serve", *rest]
    elif command in {"test", "check"}:
        check()
        if command == "check":
            return
        argv = [str(BIN / "python"), "-m", "pytest", *rest]
    else:
        argv = [str(BIN / "python"), "-m", "bench", *rest]
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
