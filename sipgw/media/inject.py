"""Media injected into a call (WCS ``/call/inject_stream``, ``/call/inject_sound``).

An ``Injection`` is a ``MediaJob``: its worker thread does the PyAV work, the reactor sends.

* Audio: another stream's payloads (PCMU, PCMA, opus; whatever codec, as it changes) are
  decoded, resampled and encoded to the call's negotiated codec, 20 ms a payload
  (``AudioDecoder`` -> ``PayloadEncoder``); a sound file (any format PyAV reads, from
  ``sound_dir``, as ``/push/sound_on`` plays them) is decoded once (``SoundLoop``) and
  encoded as the sender takes it, once or looped.  The payloads wait in a bounded
  ``PayloadQueue`` (``inject_buffer_ms``): the stream's worker drops the oldest when it is
  full (the sender fell behind), the sound's worker waits for room.  The reactor's
  ``AudioSender`` (sipgw/rtp/sender.py) takes one every 20 ms and sends it from the call's
  own RTP socket, silence when none is ready.
* Video: when the call negotiated H264 and the stream has video, its access units go out
  on the reactor as they arrive (no transcoding: RTP packetization only), from a keyframe
  on: aiortc's packetizer for packetization-mode 1 (the payloads are made once per frame,
  shared with the WebRTC players), single NAL unit packets for mode 0 (RFC 6184 §6.2).
  The callee's keyframe requests (RTCP PLI, FIR) go to the stream's own callee.

The injection ends on ``stop()`` (STOPPED: /terminate, a new injection, the call's end),
when its stream ends (UNPUBLISHED), when a sound played once is through (FINISHED), or
FAILED (an unusable sound file).  The callee's own media keeps flowing into its stream:
nothing here touches what the call receives.
"""
from __future__ import annotations

import collections
import threading
from fractions import Fraction

import av
import numpy
from twisted.logger import Logger

from ..rtp.sender import AudioSender, VideoSender
from .audio import DECODERS, SoundLoop, ffmpeg_codec, payload_decoder
from .avc import split_annexb
from .worker import FrameQueue, MediaJob

log = Logger(namespace="sipgw.media.inject")

ENCODERS = DECODERS  # the same RTP codecs both ways (ffmpeg_codec names FFmpeg's)
OPUS_BIT_RATE = 32000

STARTING = "STARTING"
INJECTING = "INJECTING"
STOPPED = "STOPPED"
FINISHED = "FINISHED"
UNPUBLISHED = "UNPUBLISHED"
FAILED = "FAILED"
ENDED = (STOPPED, FINISHED, UNPUBLISHED, FAILED)


def injectable_audio(endpoint) -> bool:
    """The call's audio endpoint was answered with a codec we can encode."""
    return (endpoint is not None and endpoint.media is not None
            and endpoint.media.codec.name in ENCODERS)


def injectable_video(endpoint) -> bool:
    return (endpoint is not None and endpoint.media is not None
            and endpoint.media.codec.name == "H264")


class PayloadEncoder:
    """Mono float samples (-1..1) at ``rate`` in, one RTP payload per 20 ms out, in the
    call's codec.  Worker thread."""

    def __init__(self, codec):
        if codec.name not in ENCODERS:
            raise ValueError(f"no encoder for {codec.name!r}")
        self.codec = codec  # the negotiated Codec (sipgw.sip.sdp)
        self.rate = 48000 if codec.name == "opus" else codec.clock  # RFC 7587: opus is 48 kHz
        self.frame = self.rate // 50
        encoder = av.CodecContext.create(ffmpeg_codec(codec.name), "w")
        encoder.sample_rate = self.rate
        encoder.layout = "mono"
        encoder.format = "s16"
        encoder.time_base = Fraction(1, self.rate)
        if codec.name == "opus":
            encoder.bit_rate = OPUS_BIT_RATE
        encoder.open()
        self._encoder = encoder
        self._pending = numpy.zeros(0, dtype=numpy.float32)
        self._pts = 0

    def encode(self, samples: numpy.ndarray) -> list[bytes]:
        pending = numpy.concatenate([self._pending, samples.astype(numpy.float32)])
        out = []
        n = self.frame
        while len(pending) >= n:
            chunk, pending = pending[:n], pending[n:]
            pcm = (numpy.clip(chunk, -1.0, 1.0) * 32767).astype(numpy.int16).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = self.rate
            frame.pts = self._pts
            frame.time_base = Fraction(1, self.rate)
            self._pts += n
            out += [bytes(packet) for packet in self._encoder.encode(frame)]
        self._pending = pending
        return out


class AudioDecoder:
    """One codec's RTP payloads (PCMU, PCMA, opus) to mono float samples at ``rate``.
    Worker thread."""

    def __init__(self, codec: str, clock: int, rate: int):
        if codec not in DECODERS:
            raise ValueError(f"no decoder for {codec!r}")
        self._decoder = payload_decoder(codec, clock)
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        self.bad = 0

    def decode(self, payload: bytes) -> numpy.ndarray:
        try:
            frames = self._decoder.decode(av.Packet(payload))
        except av.FFmpegError:
            self.bad += 1
            return numpy.zeros(0, dtype=numpy.float32)
        chunks = [out.to_ndarray().reshape(-1) for frame in frames
                  for out in self._resampler.resample(frame)]
        return numpy.concatenate(chunks) if chunks else numpy.zeros(0, dtype=numpy.float32)


class PayloadQueue:
    """Encoded payloads (any item) between one worker (``put``) and the reactor's sender
    (``take``, never blocks).  At most ``maxlen``: ``put`` then drops the oldest (counted)."""

    def __init__(self, maxlen: int):
        if maxlen < 1:
            raise ValueError("maxlen must be at least 1")
        self.maxlen = maxlen
        self.dropped = 0
        self.closed = False
        self._items: collections.deque = collections.deque()
        self._cond = threading.Condition()

    def put(self, payload) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._items) >= self.maxlen:
                self._items.popleft()
                self.dropped += 1
            self._items.append(payload)

    def take(self):
        with self._cond:
            if not self._items:
                return None
            payload = self._items.popleft()
            self._cond.notify_all()
            return payload

    def wait_room(self, timeout: float) -> bool:
        """Block until there is room (True), or ``timeout`` passes or the queue closes."""
        with self._cond:
            self._cond.wait_for(lambda: self.closed or len(self._items) < self.maxlen, timeout)
            return not self.closed and len(self._items) < self.maxlen

    def wait_empty(self, timeout: float) -> bool:
        with self._cond:
            self._cond.wait_for(lambda: self.closed or not self._items, timeout)
            return not self._items

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._items.clear()
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self._items)


def video_payloads(frame, packetization_mode: int | None) -> list[bytes]:
    """RTP payloads of an H264 access unit: FU-A/STAP-A (mode 1, aiortc's packetizer, cached
    on the frame for every consumer) or one NAL unit a packet (mode 0)."""
    if packetization_mode == 1:
        from ..webrtc.forward import frame_payloads
        return frame_payloads(frame)
    try:
        return split_annexb(frame.data)
    except ValueError:
        return []


class Injection(MediaJob):
    """A stream (``source``) or a sound file (``sound``: path, name, loop) sent into the
    call whose RTP is ``session``."""

    kind = "inject"

    def __init__(self, reactor, session, *, call_id: str, source=None,
                 sound: tuple[str, str, bool] | None = None, queue_frames: int = 100,
                 buffer_frames: int = 10):
        if (source is None) == (sound is None):
            raise ValueError("an injection takes a stream or a sound file")
        super().__init__(reactor, source, queue_frames=queue_frames, label=call_id)
        self.queue = FrameQueue(queue_frames, False)  # only audio goes to the worker
        self.call_id = call_id
        self.session = session
        self.sound = sound
        audio = session.endpoints.get("audio")
        video = session.endpoints.get("video")
        self.audio = audio if injectable_audio(audio) else None
        self.video = (video if source is not None and source.has_video and injectable_video(video)
                      else None)
        self.kinds = tuple(k for k, ep in (("audio", self.audio), ("video", self.video)) if ep)
        self.codec = self.audio.media.codec if self.audio is not None else None
        self.payloads = PayloadQueue(buffer_frames)
        self.audio_sender: AudioSender | None = None
        self.video_sender: VideoSender | None = None
        self.bad_payloads = 0
        self._final = ((UNPUBLISHED, f"Stream {source.name} ended") if source is not None
                       else (FINISHED, "The sound file was played"))

    @property
    def active(self) -> bool:
        """Running and not asked to stop."""
        return not self.finished and not self._stopping

    @property
    def source_name(self) -> str:
        return self.stream.name if self.stream is not None else self.sound[1]

    # -- reactor thread ------------------------------------------------------------
    def start(self) -> "Injection":
        if self.audio is not None:
            self.audio_sender = AudioSender(self.reactor, self.audio, self._take,
                                            on_codec=self._codec_changed).start()
        if self.video is not None:
            self.video_sender = VideoSender(self.reactor, self.video)
            self.video.keyframe_wanted = self.stream.request_keyframe  # the callee's PLI/FIR
        self.done.addCallback(self._ended)
        super().start()
        return self

    def stop(self, info: str = "", discard: bool = True):
        if not self._stopping:
            self._final = (STOPPED, info)
        self._stop_senders()
        self.payloads.close()
        return super().stop(info, discard=True)

    def _stop_senders(self) -> None:
        if self.audio_sender is not None:
            self.audio_sender.stop()
        if self.video is not None and self.video.keyframe_wanted == self.stream.request_keyframe:
            self.video.keyframe_wanted = None

    def _ended(self, _):
        self._stop_senders()
        self.payloads.close()
        return self

    def _take(self) -> bytes | None:
        """The sender's next payload: one encoded for the call's codec of now."""
        while True:
            item = self.payloads.take()
            if item is None or item[0] == self.codec:
                return item and item[1]

    def _codec_changed(self, codec) -> None:
        """A re-INVITE changed the call's codec: the worker encodes to the new one (a sound
        file in a new sample rate starts again), or the injection stops."""
        if codec.name not in ENCODERS:
            self.stop(f"the call's audio is now {codec.name}, which cannot be injected")
            return
        self.codec = codec

    def _arrived(self, frame) -> bool:
        if frame is not None and frame.kind == "video":
            if self._stopping:
                return False
            payloads = video_payloads(frame, self.video.media.packetization_mode)
            self.video_sender.send(frame.timestamp, payloads)
            if self.state == STARTING:
                self._set_state(INJECTING, "")
            return True
        return super()._arrived(frame)

    def on_state(self, state: str, info: str) -> None:
        log.info("injection of {source} into call {call}: {state}{info}", source=self.source_name,
                 call=self.call_id, state=state, info=f" ({info})" if info else "")

    def to_json(self) -> dict:
        stream, sound = self.stream, self.sound
        audio, video = self.audio_sender, self.video_sender
        return {"type": "stream" if stream is not None else "sound",
                "streamName": stream.name if stream is not None else None,
                "soundFile": sound[1] if sound is not None else None,
                "loop": sound[2] if sound is not None else None,
                "status": self.state, "info": self.info,
                "audioCodec": self.codec.name if self.codec is not None else None,
                "video": video is not None,
                "sent": {"audio": audio.sent if audio else 0,
                         "video": video.frames if video else 0},
                "silence": audio.silent if audio else 0,
                "dropped": self.payloads.dropped + self.queue.dropped}

    # -- worker thread --------------------------------------------------------------
    def _encoder(self, encoder: PayloadEncoder | None) -> PayloadEncoder | None:
        """``encoder``, or a new one when the call's codec changed (worker thread)."""
        codec = self.codec
        if codec is None or (encoder is not None and encoder.codec == codec):
            return encoder
        return PayloadEncoder(codec)

    def work(self) -> tuple[str, str]:
        if self.sound is not None:
            return self._play()
        encoder = None
        decoders: dict = {}
        while True:
            item = self.next_frame()
            if item is None:
                return self._final
            frame = item[0]
            encoder = self._encoder(encoder)
            if encoder is None:
                continue
            key = (frame.codec, frame.clock_rate, encoder.rate)
            decoder = decoders.get(key)
            if decoder is None:
                try:
                    decoder = decoders[key] = AudioDecoder(frame.codec, frame.clock_rate,
                                                           encoder.rate)
                except ValueError:
                    self.bad_payloads += 1
                    continue
            self._queue(encoder, encoder.encode(decoder.decode(frame.data)))

    def _play(self) -> tuple[str, str]:
        path, name, loop = self.sound
        encoder = sound = None
        while not self.queue.closed and not (sound is not None and sound.played):
            new = self._encoder(encoder)
            if new is None:
                return FAILED, "the call has no audio to play the sound file into"
            if sound is None or new.rate != encoder.rate:
                try:
                    sound = SoundLoop(path, new.rate, loop=loop)
                except (av.FFmpegError, OSError, ValueError) as exc:
                    return FAILED, f"sound file {name} unusable: {exc}"
            encoder = new
            if self.payloads.wait_room(0.1):
                self._queue(encoder, encoder.encode(sound.take(encoder.frame)))
        while not self.queue.closed and not self.payloads.wait_empty(0.1):
            pass  # what is queued plays out before the injection ends
        return self._final

    def _queue(self, encoder: PayloadEncoder, payloads: list[bytes]) -> None:
        for payload in payloads:
            self.payloads.put((encoder.codec, payload))
        if payloads and self.state == STARTING:
            self.report(INJECTING, "")
