"""``/metrics`` (Prometheus text format) and ``/health`` (for load balancers) on the REST
port, admitted as REST routes are: a client in ``trusted_networks``, or a bearer token with
the ``metrics`` (or ``admin``) scope. Both answer GET (and HEAD)."""
from __future__ import annotations

import json

from twisted.web import resource

from sipgw.policy import AccessPolicy, Denied
from sipgw.rest.admission import admit
from sipgw.rest.errors import ApiError, write_error


class _Guarded(resource.Resource):
    """GET of what ``source`` reports, for an admitted client; ``answer`` says how."""

    isLeaf = True

    def __init__(self, source, access: AccessPolicy) -> None:
        super().__init__()
        self._source = source
        self._access = access

    def render(self, request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"Allow", b"GET, HEAD")
            method = request.method.decode("ascii", "replace")
            return write_error(request, ApiError(405, f"{method} not allowed: GET only"))
        return self.render_GET(request)

    def render_GET(self, request) -> bytes:
        try:
            admit(request, self._access, "metrics")
        except Denied as denied:
            return write_error(request, denied)
        request.setHeader(b"Cache-Control", b"no-store")
        return self.answer(request)

    def answer(self, request) -> bytes:
        raise NotImplementedError


class MetricsResource(_Guarded):
    """``metrics.exposition()`` -> (content type, body), at each scrape."""

    def answer(self, request) -> bytes:
        content_type, body = self._source.exposition()
        request.setHeader(b"Content-Type", content_type)
        return body


class HealthResource(_Guarded):
    """``health.report()`` -> (200 or 503, JSON body)."""

    def answer(self, request) -> bytes:
        return json_answer(request, *self._source.report())


def json_answer(request, code: int, body: dict) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8")
