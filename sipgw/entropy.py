"""Unpredictable identifiers without a system call each.

``secrets.token_hex`` and ``secrets.randbits`` read the kernel's CSPRNG (``getrandom``) for
every value: ten reads a call at call setup (Via branches, tags, the Call-ID, stream session
ids, the RTP SSRC, sequence and timestamp, the media port), about 3 % of the daemon's CPU at
500 calls/s. Here the same ``os.urandom`` bytes are read 4 KiB at a time and handed out in
order, each byte once; a forked child starts with an empty pool (it never repeats its
parent's values). For identifiers only: key material (SRTP keys, digest cnonces) still comes
from ``secrets`` directly.
"""
from __future__ import annotations

import os

POOL_BYTES = 4096

_pool = b""
_at = 0


def _reset() -> None:
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_reset)


def token_bytes(n: int) -> bytes:
    """``n`` fresh random bytes, as ``secrets.token_bytes(n)``."""
    global _pool, _at
    end = _at + n
    if end > len(_pool):
        _pool, _at, end = os.urandom(max(POOL_BYTES, n)), 0, n
    value = _pool[_at:end]
    _at = end
    return value


def token_hex(n: int) -> str:
    """``2 * n`` hexadecimal digits from ``n`` fresh random bytes, as ``secrets.token_hex``."""
    return token_bytes(n).hex()


def randbits(k: int) -> int:
    """A random integer of ``k`` bits, as ``secrets.randbits(k)``."""
    value = int.from_bytes(token_bytes((k + 7) // 8), "big")
    return value >> (-k % 8)


def randbelow(n: int) -> int:
    """A uniform random integer in ``[0, n)``, as ``secrets.randbelow(n)`` (by rejection:
    no modulo bias)."""
    if n <= 0:
        raise ValueError("randbelow needs a positive bound")
    k = n.bit_length()
    while True:
        value = randbits(k)
        if value < n:
            return value
