"""``/rest-api/openapi.json``: the OpenAPI 3.1 description of the REST API, shipped beside
this module and held to the server by the REST tests (tests/rest/conftest.py validates every
request and answer they make against it)."""
from __future__ import annotations

import functools
import json
import os
from typing import Any

from sipgw.rest.router import Router

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.json")


@functools.cache
def document() -> dict:
    with open(PATH, encoding="utf-8") as handle:
        return json.load(handle)


class OpenApi:
    """Serves the description (GET, or POST as every route); any valid token may read it."""

    router = Router()

    @router.route("/openapi.json", get=True)
    def openapi(self, request: Any, body: dict) -> dict:
        return document()
