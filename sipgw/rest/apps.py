"""The WCS ``/app/*`` REST methods: the applications (appKey -> hook URL) of sipgw/hooks.py.

Changes last until the daemon restarts; ``rest_apps`` holds the apps it starts with.
"""
from __future__ import annotations

from typing import Any

from sipgw.hooks import METHODS, App, Hooks, check_url
from sipgw.rest.errors import BadRequest, NotFound
from sipgw.rest.fields import NOT_IN_STREAM_NAME, string_field
from sipgw.rest.router import Router

APP_NOT_FOUND = "App not found"
_KEY_MAX = 128
_URL_MAX = 2048


class AppApi:
    """``/app/add {appKey, url, name?, restMethods?}``, ``/app/find_all``,
    ``/app/remove {appKey}``."""

    router = Router()

    def __init__(self, hooks: Hooks) -> None:
        self._hooks = hooks

    @router.route("/app/add")
    def add(self, request: Any, body: dict) -> dict:
        """Adds or replaces the app of ``appKey``; ``restMethods`` (a list, or a string of
        names separated by commas) limits the hooks it receives; a denied URL is a 403."""
        app_key = string_field(body, "appKey", required=True, max_len=_KEY_MAX,
                               forbidden=NOT_IN_STREAM_NAME)
        name = string_field(body, "name", max_len=_KEY_MAX, spaces=True)
        url = string_field(body, "url", required=True, max_len=_URL_MAX)
        try:
            check_url(url, self._hooks.egress, "url")
        except ValueError as exc:
            raise BadRequest(str(exc), "url") from None
        app = App(app_key, url, _methods(body.get("restMethods")), name)
        self._hooks.add(app)
        return app.to_json()

    @router.route("/app/find_all", get=True)
    def find_all(self, request: Any, body: dict) -> list[dict]:
        """Each app with its event counters: ``queued``, ``dropped`` (queue full) and
        ``failed`` (an error or no answer in time)."""
        return [{**app.to_json(), **self._hooks.counters(app.app_key)}
                for app in self._hooks.apps.values()]

    @router.route("/app/remove")
    def remove(self, request: Any, body: dict) -> None:
        app_key = string_field(body, "appKey", required=True, max_len=_KEY_MAX,
                               forbidden=NOT_IN_STREAM_NAME)
        if self._hooks.remove(app_key) is None:
            raise NotFound(APP_NOT_FOUND, "appKey")


def _methods(value: Any) -> frozenset:
    if value is None or value == "" or value == []:
        return frozenset()
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest("restMethods must be a list of hook names", "restMethods")
    unknown = sorted(set(value) - set(METHODS))
    if unknown:
        raise BadRequest(f"restMethods: unknown {', '.join(unknown)[:200]} (known: "
                         f"{', '.join(METHODS)})", "restMethods")
    return frozenset(value)
