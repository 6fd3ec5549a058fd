"""sipgw/entropy.py: identifiers from a pooled os.urandom, each byte handed out once."""
import collections
import os

import pytest

from sipgw import entropy


def test_tokens_have_the_asked_length_and_never_repeat_across_refills():
    seen = set()
    for _ in range(3 * entropy.POOL_BYTES // 8):  # three refills of the pool
        token = entropy.token_hex(8)
        assert len(token) == 16 and int(token, 16) >= 0
        seen.add(token)
    assert len(seen) == 3 * entropy.POOL_BYTES // 8


def test_bytes_are_handed_out_once(monkeypatch):
    monkeypatch.setattr(entropy, "_pool", b"")
    monkeypatch.setattr(os, "urandom", lambda n: bytes(range(256)) * (n // 256) + bytes(n % 256))
    assert entropy.token_bytes(3) == b"\x00\x01\x02"
    assert entropy.token_bytes(2) == b"\x03\x04"
    big = entropy.token_bytes(entropy.POOL_BYTES + 5)  # more than a pool: one read of its own
    assert len(big) == entropy.POOL_BYTES + 5 and big[:2] == b"\x00\x01"


@pytest.mark.parametrize("bits", [1, 7, 16, 31, 32])
def test_randbits_stays_in_range_and_uses_every_bit(bits):
    values = [entropy.randbits(bits) for _ in range(400)]
    assert all(0 <= v < 2 ** bits for v in values)
    top = 1 << (bits - 1)
    assert any(v & top for v in values) and any(not v & top for v in values)


def test_randbelow_is_in_range_and_unbiased():
    counts = collections.Counter(entropy.randbelow(3) for _ in range(30000))
    assert set(counts) == {0, 1, 2}
    assert all(9000 < c < 11000 for c in counts.values())  # 10,000 each, within ~10 sigma
    assert entropy.randbelow(1) == 0
    with pytest.raises(ValueError):
        entropy.randbelow(0)


def test_a_forked_child_does_not_repeat_its_parents_values():
    entropy.token_bytes(1)  # the pool is filled
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next token, to the parent
        try:
            os.write(write, entropy.token_bytes(16))
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 16)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != entropy.token_bytes(16)
