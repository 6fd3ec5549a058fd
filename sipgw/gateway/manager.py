"""The calls of this daemon: the manager interface the REST and websocket layers call
(``startup``, ``find``, ``terminate``, ``hold``, ``transfer``, ``send_dtmf``), each call's
stream in the registry, retention of ended calls, and the ordered shutdown.

SIP is the user agent's (``sipgw/sip/ua.py``): a ``CallManager`` holds one and makes an
INVITE session there for every call it places.
"""
from __future__ import annotations

import collections
import time

from twisted.internet import defer
from twisted.logger import Logger

from ..calls import SHUTDOWN, CallRequest, CallStatus, Conflict, NotFound, Unavailable
from ..rtp.ports import PortPool
from ..sip.ua import UserAgent
from ..streams.registry import StreamExists, StreamRegistry
from ..streams.stream import Stream, StreamStatus
from .call import Call, parse_target

log = Logger(namespace="sipgw.gateway.manager")


class CallManager:
    """Every call of this daemon; ``sip`` is its user agent (made from ``config`` unless
    given)."""

    def __init__(self, reactor, config, ports=None, streams: StreamRegistry | None = None,
                 dns=None, sip: UserAgent | None = None):
        self.reactor = reactor
        self.config = config
        self.sip = sip if sip is not None else UserAgent(reactor, config, dns=dns)
        self.sip.on_registration_left = self._check_drained
        self.ports = ports or PortPool(config.media_port_from, config.media_port_to,
                                       config.sip_bind_address)
        self.calls: dict[str, Call] = {}  # by WCS callId
        self.call_observers: list = []  # callables(call) on every status change
        self.transfer_observers: list = []  # callables(call, sip_status, reason)
        self.streams = streams if streams is not None else StreamRegistry()
        self._ended: collections.deque[Call] = collections.deque()  # in order of ending
        self._prune_timer = None
        self._session_version = int(time.time())
        self.accepting = True
        self._stopping: set[Call] = set()  # calls ended by stop(), not ended yet
        self._drained: defer.Deferred | None = None

    def next_version(self) -> int:
        """The next SDP o= session version (and id of a new offer), rising for the daemon."""
        self._session_version += 1
        return self._session_version

    def start(self) -> None:
        self.sip.start()

    def stop(self, timeout: float | None = None) -> defer.Deferred:
        """Ordered shutdown within ``timeout`` (default ``shutdown_timeout``): refuse new
        calls; CANCEL calls not answered yet (§9.1) and BYE established ones (§15.1) while
        the sockets stay open, so retransmissions go on; each account is unregistered
        (Expires: 0, §10.2.2) when its last call ends.  Once every call and REGISTER is
        answered, or at the deadline, calls still up are ended, every transaction is
        dropped and the sockets close.  Fires with counts for the summary line."""
        self.accepting = False
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        self.sip.unregistered = 0  # counted from here: what this stop removed
        live = [c for c in self.calls.values() if not c.status.ended]
        self._stopping = set(live)
        self._drained = defer.Deferred()
        self._drained.addTimeout(timeout, self.reactor, onTimeoutCancel=lambda result, t: None)
        for call in live:
            call.terminate(SHUTDOWN)
        self._check_drained()
        return self._drained.addCallback(lambda _: self._close(live))

    def _check_drained(self) -> None:
        d = self._drained
        if d is not None and not d.called and not self._stopping and not self.sip.leaving:
            d.callback(None)

    def _close(self, live: list[Call]):
        answered = sum(1 for call in live if call.status.ended)
        for call in live:  # the deadline passed: end what is left, unanswered
            call.set_status(CallStatus.FINISH, SHUTDOWN)
        summary = {"calls": len(live), "answered": answered, "unregistered": self.sip.unregistered,
                   "not_unregistered": len(self.sip.leaving)}
        if self._prune_timer is not None and self._prune_timer.active():
            self._prune_timer.cancel()
        return self.sip.close().addCallback(lambda _: summary)

    # -- the manager interface (REST, websocket) ----------------------------------------
    def startup(self, request: CallRequest) -> None:
        if not self.accepting:
            raise Unavailable("The server is shutting down")
        existing = self.calls.get(request.call_id)
        if existing is not None and not existing.status.ended:
            raise Conflict(f"callId {request.call_id} is already in use")
        if self.streams.get(request.stream_name) is not None:
            raise Conflict("Stream name is already in use")
        if existing is not None:
            self._forget(existing)
        call = Call(self, request)
        self.calls[request.call_id] = call
        call.stream = Stream(request.stream_name, has_audio=request.has_audio,
                             has_video=request.has_video, call_id=request.call_id,
                             on_terminate=call.terminate,
                             gop_max_bytes=self.config.stream_gop_cache_max_bytes,
                             sink_max_bytes=self.config.sink_queue_max_bytes)
        try:
            self.streams.add(call.stream)
        except StreamExists as exc:
            raise Conflict(str(exc)) from None
        call.set_status(CallStatus.PENDING)
        call.session.start()

    def _call(self, call_id: str) -> Call:
        call = self.calls.get(call_id)
        if call is None:
            raise NotFound("Call not found")
        return call

    def find(self, call_id: str | None = None, status: str | None = None) -> list[dict]:
        """The calls asked for, at most ``call_find_limit`` of them (the most recently
        started): building the answer runs on the reactor, so one request stays short."""
        if call_id is not None:
            calls = [self.calls[call_id]] if call_id in self.calls else []
        else:
            calls = list(self.calls.values())
        if status is not None:
            calls = [c for c in calls if c.status.value == status.upper()]
        return [c.to_json() for c in calls[-self.config.call_find_limit:]]

    def terminate(self, call_id: str) -> None:
        self._call(call_id).terminate()

    def hold(self, call_id: str, held: bool = True, for_transfer: bool = False) -> None:
        """``/call/hold`` (``held``; ``for_transfer``: holdForTransfer) and ``/call/unhold``."""
        self._call(call_id).hold(held, for_transfer)

    def transfer(self, call_id: str, target: str) -> None:
        """``/call/transfer``: ``target`` a SIP URI, user@host, or a user at the call's domain."""
        call = self._call(call_id)
        call.transfer(parse_target(target, call.request.sip_domain))

    def send_dtmf(self, call_id: str, dtmf: str, kind: str) -> None:
        self._call(call_id).send_dtmf(dtmf, kind)

    def active_calls(self) -> list[CallRequest]:
        return [c.request for c in self.calls.values() if not c.status.ended]

    # -- ending --------------------------------------------------------------------
    def call_ended(self, call: Call) -> None:
        """Release everything the call holds; each step runs whatever the previous ones raised
        (a half-done teardown would keep the call, its stream name and its ports for ever)."""
        call.ended_at = self.reactor.seconds()
        steps = [call.close, lambda: self._end_media(call),
                 lambda: self._end_stream(call), lambda: self._retain(call)]
        for step in steps:
            try:
                step()
            except Exception:
                log.failure("call {call_id}: teardown step failed", call_id=call.request.call_id)

    # An ended call is kept call_retention seconds for /call/find with only what that shows:
    # its media session and stream are let go once closed (at hundreds of calls a second,
    # every object a retained call holds is walked again by the cyclic GC's collections).
    @staticmethod
    def _end_media(call: Call) -> None:
        session, call.media_session = call.media_session, None
        if session is not None:
            session.close()

    def _end_stream(self, call: Call) -> None:
        stream, call.stream = call.stream, None
        if stream is not None:
            try:
                failed = call.status != CallStatus.FINISH
                stream.end(StreamStatus.FAILED if failed else StreamStatus.UNPUBLISHED,
                           call.reason)
            finally:
                self.streams.remove(stream)

    def _retain(self, call: Call) -> None:
        self._ended.append(call)
        self._prune()
        if call in self._stopping:
            self._stopping.discard(call)
            self._check_drained()

    def _prune(self) -> None:
        """Forget ended calls once ``call_retention`` seconds old, and the oldest beyond
        ``call_retention_max``; one timer for the oldest instead of one per call."""
        now, ended, config = self.reactor.seconds(), self._ended, self.config
        while ended and (len(ended) > config.call_retention_max
                         or ended[0].ended_at + config.call_retention <= now):
            self._forget(ended.popleft())
        if ended and (self._prune_timer is None or not self._prune_timer.active()):
            self._prune_timer = self.reactor.callLater(
                ended[0].ended_at + config.call_retention - now, self._prune)

    def _forget(self, call: Call) -> None:
        if self.calls.get(call.request.call_id) is call:
            del self.calls[call.request.call_id]
        self.sip.forget(call.session)  # (a dialog the call left forgot itself when it ended)
