"""The REST forwarding layer of a cluster node (sipgw/cluster/forward.py) over real HTTP/1.1
bytes: where each request goes, what the claims in Redis do, how answers are merged. The other
nodes are a client that answers from a table; Redis is an in-memory store of the same
bookkeeping (the real one is tested on redis-server in tests/interop/test_cluster.py)."""
from __future__ import annotations

import json

import pytest
from twisted.internet import defer
from twisted.web import resource

from rest.conftest import RestClient
from sipgw import config
from sipgw.cluster.forward import Answer, ClusterRest
from sipgw.cluster.records import NodeRecord, lost_call
from sipgw.policy import AccessPolicy

TOKEN = "node-to-node-token-0123456789"
SETTINGS = {"cluster_redis_url": "redis://127.0.0.1:6379/0", "cluster_node_id": "a",
            "cluster_node_url": "http://a.test:8081", "cluster_token": TOKEN}
STARTUP = {"callId": "c1", "callee": "bob", "sipLogin": "alice", "sipDomain": "sip.example.com",
           "toStream": "s1", "sipPassword": "pw-secret"}


def node(node_id, calls=0):
    return NodeRecord(node_id, f"http://{node_id}.test:8081", "life-" + node_id, calls)


class MemoryStore:
    """The claims and records RedisStore keeps, in dicts."""

    def __init__(self):
        self.calls: dict[str, dict] = {}
        self.streams: dict[str, str] = {}
        self.media_sessions: dict[str, str] = {}
        self.lost: list[dict] = []
        self.turns = 0

    async def next_turn(self):
        self.turns += 1
        return self.turns

    async def claim_call(self, call_id, target, stream, call=None, ttl=None):
        self.claim_ttl = ttl
        if call_id in self.calls:
            return "callId"
        if stream in self.streams:
            return "toStream"
        self.calls[call_id] = {"node": target.id, "incarnation": target.incarnation, "call": call}
        self.streams[stream] = target.id
        return ""

    async def release_claim(self, call_id, node_id, stream):
        self.calls.pop(call_id, None)
        if self.streams.get(stream) == node_id:
            del self.streams[stream]

    async def call(self, call_id):
        return self.calls.get(call_id)

    async def lost_calls(self):
        return list(self.lost)

    async def media_session_owner(self, media_session_id):
        return self.media_sessions.get(media_session_id)


class FakeNode:
    """ClusterNode as the layer reads it: this node a, live nodes, stream owners, the store."""

    def __init__(self, *live):
        self.id = "a"
        self.incarnation = "life-a"
        self.live = {n.id: n for n in live}
        self.stream_nodes: dict[str, str] = {}
        self.store = MemoryStore()
        self.counted: list[str] = []

    def record(self):
        return self.live["a"]

    def count_call(self, node_id):
        self.counted.append(node_id)


class TableClient:
    """The other nodes: answers by (node URL, path); records every request."""

    def __init__(self):
        self.answers: dict[tuple[str, str], Answer] = {}
        self.sent: list[tuple[str, str, dict]] = []

    def post(self, base_url, path, body):
        self.sent.append((base_url, path, body))
        return defer.succeed(self.answers.get((base_url, path), Answer(404, {"error": "x"})))


class LocalRouter(resource.Resource):
    """This node's own router: records what it serves, answers ``code`` and ``body``."""

    isLeaf = True
    max_body = 65536

    def __init__(self):
        super().__init__()
        self.served: list[tuple[str, dict]] = []
        self.code, self.body = 200, None

    def render(self, request):
        request.content.seek(0)
        raw = request.content.read()
        self.served.append((b"/".join(request.postpath).decode(), json.loads(raw or b"{}")))
        request.setResponseCode(self.code)
        if self.body is None:
            return b""
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(self.body).encode()


@pytest.fixture
def parts():
    """(node a with b and c live, the other nodes, the local router, an HTTP client)."""
    cluster_config = config.load(overrides=SETTINGS)
    me = FakeNode(node("a"), node("b"), node("c"))
    others, router = TableClient(), LocalRouter()
    rest = ClusterRest(router, me, others, AccessPolicy.from_config(cluster_config),
                       cluster_config, run=defer.ensureDeferred)
    return me, others, router, RestClient(rest)


def test_a_call_goes_to_the_least_loaded_node_claimed_first(parts):
    """a has a call, b and c none: b gets it, with the cluster token and the callId made
    here; callId and stream name are claimed for b before."""
    me, others, router, http = parts
    me.live["a"] = node("a", calls=1)
    others.answers["http://b.test:8081", "/call/startup"] = Answer(200)
    body = {k: v for k, v in STARTUP.items() if k != "callId"}
    response = http.post("/call/startup", body)
    assert (response.code, response.body) == (200, b"")
    (url, path, sent), = others.sent
    assert (url, path) == ("http://b.test:8081", "/call/startup")
    assert sent["callId"] and sent["sipPassword"] == "pw-secret"
    assert me.store.calls[sent["callId"]]["node"] == "b" and me.store.streams["s1"] == "b"
    known = me.store.calls[sent["callId"]]["call"]  # shown until b reports the call
    assert (known["status"], known["streamName"]) == ("NEW", "s1")
    assert me.store.claim_ttl == 5 + 5  # cluster_request_timeout + cluster_node_ttl
    assert "pw-secret" not in json.dumps(me.store.calls)
    assert me.counted == ["b"] and router.served == []


def test_an_idle_cluster_keeps_the_call_on_the_node_asked(parts):
    me, others, router, http = parts
    assert http.post("/call/startup", STARTUP).code == 200
    assert router.served == [("call/startup", STARTUP)] and others.sent == []
    assert me.store.calls["c1"]["node"] == "a"


def test_a_callid_or_stream_name_in_use_anywhere_is_a_409_and_nothing_is_placed(parts):
    me, others, router, http = parts
    me.store.calls["c1"] = {"node": "c", "incarnation": "life-c", "call": None}
    taken = http.post("/call/startup", STARTUP)
    assert taken.code == 409 and taken.json()["field"] == "callId"
    me.store.streams["s2"] = "b"
    taken = http.post("/call/startup", {**STARTUP, "callId": "c2", "toStream": "s2"})
    assert taken.code == 409 and taken.json() == {"error": "Stream name is already in use",
                                                  "field": "toStream"}
    assert "c2" not in me.store.calls and router.served == [] and others.sent == []


def test_a_call_the_chosen_node_refuses_leaves_no_claim(parts):
    """b answers 429 (its quota): the answer is passed on, the claims are undone."""
    me, others, router, http = parts
    me.live["a"] = node("a", calls=1)
    others.answers["http://b.test:8081", "/call/startup"] = Answer(
        429, {"error": "too many calls", "field": None})
    refused = http.post("/call/startup", STARTUP)
    assert refused.code == 429 and refused.json()["error"] == "too many calls"
    assert me.store.calls == {} and me.store.streams == {}


def test_a_bad_body_is_the_routers_own_answer(parts):
    me, others, router, http = parts
    router.code, router.body = 400, {"error": "callee is required", "field": "callee"}
    assert http.post("/call/startup", {"callId": "c1"}).code == 400
    assert router.served and others.sent == [] and me.store.calls == {}


def test_a_call_of_another_live_node_is_asked_of_it(parts):
    """find, terminate, hold go to the owner; when it does not answer, find gives the call's
    last known state from Redis."""
    me, others, router, http = parts
    call = {"callId": "c1", "status": "ESTABLISHED", "info": ""}
    me.store.calls["c1"] = {"node": "b", "incarnation": "life-b", "call": call}
    others.answers["http://b.test:8081", "/call/terminate"] = Answer(200)
    assert http.post("/call/terminate", {"callId": "c1"}).code == 200
    assert others.sent[-1] == ("http://b.test:8081", "/call/terminate", {"callId": "c1"})
    others.answers["http://b.test:8081", "/call/find"] = Answer(503, {"error": "x"})
    found = http.post("/call/find", {"callId": "c1"})
    assert found.code == 200 and found.json()[0]["status"] == "ESTABLISHED"
    assert found.json()[0]["custom"] == {}  # shaped as /call/find shows a call


def test_a_call_of_a_lost_node_is_failed_node_lost(parts):
    """Its node gone (or restarted: another life), the call is FAILED "Node lost": found,
    terminate is a no-op, hold a 409."""
    me, others, router, http = parts
    call = {"callId": "c1", "status": "ESTABLISHED", "info": "", "history": []}
    me.store.calls["c1"] = {"node": "b", "incarnation": "an-earlier-life", "call": call}
    found = http.post("/call/find", {"callId": "c1"}).json()[0]
    assert (found["status"], found["info"]) == ("FAILED", "Node lost")
    assert http.post("/call/find", {"callId": "c1", "status": "ESTABLISHED"}).code == 404
    assert http.post("/call/terminate", {"callId": "c1"}).code == 200
    held = http.post("/call/hold", {"callId": "c1"})
    assert held.code == 409 and held.json()["field"] == "callId"
    assert others.sent == []


def test_find_all_merges_every_nodes_answer_and_the_lost_calls(parts):
    me, others, router, http = parts
    others.answers["http://a.test:8081", "/call/find_all"] = Answer(200, [{"callId": "x"}])
    others.answers["http://c.test:8081", "/call/find_all"] = Answer(200, [{"callId": "y"}])
    me.store.lost.append(lost_call({"call": {"callId": "z", "status": "RING"}})["call"])
    listed = http.post("/call/find_all", {}).json()
    assert [c["callId"] for c in listed] == ["x", "y", "z"]
    assert listed[2]["info"] == "Node lost"
    assert {url for url, _, _ in others.sent} == {"http://a.test:8081", "http://b.test:8081",
                                                  "http://c.test:8081"}
    me.store.lost.clear()
    others.answers.clear()
    assert http.post("/stream/find_all", {}).code == 404  # every node's 404


def test_an_edges_copy_of_a_stream_is_listed_once_from_its_origin(parts):
    me, others, router, http = parts
    me.stream_nodes["s1"] = "b"
    others.answers["http://b.test:8081", "/stream/find_all"] = Answer(200, [{"name": "s1"}])
    others.answers["http://c.test:8081", "/stream/find_all"] = Answer(
        200, [{"name": "s1"}, {"name": "s9"}])
    assert [s["name"] for s in http.post("/stream/find_all", {}).json()] == ["s1", "s9"]


def test_a_stream_request_goes_to_the_streams_node_or_the_first_that_knows_it(parts):
    me, others, router, http = parts
    me.stream_nodes["s1"] = "c"
    others.answers["http://c.test:8081", "/stream/find"] = Answer(200, [{"name": "s1"}])
    assert http.post("/stream/find", {"name": "s1"}).json() == [{"name": "s1"}]
    me.store.media_sessions["m1"] = "a"
    http.post("/recorder/startup", {"mediaSessionId": "m1"})
    assert router.served[-1][0] == "recorder/startup"
    others.sent.clear()
    others.answers["http://b.test:8081", "/push/terminate"] = Answer(200)
    assert http.post("/push/terminate", {"mediaSessionId": "p7"}).code == 200
    assert [url for url, _, _ in others.sent] == ["http://a.test:8081", "http://b.test:8081"]


def test_only_a_request_with_the_cluster_token_is_served_as_a_hop(parts):
    """The hop header with the token: this node's own answer; without it, routed as any."""
    me, others, router, http = parts
    me.store.calls["c1"] = {"node": "b", "incarnation": "life-b", "call": None}
    hop = {"X-Sipgw-Cluster-Hop": "b"}
    http.post("/call/terminate", {"callId": "c1"},
              headers={**hop, "Authorization": f"Bearer {TOKEN}"})
    assert router.served == [("call/terminate", {"callId": "c1"})] and others.sent == []
    http.post("/call/terminate", {"callId": "c1"}, headers=hop)
    assert others.sent == [("http://b.test:8081", "/call/terminate", {"callId": "c1"})]
