"""The WCS recording REST methods: ``/recorder/startup|terminate|find_all`` and the older
``/stream/startRecording|stopRecording``."""
from __future__ import annotations

from typing import Any

from sipgw.config import Config
from sipgw.media.recorder import RecorderManager, RecordingError, Rotation
from sipgw.quotas import check
from sipgw.rest.fields import boolean_field, string_field
from sipgw.rest.errors import ApiError, BadRequest, NotFound
from sipgw.rest.router import Router
from sipgw.rest.streams import STREAM_NOT_FOUND

RECORDING_NOT_FOUND = "Recording not found"
_ID_MAX = 128
_NAME_MAX = 200


class RecorderApi:
    """Start, stop and list recordings of streams."""

    router = Router()

    def __init__(self, manager: RecorderManager, registry, config: Config | None = None) -> None:
        self._manager = manager
        self._registry = registry
        self._max = (config or Config()).max_recordings

    def _stream(self, body: dict):
        session_id = string_field(body, "mediaSessionId", required=True, max_len=_ID_MAX)
        stream = self._registry.get(media_session_id=session_id)
        if stream is None or stream.ended:
            raise NotFound(STREAM_NOT_FOUND, "mediaSessionId")
        return stream

    def _start(self, stream, template: str | None = None, file_name: str | None = None,
               restart: bool = False, rotation: Rotation | None = None) -> None:
        if not (restart and stream.media_session_id in self._manager.active):
            check(len(self._manager.active), self._max, "recordings", "max_recordings",
                  "mediaSessionId")
        try:
            self._manager.start(stream, template=template, file_name=file_name, restart=restart,
                                rotation=rotation)
        except RecordingError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None

    def _stop(self, body: dict):
        session_id = string_field(body, "mediaSessionId", required=True, max_len=_ID_MAX)
        try:
            done = self._manager.stop(session_id)
        except RecordingError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None
        return done.addCallback(lambda _: None)  # answered once the file is closed

    @router.route("/recorder/startup")
    def startup(self, request: Any, body: dict) -> None:
        stream = self._stream(body)
        config = body.get("config") or {}
        if not isinstance(config, dict):
            raise BadRequest("config must be a JSON object", "config")
        template = string_field(config, "fileTemplate", max_len=_NAME_MAX, spaces=True,
                           forbidden=frozenset())
        rotation = self._manager.rotation
        value = config.get("rotation")
        if value is not None:
            try:
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise ValueError("rotation must be disabled, seconds (20) or megabytes (20M)")
                rotation = Rotation.parse(value)
            except ValueError as exc:
                raise BadRequest(str(exc), "rotation") from None
        self._start(stream, template=template or None, restart=True,  # WCS: a new recording
                    rotation=rotation)
        return None

    @router.route("/recorder/terminate")
    def terminate(self, request: Any, body: dict):
        return self._stop(body)

    @router.route("/recorder/find_all", get=True)
    def find_all(self, request: Any, body: dict) -> list[dict]:
        recordings = self._manager.find_all()
        if not recordings:
            raise NotFound(RECORDING_NOT_FOUND)
        return [r.to_json() for r in recordings]

    @router.route("/stream/startRecording")
    def start_recording(self, request: Any, body: dict) -> None:
        stream = self._stream(body)
        file_name = string_field(body, "fileName", max_len=_NAME_MAX, spaces=True,
                            forbidden=frozenset())
        self._start(stream, file_name=file_name or None,
                    restart=boolean_field(body, "force", False), rotation=self._manager.rotation)
        return None

    @router.route("/stream/stopRecording")
    def stop_recording(self, request: Any, body: dict):
        return self._stop(body)
