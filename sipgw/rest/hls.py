"""HLS on its own port (``hls_port``): ``/NAME/index.m3u8``, ``/NAME/init-N.mp4`` and
``/NAME/seg-N.m4s``, admitted as REST is (a trusted network, or a bearer token with the
``streams`` scope).  The first playlist request of a stream starts its muxing job
(``HlsManager``) and is answered once the first segment exists."""
from __future__ import annotations

from urllib.parse import unquote

from twisted.internet import defer
from twisted.web import resource, server

from sipgw.policy import AccessPolicy, Denied
from sipgw.rest.admission import admit, cors
from sipgw.rest.errors import NotFound, write_error

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
            if file != PLAYLIST:
                return self._send(request, file, self._manager.part(name, file))
        except (Denied, NotFound) as exc:
            return write_error(request, exc)
        gone: list = []
        request.notifyFinish().addBoth(gone.append)
        d = defer.ensureDeferred(self._manager.playlist(name))
        d.addCallback(lambda text: self._send(request, file, text and text.encode("ascii")))
        d.addCallback(lambda body: gone or (request.write(body), request.finish()))
        return server.NOT_DONE_YET

    @staticmethod
    def _send(request, file: str, body: bytes | None) -> bytes:
        if body is None:
            return write_error(request, NotFound("no such stream or segment"))
        request.setHeader(b"Content-Type", TYPES[file.rpartition(".")[2]])
        request.setHeader(b"Cache-Control", b"no-cache" if file == PLAYLIST else b"max-age=60")
        request.setHeader(b"Content-Length", b"%d" % len(body))
        return body
