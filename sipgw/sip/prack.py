"""Reliable provisional responses, UAC side (RFC 3262): which 1xx to PRACK, and its RAck.

Pure: the INVITE client asks ``ReliableProvisionals.rack(response)`` for each provisional
response of one INVITE and sends the PRACK itself, in the early dialog of the response.
"""
from __future__ import annotations

OPTION_TAG = "100rel"  # RFC 3262 §3
# Early dialogs (forks, To tags) whose reliable 1xx are PRACKed per INVITE: each To tag a peer
# sends would otherwise be kept (and PRACKed in its own early dialog) without bound.
MAX_EARLY_DIALOGS = 16


class ReliableProvisionals:
    """The RSeq of the last PRACKed provisional response, per early dialog (To tag), for
    at most ``MAX_EARLY_DIALOGS`` of them."""

    def __init__(self):
        self._rseq: dict[str, int] = {}

    def rack(self, response) -> tuple[bool, str | None]:
        """(process the response?, the RAck of its PRACK or None when it needs none).

        §4: the first reliable 1xx of a dialog sets the sequence; a later one is PRACKed only
        when its RSeq is one higher: a retransmission (or one out of order) is neither
        PRACKed nor processed further."""
        if response.status == 100 or not response.has_option_tag("Require", OPTION_TAG):
            return True, None
        try:
            rseq = int((response.get("RSeq") or "").strip())
        except ValueError:
            return True, None  # §7.1 wants RSeq; without one it is read as unreliable
        if not 1 <= rseq <= 2**31 - 1:
            return True, None
        tag = response.to.tag or ""
        last = self._rseq.get(tag)
        if last is None and len(self._rseq) >= MAX_EARLY_DIALOGS:
            return True, None  # one fork too many: processed, but not PRACKed
        if last is not None and rseq != last + 1:
            return False, None
        self._rseq[tag] = rseq
        return True, f"{rseq} {response.cseq.seq} {response.cseq.method}"  # §7.2
