"""This node's part in the cluster: heartbeat with its load, its calls and streams
published with their owner, lost nodes swept, and the events of the others heard."""
from __future__ import annotations

import asyncio
import os
import secrets

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from ..loglimit import LogLimiter, held_back
from .records import CpuMeter, NodeRecord
from .store import RedisStore, deferred

log = Logger(namespace="sipgw.cluster")

MAX_PENDING_WRITES = 10000
WRITE_BATCH = 500  # writes per pipeline (one round trip)
WRITE_DELAY = 0.05  # seconds a write waits for the ones that follow it


class ClusterNode(service.Service):
    """Keeps ``live`` (the live nodes by id) and ``stream_nodes`` (stream name -> node) fresh
    for the REST forwarding and the edge pulls; writes this node's calls and streams."""

    name = "cluster"

    def __init__(self, config, reactor, ua, store: RedisStore, viewers=lambda: 0) -> None:
        self.config = config
        self.reactor = reactor
        self._log_limit = LogLimiter(reactor)
        self.ua = ua
        self.store = store
        self.viewers = viewers
        self.incarnation = secrets.token_hex(8)
        self.live: dict[str, NodeRecord] = {}
        self.stream_nodes: dict[str, str] = {}
        self.stream_info: dict[str, dict] = {}
        self.edges = None  # EdgePulls: told when a stream or a node goes away
        self.ready = defer.Deferred()
        self.joined = False
        self._cpu = CpuMeter()
        self._load = (0, 0, 0.0)
        self._writes: dict = {}  # key -> staged write, in order
        self._writing = False
        self._beat = None
        self._events = None
        ua.call_observers.append(self._call_changed)
        ua.streams.listeners.append(self._stream_changed)

    @property
    def id(self) -> str:
        return self.config.cluster_node_id

    def record(self) -> NodeRecord:
        calls, viewers, cpu = self._load
        return NodeRecord(self.id, self.config.cluster_node_url, self.incarnation, calls,
                          viewers, cpu)

    # -- life ------------------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        deferred(self._join()).addCallbacks(self.ready.callback, self._start_failed)

    async def _join(self) -> None:
        """Join; while Redis cannot be reached, try again every heartbeat interval."""
        while self.running:
            try:
                return await self._start()
            except (OSError, ConnectionError) as exc:
                log.error("cluster: cannot reach Redis ({error}); trying again",
                          error=type(exc).__name__)
            except Exception as exc:
                if type(exc).__module__.startswith("redis"):
                    log.error("cluster: cannot reach Redis ({error}); trying again",
                              error=type(exc).__name__)
                else:
                    raise
            await asyncio.sleep(self.config.cluster_heartbeat_interval)

    async def _start(self) -> None:
        config = self.config
        # a restarted node: what its earlier life owned is lost, never resurrected
        swept = await self.store.sweep(self.id, self.incarnation, config.cluster_node_ttl,
                                       config.call_retention)
        if swept:
            log.info("cluster: {n} call(s) of this node's previous run marked FAILED",
                     n=len(swept))
        await self.store.heartbeat(self.record(), config.cluster_node_ttl)
        self.live, _ = await self.store.nodes()
        self.stream_nodes = await self.store.streams()
        self.stream_info = await self.store.stream_info()
        self._events = asyncio.ensure_future(self.store.events(self._event))
        self._beat = task.LoopingCall(self._heartbeat)
        self._beat.clock = self.reactor
        self._beat.start(config.cluster_heartbeat_interval, now=False)
        self.joined = True
        log.info("cluster: node {id} joined ({n} live node(s))", id=self.id, n=len(self.live))

    def _start_failed(self, failure) -> None:
        log.failure("cluster: cannot join", failure)

    def stopService(self):
        """The heartbeat stops; the calls' last statuses are still written while the UA
        ends them; the others see this node lost once its key expires."""
        super().stopService()
        if self._beat is not None and self._beat.running:
            self._beat.stop()
        if self._events is not None:
            self._events.cancel()
        if self.edges is not None:
            self.edges.stop()

    # -- heartbeat and the sweep of lost nodes -----------------------------------------------
    def _heartbeat(self):
        cpu_seconds = sum(os.times()[:2])
        self._load = (len(self.ua.active_calls()), self.viewers(),
                      round(self._cpu.read(cpu_seconds, self.reactor.seconds()), 1))
        return deferred(self._beat_once()).addErrback(
            lambda f: log.warn("cluster: heartbeat failed: {error}", error=f.getErrorMessage()))

    async def _beat_once(self) -> None:
        config = self.config
        await self.store.heartbeat(self.record(), config.cluster_node_ttl)
        self.live, expired = await self.store.nodes()
        # what the events said, read again (an event missed while Redis was away)
        owners, info = await self.store.streams(), await self.store.stream_info()
        for stream in self.ua.streams.all():
            if not getattr(stream, "origin_node", None):
                owners[stream.name] = self.id
                info.setdefault(stream.name, self.stream_info.get(stream.name, {}))
        self.stream_nodes, self.stream_info = owners, info
        if self._events is not None and self._events.done():
            log.warn("cluster: the events channel was lost; subscribing again")
            self._events = asyncio.ensure_future(self.store.events(self._event))
        for node_id in sorted(expired):
            swept = await self.store.sweep(node_id, None, config.cluster_node_ttl,
                                           config.call_retention)
            log.info("cluster: node {id} lost: {n} call(s) marked FAILED", id=node_id,
                     n=len(swept))

    def count_call(self, node_id: str) -> None:
        """A call was just placed on ``node_id``: count it before its next heartbeat does."""
        node = self.live.get(node_id)
        if node is not None:
            self.live[node_id] = NodeRecord(node.id, node.url, node.incarnation,
                                            node.calls + 1, node.viewers, node.cpu)

    # -- what the others publish --------------------------------------------------------
    def _event(self, event: dict) -> None:
        kind, node = event.get("event"), event.get("node")
        if kind == "stream-published" and isinstance(event.get("name"), str):
            self.stream_nodes[event["name"]] = node
            if isinstance(event.get("info"), dict):
                self.stream_info[event["name"]] = event["info"]
        elif kind == "stream-ended" and isinstance(event.get("name"), str):
            if self.stream_nodes.get(event["name"]) == node:
                del self.stream_nodes[event["name"]]
                self.stream_info.pop(event["name"], None)
            if self.edges is not None and node != self.id:
                self.edges.origin_ended(event["name"], node, event.get("status") == "FAILED",
                                        str(event.get("info") or ""))
        elif kind == "node-lost":
            self.live.pop(node, None)
            for name in [n for n, owner in self.stream_nodes.items() if owner == node]:
                del self.stream_nodes[name]
            if self.edges is not None and node != self.id:
                self.edges.node_lost(node)

    # -- this node's calls and streams, written in order, in batches ---------------------------
    def _call_changed(self, call) -> None:
        body = call.to_json()
        retention = self.config.call_retention if call.status.ended else None
        record = self.record()
        # a call's earlier status still queued is replaced: only its latest is written
        self._write(lambda pipe: self.store.stage_call(pipe, record, body, retention),
                    key=("call", body["callId"]))
        stream = call.stream
        if stream is not None and call.status.value == "ESTABLISHED" and not stream.ended:
            self._stream_changed(stream, "published")  # its audio codec is known now

    def _stream_changed(self, stream, event: str) -> None:
        if getattr(stream, "origin_node", None):  # an edge pull: the origin owns the name
            return
        if event == "published":
            self.stream_nodes[stream.name] = self.id
            info = {"hasAudio": stream.has_audio, "hasVideo": stream.has_video,
                    "audioCodec": stream.audio_codec, "callId": stream.call_id}
            self.stream_info[stream.name] = info
            self._write(lambda pipe: self.store.stage_stream(
                pipe, self.id, stream.name, stream.media_session_id, info))
        elif event == "ended":
            if self.stream_nodes.get(stream.name) == self.id:
                del self.stream_nodes[stream.name]
            status, info = stream.status.value, stream.info
            self._write(lambda pipe: self.store.stage_drop_stream(
                pipe, self.id, stream.name, stream.media_session_id, status, info))

    def _write(self, stage, key=None) -> None:
        """Queue ``stage`` (a callable of a Redis pipeline); with ``key``, in place of the
        one of the same key still queued."""
        key = key or object()
        if key in self._writes:
            self._writes[key] = stage  # keeps its place in the order
        else:
            if len(self._writes) >= MAX_PENDING_WRITES:
                self._writes.pop(next(iter(self._writes)))
                held = self._log_limit.allow("dropped")
                if held is not None:
                    log.warn("cluster: Redis too slow, a state update was dropped{more}",
                             more=held_back(held))
            self._writes[key] = stage
        if not self._writing:
            self._writing = True  # a call's quick steps (PENDING, TRYING, ...) go in one write
            self.reactor.callLater(WRITE_DELAY, lambda: deferred(self._drain()))

    async def _drain(self) -> None:
        try:
            while self._writes:
                batch = list(self._writes.values())[:WRITE_BATCH]
                for key in list(self._writes)[:WRITE_BATCH]:
                    del self._writes[key]
                try:
                    await self.store.write(batch)
                except Exception as exc:  # Redis down: logged, the node goes on alone
                    log.warn("cluster: {n} state update(s) failed: {error}", n=len(batch),
                             error=repr(exc)[:200])
        finally:
            self._writing = False
