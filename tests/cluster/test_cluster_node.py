"""ClusterNode's bookkeeping (sipgw/cluster/node.py): what the other nodes' events change, which
streams it publishes, and how its writes queue; no Redis (nothing here reaches the store)."""
from types import SimpleNamespace

from twisted.internet.task import Clock

from sipgw import config
from sipgw.cluster.node import ClusterNode
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream

SETTINGS = {"cluster_redis_url": "redis://127.0.0.1:6379/0", "cluster_node_id": "a",
            "cluster_node_url": "http://a.test:8081", "cluster_token": "t" * 20}


class RecordingEdges:
    """EdgePulls as the node tells it: what ended where."""

    def __init__(self):
        self.told = []

    def origin_ended(self, name, node, failed, info):
        self.told.append(("ended", name, node, failed, info))

    def node_lost(self, node):
        self.told.append(("lost", node))


def make_node():
    ua = SimpleNamespace(call_observers=[], streams=StreamRegistry(), active_calls=lambda: [])
    store = SimpleNamespace(  # stages write into a list standing for the pipeline
        stage_call=lambda pipe, record, body, retention: pipe.append(
            ("call", body["status"], retention)),
        stage_stream=lambda pipe, node_id, name, session, info: pipe.append(("stream", name)),
        stage_drop_stream=lambda pipe, node_id, name, *rest: pipe.append(("drop", name)))
    node = ClusterNode(config.load(overrides=SETTINGS), Clock(), ua, store=store)
    node.edges = RecordingEdges()
    return node, ua


def test_the_other_nodes_streams_are_learnt_and_forgotten_from_their_events():
    node, _ = make_node()
    info = {"hasAudio": True, "hasVideo": True, "audioCodec": "PCMU", "callId": "c1"}
    node._event({"event": "stream-published", "name": "s1", "node": "b", "info": info})
    assert node.stream_nodes == {"s1": "b"} and node.stream_info["s1"] == info
    node._event({"event": "stream-ended", "name": "s1", "node": "b", "status": "FAILED",
                 "info": "Failed by request timeout"})
    assert node.stream_nodes == {} and node.stream_info == {}
    assert node.edges.told == [("ended", "s1", "b", True, "Failed by request timeout")]


def test_a_lost_node_takes_its_streams_and_its_edge_pulls_with_it():
    node, _ = make_node()
    node.stream_nodes = {"s1": "b", "s2": "c", "s3": "b"}
    node._event({"event": "node-lost", "node": "b", "calls": ["c1"]})
    assert node.stream_nodes == {"s2": "c"}
    assert node.edges.told == [("lost", "b")]


def test_events_of_this_node_itself_tell_no_edge_and_junk_is_ignored():
    node, _ = make_node()
    node._event({"event": "stream-ended", "name": "s1", "node": "a", "status": "UNPUBLISHED"})
    node._event({"event": "stream-published", "name": 7, "node": "b"})
    node._event({"event": "whatever"})
    assert node.edges.told == [] and node.stream_nodes == {}


def test_only_this_nodes_own_streams_are_published_an_edge_copy_is_not():
    """A stream of a call is claimed for this node and queued for Redis; an edge pull's copy
    (origin_node set) is the origin's and is left out."""
    node, ua = make_node()
    ua.streams.add(Stream("own", call_id="c1"))
    edge = Stream("pulled")
    edge.origin_node = "b"
    ua.streams.add(edge)
    assert node.stream_nodes == {"own": "a"}
    assert staged(node) == [("stream", "own")]


def test_a_calls_queued_statuses_are_one_write_its_latest():
    """Statuses of one call queued before the write goes out replace each other in place."""
    node, _ = make_node()
    node._writing = True  # a write is on its way: what follows queues

    class Call:
        stream = None

        def __init__(self, status):
            self.status = SimpleNamespace(ended=status == "FINISH", value=status)

        def to_json(self):
            return {"callId": "c1", "status": self.status.value}
    for status in ("PENDING", "TRYING", "ESTABLISHED"):
        node._call_changed(Call(status))
    node._write(lambda pipe: pipe.append("other"))
    node._call_changed(Call("FINISH"))
    # one write for the call, its latest status, in the place of its first: before "other"
    assert staged(node) == [("call", "FINISH", node.config.call_retention),
                            "other"]


def staged(node) -> list:
    pipe = []
    for stage in node._writes.values():
        stage(pipe)
    return pipe
