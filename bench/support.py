"""What the benchmarks share: a world-readable temp folder and ``receiver serve`` in a child process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self


def world_readable_tmpdir(prefix: str) -> Path:
    """A temporary folder the embedded PostgreSQL can use even as root (see receiver/db/embedded.py)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


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
