"""The folder ``prometheus-client`` shares between worker processes (its multiprocess mode).

``receiver serve`` calls :func:`prepare` in the parent process, before uvicorn starts its
workers: every worker then writes its metrics to memory-mapped files in that folder and
``/metrics``, whichever worker answers it, adds them all up.

Layout: ``DATA_DIR/metrics/<pid>-<random>/`` per running ``receiver serve``, with a ``lock`` file
the parent holds under ``flock`` for as long as it runs. At start, folders whose lock is free
(their ``serve`` has exited, even by ``kill -9``) are deleted, so counters start from zero with
each run and a second ``serve`` on the same data folder keeps its own.

This module must not import ``prometheus_client``: the library picks its mode, once, when it
is first imported, and that has to happen after the environment variable is set.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import structlog

ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass
class MetricsDir:
    path: Path
    lock_fd: int

    def release(self) -> None:
        """Delete the folder (the service has stopped) and drop the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self.lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.lock_fd)
            self.lock_fd = -1


def prepare(data_dir: Path) -> MetricsDir | None:
    """Create a fresh metrics folder under ``data_dir``, lock it, clear the stale ones, and
    point ``PROMETHEUS_MULTIPROC_DIR`` at it for the workers this process will start. When that
    fails, each worker's /metrics shows only its own values (and a warning says so): metrics
    never stop the service from acknowledging callbacks."""
    try:
        return _prepare(data_dir)
    except OSError as error:
        os.environ.pop(ENV, None)
        structlog.get_logger("receiver").warning(
            "metrics.single_process",
            folder=str(data_dir / "metrics"),
            error=f"{type(error).__name__}: {error}",
        )
        return None


def _prepare(data_dir: Path) -> MetricsDir:
    root = data_dir / "metrics"
    root.mkdir(parents=True, exist_ok=True)
    for folder in root.iterdir():
        if folder.is_dir() and _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
    name = f"{os.getpid()}-{secrets.token_hex(4)}"
    staging = root / f".tmp-{name}"  # locked before it gets its name: no other serve sees it unlocked
    staging.mkdir()
    fd = os.open(staging / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = root / name
    staging.rename(path)
    os.environ[ENV] = str(path)
    return MetricsDir(path, fd)


def _abandoned(folder: Path) -> bool:
    """True when no running ``serve`` holds the folder's lock."""
    try:
        fd = os.open(folder / "lock", os.O_RDWR)
    except FileNotFoundError:  # half deleted, or a serve died between mkdir and lock (or is there now)
        try:
            return not folder.name.startswith(".tmp-") or time.time() - folder.stat().st_mtime > 60
        except FileNotFoundError:
            return False
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)
    return True
