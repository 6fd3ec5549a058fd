"""MSE players (the WebSDK's ``mediaProvider: "MSE"``) as WCS serves them.

A page that is not a secure context (plain http from a LAN address) has no WebRTC, so the
WebSDK plays with its MSE provider: ``playStream`` carries a fixed recvonly SDP (H264 and
mpeg4-generic audio), sipgw answers ``setRemoteSDP`` with an SDP whose m-lines say which kinds
come (port 0: that kind is off in the page's demuxer), and the provider opens a second
websocket to the same URL, sending ``connectMediaTransport`` with the session's authToken (the
one ``getUserData`` gave).  From then on that socket carries the stream as binary tags
(``sipgw/media/mse.py``) and JSON ``ping`` (the provider answers ``pong``).

Per viewer one ``MseJob`` (worker thread: H.264 passed through, audio to AAC) and one
``SendQueue`` bounded in bytes (``mse_send_queue_bytes``): while the socket's transport is full
(Twisted pauses its producer) tags wait there; when they would pass the bound the queue is
emptied and the viewer drops to the next keyframe, asking the stream for one.
"""
from __future__ import annotations

import collections

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from ..media.audio import DECODERS
from ..media.mse import MseJob

MEDIA_TRANSPORT_CLOSED = "Media transport closed"
NO_MEDIA_TRANSPORT = "No media transport connected"


@implementer(IPushProducer)
class SendQueue:
    """Chunks for one media websocket: sent at once while its transport takes them, queued
    while it is paused, at most ``max_bytes`` queued; past that everything queued is dropped
    and so is every chunk up to the next keyframe (``on_drop()`` asks for one); without
    video (``keyframes=False``: no chunk is one) it goes on with the next chunk instead."""

    def __init__(self, send, max_bytes: int, on_drop=None, keyframes: bool = True):
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._send = send
        self.max_bytes = max_bytes
        self.on_drop = on_drop
        self.keyframes = keyframes
        self.items: collections.deque[bytes] = collections.deque()
        self.queued_bytes = 0
        self.paused = False
        self.closed = False
        self.waiting_keyframe = False
        self.dropped = 0  # chunks thrown away
        self.overflows = 0

    def offer(self, chunk: bytes, keyframe: bool) -> None:
        if self.closed:
            return
        if self.waiting_keyframe:
            if not keyframe:
                self.dropped += 1
                return
            self.waiting_keyframe = False
        if not self.paused and not self.items:
            self._send(chunk)
            return
        if self.queued_bytes + len(chunk) > self.max_bytes:
            self.overflows += 1
            self.dropped += len(self.items)
            self.items.clear()
            self.queued_bytes = 0
            if not keyframe and self.keyframes:
                self.dropped += 1
                self.waiting_keyframe = True
                if self.on_drop is not None:
                    self.on_drop()
                return
        self.items.append(chunk)
        self.queued_bytes += len(chunk)

    # -- IPushProducer: the transport says when it is full and when it has room again --
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        while self.items and not self.paused and not self.closed:
            chunk = self.items.popleft()
            self.queued_bytes -= len(chunk)
            self._send(chunk)

    def stopProducing(self) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        self.dropped += len(self.items)
        self.items.clear()
        self.queued_bytes = 0


def plays_audio(stream) -> bool:
    """The stream has audio sipgw can make AAC of (codec still unknown: assume it can)."""
    return bool(stream.has_audio and (not stream.audio_codec or stream.audio_codec in DECODERS))


def answer_sdp(audio: bool, video: bool) -> str:
    """The answer to the provider's fixed offer: a kind with port 0 is not sent."""
    lines = ["v=0", "o=- 0 0 IN IP4 0.0.0.0", "s=sipgw", "c=IN IP4 0.0.0.0", "t=0 0",
             f"m=video {1 if video else 0} RTP/AVP 112", "a=rtpmap:112 H264/90000",
             "a=fmtp:112 packetization-mode=1", "a=sendonly",
             f"m=audio {1 if audio else 0} RTP/AVP 108", "a=rtpmap:108 mpeg4-generic/48000/1",
             "a=sendonly"]
    return "\r\n".join(lines) + "\r\n"


class MseViewer:
    """One MSE player of ``stream``: answered at once; media flow once ``attach(socket)``
    gives it its media websocket.  ``on_state(status, info)``: PLAYING at the first tag sent,
    FAILED when the media socket goes away or never comes, STOPPED when the stream ends."""

    provider = "MSE"

    def __init__(self, reactor, stream, media_session_id: str, on_state, *,
                 queue_bytes: int, transport_timeout: float = 0):
        self.reactor = reactor
        self.stream = stream
        self.media_session_id = media_session_id
        self.on_state = on_state
        self.queue_bytes = queue_bytes
        self.audio = plays_audio(stream)
        self.video = bool(stream.has_video)
        self.socket = None
        self.queue: SendQueue | None = None
        self.job: MseJob | None = None
        self.playing = False
        self.closed = False
        self._timer = None
        if transport_timeout:
            self._timer = reactor.callLater(transport_timeout, self._no_transport)

    def answer(self) -> str:
        return answer_sdp(self.audio, self.video)

    @property
    def attached(self) -> bool:
        return self.socket is not None

    def attach(self, socket) -> None:
        """The provider's media websocket (a SignallingProtocol that said
        connectMediaTransport): start the media job and send to it."""
        if self.closed or self.socket is not None:
            return
        self._cancel_timer()
        self.socket = socket
        self.queue = SendQueue(lambda chunk: socket.sendMessage(chunk, isBinary=True),
                               self.queue_bytes, on_drop=self.stream.request_keyframe,
                               keyframes=self.video)
        socket.registerProducer(self.queue, True)
        self.job = MseJob(self.reactor, self.stream, self._deliver, audio=self.audio,
                          video=self.video)
        self.job.done.addCallback(self._job_done)
        self.job.start()

    def _job_done(self, job) -> None:
        """The media job ended by itself (a bug, or the stream ended: then the signalling's
        stream_ended has already stopped this viewer)."""
        if not self.closed and job.state == "FAILED":
            self.on_state("FAILED", job.info)

    def _deliver(self, chunk: bytes, keyframe: bool) -> None:
        if self.closed or self.queue is None:
            return
        self.queue.offer(chunk, keyframe)
        if not self.playing:
            self.playing = True
            self.on_state("PLAYING", "")

    def _no_transport(self) -> None:
        self._timer = None
        if not self.closed and self.socket is None:
            self.on_state("FAILED", NO_MEDIA_TRANSPORT)

    def socket_closed(self) -> None:
        """The media websocket closed under a running player."""
        if not self.closed:
            self.socket = None
            self.on_state("FAILED", MEDIA_TRANSPORT_CLOSED)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    async def close(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel_timer()
        if self.job is not None:
            self.job.stop(discard=True)
        if self.queue is not None:
            self.queue.close()
        socket, self.socket = self.socket, None
        if socket is not None:
            socket.media_viewer = None
            socket.sendClose(1000)
