"""The cluster's shared state on Redis, through redis-py's asyncio API.

Every method is a coroutine run on the asyncio loop the Twisted reactor drives; callers on
the reactor side wrap them with ``deferred(...)``.  The URL (it may hold the Redis password)
is never logged.
"""
from __future__ import annotations

import asyncio
import json

from twisted.internet import defer

from .records import (EVENTS, LOST_CALLS, MEDIA_SESSIONS, NODES, ROUND_ROBIN, STREAM_INFO,
                      STREAMS, NodeRecord, key, lost_call)

# Delete a hash field only while it still names the node given (the owner's own claim).
_HDEL_IF = ("if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then "
            "return redis.call('HDEL', KEYS[1], ARGV[1]) end return 0")

# callId and stream name claimed together, or neither (KEYS: call record, streams hash, the
# node's call set; ARGV: record, stream name, node id, callId, seconds the claim lasts unless
# the node reports the call: its first report writes the record without expiry).
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'callId' end
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 'toStream' end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
return ''
"""


def deferred(coroutine) -> defer.Deferred:
    """Run ``coroutine`` on the asyncio loop; a Deferred of its result."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coroutine))


class RedisStore:
    """Node records, call and stream ownership, and the events channel."""

    def __init__(self, url: str, client=None) -> None:
        if client is None:
            import redis.asyncio
            client = redis.asyncio.from_url(url, decode_responses=True,
                                            socket_connect_timeout=5, socket_timeout=5)
        self.redis = client

    async def close(self) -> None:
        await self.redis.aclose()

    # -- nodes -------------------------------------------------------------------------
    async def heartbeat(self, node: NodeRecord, ttl: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(key("node", node.id), node.encode(), ex=ttl)
            pipe.sadd(NODES, node.id)
            await pipe.execute()

    async def nodes(self) -> tuple[dict[str, NodeRecord], set[str]]:
        """(live nodes by id, ids of registered nodes whose heartbeat expired)."""
        ids = sorted(await self.redis.smembers(NODES))
        if not ids:
            return {}, set()
        raws = await self.redis.mget([key("node", i) for i in ids])
        live = {i: NodeRecord.decode(raw) for i, raw in zip(ids, raws) if raw}
        return live, set(ids) - set(live)

    async def leave(self, node_id: str) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key("node", node_id))
            pipe.srem(NODES, node_id)
            await pipe.execute()

    async def next_turn(self) -> int:
        return int(await self.redis.incr(ROUND_ROBIN))

    # -- calls ---------------------------------------------------------------------------
    async def claim_call(self, call_id: str, node: NodeRecord, stream: str,
                         call: dict | None = None, ttl: int = 60) -> str:
        """Claim ``call_id`` and its stream name for ``node`` in one atomic step: '' when
        both were free, else the field that is taken ("callId" or "toStream"); nothing is
        claimed then. ``call``: what is known of the call before its node reports it; the
        call's claim lasts ``ttl`` seconds unless the node reports it (an entry node that
        died between the claim and the forward)."""
        record = json.dumps({"node": node.id, "incarnation": node.incarnation, "call": call})
        taken = await self.redis.eval(_CLAIM, 3, key("call", call_id), STREAMS,
                                      key("node-calls", node.id), record, stream, node.id,
                                      call_id, ttl)
        return taken if isinstance(taken, str) else taken.decode()

    async def release_claim(self, call_id: str, node_id: str, stream: str) -> None:
        """Undo ``claim_call`` (the call was refused after all)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(key("call", call_id))
            pipe.eval(_HDEL_IF, 1, STREAMS, stream, node_id)
            pipe.srem(key("node-calls", node_id), call_id)
            await pipe.execute()

    @staticmethod
    def stage_call(pipe, node: NodeRecord, call: dict, retention: int | None) -> None:
        """Queue on ``pipe``: the call as /call/find shows it; ``retention``: seconds it stays
        once ended."""
        call_id = call["callId"]
        record = json.dumps({"node": node.id, "incarnation": node.incarnation, "call": call})
        if retention is None:
            pipe.set(key("call", call_id), record)
            pipe.sadd(key("node-calls", node.id), call_id)
        else:
            pipe.set(key("call", call_id), record, ex=max(1, retention))
            pipe.srem(key("node-calls", node.id), call_id)

    async def call(self, call_id: str) -> dict | None:
        raw = await self.redis.get(key("call", call_id))
        return json.loads(raw) if raw else None

    async def lost_calls(self) -> list[dict]:
        """The calls of lost nodes still kept (FAILED "Node lost")."""
        ids = sorted(await self.redis.smembers(LOST_CALLS))
        if not ids:
            return []
        raws = await self.redis.mget([key("call", i) for i in ids])
        gone = [i for i, raw in zip(ids, raws) if not raw]
        if gone:
            await self.redis.srem(LOST_CALLS, *gone)
        return [json.loads(raw)["call"] for raw in raws if raw and json.loads(raw)["call"]]

    # -- streams ---------------------------------------------------------------------------
    @staticmethod
    def stage_stream(pipe, node_id: str, name: str, media_session_id: str, info: dict) -> None:
        """Queue on ``pipe``: the stream is this node's (published, or its codec now known)."""
        pipe.hset(STREAMS, name, node_id)
        pipe.hset(MEDIA_SESSIONS, media_session_id, node_id)
        pipe.hset(STREAM_INFO, name, json.dumps(info))
        pipe.publish(EVENTS, json.dumps({"event": "stream-published", "name": name,
                                         "node": node_id, "info": info}))

    @staticmethod
    def stage_drop_stream(pipe, node_id: str, name: str, media_session_id: str, status: str,
                          info: str) -> None:
        """Queue on ``pipe``: the stream has ended; tell the edges playing it."""
        pipe.eval(_HDEL_IF, 1, STREAMS, name, node_id)
        pipe.eval(_HDEL_IF, 1, MEDIA_SESSIONS, media_session_id, node_id)
        pipe.hdel(STREAM_INFO, name)
        pipe.publish(EVENTS, json.dumps({"event": "stream-ended", "name": name,
                                         "node": node_id, "status": status, "info": info}))

    async def write(self, stages) -> None:
        """Run the queued writes ``stages`` (callables of a pipeline) in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for stage in stages:
                stage(pipe)
            await pipe.execute()

    async def streams(self) -> dict[str, str]:
        """Every stream name of the cluster -> its node."""
        return await self.redis.hgetall(STREAMS)

    async def stream_info(self) -> dict[str, dict]:
        table = await self.redis.hgetall(STREAM_INFO)
        return {name: json.loads(raw) for name, raw in table.items()}

    async def media_session_owner(self, media_session_id: str) -> str | None:
        return await self.redis.hget(MEDIA_SESSIONS, media_session_id)

    # -- a lost node ----------------------------------------------------------------------
    async def sweep(self, node_id: str, incarnation: str | None, ttl: int,
                    retention: int) -> list[str]:
        """Mark the calls of a lost node (of ``incarnation``, or of any but the live one
        when it came back: None = every one) FAILED "Node lost", free its stream names and
        tell every node. One node sweeps (a lock for ``ttl`` s). The callIds swept."""
        if not await self.redis.set(key("sweep", node_id), "1", nx=True, ex=ttl):
            return []
        swept = []
        for call_id in sorted(await self.redis.smembers(key("node-calls", node_id))):
            raw = await self.redis.get(key("call", call_id))
            record = json.loads(raw) if raw else None
            if record is None or record.get("node") != node_id:
                await self.redis.srem(key("node-calls", node_id), call_id)
                continue
            if incarnation is not None and record.get("incarnation") == incarnation:
                continue  # the node's present life: not lost
            record = lost_call(record)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key("call", call_id), json.dumps(record), ex=max(1, retention))
                pipe.sadd(LOST_CALLS, call_id)
                pipe.srem(key("node-calls", node_id), call_id)
                await pipe.execute()
            swept.append(call_id)
        for table in (STREAMS, MEDIA_SESSIONS):
            owned = [k for k, v in (await self.redis.hgetall(table)).items() if v == node_id]
            if owned:  # a restarted node sweeps before it publishes anything
                await self.redis.hdel(table, *owned)
                if table == STREAMS:
                    await self.redis.hdel(STREAM_INFO, *owned)
        await self.redis.publish(EVENTS, json.dumps({"event": "node-lost", "node": node_id,
                                                     "calls": swept}))
        if incarnation is None:
            await self.redis.srem(NODES, node_id)
        return swept

    async def events(self, handle) -> None:
        """Call ``handle(event dict)`` for every event published, until cancelled."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(EVENTS)
        try:
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                try:
                    event = json.loads(message["data"])
                except ValueError:
                    continue
                if isinstance(event, dict):
                    handle(event)
        finally:
            await pubsub.aclose()
