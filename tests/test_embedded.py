"""The embedded PostgreSQL, and the promise never to loosen the permissions of a user's folders."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from support import fetch, run, world_readable_tmpdir

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
