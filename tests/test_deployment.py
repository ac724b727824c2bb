"""The container image's recipe (Docker cannot run here: its essentials are checked by reading it)
and its health check against a real ``receiver serve``."""

from __future__ import annotations

import fnmatch
import http.client
import json
import shlex
import ssl
import subprocess
import sys
from pathlib import Path

from support import Service, cli, create_app_token, free_port, service_env

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        keyword, _, rest = whole.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    assert not pending, "a continuation line runs off the end"
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def test_dockerfile_runs_receiver_serve_slim_and_not_as_root() -> None:
    stage = final_stage()
    assert stage[0] == ("FROM", "python:3.11-slim")
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    commands = [json.loads(rest) for keyword, rest in stage if keyword == "CMD"]
    assert commands[-1][:2] == ["receiver", "serve"] and "--host" in commands[-1]
    assert commands[-1][commands[-1].index("--host") + 1] == "0.0.0.0"
    checks = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "CMD" in checks[0] and "receiver.healthcheck" in checks[0]
    env = env_of(stage)
    assert env["RECEIVER_PORT"] in {rest.split("/")[0] for keyword, rest in stage if keyword == "EXPOSE"}
    volumes = [json.loads(rest) for keyword, rest in stage if keyword == "VOLUME"]
    assert [env["RECEIVER_DATA_DIR"]] in volumes, "the journal (and embedded PostgreSQL) need a volume"


def test_dockerfile_ships_the_migrations_and_the_context_has_them() -> None:
    stage = final_stage()
    env = env_of(stage)
    copies = [rest.split() for keyword, rest in stage if keyword == "COPY"]
    assert ["sql", env["RECEIVER_MIGRATIONS_DIR"]] in copies, "the installed package has no sql/ of its own"
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()]
    ignored = [line for line in ignored if not line.startswith("#")]
    sources = {"pyproject.toml", "README.md", "receiver", "sql"}
    for keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            for source in rest.split()[:-1]:
                assert source in sources, source
                assert (ROOT / source).exists()
                assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    for must_stay_out in (".venv", ".git", ".receiver"):
        assert must_stay_out in ignored


def test_healthcheck_passes_on_a_running_serve_and_fails_without_one(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    service = Service(env, workers=1).start()
    try:
        check = [sys.executable, "-m", "receiver.healthcheck"]
        assert (
            subprocess.run(
                check, env={**env, "RECEIVER_PORT": str(service.port)}, timeout=30, check=False
            ).returncode
            == 0
        )
        assert subprocess.run([*check, str(free_port())], env=env, timeout=30, check=False).returncode == 1
    finally:
        assert service.terminate() == 0


class HTTPSService(Service):
    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=10, context=ssl._create_unverified_context()
        )


def test_healthcheck_and_simulator_over_https(db_url: str, tmp_path: Path) -> None:
    env = service_env(tmp_path / "data", db_url)
    token = create_app_token(env)["token"]
    service = HTTPSService(env, workers=1)
    service.extra_args = ["--tls-self-signed"]
    service.start()
    try:
        check = [sys.executable, "-m", "receiver.healthcheck", str(service.port)]
        assert (
            subprocess.run(check, env=env, timeout=30, check=False).returncode == 0
        )  # plain HTTP fails, HTTPS answers
        url = f"https://127.0.0.1:{service.port}"
        done = cli(
            "simulate", "--url", url, "--token", token, "--messages", "20", "--insecure", "--json", env=env
        )
        assert json.loads(done.stdout)["ok"] is True
        refused = cli(
            "simulate", "--url", url, "--token", token, "--messages", "2", "--json", env=env, check=False
        )
        assert (
            refused.returncode == 1 and json.loads(refused.stdout)["push"]["errors"]
        )  # unverifiable certificate
    finally:
        assert service.terminate() == 0
