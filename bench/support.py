"""What the benchmarks share: a world-readable temp folder, the embedded PostgreSQL and ``receiver
serve`` in a child process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:
    from receiver.db.embedded import EmbeddedPostgres


def world_readable_tmpdir(prefix: str) -> Path:
    """A temporary folder the embedded PostgreSQL can use even as root (see receiver/db/embedded.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def start_embedded(base: Path) -> EmbeddedPostgres:
    """The embedded PostgreSQL in ``base``, sized as the service sizes it
    (``RECEIVER_EMBEDDED_SHARED_BUFFERS`` when set)."""
    from receiver.config import Settings
    from receiver.db import embedded

    return embedded.start(base, shared_buffers=Settings().embedded_shared_buffers)


def parse_cpus(text: str) -> set[int]:
    """``0,2-3`` -> {0, 2, 3}, as ``taskset -c`` takes them."""
    cpus: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            low, high = part.split("-")
            cpus.update(range(int(low), int(high) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


MEMINFO = Path("/proc/meminfo")


def dirty_kib(meminfo: Path = MEMINFO) -> tuple[int, int]:
    """The machine's page cache: KiB dirty (written, waiting for the kernel's writeback) and KiB
    being written back now."""
    values = {}
    for line in meminfo.read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("Dirty", "Writeback"):
            values[name] = int(rest.split()[0])
    return values.get("Dirty", 0), values.get("Writeback", 0)


class PageCacheWatch:
    """Samples :func:`dirty_kib` every ``interval`` s in a thread while in use. Each
    ``fdatasync`` of the journal waits for the disk to flush what was written before it, so a
    pile of dirty pages the kernel writes back at once (after half a minute, by default) shows
    as a stall of the acknowledgements: :func:`page_cache_summary` says how large and when."""

    def __init__(self, interval: float = 0.05, meminfo: Path = MEMINFO) -> None:
        self.interval = interval
        self.meminfo = meminfo
        self.samples: list[tuple[float, int, int]] = []  # wall-clock time, KiB dirty, KiB in write-back
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="page-cache-watch", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), *dirty_kib(self.meminfo)))
            self._stop.wait(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def page_cache_summary(samples: list[tuple[float, int, int]], start: float) -> dict[str, float]:
    """The most dirty page cache seen (MiB), the largest write-back seen (MiB) and when, in
    seconds from ``start`` (wall clock)."""
    if not samples:
        return {}
    t, _dirty, writeback = max(samples, key=lambda s: s[2])
    return {
        "dirty_max_mib": round(max(s[1] for s in samples) / 1024, 1),
        "writeback_max_mib": round(writeback / 1024, 1),
        "writeback_max_at_s": round(t - start, 2),
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``receiver serve`` on a free port against ``database_url``, stopped with SIGTERM on exit."""

    def __init__(self, database_url: str, *, workers: int, extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.data_dir = Path(tempfile.mkdtemp(prefix="receiver-bench-data-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RECEIVER_")}
        self.env.update(
            RECEIVER_DATABASE_URL=database_url,
            RECEIVER_DATA_DIR=str(self.data_dir),
            RECEIVER_LOG_LEVEL="warning",
            RECEIVER_LOG_FORMAT="json",
            **(extra_env or {}),
        )
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        argv = [sys.executable, "-m", "receiver", "serve", "--port", str(self.port), "--workers", str(self.workers)]
        self.proc = subprocess.Popen(argv, env=self.env, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base_url}/healthz", timeout=1):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"receiver serve exited with {self.proc.returncode}") from None
                time.sleep(0.2)
        raise TimeoutError("receiver serve did not start")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        shutil.rmtree(self.data_dir, ignore_errors=True)
