"""Installed as a user installs it: the built wheel and sdist in fresh virtual environments
outside the checkout, run from an unrelated folder on the embedded default database."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from installation import OFFICIAL_SMS_MSG_ID, OFFICIAL_STATUS_REPORT, ROOT, install, user_env
from support import Service, free_port, wait_for, world_readable_tmpdir

import receiver

MIGRATIONS = sorted(path.name for path in (ROOT / "sql").glob("[0-9]*.sql"))


def test_the_wheel_carries_the_migrations_and_the_licence(artifacts: dict[str, Path]) -> None:
    with zipfile.ZipFile(artifacts["wheel"]) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert sorted(n.removeprefix("receiver/migrations/") for n in names if n.endswith(".sql")) == MIGRATIONS
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert f"Version: {receiver.__version__}" in metadata.splitlines()
    modules = {str(path.relative_to(ROOT)) for path in (ROOT / "receiver").rglob("*.py")}
    assert modules <= set(names), f"pyproject.toml's packages miss {sorted(modules - set(names))}"


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_installed_from_the_artifact_it_migrates_serves_stores_and_stops(
    kind: str, artifacts: dict[str, Path], wheelhouse: Path, installed_wheel: Path
) -> None:
    venv_dir = installed_wheel if kind == "wheel" else install(artifacts["sdist"], wheelhouse)
    elsewhere = world_readable_tmpdir("receiver-user-")  # neither the checkout nor the environment
    env = user_env(venv_dir, home=elsewhere, RECEIVER_DATA_DIR=str(elsewhere / ".receiver"))

    def receiver_(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["receiver", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    service = Service({**env, "RECEIVER_PORT": str(free_port())}, command=["receiver", "serve", "--workers", "1"],
                      cwd=elsewhere)  # fmt: skip
    try:
        assert shutil.which("receiver", path=env["PATH"]) == str(venv_dir / "bin" / "receiver")
        assert receiver_("--version").stdout == f"receiver {receiver.__version__}\n"
        migrated = receiver_("migrate")
        assert (migrated.returncode, migrated.stderr) == (0, "")
        assert migrated.stdout.startswith(f"applied {len(MIGRATIONS)} migration(s): ")

        service.start()
        printed = service.log.read_text()
        urls = re.findall(r"^ +status_report_url +(http://\S+)$", printed, re.MULTILINE)
        assert len(urls) == 1, printed  # the first start made the application "default"
        path = urls[0].split(f":{service.port}", 1)[1]
        assert service.post_form(path, OFFICIAL_STATUS_REPORT) == (200, b"")

        key = json.loads(receiver_("apikey", "create", "install-test", "--json").stdout)["key"]

        def stored() -> dict[str, object] | None:
            status, body = service.request(
                "GET", f"/v1/messages/{OFFICIAL_SMS_MSG_ID}", Authorization=f"Bearer {key}"
            )
            return json.loads(body) if status == 200 else None

        assert wait_for(lambda: stored() is not None, timeout=30)
        message = stored()
        assert message is not None
        assert message["status"] == "DELIVRD"
        assert [r["status"] for r in message["reports"]] == ["DELIVRD"]  # type: ignore[attr-defined]

        assert service.terminate(timeout=60) == 0
        pgdata = elsewhere / ".receiver" / "pgdata"
        assert pgdata.is_dir()  # the embedded default lived in the data folder...
        assert wait_for(
            lambda: not (pgdata / "postmaster.pid").exists(), timeout=30
        )  # ...and stopped with serve
    finally:
        service.stop()
        if kind == "sdist":
            shutil.rmtree(venv_dir.parent, ignore_errors=True)
        shutil.rmtree(elsewhere, ignore_errors=True)
