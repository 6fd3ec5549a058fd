"""SDES (RFC 4568): SRTP master keys carried in SDP ``a=crypto`` lines.

Pure: no I/O. Keys come from ``secrets``; a ``Crypto`` never shows its key in ``repr``, and
``mask`` hides every ``inline:`` key of an SDP before it is shown or logged.

Modes (``sip_srtp`` / ``sipSrtp``): ``off`` offers RTP/AVP without keys; ``optional``
offers RTP/AVP with ``a=crypto`` (best effort: SRTP when the answer carries a matching
crypto line, plain RTP otherwise); ``mandatory`` offers RTP/SAVP and refuses an answer
without a matching crypto line.
"""
from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field

MODES = ("off", "optional", "mandatory")
# RFC 4568 §6.2 suites offered, in our order of preference.
SUITES = ("AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32")
KEY_LENGTH = 30  # 128-bit master key + 112-bit master salt (§6.2.1)
SECURE_PROTOS = {"RTP/SAVP", "RTP/SAVPF"}
_INLINE = re.compile(r"(inline:)[^|\s;]+")


class CryptoError(ValueError):
    """An a=crypto line that cannot be used."""


@dataclass(frozen=True)
class Crypto:
    """One ``a=crypto`` value: tag, suite and the master key + salt (one inline key, no MKI)."""

    tag: int
    suite: str
    key: bytes = field(repr=False)

    @classmethod
    def new(cls, tag: int, suite: str) -> "Crypto":
        return cls(tag, suite, secrets.token_bytes(KEY_LENGTH))

    @classmethod
    def parse(cls, value: str) -> "Crypto":
        """``tag suite inline:KEY[|lifetime][|MKI:length] [session params]`` (§9.1)."""
        parts = value.split()
        if len(parts) < 3 or not parts[0].isdigit() or not parts[2].startswith("inline:"):
            raise CryptoError(f"bad a=crypto {mask(value)!r}")
        key_text, *options = parts[2][len("inline:"):].split(";")[0].split("|")
        if any(":" in option for option in options):
            raise CryptoError("a=crypto with an MKI is not supported")
        try:
            key = base64.b64decode(key_text + "=" * (-len(key_text) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("a=crypto key is not base64") from None
        if len(key) != KEY_LENGTH:
            raise CryptoError(f"a=crypto key is {len(key)} bytes, not {KEY_LENGTH}")
        return cls(int(parts[0]), parts[1], key)

    def __str__(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


def mask(text):
    """``text`` (str or bytes) with every inline key replaced by ``...``."""
    if isinstance(text, bytes):
        return _INLINE.sub(r"\1...", text.decode("utf-8", "replace")).encode()
    return _INLINE.sub(r"\1...", text)


def offer_keys() -> list[Crypto]:
    """Fresh keys, one per suite (tags 1, 2 ...), for one m= line of an offer."""
    return [Crypto.new(tag, suite) for tag, suite in enumerate(SUITES, 1)]


def _usable(m) -> list[Crypto]:
    """The a=crypto values of media section ``m`` we can use: a suite of ours, a key we read."""
    usable = []
    for name, value in m.attributes:
        if name != "crypto" or value is None:
            continue
        try:
            crypto = Crypto.parse(value)
        except CryptoError:
            continue
        if crypto.suite in SUITES:
            usable.append(crypto)
    return usable


def answer_keys(mode: str, offer, current: dict[str, tuple[Crypto, Crypto]]
                ) -> dict[str, tuple[Crypto, Crypto]]:
    """(our crypto, the peer's) per stream of a peer's in-dialog ``offer`` (a
    SessionDescription), answering its first a=crypto of a suite we support (RFC 4568 §7.1.2,
    §7.1.4): the keys in use (``current``) are kept while the peer keeps its own (same tag,
    suite and key); a new key from the peer re-keys both directions with a fresh key of
    ours. No usable a=crypto: plain RTP in ``optional`` mode, unless the stream says
    RTP/SAVP, is in ``mandatory`` mode, or is SRTP already (no downgrade): CryptoError."""
    agreed: dict[str, tuple[Crypto, Crypto]] = {}
    if mode == "off":
        return agreed
    for m in offer.media:
        if m.port == 0 or m.kind in agreed:
            continue
        usable = _usable(m)
        if not usable:
            if mode == "mandatory" or m.proto in SECURE_PROTOS or m.kind in current:
                raise CryptoError(f"SRTP required but the {m.kind} offer has no usable a=crypto "
                                  f"({m.proto})")
            continue
        theirs = usable[0]
        ours, before = current.get(m.kind, (None, None))
        if before is None or (before.tag, before.suite, before.key) != (
                theirs.tag, theirs.suite, theirs.key):
            ours = Crypto.new(theirs.tag, theirs.suite)  # §7.1.4: re-keyed, or new
        agreed[m.kind] = (ours, theirs)
    return agreed


def agree(mode: str, offered: dict[str, list[Crypto]], answer) -> dict[str, tuple[Crypto, Crypto]]:
    """(our crypto, the peer's) per accepted stream of ``answer`` (a SessionDescription) whose
    a=crypto has a tag and suite we offered (§7.1.3). A stream without one is plain RTP in
    ``optional`` mode; in ``mandatory`` mode, or when it says RTP/SAVP, it is an error."""
    agreed: dict[str, tuple[Crypto, Crypto]] = {}
    if mode == "off":
        return agreed
    for m in answer.media:
        if m.port == 0 or m.kind not in offered or m.kind in agreed:
            continue
        ours = {c.tag: c for c in offered[m.kind]}
        pair = next(((ours[theirs.tag], theirs) for theirs in _usable(m)
                     if theirs.tag in ours and ours[theirs.tag].suite == theirs.suite), None)
        if pair is not None:
            agreed[m.kind] = pair
        elif mode == "mandatory" or m.proto in SECURE_PROTOS:
            raise CryptoError(f"SRTP required but the {m.kind} answer has no usable a=crypto "
                              f"({m.proto})")
    return agreed
