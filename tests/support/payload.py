"""Deterministic byte streams for byte-exact transfer checks.

Chunk i of a stream is an 8-byte big-endian index followed by a fixed
pseudo-random block derived from the seed, so a dropped, duplicated or
reordered chunk changes the SHA-256, and the stream never has to be held in
memory whole.
"""
import hashlib
import random
from typing import Iterator

CHUNK_BYTES = 256 * 1024


def _base_block(seed: int, chunk_bytes: int) -> bytes:
    return random.Random(seed).randbytes(chunk_bytes)


def stream_chunks(total: int, seed: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yields chunks adding up to exactly `total` bytes."""
    base = _base_block(seed, chunk_bytes)
    sent = 0
    index = 0
    while sent < total:
        n = min(chunk_bytes, total - sent)
        chunk = (index.to_bytes(8, "big") + base[8:])[:n]
        yield chunk
        sent += n
        index += 1


def stream_sha256(total: int, seed: int, chunk_bytes: int = CHUNK_BYTES) -> str:
    h = hashlib.sha256()
    for chunk in stream_chunks(total, seed, chunk_bytes):
        h.update(chunk)
    return h.hexdigest()


def small_payload(seed: int, size: int = 64) -> bytes:
    """A short payload unique to `seed` (for echo checks on many connections)."""
    return random.Random(seed).randbytes(size)
