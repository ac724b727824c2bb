"""The on-disk record format: ``length (u32 LE) | crc32 (u32 LE) | payload``.

A torn tail (a write cut short by a crash) or a damaged record fails the length or CRC check,
and reading stops there: such bytes were never acknowledged.
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


def decode(data: bytes) -> Iterator[tuple[bytes, int]]:
    """Yield ``(payload, offset just past it)`` for each whole, intact record at the start of ``data``."""
    offset, size = 0, len(data)
    view = memoryview(data)
    while offset + HEADER.size <= size:
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if length == 0 or length > MAX_PAYLOAD or end > size:  # zeros (e.g. a zero-filled tail) are damage
            return
        payload = bytes(view[offset + HEADER.size : end])
        if zlib.crc32(payload) != crc:
            return
        yield payload, end
        offset = end
