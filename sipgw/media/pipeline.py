"""Worker side: a stream's frames (with arrival times) to timed H.264 and AAC.

One ``Pipeline`` per output (a file, or one RTMP connection): it starts at the first
video keyframe carrying SPS/PPS (the first frame of an audio-only stream), places
every later frame on the shared timeline, passes H.264 through and transcodes audio
to AAC.  Events out:

* ``("video", seconds, nals, keyframe, parameter_sets_changed)``: seconds strictly
  increasing, NAL units without start codes (SPS/PPS in front of every keyframe);
* ``("audio", pts, raw)``: one AAC frame, pts in 1/``aac.rate`` (first may be < 0: the
  encoder's priming).
"""
from __future__ import annotations

from .audio import DECODERS, AacEncoder
from .avc import ParameterSets, split_annexb
from .timeline import Timeline

_MIN_STEP = 1 / 90000


class Pipeline:
    def __init__(self, has_video: bool, has_audio: bool = True):
        self.has_video = has_video
        self.has_audio = has_audio
        self.timeline = Timeline()
        self.params = ParameterSets()
        self.aac: AacEncoder | None = None
        self.audio_problem = ""
        self.skipped = 0
        self._last_video = -1.0
        self.substitute = None  # given to the AAC encoder (AacEncoder.substitute)

    @property
    def started(self) -> bool:
        return self.timeline.origin is not None

    def feed(self, frame, arrival: float) -> list[tuple]:
        when = self.timeline.when(frame.kind, frame.clock_rate, frame.timestamp, arrival)
        if frame.kind == "video":
            return self._video(frame, when)
        if frame.kind == "audio" and self.has_audio:
            return self._audio(frame, when)
        return []

    def _video(self, frame, when: float) -> list[tuple]:
        try:
            nals = split_annexb(frame.data)
        except ValueError:
            self.skipped += 1
            return []
        changed = self.params.add(nals)
        if not self.started:
            if not (frame.keyframe and self.params.ready):
                self.skipped += 1
                return []
            self.timeline.start(when)
        position = self.timeline.position(when)
        if position is None:
            self.skipped += 1
            return []
        position = max(position, self._last_video + _MIN_STEP)
        self._last_video = position
        if frame.keyframe:
            nals = self.params.with_parameter_sets(nals)
        return [("video", position, nals, frame.keyframe, changed)]

    def _audio(self, frame, when: float) -> list[tuple]:
        if not self.started:
            if self.has_video:
                return []
            self.timeline.start(when)
        position = self.timeline.position(when)
        if position is None:
            return []
        if self.aac is None:
            if self.audio_problem:
                return []
            if frame.codec not in DECODERS:
                self.audio_problem = f"no AAC transcoding from {frame.codec}"
                return []
            self.aac = AacEncoder(frame.codec, frame.clock_rate)
            self.aac.substitute = self.substitute
        elif frame.codec != self.aac.codec or frame.clock_rate != self.aac.in_rate:
            if frame.codec not in DECODERS:  # a switch to a codec we cannot decode: skip it
                self.skipped += 1
                return []
            self.aac.switch(frame.codec, frame.clock_rate)  # the callee changed codec mid-call
        return [("audio", pts, raw) for pts, raw in self.aac.push(frame.data, position)]

    def flush(self) -> list[tuple]:
        if self.aac is None:
            return []
        return [("audio", pts, raw) for pts, raw in self.aac.flush()]
