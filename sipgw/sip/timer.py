"""Session timers (RFC 4028) of one dialog, sipgw being the UAC of its INVITE.

``SessionTimer`` keeps the negotiated interval and who refreshes, and runs the two timers on
the clock passed in: ``refresh()`` at half the interval when sipgw refreshes (§10), and
``expire()`` (the call sends BYE) when no refresh came in time (§10: the interval minus
the lesser of 32 s and a third of it).
"""
from __future__ import annotations

OPTION_TAG = "timer"  # RFC 4028 §3
MIN_SE = 90  # §4: the smallest Min-SE allowed, and the default

SHORTEST_INTERVAL = 4  # seconds: at most one refresh every 2 s, whatever a 2xx says


def _delta(value: str | None) -> int | None:
    """The delta-seconds of a Session-Expires or Min-SE value; None if absent or bad."""
    if not value:
        return None
    text = value.split(";")[0].strip()
    return int(text) if text.isdigit() and 0 < len(text) <= 10 else None


def _refresher(value: str) -> str | None:
    for param in value.split(";")[1:]:
        name, _, val = param.partition("=")
        if name.strip().lower() == "refresher" and val.strip().lower() in ("uac", "uas"):
            return val.strip().lower()
    return None


class SessionTimer:
    def __init__(self, clock, *, expires: int, min_se: int, refresh, expire):
        self.clock = clock
        self.expires = max(expires, min_se)
        self.min_se = min_se
        self.interval: int | None = None  # negotiated; None: no session timer running
        self.we_refresh = False
        self._refresh, self._expire = refresh, expire
        self._calls: list = []

    def request_headers(self) -> list[tuple[str, str]]:
        """For our INVITE and refreshes (§7.1, §7.4): the interval asked for, and Min-SE."""
        value = str(self.interval or self.expires)
        if self.interval is not None:
            value += ";refresher=" + ("uac" if self.we_refresh else "uas")
        return [("Session-Expires", value), ("Min-SE", str(self.min_se))]

    def too_small(self, response) -> bool:
        """A 422 (§7.4): retry with its Min-SE as our interval, if that is larger."""
        floor = _delta(response.get("Min-SE"))
        if floor is None or floor <= (self.interval or self.expires):
            return False
        self.expires = self.min_se = floor
        if self.interval is not None:
            self.interval = floor
        return True

    def answered(self, response) -> None:
        """A 2xx to our INVITE or refresh (§7.2): the interval and refresher it names; no
        Session-Expires in it means no session timer. An interval below SHORTEST_INTERVAL
        is read as that: a peer saying 1 (or 0) must not make sipgw refresh twice a second,
        or hang up at once. (Min-SE itself is not enforced on the answer: short intervals
        that peers do answer, below the §9 minimum, are followed.)"""
        value = response.get("Session-Expires")
        interval = _delta(value)
        if interval is None:
            self.stop()
            self.interval = None
            return
        self._start(max(interval, SHORTEST_INTERVAL), (_refresher(value) or "uac") == "uac")

    def refreshed_by_peer(self, request) -> list[tuple[str, str]]:
        """A re-INVITE or UPDATE from the peer (§9): the headers of our 2xx, timers reset.
        Without a refresher in the request we pick the peer if it supports timers; without
        Session-Expires the refresher stays who it was (the peer only if it supports them)."""
        value = request.get("Session-Expires")
        interval = _delta(value) or self.interval
        if interval is None:
            return []
        interval = max(interval, self.min_se)
        peer_can = request.has_option_tag("Supported", OPTION_TAG)
        if value:
            refresher = _refresher(value) or ("uac" if peer_can else "uas")
        else:  # "uac" names the peer here, the UAC of its request
            refresher = "uac" if peer_can and not self.we_refresh else "uas"
        self._start(interval, refresher == "uas")  # "uac" there is the peer
        headers = [("Session-Expires", f"{interval};refresher={refresher}")]
        return headers + ([("Require", OPTION_TAG)] if refresher == "uac" else [])

    def _start(self, interval: int, we_refresh: bool) -> None:
        self.stop()
        self.interval, self.we_refresh = interval, we_refresh
        if we_refresh:
            self._calls.append(self.clock.callLater(interval / 2, self._refresh))
        self._calls.append(self.clock.callLater(interval - min(32, interval / 3), self._expire))

    def stop(self) -> None:
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []
