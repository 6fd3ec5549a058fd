"""WHEP playback (IETF WHEP, the playback twin of WHIP, RFC 9725) of any stream on the REST
port, beside the WCS websocket players and sharing their viewer code and limits:

- ``POST /whep/<streamName>`` with an ``application/sdp`` offer: ``201 Created``, the answer
  (every ICE candidate in it), ``Location: /whep/<streamName>/<sessionId>`` and an ``ETag``.
- ``DELETE /whep/<streamName>/<sessionId>``: stop; ``200``.
- ``PATCH /whep/<streamName>/<sessionId>`` with an ``application/trickle-ice-sdpfrag``
  (RFC 8840): the player's trickled candidates (and ``a=end-of-candidates``), ``204``; the
  ``If-Match`` ETag must be the session's (``412``); an ICE restart (another ufrag/pwd) is
  not supported: ``422`` (RFC 9725 §4.3.1); at most ``whep_max_trickle_candidates`` a
  session. The answer always carries every candidate of ours: nothing trickles back.
- ``OPTIONS``: CORS preflight, with ``Accept-Post: application/sdp``.

Each session is a ``sipgw.webrtc.viewer.Viewer`` counted with the websocket players of the
stream (``max_viewers_per_stream``) through the players' factory, which also tells it when
the stream ends. Admitted as REST is, with the ``streams`` scope; errors are the REST API's
``{"error": ..., "field": ...}``.
"""
from __future__ import annotations

import asyncio
import secrets
from urllib.parse import quote

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from sipgw.policy import AccessPolicy, Denied
from sipgw.quotas import check
from sipgw.rest.admission import admit, cors
from sipgw.rest.errors import ApiError, BadRequest, NotFound, write_error
from sipgw.webrtc.viewer import NoCommonCodecs, Viewer

SDP_TYPE = b"application/sdp"
SCOPE = "streams"
STREAM_NOT_FOUND = "Stream not found"
SESSION_NOT_FOUND = "WHEP session not found"
TRICKLE_TYPE = b"application/trickle-ice-sdpfrag"
NO_RESTART = "ICE restarts are not supported: start a new session (POST)"
_MAX_NAME = 128

log = Logger(namespace="sipgw.whep")


class SdpFragment:
    """What an application/trickle-ice-sdpfrag (RFC 8840 §9) carries for us."""

    def __init__(self) -> None:
        self.ufrag = self.pwd = ""
        self.candidates: list[tuple[str, str | None]] = []  # (candidate value, mid)
        self.end = False


def parse_sdpfrag(text: str, max_lines: int = 200) -> SdpFragment:
    """The ufrag/pwd, candidates (with the mid of their m= section) and end-of-candidates;
    ValueError for anything that is not SDP lines."""
    fragment = SdpFragment()
    mid = None
    lines = [line.strip() for line in text.replace("\r\n", "\n").split("\n") if line.strip()]
    if len(lines) > max_lines:
        raise ValueError(f"more than {max_lines} lines")
    for line in lines:
        if len(line) < 2 or line[1] != "=":
            raise ValueError(f"not an SDP line: {line[:40]!r}")
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[6:]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line[12:]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line[10:]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append((line[12:], mid))
        elif line == "a=end-of-candidates":
            fragment.end = True
    return fragment


class WhepResource(resource.Resource):
    """``/whep/``: one Viewer per session, by session id."""

    isLeaf = True

    def __init__(self, registry, players, config, access: AccessPolicy | None = None) -> None:
        super().__init__()
        self._registry = registry
        self._players = players  # SignallingFactory: viewers_of, watch, unwatch, ice_servers
        self._config = config
        self._access = access or AccessPolicy()
        self.sessions: dict[str, Viewer] = {}

    def render(self, request: server.Request):
        cors(request, self._access, methods=b"POST, DELETE, PATCH, OPTIONS",
             headers=b"Authorization, Content-Type, If-Match",
             expose=b"Location, ETag, Accept-Post")
        segments = [s.decode("utf-8", "replace") for s in request.postpath]
        while segments and segments[-1] == "":
            segments.pop()
        method = request.method
        try:
            if not 1 <= len(segments) <= 2 or not segments[0] or len(segments[0]) > _MAX_NAME:
                raise NotFound("unknown WHEP resource: use /whep/<streamName>")
            allowed = (b"POST", b"OPTIONS") if len(segments) == 1 else \
                (b"PATCH", b"DELETE", b"OPTIONS")
            if method == b"OPTIONS":
                return self._preflight(request, allowed)
            admit(request, self._access, SCOPE)
            if len(segments) == 1 and method == b"POST":
                return self._offer(request, segments[0])
            if len(segments) == 2 and method == b"DELETE":
                return self._stop(request, *segments)
            if len(segments) == 2 and method == b"PATCH":
                return self._trickle(request, *segments)
            request.setHeader(b"Allow", b", ".join(allowed))
            raise ApiError(405, f"{method.decode('ascii', 'replace')} not allowed: this WHEP "
                                f"resource takes {' or '.join(m.decode() for m in allowed)}")
        except (ApiError, Denied) as exc:
            return write_error(request, exc)

    # -- methods ------------------------------------------------------------------------
    def _offer(self, request: server.Request, name: str):
        declared = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if declared != SDP_TYPE:
            raise ApiError(415, "Content-Type must be application/sdp")
        stream = self._registry.playable(name)
        if stream is None or stream.ended:
            raise NotFound(STREAM_NOT_FOUND)
        request.content.seek(0)
        try:
            offer = request.content.read().decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest("the offer is not UTF-8") from None
        if not offer.startswith("v=0"):
            raise BadRequest("the body must be an SDP offer (v=0 ...)")
        check(self._players.viewers_of(stream), self._config.max_viewers_per_stream,
              f"viewers of {name}", "max_viewers_per_stream")
        session_id = secrets.token_hex(16)
        viewer = Viewer(stream, media_session_id=session_id, ice_servers=self._players.ice_servers,
                        on_state=lambda status, info: self._state(session_id, status))
        self.sessions[session_id] = viewer
        self._players.watch(stream, self, session_id)
        log.info("whep: play {name} as {id}", name=name, id=session_id)
        gone: list = []
        request.notifyFinish().addErrback(gone.append)
        answered = defer.Deferred.fromFuture(asyncio.ensure_future(viewer.answer(offer)))
        answered.addCallbacks(lambda sdp: self._answered(request, name, session_id, sdp, gone),
                              lambda failure: self._failed(request, session_id, failure, gone))
        return server.NOT_DONE_YET

    def _answered(self, request, name: str, session_id: str, sdp: str, gone: list) -> None:
        if gone or session_id not in self.sessions:
            self._end(session_id)
            return
        request.setResponseCode(201)
        request.setHeader(b"Content-Type", SDP_TYPE)
        request.setHeader(b"Location", f"/whep/{quote(name, safe='')}/{session_id}".encode())
        request.setHeader(b"ETag", f'"{session_id}"'.encode())
        payload = sdp.encode("utf-8")
        request.setHeader(b"Content-Length", b"%d" % len(payload))
        request.write(payload)
        request.finish()

    def _failed(self, request, session_id: str, failure, gone: list) -> None:
        self._end(session_id)
        if gone:
            return
        if failure.check(NoCommonCodecs):
            refusal = BadRequest("No common codecs")
        else:
            refusal = BadRequest(f"Bad SDP: {failure.getErrorMessage()}"[:200])
        request.write(write_error(request, refusal))
        request.finish()

    def _stop(self, request, name: str, session_id: str) -> bytes:
        viewer = self.sessions.get(session_id)
        if viewer is None or viewer.stream.name != name:
            raise NotFound(SESSION_NOT_FOUND)
        self._end(session_id)
        log.info("whep: {id} stopped by DELETE", id=session_id)
        request.setResponseCode(200)
        request.setHeader(b"Content-Length", b"0")
        request.defaultContentType = None
        return b""

    def _trickle(self, request, name: str, session_id: str):
        """RFC 8840 candidates from the player for its session (RFC 9725 §4.3.1)."""
        viewer = self.sessions.get(session_id)
        if viewer is None or viewer.stream.name != name:
            raise NotFound(SESSION_NOT_FOUND)
        declared = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        if declared != TRICKLE_TYPE:
            raise ApiError(415, "Content-Type must be application/trickle-ice-sdpfrag")
        match = (request.getHeader(b"if-match") or b"").decode("latin-1").strip()
        if match and match != "*" and match != f'"{session_id}"':
            raise ApiError(412, "If-Match does not match the session's ETag")
        request.content.seek(0)
        try:
            fragment = parse_sdpfrag(request.content.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest(f"bad trickle-ice-sdpfrag: {exc}"[:200]) from None
        remote = viewer.remote_ice()
        if (fragment.ufrag and fragment.ufrag != remote[0]) or \
                (fragment.pwd and fragment.pwd != remote[1]):
            raise ApiError(422, NO_RESTART)
        limit = self._config.whep_max_trickle_candidates
        if limit and viewer.trickled + len(fragment.candidates) > limit:
            raise ApiError(429, f"too many trickled candidates: at most "
                                f"whep_max_trickle_candidates={limit} a session")
        try:
            parsed = viewer.parse_candidates(fragment.candidates)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        viewer.trickled += len(parsed)
        added = defer.Deferred.fromFuture(asyncio.ensure_future(
            viewer.add_remote_candidates(parsed, fragment.end)))

        def done(_):
            request.setResponseCode(204)
            request.defaultContentType = None
            request.finish()

        def failed(failure):
            request.write(write_error(request, BadRequest(
                f"candidate refused: {failure.getErrorMessage()}"[:200])))
            request.finish()
        added.addCallbacks(done, failed)
        return server.NOT_DONE_YET

    # -- the session's end ----------------------------------------------------------------
    def _state(self, session_id: str, status: str) -> None:
        if status in ("STOPPED", "FAILED"):
            self._end(session_id)

    def stream_ended(self, session_id: str, stream) -> None:
        """The players' factory: the call behind the stream ended."""
        self._end(session_id)

    def _end(self, session_id: str) -> None:
        viewer = self.sessions.pop(session_id, None)
        if viewer is not None:
            self._players.unwatch(viewer.stream, self, session_id)
            defer.Deferred.fromFuture(asyncio.ensure_future(viewer.close()))

    # -- HTTP -----------------------------------------------------------------------------
    def _preflight(self, request, allowed) -> bytes:
        request.setResponseCode(204)
        request.setHeader(b"Accept-Post", SDP_TYPE)
        request.setHeader(b"Allow", b", ".join(allowed))
        request.defaultContentType = None
        return b""
