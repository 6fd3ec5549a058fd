"""The WCS ``/call/inject_stream/*`` and ``/call/inject_sound`` REST methods: media sent
into a call (sipgw/injections.py, sipgw/media/inject.py).

Each answers 200 with an empty body, as WCS does; the injection's progress is the call's
``injection`` in ``/call/find`` (and the InjectionStatusEvent hook).  A call has one
injection at a time: a new one replaces it.  ``soundFile`` (WCS's REST table names it
``fileName``, taken too) is a plain file name in ``sound_dir``, as for ``/push/sound_on``;
``loop`` (default false) plays it until ``/call/inject_stream/terminate``.
"""
from __future__ import annotations

from typing import Any

from sipgw.config import Config
from sipgw.injections import InjectError, InjectionManager
from sipgw.rest.errors import ApiError
from sipgw.rest.fields import NOT_IN_STREAM_NAME, boolean_field, missing, string_field
from sipgw.rest.push import sound_path
from sipgw.rest.router import Router

_ID_MAX = 128
_NAME_MAX = 128


class InjectApi:
    """``/call/inject_stream/startup``, ``/call/inject_stream/terminate``,
    ``/call/inject_sound``."""

    router = Router()

    def __init__(self, manager: InjectionManager, config: Config | None = None) -> None:
        self._manager = manager
        self._config = config or Config()

    @router.route("/call/inject_stream/startup")
    def inject_stream(self, request: Any, body: dict) -> None:
        """The audio of ``streamName`` (transcoded to the call's codec) and, when the call
        negotiated H264, its video, sent to the callee."""
        call_id = _call_id(body)
        name = string_field(body, "streamName", required=True, max_len=_NAME_MAX,
                            forbidden=NOT_IN_STREAM_NAME)
        self._run(self._manager.inject_stream, call_id, name)
        return None

    @router.route("/call/inject_stream/terminate")
    def terminate(self, request: Any, body: dict) -> None:
        """Stop what is injected into the call (a stream or a sound file)."""
        self._run(self._manager.terminate, _call_id(body))
        return None

    @router.route("/call/inject_sound")
    def inject_sound(self, request: Any, body: dict) -> None:
        """A sound file of sound_dir played to the callee, once or looped."""
        call_id = _call_id(body)
        field = "soundFile" if not missing(body.get("soundFile")) or missing(
            body.get("fileName")) else "fileName"
        path = sound_path(body, self._config.sound_dir, field, name_field=field)
        loop = boolean_field(body, "loop", False)
        self._run(self._manager.inject_sound, call_id, path, body[field], loop)
        return None

    @staticmethod
    def _run(method, *args):
        try:
            return method(*args)
        except InjectError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None


def _call_id(body: dict) -> str:
    return string_field(body, "callId", required=True, max_len=_ID_MAX,
                        forbidden=NOT_IN_STREAM_NAME)
