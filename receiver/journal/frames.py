"""The on-disk record format: ``length (u32 LE) | crc32 (u32 LE) | payload``.

A torn tail (a write cut short by a crash) or a damaged record fails the length or CRC check,
and reading stops there: such bytes were never acknowledged. Segment files are zero-filled
ahead of their records (see :mod:`.appender`): an all-zero header is where the records end.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

HEADER = struct.Struct("<II")
MAX_PAYLOAD = 1 << 20


def encode(payload: bytes) -> bytes:
    if not payload:  # an all-zero header would pass the CRC check (crc32(b"") == 0): see decode()
        raise ValueError("empty journal record")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"journal record of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _spans(data: bytes) -> Iterator[tuple[int, int]]:
    """``(payload start, payload end)`` of each whole, intact record at the start of ``data``."""
    offset, size = 0, len(data)
    view = memoryview(data)
    while offset + HEADER.size <= size:
        length, crc = HEADER.unpack_from(data, offset)
        start, end = offset + HEADER.size, offset + HEADER.size + length
        if length == 0 or length > MAX_PAYLOAD or end > size:  # zeros (the file's unused tail) end the records
            return
        if zlib.crc32(view[start:end]) != crc:
            return
        yield start, end
        offset = end


def decode(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Yield ``(payload, offset just past it)`` for each whole, intact record at the start of ``data``."""
    for start, end in _spans(data):
        yield data[start:end], end


def scan(data: bytes) -> tuple[int, int]:
    """How far the whole, intact records at the start of ``data`` go; and, when the bytes there
    announce a record cut off by the end of ``data``, that record's whole size (else 0)."""
    end = 0
    for _, end in _spans(data):
        pass
    if end + HEADER.size > len(data):
        return end, HEADER.size if end < len(data) else 0
    length, _ = HEADER.unpack_from(data, end)
    cut = 0 < length <= MAX_PAYLOAD and end + HEADER.size + length > len(data)
    return end, HEADER.size + length if cut else 0


def is_zero_header(data: bytes) -> bool:
    """True when ``data`` (read where the records end) is the file's end or its zero-filled tail."""
    return not data[: HEADER.size].strip(b"\x00")
