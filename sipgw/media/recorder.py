"""Recording a stream to MP4 (H.264 passed through + AAC) on a worker thread.

The file is a fragmented MP4: its header goes out with the first fragment
(``delay_moov``, so an audio track that starts late keeps its place through an edit
list), then a fragment at every keyframe and at least every second.  Whatever happens
to the daemon, the file on disk plays up to its last complete fragment.  The file name comes
from a template (WCS tokens, see ``render``); a template with end tokens
(``{endTime}``, ``{endTimeMillis}``, ``{duration}``) is written under a temporary
``.recording.mp4`` name and renamed when the recording ends.  A name that is not one
plain file name inside the record folder is refused.  A write error (a full disk)
fails that recording with the reason at once; the call goes on.  What was written is
cut back to its last complete fragment and kept under its final name (it plays), or
removed when not one fragment is complete: no ``.recording.mp4`` stays behind.

``Limits``: a free-space floor (checked at start and every second), and a maximum size
and duration per recording (the recording ends FINISHED at the first fragment past it).

Rotation (WCS ``record_rotation``, ``/recorder/startup`` ``config.rotation``): ``20`` cuts
the recording into parts of 20 seconds, ``20M`` of 20 MB, each part its own MP4 starting at a
keyframe at time 0, named from the template with the part's own start (and end) time, or
with ``-1``, ``-2``... added when the template has no start time token.
"""
from __future__ import annotations

import errno
import os
import re
import time
from dataclasses import dataclass
from fractions import Fraction

import av
from twisted.logger import Logger

from .audio import DECODERS, output_rate
from .pipeline import Pipeline
from .worker import MediaJob, wait_done

log = Logger(namespace="sipgw.media.recorder")

PENDING = "PENDING"
RECORDING = "RECORDING"
FINISHED = "FINISHED"
FAILED = "FAILED"

TOKENS = ("streamName", "startTime", "endTime", "duration", "startTimeMillis",
          "endTimeMillis", "mediaSessionId", "audioCodec", "videoCodec", "login", "sessionId")
# the call's sipLogin and sessionId (WCS's longest): anything but [A-Za-z0-9_.@+-] becomes _
_OWNER_TOKENS = {"login": 32, "sessionId": 60}
_START_TOKENS = frozenset({"startTime", "startTimeMillis"})
_ROTATION = re.compile(r"(\d{1,9})(M?)", re.IGNORECASE)
NO_ROTATION = ("", "disabled", "0", "false")
_NOT_IN_OWNER = re.compile(r"[^\w.@+-]", re.ASCII)
END_TOKENS = frozenset({"endTime", "endTimeMillis", "duration"})
EXTENSION = ".mp4"
PARTIAL = ".recording"
MAX_NAME = 200
MP4_OPTIONS = {"movflags": "frag_keyframe+delay_moov+default_base_moof",
               "frag_duration": "1000000"}
_TOKEN = re.compile(r"\{([^{}]*)\}")
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")


MB = 1 << 20
FREE_SPACE_CHECK = 1.0  # seconds between free-space checks while recording


@dataclass(frozen=True)
class Limits:
    """Per recording; 0 = no limit (record_max_size_mb, record_max_duration,
    record_min_free_space_mb)."""

    max_bytes: int = 0
    max_seconds: float = 0
    min_free_bytes: int = 0

    @classmethod
    def from_config(cls, config) -> "Limits":
        return cls(config.record_max_size_mb * MB, config.record_max_duration,
                   config.record_min_free_space_mb * MB)


def free_bytes(folder: str) -> int:
    """Space left to an unprivileged writer on the file system that holds ``folder``."""
    path = os.path.abspath(folder)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def low_space(folder: str, limits: Limits, free=free_bytes) -> str:
    """Why ``folder`` has too little room for recordings, or ''."""
    if not limits.min_free_bytes:
        return ""
    left = free(folder)
    if left >= limits.min_free_bytes:
        return ""
    return (f"free space in the record folder is {left // MB} MB, below "
            f"record_min_free_space_mb={limits.min_free_bytes // MB}")


@dataclass(frozen=True)
class Rotation:
    """When a recording goes on in a new part: after ``seconds`` or ``bytes`` (one of them)."""

    seconds: int = 0
    bytes: int = 0

    @classmethod
    def parse(cls, value) -> "Rotation | None":
        """WCS's syntax: ``disabled``, ``N`` (seconds) or ``NM`` (megabytes); ValueError."""
        text = str(value).strip().lower() if value not in (None, False, 0) else ""
        if text in NO_ROTATION:
            return None
        match = _ROTATION.fullmatch(text)
        if not match or not int(match.group(1)):
            raise ValueError(f"rotation {value!r}: expected disabled, seconds (20) or "
                             "megabytes (20M)")
        number = int(match.group(1))
        return cls(bytes=number * MB) if match.group(2) else cls(seconds=number)

    def due(self, out: "_Mp4", position: float) -> bool:
        """A part that began at ``out.origin`` is long enough at ``position``."""
        if self.seconds:
            return position - out.origin >= self.seconds - 0.001
        return out.handle.tell() >= self.bytes


class BadFileName(ValueError):
    """A template or file name that cannot be used (REST 400)."""


def check_template(template: str) -> None:
    if not isinstance(template, str) or not template.strip():
        raise BadFileName("the file name template is empty")
    for token in _TOKEN.findall(template):
        if token not in TOKENS:
            raise BadFileName(f"unknown token {{{token}}} in the file name template "
                              f"(known: {', '.join('{' + t + '}' for t in TOKENS)})")
    # what the name looks like with every token replaced by a harmless value
    check_name(_TOKEN.sub("x", template))


def check_name(name: str) -> str:
    """``name`` if it is one plain file name (no folder, no way out of the record folder)."""
    if _BAD_NAME_CHARS.search(name):
        raise BadFileName("the file name must not contain '/', '\\' or control characters")
    if name in ("", ".", "..") or name.startswith("."):
        raise BadFileName("the file name must not be empty or start with '.'")
    if len(name.encode("utf-8")) > MAX_NAME:
        raise BadFileName(f"the file name is longer than {MAX_NAME} bytes")
    return name


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d_%H-%M-%S", time.gmtime(seconds))


def render(template: str, values: dict) -> str:
    """The file name: tokens replaced, ``.mp4`` added unless present; BadFileName if unusable.

    ``{startTime}``/``{endTime}`` are UTC ``YYYY-MM-DD_HH-MM-SS``, ``*Millis`` Unix time
    in ms, ``{duration}`` ms.  Missing end values render as empty."""
    name = _TOKEN.sub(lambda m: str(values.get(m.group(1), "")), template)
    if not name.lower().endswith(EXTENSION):
        name += EXTENSION
    return check_name(name)


class Recording(MediaJob):
    kind = "recording"

    def __init__(self, reactor, stream, folder: str, template: str, *, wall=time.time,
                 opener=None, queue_frames: int | None = None, file_name: str | None = None,
                 limits: Limits = Limits(), free=free_bytes, owner: dict | None = None,
                 rotation: Rotation | None = None):
        kwargs = {} if queue_frames is None else {"queue_frames": queue_frames}
        self.rotation = rotation
        self.parts: list[str] = []  # the finished parts of a rotated recording
        self.part = 0
        super().__init__(reactor, stream, **kwargs)
        self.folder = os.path.abspath(folder)
        self.template = file_name or template
        check_template(self.template)
        self.state = PENDING
        self.wall = wall
        self.opener = opener or (lambda path: open(path, "xb"))
        self.limits = limits
        self.free = free  # folder -> free bytes (tests fake a full disk here)
        self.started_at = wall()
        self.ended_at: float | None = None
        self.values = {"streamName": stream.name, "startTime": _stamp(self.started_at),
                       "startTimeMillis": int(self.started_at * 1000),
                       "mediaSessionId": stream.media_session_id,
                       "audioCodec": "aac" if stream.has_audio else "",
                       "videoCodec": "h264" if stream.has_video else ""}
        for token, longest in _OWNER_TOKENS.items():  # owner: the call's, {} for none
            value = str((owner or {}).get(token) or "")
            self.values[token] = _NOT_IN_OWNER.sub("_", value)[:longest]
        tokens = set(_TOKEN.findall(self.template))
        self._partial = bool(END_TOKENS & tokens)
        self._numbered = rotation is not None and not (_START_TOKENS & tokens)
        self._part_start = self.started_at
        self.file_name = self._name()
        self.written = {"audio": 0, "video": 0}
        self.opened = False
        self.duration = 0.0

    @property
    def media_session_id(self) -> str:
        return self.stream.media_session_id

    @property
    def path(self) -> str:
        return os.path.join(self.folder, self.file_name)

    def on_state(self, state: str, info: str) -> None:
        log.info("recording of {name} to {file}: {state}{info}", name=self.stream.name,
                 file=self.file_name, state=state, info=f" ({info})" if info else "")

    def to_json(self) -> dict:
        return {"fileName": self.file_name, "mediaSessionId": self.media_session_id,
                "streamName": self.stream.name, "status": self.state, "info": self.info,
                "startTimeMillis": int(self.started_at * 1000),
                "endTimeMillis": int(self.ended_at * 1000) if self.ended_at else None,
                "duration": round(self.duration * 1000), "written": dict(self.written),
                "parts": self.parts + ([self.file_name] if self.parts else [])}

    def _done(self, state: str, info: str) -> None:
        self.ended_at = self.ended_at or self.wall()
        super()._done(state, info)

    # -- worker thread --------------------------------------------------------------
    def work(self) -> tuple[str, str]:
        stream = self.stream
        pipe = Pipeline(stream.has_video, stream.has_audio)
        out = None
        state, info = FINISHED, ""
        next_check = time.monotonic() + FREE_SPACE_CHECK
        try:
            while True:
                item = self.next_frame()
                events = pipe.feed(*item) if item is not None else pipe.flush()
                for event in events:
                    if out is not None and self._rotate_here(out, event, pipe):
                        out.close()
                        out = None
                        self._finish_name()
                        self.parts.append(self.file_name)
                    if out is None:
                        out = self._open(pipe, self._position(event, pipe) if self.part else 0.0)
                        self.report(RECORDING, "")
                    out.write(event, pipe)
                    self.written[event[0]] += 1
                    self.duration = max(self.duration, out.last_position)
                if item is None:
                    break
                if out is not None:
                    info = self._over_limit(out)
                    if info:
                        break
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + FREE_SPACE_CHECK
                    info = low_space(self.folder, self.limits, self.free)
                    if info:
                        state = FAILED
                        break
            if out is None:
                return state, info or "nothing to record: no keyframe arrived"
            out.close()
            out = None
            self._finish_name()
            return state, info
        except (OSError, av.FFmpegError) as exc:
            reason = _reason(exc)
            if out is not None:
                out.abort()
            name = self.file_name
            return FAILED, f"cannot write {name}: {reason}; {self._salvage()}"

    def _over_limit(self, out: "_Mp4") -> str:
        """Why the recording must end here (record_max_*), or ''."""
        limits = self.limits
        if limits.max_seconds and out.last_position >= limits.max_seconds:
            return f"record_max_duration reached ({limits.max_seconds:g} s)"
        if limits.max_bytes and out.handle.tell() >= limits.max_bytes:
            return f"record_max_size_mb reached ({limits.max_bytes // MB} MB)"
        return ""

    def _salvage(self) -> str:
        """After a write error: keep the complete fragments under the final name, or remove
        the file when there is none.  Says which."""
        if not self.opened:
            return "no file was written"
        path = os.path.join(self.folder, self._open_name)
        try:
            playable = _playable_length(path)
            if not playable:
                os.remove(path)
                return "nothing playable was written: file removed"
            os.truncate(path, playable)
            self._finish_name()
            return f"kept {self.file_name} up to its last complete fragment ({playable} bytes)"
        except OSError as exc:
            return f"cannot clean up {self._open_name}: {_reason(exc)}"

    def _rotate_here(self, out: "_Mp4", event: tuple, pipe: Pipeline) -> bool:
        """A new part begins at this event: it is a keyframe and rotation is due."""
        if self.rotation is None:
            return False
        if self.stream.has_video and not (event[0] == "video" and event[3]):
            return False
        return self.rotation.due(out, self._position(event, pipe))

    @staticmethod
    def _position(event: tuple, pipe: Pipeline) -> float:
        return event[1] if event[0] == "video" else event[1] / pipe.aac.rate

    def _open(self, pipe: Pipeline, origin: float = 0.0) -> "_Mp4":
        os.makedirs(self.folder, exist_ok=True)
        self.part += 1
        if self.part > 1:
            self._part_start = self.wall()
            self.values.update(startTime=_stamp(self._part_start),
                               startTimeMillis=int(self._part_start * 1000))
        self.file_name = name = self._name()
        if self._partial:
            name = name[:-len(EXTENSION)] + PARTIAL + EXTENSION
        base, n = name[:-len(EXTENSION)], 0
        while True:
            path = os.path.join(self.folder, name)
            try:
                handle = self.opener(path)
                break
            except FileExistsError:
                n += 1
                name = f"{base}-{n}{EXTENSION}"
        if not self._partial:
            self.file_name = name
        self._open_name = name
        self.opened = True
        return open_mp4(self.stream, pipe, handle, origin=origin)

    def _name(self) -> str:
        """The file name of the current part (end tokens as known now)."""
        name = render(self.template, self.values)
        if self._numbered:
            name = check_name(f"{name[:-len(EXTENSION)]}-{max(self.part, 1)}{EXTENSION}")
        return name

    def _finish_name(self) -> str:
        """Rename a partial file now that the end tokens are known."""
        if not self._partial:
            return ""
        self.ended_at = self.wall()
        self.values.update(endTime=_stamp(self.ended_at), endTimeMillis=int(self.ended_at * 1000),
                           duration=round((self.ended_at - self._part_start) * 1000))
        final = self._name()
        source = os.path.join(self.folder, self._open_name)
        target = os.path.join(self.folder, final)
        if os.path.exists(target):
            final = final[:-len(EXTENSION)] + "-" + self.values["mediaSessionId"][:8] + EXTENSION
            target = os.path.join(self.folder, final)
        os.rename(source, target)
        self.file_name = final
        return ""


def box_size(head) -> int:
    """The size of the MP4 box whose first (up to 16) bytes are ``head`` (ISO 14496-12 §4.2:
    size, type, [64-bit size]); below 8 when not known yet or not a box."""
    size = int.from_bytes(head[:4], "big")
    if size == 1 and len(head) >= 16:
        size = int.from_bytes(head[8:16], "big")
    return size


def _playable_length(path: str) -> int:
    """Bytes of a fragmented MP4 up to the end of its last complete fragment (moof + mdat
    after the moov); 0 when it has none."""
    end = pos = 0
    moov = moof = False
    with open(path, "rb") as handle:
        total = os.fstat(handle.fileno()).st_size
        while pos + 8 <= total:
            handle.seek(pos)
            head = handle.read(16)
            size, kind = box_size(head), head[4:8]
            if size < 8 or pos + size > total:
                break
            pos += size
            if kind == b"moov":
                moov = True
            elif kind == b"moof":
                moof = moov
            elif kind == b"mdat" and moof:
                end, moof = pos, False
    return end


def open_mp4(stream, pipe: Pipeline, handle, options: dict = MP4_OPTIONS,
             origin: float = 0.0) -> "_Mp4":
    """A fragmented MP4 writer for ``stream`` into ``handle`` (a recording's file, or HLS
    segments in memory): the video size from the stream or its SPS, the AAC rate."""
    width, height = stream.width, stream.height
    if not width and pipe.params.sps:
        from ..rtp.h264 import parse_sps
        info = parse_sps(pipe.params.sps)
        width, height = info.width, info.height
    audio = None
    codec = stream.audio_codec or ""
    if stream.has_audio and codec in DECODERS:
        audio = output_rate(codec, 48000 if codec == "opus" else 8000)
    return _Mp4(handle, stream.has_video, width, height, audio, origin, options)


class _Mp4:
    """One fragmented MP4 file: H.264 passed through, AAC from the pipeline."""

    def __init__(self, handle, has_video: bool, width: int, height: int, audio_rate: int | None,
                 origin: float = 0.0, options: dict = MP4_OPTIONS):
        self.handle = handle
        self.origin = origin  # the recording's position at this file's time 0 (a part)
        self.container = av.open(handle, "w", format="mp4", container_options=options)
        self.video = None
        self.audio = None
        self.last_position = 0.0
        if has_video:
            self.video = self.container.add_mux_stream("h264", width=width, height=height)
            self.video.time_base = Fraction(1, 90000)
        if audio_rate:
            # The container's own AAC context only gives the file its AudioSpecificConfig;
            # the pipeline's encoder (same rate, layout, profile) makes the packets.
            self.audio = self.container.add_stream("aac", rate=audio_rate, layout="mono")
            self.audio.time_base = Fraction(1, audio_rate)
        self._last_video = -1

    def write(self, event: tuple, pipe: Pipeline) -> None:
        if event[0] == "video":
            if self.video is None:
                return
            _, position, nals, keyframe, _changed = event
            ticks = max(round((position - self.origin) * 90000), self._last_video + 1)
            self._last_video = ticks
            packet = av.Packet(b"".join(b"\x00\x00\x00\x01" + n for n in nals))
            packet.pts = packet.dts = ticks
            packet.time_base = self.video.time_base
            packet.stream = self.video
            packet.is_keyframe = keyframe
            self.last_position = max(self.last_position, position)
        else:
            if self.audio is None or pipe.aac is None or pipe.aac.rate != self.audio.rate:
                return
            _, pts, raw = event
            shifted = pts - round(self.origin * pipe.aac.rate)
            if shifted < 0 and self.origin:
                return  # before this part's first keyframe: the last part has it
            packet = av.Packet(raw)
            packet.pts = packet.dts = shifted
            packet.time_base = self.audio.time_base
            packet.stream = self.audio
            self.last_position = max(self.last_position, pts / pipe.aac.rate)
        self.container.mux(packet)

    def close(self) -> None:
        try:
            self.container.close()
        finally:
            self.handle.close()

    def abort(self) -> None:
        """After a write error: release what can be released, ignore further errors."""
        for close in (self.container.close, self.handle.close):
            try:
                close()
            except Exception:
                pass


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "No space left on device"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


class RecordingError(Exception):
    """A recording that cannot start or stop; ``code`` is the REST status."""

    def __init__(self, code: int, message: str, field: str | None = None):
        super().__init__(message)
        self.code = code
        self.field = field


class RecorderManager:
    """Every recording, active and finished (reactor thread).

    With ``auto`` (``sip_record_stream=true``) every stream the registry publishes is
    recorded from its first keyframe to its end.
    """

    def __init__(self, reactor, registry, folder: str, template: str, *, auto: bool = False,
                 history: int = 1000, queue_frames: int | None = None,
                 limits: Limits = Limits(), free=free_bytes, keyframes=None, owner=None,
                 rotation: Rotation | None = None):
        check_template(template)
        self.rotation = rotation  # record_rotation: for recordings started without their own
        self.owner = owner  # stream -> {"login", "sessionId"} of its call, for the template
        self.keyframes = keyframes  # PeriodicKeyframes while recordings run
        self.limits = limits
        self.free = free
        self.reactor = reactor
        self.registry = registry
        self.folder = folder
        self.template = template
        self.queue_frames = queue_frames
        self.active: dict[str, Recording] = {}
        self.history: list[Recording] = []
        self.history_limit = history
        self.observers: list = []  # given to every recording: callables(recording)
        if auto:
            registry.listeners.append(self._stream_event)

    def _stream_event(self, stream, event: str) -> None:
        if event == "published" and stream.media_session_id not in self.active:
            try:
                self.start(stream, rotation=self.rotation)
            except RecordingError as exc:
                log.error("cannot record {name}: {why}", name=stream.name, why=str(exc))

    def start(self, stream, template: str | None = None, file_name: str | None = None,
              restart: bool = False, rotation: Rotation | None = None) -> Recording:
        """``restart``: a running recording of the stream is stopped (its file finalized) and
        a new one started, as WCS's /recorder/startup does; without it, a 409."""
        running = self.active.get(stream.media_session_id)
        if running is not None and not restart:
            raise RecordingError(409, "The stream is already being recorded", "mediaSessionId")
        if stream.ended:
            raise RecordingError(404, "Stream not found", "mediaSessionId")
        try:
            low = low_space(self.folder, self.limits, self.free)
        except OSError as exc:
            low = f"cannot check the record folder: {_reason(exc)}"
        if low:
            raise RecordingError(507, low)
        try:
            recording = Recording(self.reactor, stream, self.folder, template or self.template,
                                  file_name=file_name, queue_frames=self.queue_frames,
                                  limits=self.limits, free=self.free,
                                  owner=self.owner(stream) if self.owner else None,
                                  rotation=rotation)
        except BadFileName as exc:
            raise RecordingError(400, str(exc), "fileName" if file_name else "fileTemplate")
        if running is not None:
            running.stop("Restarted by rest /recorder/startup")
        self.active[stream.media_session_id] = recording
        recording.observers = self.observers
        if self.keyframes is not None:
            self.keyframes.follow(recording)
        recording.done.addCallback(self._ended)
        log.info("recording {name} to {file}", name=stream.name, file=recording.file_name)
        return recording.start()

    def _ended(self, recording: Recording) -> None:
        if self.active.get(recording.media_session_id) is recording:
            del self.active[recording.media_session_id]
        if not recording.opened:
            return  # the stream ended before its first keyframe: no file, nothing to list
        self.history.append(recording)
        del self.history[:-self.history_limit]

    def stop(self, media_session_id: str):
        recording = self.active.get(media_session_id)
        if recording is None:
            raise RecordingError(404, "Recording not found", "mediaSessionId")
        return recording.stop("Stopped by rest /terminate")

    def find_all(self) -> list[Recording]:
        return self.history + list(self.active.values())

    def close(self, timeout: float = 10.0):
        """Finalize every open recording (daemon shutdown): fires when all are closed, or
        after ``timeout`` seconds, with (files finalized, recordings not finalized)."""
        jobs = list(self.active.values())
        for recording in jobs:
            recording.stop("Stopped: server shutdown")

        def counted(running):
            if running:
                log.error("{n} recording(s) not finalized within {t} s", n=len(running),
                          t=timeout)
            return sum(1 for r in jobs if r.state == FINISHED), len(running)
        return wait_done(self.reactor, jobs, timeout).addCallback(counted)
