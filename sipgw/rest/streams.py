"""The WCS ``/stream/*`` REST methods over the stream registry."""
from __future__ import annotations

from typing import Any

from sipgw.rest.fields import boolean_field, missing, string_field
from sipgw.rest.errors import BadRequest, NotFound
from sipgw.rest.router import Router

STREAM_NOT_FOUND = "Stream not found"
TERMINATION_RECEIVED = "Stream termination request is received"
_MAX = 128


class StreamApi:
    """``/stream/find``, ``/stream/find_all``, ``/stream/terminate``."""

    router = Router()

    def __init__(self, registry):
        self._registry = registry

    def _lookup(self, body: dict):
        name = string_field(body, "name", max_len=_MAX, spaces=True)
        session_id = string_field(body, "mediaSessionId", max_len=_MAX)
        if not name and not session_id:
            raise BadRequest("name or mediaSessionId is required", "name")
        stream = (self._registry.get(name=name) if name
                  else self._registry.get(media_session_id=session_id))
        if stream is None or (name and session_id and stream.media_session_id != session_id):
            raise NotFound(STREAM_NOT_FOUND)
        return stream

    @router.route("/stream/find")
    def find(self, request: Any, body: dict) -> list[dict]:
        """WCS filters: ``published`` (false asks for played streams, which sipgw does not
        list: 404) and ``display`` (``["metrics"]`` adds WCS's ``metrics``)."""
        published = boolean_field(body, "published", True)
        display = _display(body)
        stream = self._lookup(body)
        if not published:
            raise NotFound(STREAM_NOT_FOUND)
        found = stream.to_json()
        if "metrics" in display:
            found["metrics"] = _metrics(found)
        return [found]

    @router.route("/stream/find_all", get=True)
    def find_all(self, request: Any, body: dict) -> list[dict]:
        streams = self._registry.all()
        if not streams:
            raise NotFound(STREAM_NOT_FOUND)
        return [s.to_json() for s in streams]

    @router.route("/stream/terminate")
    def terminate(self, request: Any, body: dict) -> dict:
        """Ends the call publishing the stream (BYE, or CANCEL before the answer)."""
        self._lookup(body).terminate()
        return {"info": TERMINATION_RECEIVED}


def _display(body: dict) -> list[str]:
    value = body.get("display")
    if missing(value):
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("display must be a list of names, e.g. [\"metrics\"]", "display")
    return value


def _metrics(stream: dict) -> dict:
    """WCS's metric names for what the stream's RTP counters know."""
    counters = stream.get("counters") or {}
    video, audio = counters.get("video") or {}, counters.get("audio") or {}
    keyframes = video.get("keyframes", 0)
    return {"VIDEO_WIDTH": stream.get("width"), "VIDEO_HEIGHT": stream.get("height"),
            "VIDEO_K_FRAMES": keyframes, "VIDEO_P_FRAMES": video.get("frames", 0) - keyframes,
            "VIDEO_LOST": video.get("lost", 0), "AUDIO_LOST": audio.get("lost", 0)}
