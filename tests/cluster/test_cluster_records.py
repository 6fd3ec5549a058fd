"""The cluster's records and placement policies (sipgw/cluster/records.py): pure."""
import pytest

from sipgw.cluster.records import (NODE_LOST, CpuMeter, NodeRecord, choose, key, lost_call)


def node(node_id, calls=0, viewers=0, cpu=0.0):
    return NodeRecord(node_id, f"http://{node_id}:8081", "i-" + node_id, calls, viewers, cpu)


def test_a_node_record_survives_the_trip_through_redis():
    """encode() then decode() gives the same record; keys carry the sipgw: prefix."""
    record = node("a", 3, 7, 12.5)
    assert NodeRecord.decode(record.encode()) == record
    assert NodeRecord.decode(record.encode().encode()) == record
    assert key("node", "a") == "sipgw:node:a"


def test_least_loaded_takes_fewest_calls_then_viewers_and_avoids_a_busy_cpu():
    """Calls first, viewers next; a node at BUSY_CPU or more only when all are; CPU under
    that does not decide."""
    nodes = [node("a", 2), node("b", 1, 5), node("c", 1, 2, 10.0), node("d", 1, 2, 30.0)]
    assert choose(nodes, "least-loaded", "d").id == "d"
    assert choose(nodes, "least-loaded", "a").id == "c"
    busy = [node("a", 0, 0, 95.0), node("b", 3, 9, 20.0)]
    assert choose(busy, "least-loaded", "a").id == "b"
    assert choose([node("a", 1, 0, 99.0), node("b", 0, 0, 85.0)], "least-loaded", "a").id == "b"


def test_least_loaded_keeps_a_tie_on_the_node_asked_else_the_smallest_id():
    """Equal loads: no hop when the node asked is among them; else the smallest id."""
    nodes = [node("c"), node("a"), node("b")]
    assert choose(nodes, "least-loaded", "b").id == "b"
    assert choose(nodes, "least-loaded", "z").id == "a"
    assert choose([node("a", 1), node("b"), node("c")], "least-loaded", "a").id == "b"


def test_local_placement_stays_on_the_node_asked_whatever_its_load():
    nodes = [node("a"), node("b", 100)]
    assert choose(nodes, "local", "b").id == "b"


def test_round_robin_takes_the_nodes_in_turn_by_id():
    """Turn n takes the n-th node by id (modulo their number)."""
    nodes = [node("c"), node("a"), node("b")]
    assert [choose(nodes, "round-robin", "a", turn).id for turn in range(1, 5)] == \
        ["b", "c", "a", "b"]


@pytest.mark.parametrize("nodes,policy,message", [
    ([], "local", "no live node"),
    ([node("a")], "random", "unknown placement 'random'"),
])
def test_no_node_or_an_unknown_policy_is_an_error(nodes, policy, message):
    with pytest.raises(ValueError, match=message):
        choose(nodes, policy, "a")


def test_cpu_meter_is_the_share_of_one_core_between_two_readings():
    """0 at the first reading and when the clock did not move; never negative."""
    meter = CpuMeter()
    assert meter.read(10.0, 100.0) == 0.0
    assert meter.read(10.5, 101.0) == pytest.approx(50.0)
    assert meter.read(10.5, 101.0) == 0.0
    assert meter.read(10.0, 102.0) == 0.0


def test_a_lost_nodes_live_call_becomes_failed_node_lost_an_ended_one_stays():
    """ESTABLISHED -> FAILED "Node lost" with FAILED added to its history; FINISH unchanged."""
    live = {"node": "a", "call": {"callId": "x", "status": "ESTABLISHED", "info": "",
                                  "history": ["NEW", "ESTABLISHED"]}}
    shown = lost_call(live)["call"]
    assert (shown["status"], shown["info"], shown["history"][-1]) == \
        ("FAILED", NODE_LOST, "FAILED")
    assert live["call"]["status"] == "ESTABLISHED"  # the record given is not changed
    ended = {"node": "a", "call": {"callId": "y", "status": "FINISH", "info": "Normal"}}
    assert lost_call(ended)["call"] == ended["call"]
