"""receiver as a user gets it: the built wheel and sdist, installed into fresh virtual
environments outside the checkout, with the dependency versions of ``constraints.txt``.

The dependencies are downloaded once into a wheelhouse beside this test environment (kept while
``constraints.txt`` does not change); each install is then a real ``pip install`` of the built
artifact, offline, from that wheelhouse.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

from support import huawei_sample, world_readable_tmpdir

ROOT = Path(__file__).resolve().parent.parent
CONSTRAINTS = ROOT / "constraints.txt"
# Huawei's sample status report, verbatim (docs/protocol.md, Official samples).
OFFICIAL_STATUS_REPORT = huawei_sample("status-report-api-example")
OFFICIAL_SMS_MSG_ID = "b9d9b4fe-ad0e-4a2a-a2c7-445505b674ac_6"


def _pip_env() -> dict[str, str]:
    """pip as configured on this machine, but never inside this test environment, and with the
    build backend pinned too (PIP_CONSTRAINT reaches pip's isolated build environments)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"VIRTUAL_ENV", "PYTHONPATH", "PIP_REQUIRE_VIRTUALENV"}
    }
    env["PIP_CONSTRAINT"] = str(CONSTRAINTS)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def build(out: Path) -> dict[str, Path]:
    """The sdist, and the wheel built from it (what `python -m build` does): {"sdist", "wheel"}."""
    source = out / "source"  # a copy, so that the build leaves nothing in the checkout
    tracked = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    dist = out / "dist"
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        env=_pip_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "Warning" in line]
    assert not warnings, warnings  # e.g. SetuptoolsDeprecationWarning
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def wheelhouse() -> Path:
    """Every pinned dependency as a wheel (and setuptools, to build the sdist), downloaded once."""
    digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()[:16]
    house = Path(sys.prefix) / "receiver-test-wheelhouse" / digest
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        house.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", str(house),
             "--requirement", str(CONSTRAINTS)],
            env=_pip_env(), check=True, timeout=600, capture_output=True,
        )  # fmt: skip
        (house / ".complete").touch()
    return house


def install(artifact: Path, house: Path) -> Path:
    """A new virtual environment, outside the checkout, with ``artifact`` installed: its folder."""
    target = world_readable_tmpdir("receiver-venv-") / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    result = subprocess.run(
        [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(house),
         str(artifact)],
        env=_pip_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return target


def user_env(venv_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    """A user's shell with the environment activated: nothing of the checkout or of the tests."""
    keep = {"LANG", "LC_ALL", "TZ", "TMPDIR"}
    env = {k: v for k, v in os.environ.items() if k in keep}
    env["PATH"] = f"{venv_dir / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    env["HOME"] = str(home)
    env.update(extra)
    return env
