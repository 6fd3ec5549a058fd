"""The WCS ``/push/*`` REST methods: republish a stream to an RTMP server.

The RTMP URL may carry credentials: it is never logged nor echoed in an error, and
answers show it with user, password and query values replaced by ``***``.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from sipgw import sounds
from sipgw.config import Config
from sipgw.egress import EgressPolicy
from sipgw.media.push import RECONNECTING, PushError, PushManager
from sipgw.quotas import check
from sipgw.rest.fields import NOT_IN_STREAM_NAME, boolean_field, string_field
from sipgw.rest.errors import ApiError, BadRequest, NotFound
from sipgw.rest.router import Router

PUSH_NOT_FOUND = "Push not found"
_NAME_MAX = 128
_ID_MAX = 128
_URL_MAX = 2048
# What a RECONNECTING push says instead of its reason: "refused", "timed out" or "not an RTMP
# server" would make /push/startup + /push/find a port scanner.  The reason is in the log.
UNREACHABLE = "cannot publish to the RTMP server (the reason is in sipgw's log)"


class PushApi:
    """``/push/startup``, ``/push/find``, ``/push/find_all``, ``/push/terminate``, and the
    pushed audio: ``/push/mute``, ``/push/unmute``, ``/push/sound_on``, ``/push/sound_off``."""

    router = Router()

    def __init__(self, manager: PushManager, config: Config | None = None) -> None:
        self._manager = manager
        self._config = config = config or Config()
        self._egress = EgressPolicy.from_config(config, "rtmp")

    @router.route("/push/startup")
    def startup(self, request: Any, body: dict) -> dict:
        stream_name = string_field(body, "streamName", required=True, max_len=_NAME_MAX,
                              forbidden=NOT_IN_STREAM_NAME)
        rtmp_url = string_field(body, "rtmpUrl", required=True, max_len=_URL_MAX)
        full_url = boolean_field(body, "rtmpTransponderFullUrl", False)
        options = body.get("options")
        if options in (None, ""):
            options = {}
        if not isinstance(options, dict):
            raise BadRequest("options must be a JSON object", "options")
        action = options.get("action") or ""
        if action not in ("", "mute", "sound_on"):
            raise BadRequest("options.action must be mute or sound_on", "options")
        sound = self._sound(options, "options") if action == "sound_on" else None
        admit(self._egress, self._manager, self._config, rtmp_url)
        try:
            push = self._manager.startup(stream_name, rtmp_url, full_url, options)
        except PushError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None
        push.set_audio(muted=action == "mute", sound=sound)
        return shown(push)

    @router.route("/push/mute")
    def mute(self, request: Any, body: dict) -> dict:
        return self._set_audio(body, muted=True)

    @router.route("/push/unmute")
    def unmute(self, request: Any, body: dict) -> dict:
        return self._set_audio(body, muted=False)

    @router.route("/push/sound_on")
    def sound_on(self, request: Any, body: dict) -> dict:
        return self._set_audio(body, sound=self._sound(body, "soundFile"))

    @router.route("/push/sound_off")
    def sound_off(self, request: Any, body: dict) -> dict:
        return self._set_audio(body, sound=None)

    def _set_audio(self, body: dict, **change) -> dict:
        session_id = string_field(body, "mediaSessionId", required=True, max_len=_ID_MAX)
        push = self._manager.pushes.get(session_id)
        if push is None:
            raise NotFound(PUSH_NOT_FOUND, "mediaSessionId")
        push.set_audio(**change)
        return shown(push)

    def _sound(self, body: dict, field: str) -> tuple[str, bool]:
        """(path, loop) of ``soundFile``: a file name in sound_dir or a built-in sound."""
        return sound_path(body, self._config.sound_dir, field), boolean_field(body, "loop", True)

    @router.route("/push/find")
    def find(self, request: Any, body: dict) -> list[dict]:
        stream_name = string_field(body, "streamName", max_len=_NAME_MAX, forbidden=NOT_IN_STREAM_NAME)
        rtmp_url = string_field(body, "rtmpUrl", max_len=_URL_MAX)
        session_id = string_field(body, "mediaSessionId", max_len=_ID_MAX)
        if not (stream_name or rtmp_url or session_id):
            raise BadRequest("streamName, rtmpUrl or mediaSessionId is required", "streamName")
        return _found(self._manager.find(stream_name, rtmp_url, session_id))

    @router.route("/push/find_all", get=True)
    def find_all(self, request: Any, body: dict) -> list[dict]:
        return _found(self._manager.find())

    @router.route("/push/terminate")
    def terminate(self, request: Any, body: dict) -> None:
        session_id = string_field(body, "mediaSessionId", required=True, max_len=_ID_MAX)
        try:
            self._manager.terminate(session_id)
        except PushError as exc:
            raise ApiError(exc.code, str(exc), exc.field) from None
        return None


def sound_path(body: dict, sound_dir: str, field: str = "soundFile",
               name_field: str = "soundFile") -> str:
    """The path of ``body[name_field]``: a plain file name in ``sound_dir``, else one sipgw
    ships (sipgw/sounds: the pages' ``sample.wav``); 400 naming ``field`` for a name that is
    not a plain file name, 404 when neither has it."""
    name = string_field(body, name_field, required=True, max_len=_NAME_MAX)
    if "/" in name or "\\" in name or name.startswith(".") or "\0" in name:
        raise BadRequest(f"{name_field} must be a file name in sound_dir", field)
    path = os.path.join(sound_dir, name)
    if not os.path.isfile(path):
        path = sounds.builtin(name)
    if path is None:
        raise NotFound("Sound file not found", field)
    return path


def admit(egress: EgressPolicy, manager: PushManager, config: Config, rtmp_url: str) -> None:
    """What every new push passes (/push/startup, SIP as RTMP): rtmp_egress_* for the URL's
    host, max_pushes."""
    try:
        host = urlsplit(rtmp_url).hostname
    except ValueError:
        host = None  # the manager says what is wrong with the URL
    if host:
        egress.check(host, "rtmpUrl")
    check(len(manager.find()), config.max_pushes, "pushes", "max_pushes")


def _found(pushes) -> list[dict]:
    if not pushes:
        raise NotFound(PUSH_NOT_FOUND)
    return [shown(p) for p in pushes]


def shown(push) -> dict:
    """A push as the API shows it: a RECONNECTING push does not say why."""
    answer = push.to_json()
    if answer["status"] == RECONNECTING:
        retry = answer["info"].rpartition("; ")[2]
        answer["info"] = UNREACHABLE + (f"; {retry}" if retry.startswith("next try") else "")
    return answer
