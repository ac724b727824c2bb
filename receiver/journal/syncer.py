"""The journal's syncer: a small process of its own that ``fdatasync``s a worker's segment file.

The worker's event loop writes each flush into the page cache itself (a ``pwrite``, a few
microseconds) and asks its syncer to make the file durable; the answer comes back on a socket
the loop already polls, so the loop never blocks on the disk and no thread has to take the
GIL back from it. (A thread in the worker can do the same sync, but under load it waits for
the busy loop's GIL twice a flush, to start and to report, and that wait was most of a
request's latency.) The worker falls back to such a thread if its syncer cannot start or dies.

One ``SOCK_SEQPACKET`` message each way per flush: the worker sends ``b"s"``, with the file's
descriptor attached (``SCM_RIGHTS``) whenever it changed; the syncer answers with the errno of
its ``fdatasync`` as 4 little-endian bytes (0: durable). An ``fdatasync`` on any descriptor of a
file writes out every dirty page of that file, whoever wrote them, and reports write-back errors
of the open file description they share. The syncer exits when the worker's end of the socket
closes, so it never outlives its worker, even one killed by ``kill -9``.

Started as ``python -I -S syncer.py FD``: it imports nothing beyond the standard library's
core, and owes nothing to the receiver's package or its settings.
"""

from __future__ import annotations

import errno
import os
import platform
import socket
import struct
import sys

ANSWER_BYTES = 4

# sched_setattr(2): its number where the syncer knows it; elsewhere the slice stays the default.
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
SLICE_NS = 100_000


def short_slice() -> bool:
    """Ask the scheduler for a short time slice (Linux 6.12+ EEVDF: a task with a short slice
    preempts a longer one when it wakes). The syncer runs for microseconds after each disk
    write; with the default slice it waits behind the busy event loops and the load for up to
    a few milliseconds after its write completes. Unprivileged; older kernels ignore the
    figure for ordinary tasks. Best effort: False when refused."""
    if _SCHED_SETATTR is None or not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes  # here: a Python built without it still syncs
    except ImportError:
        return False
    # struct sched_attr: size, policy, flags, nice, priority, runtime, deadline, period (util clamps 0)
    attr = struct.pack("IIQiIQQQII", 56, 0, 0, os.nice(0), 0, SLICE_NS, 0, 0, 0, 0)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.syscall(_SCHED_SETATTR, 0, ctypes.create_string_buffer(attr, len(attr)), 0)) == 0
    except (OSError, AttributeError):
        return False


def serve(sock: socket.socket) -> None:
    """Answer sync requests until the worker closes its end."""
    fd = -1
    while True:
        try:
            message, fds, _flags, _address = socket.recv_fds(sock, 16, 1)
        except OSError:
            return
        if not message:
            return  # the worker is gone
        for new in fds:
            if fd >= 0:
                os.close(fd)
            fd = new
        try:
            os.fdatasync(fd)
            code = 0
        except OSError as error:
            code = error.errno or errno.EIO
        try:
            sock.send(code.to_bytes(ANSWER_BYTES, "little"))
        except OSError:
            return


if __name__ == "__main__":
    short_slice()
    serve(socket.socket(fileno=int(sys.argv[1])))
