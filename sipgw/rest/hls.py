"""HLS on its own port (``hls_port``): ``/NAME/index.m3u8``, ``/NAME/init-N.mp4``,
``/NAME/seg-N.m4s`` and ``/NAME/part-N.m4s``, admitted as REST is (a trusted network, or a
bearer token with the ``streams`` scope).  The first playlist request of a stream starts its
muxing job (``HlsManager``) and is answered once the first segment exists; ``_HLS_msn`` and
``_HLS_part`` make a blocking playlist reload (RFC 8216bis §6.2.5.2)."""
from __future__ import annotations

from urllib.parse import unquote

from twisted.internet import defer
from twisted.web import resource, server

from sipgw.policy import AccessPolicy, Denied
from sipgw.rest.admission import admit, cors
from sipgw.media.hls import TooFar, Unavailable
from sipgw.rest.errors import ApiError, BadRequest, NotFound, write_error

SCOPE = "streams"
PLAYLIST = "index.m3u8"
TYPES = {"m3u8": b"application/vnd.apple.mpegurl", "mp4": b"video/mp4", "m4s": b"video/iso.segment"}


class HlsResource(resource.Resource):
    isLeaf = True

    def __init__(self, manager, access: AccessPolicy | None = None) -> None:
        super().__init__()
        self._manager = manager
        self._access = access or AccessPolicy()

    def render(self, request: server.Request):
        cors(request, self._access, headers=b"Authorization")
        if request.method == b"OPTIONS":
            request.setResponseCode(204)
            request.setHeader(b"Access-Control-Allow-Methods", b"GET, HEAD, OPTIONS")
            return b""
        segments = [unquote(s.decode("utf-8", "replace")) for s in request.postpath]
        try:
            if request.method not in (b"GET", b"HEAD"):
                request.setHeader(b"Allow", b"GET, HEAD, OPTIONS")
                request.setResponseCode(405)
                return b""
            admit(request, self._access, SCOPE)
            if len(segments) != 2 or not segments[0]:
                raise NotFound("use /<streamName>/index.m3u8")
            name, file = segments
            client = getattr(request.getClientAddress(), "host", None)
            if file == PLAYLIST:
                msn, part = _directive(request, "_HLS_msn"), _directive(request, "_HLS_part")
                if part is not None and msn is None:
                    raise BadRequest("_HLS_part needs _HLS_msn", "_HLS_part")
                answer = self._manager.playlist(name, msn, part, client=client)
            else:
                answer = self._manager.fetch(name, file, client=client)
        except (Denied, ApiError) as exc:
            return write_error(request, exc)
        d = defer.ensureDeferred(answer)
        gone: list = []
        request.notifyFinish().addBoth(lambda reason: (gone.append(reason), d.cancel()))

        def send(body):
            if isinstance(body, str):
                body = body.encode("ascii")
            return self._send(request, file, body)

        def refuse(failure):
            if failure.check(TooFar):
                return write_error(request, BadRequest(str(failure.value), failure.value.field))
            failure.trap(Unavailable)
            request.setHeader(b"Retry-After", b"1")
            return write_error(request, ApiError(503, str(failure.value)))

        d.addCallbacks(send, refuse)
        d.addCallback(lambda body: gone or (request.write(body), request.finish()))
        d.addErrback(lambda failure: failure.trap(defer.CancelledError) if gone else failure)
        return server.NOT_DONE_YET

    @staticmethod
    def _send(request, file: str, body: bytes | None) -> bytes:
        if body is None:
            return write_error(request, NotFound("no such stream or segment"))
        request.setHeader(b"Content-Type", TYPES[file.rpartition(".")[2]])
        request.setHeader(b"Cache-Control", b"no-cache" if file == PLAYLIST else b"max-age=60")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body


def _directive(request, name: str) -> int | None:
    """The decimal-integer value of the query parameter ``name`` (RFC 8216bis §6.2.5), None
    when absent; a clear 400 naming it when malformed or repeated."""
    values = request.args.get(name.encode("ascii"))
    if values is None:
        return None
    raw = values[0].decode("ascii", "replace") if len(values) == 1 else ""
    # ASCII digits only: int() takes "²", "+1", " 1" and "1_0"
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 20:
        raise BadRequest(f"{name} must be one decimal integer", name)
    return int(raw)
