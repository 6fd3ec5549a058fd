"""Republishing a stream to an RTMP server (WCS ``/push/*``): FLV tags over RTMP.

H.264 passes through (the AVC sequence header is the avcC built from the in-band
SPS/PPS, sent again whenever they change); audio is transcoded to AAC.  Each
connection starts at a keyframe (one is requested upstream).  When the server drops
the connection or refuses it, the push goes RECONNECTING and retries with an
exponential backoff up to ``reconnect_max`` seconds; it ends when its stream ends
(UNPUBLISHED) or on ``/push/terminate`` (STOPPED).

The pushed audio is the call's, silence while muted (``/push/mute``, ``options.action``
``mute``), or a sound file looped in its place (``/push/sound_on``, ``sound_on``): the
reactor sets ``audio_action``, the worker reads it for each AAC frame and decodes the file.
"""
from __future__ import annotations

import secrets

import av
import numpy
from twisted.logger import Logger

from . import flv
from .audio import SoundLoop
from .avc import length_prefixed
from .interleave import Interleaver
from .pipeline import Pipeline
from .rtmp import RtmpError, RtmpPublisher, RtmpTarget, redact
from .worker import MediaJob, wait_done

log = Logger(namespace="sipgw.media.push")

PENDING = "PENDING"
PUBLISHING = "PUBLISHING"
RECONNECTING = "RECONNECTING"
STOPPED = "STOPPED"
UNPUBLISHED = "UNPUBLISHED"
FAILED = "FAILED"
ENDED = (STOPPED, UNPUBLISHED, FAILED)


class RtmpPush(MediaJob):
    kind = "push"

    def __init__(self, reactor, stream, where: RtmpTarget, *, rtmp_url: str,
                 published_name: str, options: dict | None = None, reconnect_min: float = 1.0,
                 reconnect_max: float = 30.0, timeout: float = 10.0,
                 queue_frames: int | None = None, egress=None, wait_for_media: bool = False):
        kwargs = {} if queue_frames is None else {"queue_frames": queue_frames}
        self.egress = egress
        self.wait_for_media = wait_for_media  # connect once the stream's first frame is in
        super().__init__(reactor, stream, **kwargs)
        self.media_session_id = secrets.token_hex(16)
        self.target = where
        self.rtmp_url = rtmp_url  # as the client gave it: only for matching, never shown
        self.shown_url = redact(rtmp_url)
        self.published_name = published_name
        self.options = options or {}
        self.reconnect_min = reconnect_min
        self.reconnect_max = max(reconnect_max, reconnect_min)
        self.timeout = timeout
        self.state = PENDING
        self.reconnects = 0
        self.sent = {"audio": 0, "video": 0, "bytes": 0}
        self._final = (UNPUBLISHED, "")
        self._publisher: RtmpPublisher | None = None
        self._aborted = False
        self.muted = False
        self.sound: tuple[str, bool] | None = None  # (path, loop) while sound_on
        # what the worker encodes: ("live",), ("mute",) or ("sound", path, loop); a new
        # tuple for each change (the worker decodes a sound anew when it sees another)
        self.audio_action: tuple = ("live",)
        self._sound_loop: tuple | None = None  # worker thread: (action, SoundLoop | None)

    # -- reactor thread: the pushed audio ------------------------------------------
    def set_audio(self, muted: bool | None = None, sound=False) -> None:
        """``muted``: silence instead of the call's audio; ``sound``: (path, loop) played
        instead of both, or None to stop it; left out: unchanged."""
        if muted is not None:
            self.muted = muted
        if sound is not False:
            self.sound = sound
        self.audio_action = (("sound", *self.sound) if self.sound else
                             ("mute",) if self.muted else ("live",))

    def _substitute(self, samples: int, rate: int):
        """Worker thread: what the AAC encoder encodes instead of the call's audio."""
        action = self.audio_action
        if action[0] == "live":
            return None
        if action[0] == "sound":
            if self._sound_loop is None or self._sound_loop[0] is not action:
                try:
                    loop = SoundLoop(action[1], rate, loop=action[2])
                except (av.FFmpegError, OSError, ValueError) as exc:
                    loop, reason = None, str(exc)
                    self.call(lambda: log.warn("push of {name}: sound file unusable ({e}): "
                                               "silence instead", name=self.stream.name,
                                               e=reason))
                self._sound_loop = (action, loop)
            if self._sound_loop[1] is not None:
                return self._sound_loop[1].take(samples)
        return numpy.zeros(samples, dtype=numpy.float32)

    def stop(self, info: str = "", discard: bool = True):
        if not self._stopping:
            self._final = (STOPPED, info)
        return super().stop(info, discard=discard)

    def abort(self) -> None:
        """Reactor thread, past the shutdown deadline: stop, and shut the RTMP socket down
        under the worker so a blocked handshake, read or write ends now."""
        self.stop("Stopped: server shutdown")
        self._aborted = True
        publisher = self._publisher
        if publisher is not None:
            publisher.abort()

    def on_state(self, state: str, info: str) -> None:
        log.info("push of {name} to {url}: {state}{info}", name=self.stream.name,
                 url=self.target.redacted, state=state, info=f" ({info})" if info else "")

    def to_json(self) -> dict:
        stream = self.stream
        return {"mediaSessionId": self.media_session_id, "streamName": self.published_name,
                "rtmpUrl": self.shown_url, "sourceStream": stream.name,
                "sourceMediaSessionId": stream.media_session_id, "status": self.state,
                "info": self.info, "width": stream.width, "height": stream.height,
                "muted": self.muted, "soundEnabled": self.sound is not None,
                "options": self.options,
                "reconnects": self.reconnects, "dropped": self.queue.dropped,
                "sent": dict(self.sent)}

    # -- worker thread --------------------------------------------------------------
    def work(self) -> tuple[str, str]:
        attempt = 0
        first = True
        if self.wait_for_media and not self.queue.wait_frame():
            return self._final  # the stream ended before any media
        while True:
            publisher = self._publisher = RtmpPublisher(self.target, self.timeout, self.egress)
            if self._aborted:
                return self._final
            try:
                publisher.open()
                self.report(PUBLISHING, "")
                if not first:
                    self.call(self.stream.request_keyframe)
                first = False
                if self._publish(publisher):
                    publisher.close()
                    return self._final
                attempt = 0
            except RtmpError as exc:
                publisher.close()
                reason = str(exc)
                if self.queue.closed:
                    return self._final
                delay = min(self.reconnect_max, self.reconnect_min * (2 ** attempt))
                attempt += 1
                self.reconnects += 1
                self.report(RECONNECTING, f"{reason}; next try in {delay:g} s")
                self.queue.clear()
                if self.queue.wait_closed(delay):
                    return self._final
                self.queue.clear()

    def _publish(self, publisher: RtmpPublisher) -> bool:
        """Send frames until the queue ends (True); RtmpError when the server goes away."""
        stream = self.stream
        pipe = Pipeline(stream.has_video, stream.has_audio)
        pipe.substitute = self._substitute
        audio_rate = 16000 if stream.audio_codec in ("PCMU", "PCMA") else 48000
        publisher.send(flv.TAG_SCRIPT, 0, flv.metadata(
            width=stream.width, height=stream.height, has_video=stream.has_video,
            has_audio=stream.has_audio, audio_rate=audio_rate, with_set_data_frame=True))
        audio_header = video_header = False
        order = Interleaver(stream.has_audio)  # video waits for the AAC encoder's audio
        while True:
            try:  # held video goes out after max_hold without any frame (a paused stream)
                item = self.next_frame(order.max_hold if order.pending else None)
            except TimeoutError:
                self._send_tags(publisher, order.flush())
                continue
            events = pipe.feed(*item) if item is not None else pipe.flush()
            ready = []
            for event in events:
                if event[0] == "video":
                    _, position, nals, keyframe, changed = event
                    ms = round(position * 1000)
                    tags = []
                    if changed or not video_header:
                        tags.append((flv.TAG_VIDEO, ms,
                                     flv.avc_sequence_header(pipe.params.record())))
                        video_header = True
                    tags.append((flv.TAG_VIDEO, ms,
                                 flv.avc_nalus(length_prefixed(nals), keyframe)))
                    ready += order.video(position, ("video", tags))
                else:
                    _, pts, raw = event
                    ms = max(0, round(pts * 1000 / pipe.aac.rate))
                    tags = []
                    if not audio_header:
                        tags.append((flv.TAG_AUDIO, ms,
                                     flv.aac_sequence_header(pipe.aac.extradata)))
                        audio_header = True
                    tags.append((flv.TAG_AUDIO, ms, flv.aac_frame(raw)))
                    ready += order.audio(pts / pipe.aac.rate, ("audio", tags))
            if item is None or pipe.audio_problem:
                ready += order.flush()
                order.has_audio = not pipe.audio_problem
            self._send_tags(publisher, ready)
            if item is None:
                return True

    def _send_tags(self, publisher: RtmpPublisher, ready: list) -> None:
        for kind, tags in ready:
            for tag_kind, ms, body in tags:
                publisher.send(tag_kind, ms, body)
            self.sent[kind] += 1
            self.sent["bytes"] += len(tags[-1][2])



class PushError(Exception):
    """A push that cannot start; ``code`` is the REST status (400, 404, 409)."""

    def __init__(self, code: int, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


class PushManager:
    """Every running push, by its mediaSessionId (reactor thread)."""

    prefix = "rtmp_"

    def __init__(self, reactor, registry, *, reconnect_min: float = 1.0,
                 reconnect_max: float = 30.0, timeout: float = 10.0,
                 queue_frames: int | None = None, egress=None, keyframes=None):
        self.reactor = reactor
        self.keyframes = keyframes  # PeriodicKeyframes while pushes run
        self.egress = egress  # sipgw.egress.EgressPolicy for rtmp_egress_*
        self.registry = registry
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.timeout = timeout
        self.queue_frames = queue_frames
        self.pushes: dict[str, RtmpPush] = {}
        self.observers: list = []  # given to every push: callables(push) on state changes

    def startup(self, stream_name: str, rtmp_url: str, full_url: bool = False,
                options: dict | None = None, published_name: str = "",
                wait_for_media: bool = False) -> RtmpPush:
        """``published_name``: the name on the RTMP server (default ``rtmp_`` + stream name);
        ``wait_for_media``: connect once the stream has media (SIP as RTMP)."""
        stream = self.registry.get(name=stream_name)
        if stream is None or stream.ended:
            raise PushError(404, "Stream not found", "streamName")
        published = published_name or self.prefix + stream_name
        where = self.target(rtmp_url, published, full_url)
        if full_url:
            published = where.stream.split("?")[0]
        if any(push.stream is stream for push in self._pushing_to(where)):
            raise PushError(409, "The stream is already pushed to this RTMP URL", "rtmpUrl")
        push = RtmpPush(self.reactor, stream, where, rtmp_url=rtmp_url, published_name=published,
                        options=options, reconnect_min=self.reconnect_min,
                        reconnect_max=self.reconnect_max, timeout=self.timeout,
                        queue_frames=self.queue_frames, egress=self.egress,
                        wait_for_media=wait_for_media)
        self.pushes[push.media_session_id] = push
        push.observers = self.observers
        if self.keyframes is not None:
            self.keyframes.follow(push)
        push.done.addCallback(self._ended)
        log.info("push of {name} to {url} started ({id})", name=stream.name, url=where.redacted,
                 id=push.media_session_id)
        return push.start()

    @staticmethod
    def target(rtmp_url: str, published: str, full_url: bool = False):
        """Where ``published`` goes for ``rtmp_url``; PushError 400 saying what is wrong."""
        from .rtmp import target
        try:
            return target(rtmp_url, published, full_url)
        except ValueError as exc:
            raise PushError(400, str(exc), "rtmpUrl") from None

    def in_use(self, where) -> bool:
        """A running push already publishes to that server, application and stream name."""
        return bool(self._pushing_to(where))

    def _pushing_to(self, where) -> list[RtmpPush]:
        """The running pushes to ``where``'s server, application and stream name."""
        same = (where.host, where.port, where.app, where.stream)
        return [p for p in self.pushes.values()
                if (p.target.host, p.target.port, p.target.app, p.target.stream) == same]

    def _ended(self, push: RtmpPush) -> None:
        self.pushes.pop(push.media_session_id, None)

    def find(self, stream_name: str = "", rtmp_url: str = "",
             media_session_id: str = "") -> list[RtmpPush]:
        found = []
        for push in self.pushes.values():
            if media_session_id and push.media_session_id != media_session_id:
                continue
            if stream_name and stream_name not in (push.published_name, push.stream.name):
                continue
            if rtmp_url and rtmp_url != push.rtmp_url:
                continue
            found.append(push)
        return found

    def terminate(self, media_session_id: str) -> RtmpPush:
        push = self.pushes.get(media_session_id)
        if push is None:
            raise PushError(404, "Push not found", "mediaSessionId")
        push.stop("Stopped by rest /terminate")
        return push

    def close(self, timeout: float = 10.0):
        """Stop every push (daemon shutdown) within a hard total ``timeout``: the pushes
        still running then have their socket shut down.  Fires with (pushes, late)."""
        jobs = list(self.pushes.values())
        for push in jobs:
            push.stop("Stopped: server shutdown")

        def late(running):
            for push in running:
                push.abort()
            if running:
                log.warn("{n} push(es) not closed within {t} s: aborted", n=len(running),
                         t=timeout)
            return len(jobs), len(running)
        return wait_done(self.reactor, jobs, timeout).addCallback(late)
