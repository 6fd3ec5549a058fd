"""Which call gets which injected media (``/call/inject_stream``, ``/call/inject_sound``).

The gateway side of ``sipgw/media/inject.py``: finds the call (its RTP session and the
codecs its answer agreed on, as the REST call handlers reach it: the user agent's calls by
callId) and the stream, checks the limits (``max_injections``), and keeps one injection per
call: a new one replaces the one running (STOPPED, "Replaced"), the RTP going on with the
same SSRC, sequence numbers and timeline.  The call's end stops its injection; the last
one of each call stays visible (``/call/find`` ``injection``) while the call is.
Reactor thread only.
"""
from __future__ import annotations

from twisted.logger import Logger

from .media.inject import Injection, injectable_audio, injectable_video
from .media.push import PushError
from .media.worker import wait_done
from .quotas import check

log = Logger(namespace="sipgw.injections")

INJECTABLE = ("ESTABLISHED", "HOLD")


class InjectError(PushError):
    """An injection that cannot start; ``code`` is the REST status (400, 404, 409), as a
    push's refusal carries it."""


class InjectionManager:
    """``calls``: the user agent's calls by callId (each with ``status``, ``media_session``);
    ``streams``: the stream registry."""

    def __init__(self, reactor, calls: dict, streams, *, max_injections: int = 0,
                 queue_frames: int = 100, buffer_frames: int = 10):
        self.reactor = reactor
        self.calls = calls
        self.streams = streams
        self.max_injections = max_injections
        self.queue_frames = queue_frames
        self.buffer_frames = buffer_frames
        self.injections: dict[str, Injection] = {}  # by callId: the running or the last one
        self.observers: list = []  # callables(injection) on every state change (REST hooks)

    # -- starting and stopping -------------------------------------------------------
    def inject_stream(self, call_id: str, stream_name: str) -> Injection:
        session = self._session(call_id)
        stream = self.streams.get(name=stream_name)
        if stream is None or stream.ended:
            raise InjectError(404, "Stream not found", "streamName")
        if stream.call_id == call_id:
            raise InjectError(400, "streamName is the call's own stream", "streamName")
        audio = stream.has_audio and injectable_audio(session.endpoints.get("audio"))
        video = stream.has_video and injectable_video(session.endpoints.get("video"))
        if not (audio or video):
            raise InjectError(409, "The call and the stream have no injectable media in "
                              "common (audio as PCMU, PCMA or opus, video as H264)", "streamName")
        return self._start(call_id, session, source=stream)

    def inject_sound(self, call_id: str, path: str, name: str, loop: bool) -> Injection:
        session = self._session(call_id)
        if not injectable_audio(session.endpoints.get("audio")):
            raise InjectError(409, "The call has no audio in PCMU, PCMA or opus", "callId")
        return self._start(call_id, session, sound=(path, name, loop))

    def terminate(self, call_id: str) -> Injection:
        """Stop the call's injection; 404 when none runs."""
        if call_id not in self.calls:
            raise InjectError(404, "Call not found", "callId")
        injection = self.injections.get(call_id)
        if injection is None or not injection.active:
            raise InjectError(404, "No injection into this call", "callId")
        injection.stop("Stopped by rest /terminate")
        return injection

    def _session(self, call_id: str):
        call = self.calls.get(call_id)
        if call is None:
            raise InjectError(404, "Call not found", "callId")
        if call.status.value not in INJECTABLE or call.media_session is None:
            raise InjectError(409, f"The call is {call.status.value}, not established",
                              "callId")
        return call.media_session

    def _start(self, call_id: str, session, **what) -> Injection:
        self._forget()
        old = self.injections.get(call_id)
        running = old is not None and not old.finished
        check(len(self.running()) - running, self.max_injections, "injections",
              "max_injections", "callId")
        if running:
            old.stop("Replaced by a new injection")
        injection = Injection(self.reactor, session, call_id=call_id,
                              queue_frames=self.queue_frames, buffer_frames=self.buffer_frames,
                              **what)
        injection.observers = self.observers
        self.injections[call_id] = injection
        log.info("injection of {source} into call {call} started", source=injection.source_name,
                 call=call_id)
        return injection.start()

    def _forget(self) -> None:
        """Drop the injections of calls the user agent no longer knows (past call_retention)."""
        for call_id in [c for c in self.injections if c not in self.calls]:
            del self.injections[call_id]

    # -- what is shown, what ends it ----------------------------------------------------
    def running(self) -> list[Injection]:
        return [i for i in self.injections.values() if not i.finished]

    def status(self, call_id: str) -> dict | None:
        injection = self.injections.get(call_id)
        return injection.to_json() if injection is not None else None

    def call_changed(self, call) -> None:
        """The user agent's call observer: a call that ended stops its injection (and those
        of calls forgotten since are dropped)."""
        self._forget()
        if call.status.ended:
            injection = self.injections.get(call.request.call_id)
            if injection is not None and not injection.finished:
                injection.stop("Stopped: the call ended")

    def close(self, timeout: float = 10.0):
        """Stop every injection (daemon shutdown); fires once their workers are done."""
        jobs = self.running()
        for injection in jobs:
            injection.stop("Stopped: server shutdown")
        return wait_done(self.reactor, jobs, timeout)
