"""Reads durable records back, in order, for the writer: adopted journals first, then our own.

The writer takes a batch with :meth:`JournalReader.read`, stores it, then calls
:meth:`JournalReader.commit`; only then do drained segment files (and adopted folders) go away.
A crash between the two replays the batch, which the idempotent writer turns into no-ops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from . import frames
from .appender import Journal
from .segments import Segment, adopt_orphans

log = logging.getLogger(__name__)

_READ_WINDOW = 2 * frames.MAX_PAYLOAD


@dataclass
class Batch:
    payloads: list[bytes]
    segment: Segment | None = None
    end: int = 0


class JournalReader:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.adopted: list[Segment] = []  # segments of dead workers' folders, oldest first

    def adopt(self) -> int:
        """Take over the journals of dead workers; return how many folders were adopted."""
        own = {self.journal.dir.path} if self.journal.dir else set()
        own |= {segment.owner.path for segment in self.adopted if segment.owner}
        folders = adopt_orphans(self.journal.root, exclude=own)
        for folder in folders:
            paths = folder.segment_paths()
            if not paths:
                folder.remove()
                continue
            for path in paths:
                self.adopted.append(Segment(path, durable=path.stat().st_size, closed=True, owner=folder))
        return len(folders)

    @property
    def adopted_bytes(self) -> int:
        return sum(segment.durable - segment.drained for segment in self.adopted)

    def _head(self) -> Segment | None:
        if self.adopted:
            return self.adopted[0]
        if self.journal.segments:
            return self.journal.segments[0]
        return None

    def read(self, max_records: int) -> Batch:
        """The next run of whole records (possibly none). Nothing advances until :meth:`commit`."""
        while True:
            segment = self._head()
            if segment is None:
                return Batch([])
            start, limit = segment.drained, segment.durable
            if start < limit:
                with open(segment.path, "rb") as file:
                    file.seek(start)
                    data = file.read(min(limit - start, _READ_WINDOW))
                payloads: list[bytes] = []
                end = start
                for payload, stop in frames.decode(data):
                    payloads.append(payload)
                    end = start + stop
                    if len(payloads) >= max_records:
                        break
                if payloads:
                    return Batch(payloads, segment, end)
                if not segment.closed:
                    return Batch([])
                log.warning(
                    "journal segment %s: skipping %d damaged or torn bytes", segment.path, limit - start
                )
            elif not segment.closed:
                return Batch([])
            self._finish(segment)

    def commit(self, batch: Batch) -> None:
        segment = batch.segment
        if segment is None:
            return
        if self._is_own(segment):
            self.journal.drained_bytes += batch.end - segment.drained
        segment.drained = batch.end
        if segment.closed and segment.drained >= segment.durable:
            self._finish(segment)

    def _is_own(self, segment: Segment) -> bool:
        return segment.owner is not None and segment.owner is self.journal.dir

    def _finish(self, segment: Segment) -> None:
        """Everything in ``segment`` is in PostgreSQL (or unreadable): delete it."""
        if self._is_own(segment):
            self.journal.drained_bytes += segment.durable - segment.drained
            self.journal.segments.remove(segment)
        else:
            self.adopted.remove(segment)
        segment.drained = segment.durable
        segment.path.unlink(missing_ok=True)
        owner = segment.owner
        if (
            not self._is_own(segment)
            and owner is not None
            and not any(s.owner is owner for s in self.adopted)
        ):
            owner.remove()

    def drained(self) -> bool:
        """True when nothing durable is left to read."""
        return all(s.drained >= s.durable for s in [*self.adopted, *self.journal.segments])
