"""Any node answers any REST request: a layer in front of the REST router.

A request that names a call or a stream goes to the node that owns it (looked up in Redis),
``/call/startup`` to the node the placement policy picks (callId and stream name claimed in
Redis first: 409 as on one node), and the ``find_all`` methods ask every live node and merge
the answers.  Node-to-node requests carry the cluster token and the hop header; such a
request is served locally and never forwarded again.  Anything this layer cannot route
(admission refused, a bad body, a method it does not know) is served by the router as on a
single node, so errors stay the router's.
"""
from __future__ import annotations

import json
from io import BytesIO

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from sipgw.loglimit import LogLimiter, held_back
from sipgw.policy import Denied, route_scope
from sipgw.quotas import _MonotonicClock
from sipgw.rest.admission import admit, cors
from sipgw.rest.calls import _found, parse_call_request
from sipgw.rest.errors import ApiError, Conflict, error_response
from sipgw.rest.router import ALLOW_HEADERS, ALLOW_METHODS, parse_body

from .records import NODE_LOST, choose, lost_call
from .store import deferred

log = Logger(namespace="sipgw.cluster")

HOP_HEADER = b"x-sipgw-cluster-hop"
MAX_ANSWER = 16 * 1024 * 1024

# Every live node is asked; the lists are merged (404 from all: 404).
FAN_OUT = {"/call/find_all", "/stream/find_all", "/push/find_all", "/recorder/find_all",
           "/push/find"}
# Served by the node that owns the call named by callId.
BY_CALL = {"/call/find", "/call/terminate", "/call/hold", "/call/unhold", "/call/transfer",
           "/call/send_dtmf"}
# Served by the node that owns the stream (name, streamName) or media session
# (mediaSessionId); when neither is known, by the first node that knows it.
BY_STREAM = {"/stream/find", "/stream/terminate", "/push/startup", "/push/mute", "/push/unmute",
             "/push/sound_on", "/push/sound_off", "/push/terminate", "/recorder/startup",
             "/recorder/terminate", "/stream/startRecording", "/stream/stopRecording"}


class Answer:
    """An HTTP answer from a node (or made here): code and JSON body (None: empty)."""

    def __init__(self, code: int, body=None) -> None:
        self.code = code
        self.body = body


class NodeClient:
    """POSTs a REST request to another node with the cluster token (twisted.web's Agent,
    one persistent pool); fires an ``Answer``."""

    def __init__(self, reactor, node_id: str, token: str, timeout: int) -> None:
        from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory

        class QuietFactory(_HTTP11ClientFactory):
            noisy = False

        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 20
        self.pool._factory = QuietFactory
        self.agent = Agent(reactor, pool=self.pool, connectTimeout=timeout)
        self.node_id = node_id
        self._token = token
        self.timeout = timeout

    def post(self, base_url: str, path: str, body: dict) -> defer.Deferred:
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        from sipgw.hooks import read_body
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"sipgw"],
                           b"Authorization": [b"Bearer " + self._token.encode("ascii")],
                           HOP_HEADER: [self.node_id.encode("ascii")]})
        url = (base_url.rstrip("/") + "/rest-api" + path).encode("ascii")
        data = json.dumps(body).encode("utf-8")
        d = self.agent.request(b"POST", url, headers, FileBodyProducer(BytesIO(data)))

        def read(response):
            return read_body(response, MAX_ANSWER).addCallback(
                lambda raw: Answer(response.code, json.loads(raw) if raw.strip() else None))
        d.addCallback(read)
        timer = self.reactor.callLater(self.timeout, d.cancel)

        def done(result):
            if timer.active():
                timer.cancel()
            return result
        return d.addBoth(done)

    def close(self) -> defer.Deferred:
        return self.pool.closeCachedConnections()


class ClusterRest(resource.Resource):
    """Wraps the REST router (``inner``) of this node."""

    isLeaf = True

    def __init__(self, inner, node, client: NodeClient, access, config, run=deferred) -> None:
        super().__init__()
        self.inner = inner
        self.max_body = inner.max_body
        self.run = run  # runs a store coroutine: on the asyncio loop (tests: in place)
        self.node = node  # ClusterNode: live nodes, stream owners, the store
        self.client = client
        self.access = access
        self.config = config
        self._log_limit = LogLimiter(_MonotonicClock())  # a peer node's failures, per path

    def render(self, request: server.Request):
        path = "/" + "/".join(s.decode("utf-8", "replace") for s in request.postpath)
        path = path.rstrip("/") or "/"
        method = request.method
        forwarded = request.getHeader(HOP_HEADER) is not None
        if forwarded and self.access.is_token(request.getHeader(b"authorization"),
                                              self.config.cluster_token):
            return self.inner.render(request)  # from another node: this node's own answer
        if path != "/call/startup" and path not in FAN_OUT | BY_CALL | BY_STREAM:
            return self.inner.render(request)
        if method not in (b"POST", b"GET"):
            return self.inner.render(request)
        try:
            admit(request, self.access, route_scope(path))
            if method == b"GET":
                body = {}
            else:
                declared = (request.getHeader(b"content-type") or b"").split(b";")[0]
                if declared.strip().lower() != b"application/json":
                    return self.inner.render(request)
                request.content.seek(0)
                body = parse_body(request.content.read(self.inner.max_body + 1))
        except (Denied, ApiError):
            return self.inner.render(request)  # the router refuses it as on one node
        d = defer.ensureDeferred(self._route(request, path, body))
        d.addErrback(lambda f: self._fail(request, path, f))
        d.addErrback(lambda f: log.failure("cluster: answering failed", f))
        return server.NOT_DONE_YET

    # -- routing -----------------------------------------------------------------------
    async def _route(self, request, path: str, body: dict) -> None:
        if path == "/call/startup":
            return await self._startup(request, body)
        if path in FAN_OUT or (path == "/call/find" and not body.get("callId")):
            return self._answer(request, path, await self._fan_out(path, body))
        if path in BY_CALL:
            return await self._by_call(request, path, body)
        owner = await self._stream_owner(body)
        if owner == self.node.id:
            return self._local(request)
        if owner is not None and owner in self.node.live:
            return self._answer(request, path, await self._ask(owner, path, body))
        return self._answer(request, path, await self._first_found(path, body))

    async def _startup(self, request, body: dict) -> None:
        try:
            call = parse_call_request(body)
        except ApiError:
            return self._local(request)  # the router's own 400
        live = dict(self.node.live)
        if self.node.id not in live:
            live[self.node.id] = self.node.record()
        turn = 0
        if self.config.cluster_placement == "round-robin":
            turn = await self.run(self.node.store.next_turn())
        target = choose(list(live.values()), self.config.cluster_placement, self.node.id, turn)
        known = {"callId": call.call_id, "status": "NEW", "info": "", "sipStatus": 0,
                 "caller": call.sip_login, "callee": call.callee, "incoming": False,
                 "hasAudio": call.has_audio, "hasVideo": call.has_video,
                 "streamName": call.stream_name, "appKey": call.app_key, "history": ["NEW"]}
        taken = await self.run(self.node.store.claim_call(
            call.call_id, target, call.stream_name, known,
            self.config.cluster_request_timeout + self.config.cluster_node_ttl))
        if taken == "callId":
            raise Conflict(f"callId {call.call_id} is already in use", "callId")
        if taken:
            raise Conflict("Stream name is already in use",
                           "toStream" if body.get("toStream") else "rtmpStream")
        self.node.count_call(target.id)
        body = {**body, "callId": call.call_id}
        log.debug("cluster: call {call_id} placed on {node}", call_id=call.call_id,
                  node=target.id)
        if target.id == self.node.id:
            request.content = BytesIO(json.dumps(body).encode("utf-8"))
            self._local(request)
            answer_code = request.code
        else:
            answer = await self._ask(target.id, "/call/startup", body)
            answer_code = answer.code
            self._answer(request, "/call/startup", answer)
        if answer_code != 200:
            await self.run(self.node.store.release_claim(call.call_id, target.id,
                                                         call.stream_name))

    async def _by_call(self, request, path: str, body: dict) -> None:
        call_id = body.get("callId")
        record = None
        if isinstance(call_id, str) and call_id:
            record = await self.run(self.node.store.call(call_id))
        owner = record and record.get("node")
        if not owner or owner == self.node.id and \
                record.get("incarnation") == self.node.incarnation:
            return self._local(request)
        live = self.node.live.get(owner)
        if live is not None and live.incarnation == record.get("incarnation"):
            answer = await self._ask(owner, path, body)
            if answer.code == 503 and path == "/call/find" and record.get("call"):
                answer = Answer(200, _found([record["call"]]))  # its last known state
            return self._answer(request, path, answer)
        # its node is lost (or restarted since): the call is FAILED "Node lost"
        call = lost_call(record)["call"]
        if not call:
            return self._answer(request, path, Answer(404, {"error": "Call not found",
                                                            "field": None}))
        if path == "/call/find":
            status = body.get("status")
            if isinstance(status, str) and status and status.upper() != call["status"]:
                return self._answer(request, path, Answer(404, {"error": "Call not found",
                                                                "field": None}))
            return self._answer(request, path, Answer(200, _found([call])))
        if path == "/call/terminate":
            return self._answer(request, path, Answer(200))
        raise ApiError(409, f"call {call_id} is {call['status']} ({NODE_LOST})", "callId")

    async def _stream_owner(self, body: dict) -> str | None:
        for field in ("name", "streamName"):
            value = body.get(field)
            if isinstance(value, str) and value:
                return self.node.stream_nodes.get(value)
        value = body.get("mediaSessionId")
        if isinstance(value, str) and value:
            return await self.run(self.node.store.media_session_owner(value))
        return None

    # -- asking the nodes ------------------------------------------------------------------
    async def _ask(self, node_id: str, path: str, body: dict) -> Answer:
        node = self.node.live.get(node_id)
        if node is None:
            return Answer(503, {"error": f"node {node_id} is not reachable", "field": None})
        try:
            return await self.client.post(node.url, path, body)
        except Exception as exc:
            held = self._log_limit.allow((node_id, path))
            if held is not None:
                log.warn("cluster: {path} to node {node} failed: {error}{more}", path=path,
                         node=node_id, error=type(exc).__name__, more=held_back(held))
            return Answer(503, {"error": f"node {node_id} did not answer", "field": None})

    async def _ask_all(self, path: str, body: dict) -> list[tuple[str, Answer]]:
        ids = sorted(self.node.live, key=lambda i: (i != self.node.id, i))
        answers = await defer.gatherResults(
            [defer.ensureDeferred(self._ask(i, path, body)) for i in ids])
        return list(zip(ids, answers))

    async def _fan_out(self, path: str, body: dict) -> Answer:
        merged, first_error, not_found = [], None, None
        for node_id, answer in await self._ask_all(path, body):
            if answer.code == 200 and isinstance(answer.body, list):
                merged += [item for item in answer.body if self._owned(path, item, node_id)]
            elif answer.code == 404:
                not_found = not_found or answer
            elif answer.code != 503:
                first_error = first_error or answer
        if first_error is not None:
            return first_error
        if path.startswith("/call/"):
            status = body.get("status")
            lost = [c for c in await self.run(self.node.store.lost_calls())
                    if not isinstance(status, str) or not status
                    or c.get("status") == status.upper()]
            if lost:
                merged += _found(lost)
            merged = merged[-self.config.call_find_limit:]
        if merged:
            return Answer(200, merged)
        return not_found or Answer(404, {"error": "Not found", "field": None})

    def _owned(self, path: str, item, node_id: str) -> bool:
        """An edge node lists the streams it pulls too: only the origin's entry is kept."""
        if not path.startswith("/stream/") or not isinstance(item, dict):
            return True
        owner = self.node.stream_nodes.get(item.get("name"))
        return owner is None or owner == node_id

    async def _first_found(self, path: str, body: dict) -> Answer:
        answer = Answer(404, {"error": "Not found", "field": None})
        for node_id in sorted(self.node.live, key=lambda i: (i != self.node.id, i)):
            found = await self._ask(node_id, path, body)
            if found.code != 404:
                return found
            answer = found
        return answer

    # -- answering ---------------------------------------------------------------------------
    def _local(self, request) -> None:
        result = self.inner.render(request)
        if result is not server.NOT_DONE_YET:
            request.write(result)
            request.finish()

    def _answer(self, request, path: str, answer: Answer) -> None:
        if request.finished or request._disconnected:
            return
        payload = b"" if answer.body is None else json.dumps(answer.body).encode("utf-8")
        request.setResponseCode(answer.code)
        cors(request, self.access, methods=ALLOW_METHODS, headers=ALLOW_HEADERS)
        if answer.body is None:
            request.defaultContentType = None
        else:
            request.setHeader(b"Content-Type", b"application/json")
        request.setHeader(b"Content-Length", b"%d" % len(payload))
        log.info("{method} /rest-api{path} -> {code} (cluster)",
                 method=request.method.decode("ascii", "replace"), path=path, code=answer.code)
        request.write(payload)
        request.finish()

    def _fail(self, request, path: str, failure) -> None:
        if type(failure.value).__module__.startswith("redis.") or failure.check(OSError):
            log.warn("cluster: {path}: Redis unreachable ({error})", path=path,
                     error=type(failure.value).__name__)
            self._answer(request, path, Answer(503, {
                "error": "the cluster's shared state (Redis) cannot be reached", "field": None}))
            return
        code, body = error_response(failure.value)
        if code >= 500:
            log.failure("cluster: {path} failed", failure, path=path)
        self._answer(request, path, Answer(code, body))

