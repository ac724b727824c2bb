"""The embedded PostgreSQL, and the promise never to loosen the permissions of a user's folders."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import cli, fetch, run, service_env, world_readable_tmpdir

from receiver.db import embedded

ROOT = os.geteuid() == 0


def test_a_private_folder_keeps_its_permissions_and_the_cluster_goes_elsewhere() -> None:
    base = world_readable_tmpdir("receiver-private-")
    private = base / "home"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    data_dir = private / "project" / ".receiver"
    pgdata = embedded.cluster_dir(data_dir)
    try:
        if ROOT:  # PostgreSQL runs as another user, who may not enter `private`: the cluster lives elsewhere
            assert not pgdata.is_relative_to(private)
            assert pgdata.is_relative_to(embedded.SYSTEM_BASE)
        else:
            assert pgdata == (data_dir / "pgdata").resolve()
        server = embedded.start(data_dir)
        try:
            assert run(fetch(server.url, "SELECT 1 AS one"))[0]["one"] == 1
        finally:
            server.stop()
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert stat.S_IMODE((private / "project").stat().st_mode) == stat.S_IMODE(0o777 & ~_umask())
    finally:
        shutil.rmtree(base, ignore_errors=True)
        if ROOT:
            shutil.rmtree(pgdata.parent, ignore_errors=True)


def test_a_world_readable_data_dir_holds_the_cluster_itself(tmp_path: Path) -> None:
    base = world_readable_tmpdir("receiver-open-")
    try:
        assert embedded.cluster_dir(base / "data") == (base / "data" / "pgdata").resolve()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_process_that_stops_its_server_exits_without_an_error() -> None:
    """A script (a benchmark, say) that stops the server it started says nothing more when it
    exits: the server is not stopped a second time, with an error that it is not running."""
    base = world_readable_tmpdir("receiver-stop-")
    script = (
        "import sys\nfrom pathlib import Path\nfrom receiver.db import embedded\n"
        "embedded.start(Path(sys.argv[1])).stop()\nprint('stopped')\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(base / "data")], check=False, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and done.stdout == "stopped\n", done.stderr
        assert "Failed" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_embedded_server_gets_a_quarter_of_the_memory_within_bounds() -> None:
    mib, gib = 1 << 20, 1 << 30
    assert embedded.shared_buffers_for(4 * gib) == "1024MB"
    assert embedded.shared_buffers_for(24 * gib) == "2048MB"  # at most 2 GB
    assert embedded.shared_buffers_for(256 * mib) == "128MB"  # never under PostgreSQL's own default
    assert embedded.shared_buffers_for(None) == "128MB"  # memory unknown


def test_a_cgroup_limit_counts_as_the_memory_its_parents_too(tmp_path: Path) -> None:
    """A container's limit (cgroup v2), a systemd slice's above the process's own cgroup, and v1's
    memory controller: the lowest one counts, if it is lower than the machine's memory."""
    physical = embedded.machine_memory(tmp_path / "none", tmp_path)  # no cgroup files: the machine's
    assert physical is not None and physical > 0
    proc = tmp_path / "cgroup"
    v2 = tmp_path / "v2"
    (v2 / "app.slice" / "receiver.service").mkdir(parents=True)
    (v2 / "app.slice" / "receiver.service" / "memory.max").write_text("max\n")
    (v2 / "app.slice" / "memory.max").write_text(f"{96 << 20}\n")  # the slice above: 96 MiB
    proc.write_text("0::/app.slice/receiver.service\n")
    assert embedded.machine_memory(proc, v2) == min(physical, 96 << 20)
    (v2 / "app.slice" / "memory.max").write_text("max\n")
    assert embedded.machine_memory(proc, v2) == physical
    v1 = tmp_path / "v1"
    (v1 / "memory" / "docker" / "abc").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(f"{80 << 20}\n")
    proc.write_text("12:pids:/docker/abc\n4:memory:/docker/abc\n0::/\n")
    assert embedded.machine_memory(proc, v1) == min(physical, 80 << 20)
    assert embedded.shared_buffers_for(80 << 20) == "128MB"


def test_shared_buffers_are_set_at_each_start_of_the_server(caplog: pytest.LogCaptureFixture) -> None:
    """An existing cluster (one made by a release before this setting, too) takes the setting
    when it starts next, and a running one says it keeps its own; the include line is written once."""
    base = world_readable_tmpdir("receiver-buffers-")
    data_dir = base / "data"
    sql = "SELECT setting::bigint * 8192 AS size FROM pg_settings WHERE name = 'shared_buffers'"
    try:
        server = embedded.start(data_dir, shared_buffers="160MB")
        try:
            assert run(fetch(server.url, sql))[0]["size"] == 160 << 20
            with caplog.at_level(logging.WARNING, logger=embedded.__name__):
                embedded.start(data_dir, shared_buffers="176MB")  # joins the running server
            assert run(fetch(server.url, sql))[0]["size"] == 160 << 20
            assert "settings other than these until it restarts" in caplog.text
            assert "shared_buffers 176MB" in caplog.text
        finally:
            server.stop()
        server = embedded.start(data_dir)
        try:
            wanted = embedded.shared_buffers_for(embedded.machine_memory())
            assert run(fetch(server.url, sql))[0]["size"] == int(wanted.removesuffix("MB")) << 20
        finally:
            server.stop()
        conf = (server.pgdata / "postgresql.conf").read_text().splitlines()
        assert conf.count(f"include_if_exists = '{embedded.CONF_FILE}'") == 1
    finally:
        shutil.rmtree(base, ignore_errors=True)  # the cluster is in it: the folder is world-readable


def test_an_empty_shared_buffers_setting_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from receiver.config import Settings

    monkeypatch.setenv("RECEIVER_EMBEDDED_SHARED_BUFFERS", "")
    assert Settings().embedded_shared_buffers is None
    monkeypatch.setenv("RECEIVER_EMBEDDED_SHARED_BUFFERS", "512MB")
    assert Settings().embedded_shared_buffers == "512MB"
    monkeypatch.setenv("RECEIVER_EMBEDDED_SHARED_BUFFERS", "64kB")  # under PostgreSQL's minimum: refused here
    with pytest.raises(ValueError, match="at least 128kB"):
        Settings()


def test_db_stop_leaves_the_settings_for_the_next_start() -> None:
    """`receiver db stop` neither rewrites the settings nor warns about them: the size asked for
    while the server ran is the one it starts with next."""
    base = world_readable_tmpdir("receiver-dbstop-")
    env = service_env(base, None)
    asked = {**env, "RECEIVER_EMBEDDED_SHARED_BUFFERS": "176MB"}
    sql = "SELECT setting::bigint * 8192 AS size FROM pg_settings WHERE name = 'shared_buffers'"
    try:
        url = cli("db", "url", env=env).stdout.strip()
        time.sleep(1.1)  # the warning counts a change from a second after the server's start on
        assert "settings other than these until it restarts" in cli("db", "url", env=asked).stderr
        # Asked again, the file unchanged: the server still has not taken it, and says so again.
        assert "settings other than these until it restarts" in cli("db", "url", env=asked).stderr
        stopped = cli("db", "stop", env=env)
        assert stopped.stderr == ""
        assert "shared_buffers = '176MB'" in (base / "pgdata" / embedded.CONF_FILE).read_text()
        assert cli("db", "stop", env=env).returncode == 0  # stopped already: nothing to do, nothing started
        assert not (base / "pgdata" / "postmaster.pid").exists()
        url = cli("db", "url", env=asked).stdout.strip()
        assert run(fetch(url, sql))[0]["size"] == 176 << 20
    finally:
        cli("db", "stop", env=env, check=False)
        shutil.rmtree(base, ignore_errors=True)
