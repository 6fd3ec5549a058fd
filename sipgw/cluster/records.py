"""What the nodes of a cluster keep in Redis, and how a node is chosen: pure, no I/O.

Keys (``PREFIX`` first):

- ``node:<id>``: the node's record (JSON: url, incarnation, calls, viewers, cpu), written by
  each heartbeat with the node TTL: a node whose key expired is lost.
- ``nodes``: the set of node ids that registered, lost ones until they are swept.
- ``call:<callId>``: the call's record (JSON: node, incarnation, the call as /call/find
  shows it); claimed with SET NX (callId unique cluster-wide), kept ``call_retention`` s
  after the call ended.
- ``node-calls:<id>``: the callIds a node placed, for the sweep of a lost node.
- ``streams`` (hash name -> node) and ``media-sessions`` (hash stream mediaSessionId ->
  node): stream names claimed with HSETNX (unique cluster-wide).
- ``stream-info`` (hash name -> JSON: hasAudio, hasVideo, audioCodec, callId): what an edge
  needs to know to offer the stream to its players before its pull is up.
- ``lost-calls``: callIds of lost nodes' calls (their records FAILED "Node lost").
- ``events``: the pub/sub channel: stream-published, stream-ended, node-lost.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

PREFIX = "sipgw:"
NODE_LOST = "Node lost"
PLACEMENTS = ("least-loaded", "local", "round-robin")
BUSY_CPU = 80.0  # % of one core: a node this busy takes new calls only when all are


def key(*parts: str) -> str:
    return PREFIX + ":".join(parts)


NODES = key("nodes")
STREAMS = key("streams")
STREAM_INFO = key("stream-info")
MEDIA_SESSIONS = key("media-sessions")
LOST_CALLS = key("lost-calls")
EVENTS = key("events")
ROUND_ROBIN = key("round-robin")


@dataclass(frozen=True)
class NodeRecord:
    """One node as its last heartbeat showed it."""

    id: str
    url: str
    incarnation: str
    calls: int = 0
    viewers: int = 0
    cpu: float = 0.0

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | bytes) -> "NodeRecord":
        value = json.loads(raw)
        return cls(id=str(value["id"]), url=str(value["url"]),
                   incarnation=str(value["incarnation"]), calls=int(value.get("calls", 0)),
                   viewers=int(value.get("viewers", 0)), cpu=float(value.get("cpu", 0.0)))


def choose(nodes: list[NodeRecord], policy: str, local: str, turn: int = 0) -> NodeRecord:
    """The node a new call goes to among the live ``nodes`` (never empty):

    - ``local``: the node asked (``local``), whatever its load;
    - ``round-robin``: the ``turn``-th of the nodes sorted by id;
    - ``least-loaded``: fewest calls, then fewest viewers; a node at ``BUSY_CPU`` % of a core
      or more only when every node is; on a tie the node asked (no hop), then the smallest
      id. (CPU below that only jitters between idle nodes: it does not decide.)"""
    if not nodes:
        raise ValueError("no live node")
    if policy not in PLACEMENTS:
        raise ValueError(f"unknown placement {policy!r}")
    by_id = sorted(nodes, key=lambda n: n.id)
    if policy == "local":
        return next((n for n in by_id if n.id == local), by_id[0])
    if policy == "round-robin":
        return by_id[turn % len(by_id)]
    return min(by_id, key=lambda n: (n.cpu >= BUSY_CPU, n.calls, n.viewers, n.id != local,
                                     n.id))


class CpuMeter:
    """This process's CPU use in percent of one core between two readings of
    ``(cpu_seconds, wall_seconds)``."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def read(self, cpu_seconds: float, wall_seconds: float) -> float:
        last, self._last = self._last, (cpu_seconds, wall_seconds)
        if last is None or wall_seconds <= last[1]:
            return 0.0
        return max(0.0, 100.0 * (cpu_seconds - last[0]) / (wall_seconds - last[1]))


def lost_call(record: dict) -> dict:
    """A call record of a lost node as /call/find then shows it: FAILED, "Node lost"."""
    call = dict(record.get("call") or {})
    if call.get("status") not in ("FINISH", "FAILED", "BUSY"):
        call["status"] = "FAILED"
        call["info"] = NODE_LOST
        history = list(call.get("history") or [])
        call["history"] = history + ["FAILED"]
    return {**record, "call": call}
