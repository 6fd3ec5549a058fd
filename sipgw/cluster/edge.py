"""Any node plays any stream: an edge pull from the stream's origin node.

A player asking this node for a stream another node publishes gets a local copy of it: this
node plays the stream from its origin as a WHEP client (aiortc, ``POST /whep/<name>`` on the
origin's REST port with the cluster token) and publishes what arrives into a local ``Stream``
of the same name, which every local viewer (websocket or WHEP) of that name shares.  One
pull per stream per edge; released when its last viewer has gone; ended, with its viewers,
when the origin's stream ends or the origin node is lost.

The RTP received is not decoded: the receiver's packets go to sipgw's own H264
depacketizer (access units, keyframes, size) and audio payloads are published as they are,
so the edge forwards exactly what the origin sent.  Keyframe requests of the edge's viewers
go to the origin as RTCP PLI.
"""
from __future__ import annotations

import asyncio
from urllib.parse import quote

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from sipgw.rtp.h264 import H264Depacketizer
from sipgw.rtp.packet import RtpPacket
from sipgw.rtp.session import KEYFRAME_MIN_INTERVAL
from sipgw.streams.stream import MediaFrame, Stream, StreamStatus
from sipgw.webrtc.viewer import ice_configuration

from .records import NODE_LOST

MAX_SDP = 65536  # bytes of the origin's WHEP answer read; beyond, the pull fails

log = Logger(namespace="sipgw.cluster")

ORIGIN_GONE = "Origin connection lost"
AUDIO_MIME = {"PCMU": "audio/PCMU", "PCMA": "audio/PCMA", "opus": "audio/opus"}


class OriginRefused(Exception):
    """The origin answered the pull's offer with an error (the stream is gone, a quota)."""


class EdgePull:
    """One stream played from its origin into a local Stream."""

    def __init__(self, edges: "EdgePulls", name: str, origin, info: dict) -> None:
        self._last_keyframe_request = float("-inf")
        self._keyframe_pending = False
        self.edges = edges
        self.origin = origin  # NodeRecord
        config = edges.config
        has_video = bool(info.get("hasVideo", True))
        self.stream = Stream(name, has_audio=bool(info.get("hasAudio", True)),
                             has_video=has_video, call_id=str(info.get("callId") or ""),
                             on_keyframe_request=self.request_keyframe,
                             gop_max_bytes=config.stream_gop_cache_max_bytes,
                             sink_max_bytes=config.sink_queue_max_bytes)
        self.stream.origin_node = origin.id
        self.stream.audio_codec = str(info.get("audioCodec") or "")
        self.stream.video_codec = "H264" if has_video else ""
        self.pc = RTCPeerConnection(ice_configuration(edges.ice_servers))
        self.depacketizer = H264Depacketizer()
        self.audio_codecs: dict[int, tuple[str, int]] = {}
        self.video_ssrc: int | None = None
        self.video_receiver = None
        self.location: str | None = None
        self.idle_checks = 0
        self.closed = False

        @self.pc.on("connectionstatechange")
        def _state():
            if self.pc.connectionState in ("failed", "closed") and not self.closed:
                self.connection_lost()

    def connection_lost(self) -> None:
        """Wait for the origin's own word, so the players learn why: stream-ended, or
        node-lost once its heartbeat has expired (a killed origin's socket is refused at
        once, long before its TTL); then end as the connection did."""
        config = self.edges.config
        grace = config.cluster_node_ttl + config.cluster_heartbeat_interval
        self.edges.reactor.callLater(grace, self.edges.end, self, StreamStatus.FAILED,
                                     ORIGIN_GONE)

    async def start(self) -> None:
        stream = self.stream
        if stream.has_video:
            video = self.pc.addTransceiver("video", direction="recvonly")
            video.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs
                                       if c.mimeType == "video/H264"])
        if stream.has_audio:
            audio = self.pc.addTransceiver("audio", direction="recvonly")
            wanted = AUDIO_MIME.get(stream.audio_codec)
            order = [wanted] if wanted else list(AUDIO_MIME.values())
            caps = RTCRtpReceiver.getCapabilities("audio").codecs
            audio.setCodecPreferences([c for m in order for c in caps if c.mimeType == m])
        await self.pc.setLocalDescription(await self.pc.createOffer())
        url = f"{self.origin.url.rstrip('/')}/whep/{quote(stream.name, safe='')}"
        code, headers, sdp = await self.edges.post_offer(url, self.pc.localDescription.sdp)
        if code != 201:
            raise OriginRefused(f"the origin answered {code}")
        location = headers.getRawHeaders(b"location", [b""])[0].decode("ascii", "replace")
        self.location = location
        if self.closed:
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        for transceiver in self.pc.getTransceivers():
            self._hook(transceiver)

    def _hook(self, transceiver) -> None:
        """The receiver's packets come here instead of its jitter buffer and decoder."""
        receiver = transceiver.receiver
        kind = transceiver.kind
        if kind == "audio":
            for codec in transceiver._codecs:
                name = "opus" if codec.name.lower() == "opus" else codec.name.upper()
                self.audio_codecs[codec.payloadType] = (name, codec.clockRate)
            if transceiver._codecs and not self.stream.audio_codec:
                self.stream.audio_codec = self.audio_codecs[transceiver._codecs[0].payloadType][0]
        else:
            self.video_receiver = receiver

        async def handle(packet, arrival_time_ms=0):
            self.rtp(kind, packet)
        receiver._handle_rtp_packet = handle

    def rtp(self, kind: str, packet) -> None:
        if self.closed:
            return
        stream = self.stream
        if kind == "audio":
            codec = self.audio_codecs.get(packet.payload_type)
            if codec is not None and packet.payload:
                stream.publish(MediaFrame("audio", codec[0], codec[1], packet.timestamp,
                                          packet.payload))
            return
        self.video_ssrc = packet.ssrc
        dep = self.depacketizer
        ours = RtpPacket(packet.payload_type, packet.marker, packet.sequence_number,
                         packet.timestamp, packet.ssrc, packet.payload)
        for unit in dep.push(ours):
            stream.publish(MediaFrame("video", "H264", 90000, unit.timestamp, unit.data,
                                      unit.keyframe))
            if dep.width != stream.width or dep.height != stream.height:
                stream.width, stream.height = dep.width, dep.height
        if dep.needs_keyframe:
            self.request_keyframe()

    def request_keyframe(self) -> None:
        """A viewer of the edge (or its depacketizer, on every packet till an IDR) needs a
        keyframe: RTCP PLI to the origin, many requests within KEYFRAME_MIN_INTERVAL one, as
        MediaSession.request_keyframe does for a callee."""
        if self._keyframe_pending or self.closed:
            return
        wait = self._last_keyframe_request + KEYFRAME_MIN_INTERVAL - self.edges.reactor.seconds()
        if wait > 0:
            self._keyframe_pending = True
            self.edges.reactor.callLater(wait, self._send_pli)
            return
        self._send_pli()

    def _send_pli(self) -> None:
        self._keyframe_pending = False
        if self.video_receiver is not None and self.video_ssrc is not None and not self.closed:
            self._last_keyframe_request = self.edges.reactor.seconds()
            asyncio.ensure_future(self.video_receiver._send_rtcp_pli(self.video_ssrc))

    async def close(self) -> None:
        self.closed = True
        await self.pc.close()


class EdgePulls:
    """The edge pulls of this node, by stream name; ``find`` is the registry's fallback."""

    def __init__(self, node, registry, players, config, reactor, client) -> None:
        self.node = node  # ClusterNode: stream owners and stream info, live nodes
        self.registry = registry
        self.players = players  # SignallingFactory: viewers_of
        self.config = config
        self.reactor = reactor
        self.client = client  # NodeClient: the agent and the token
        self.ice_servers = [u.strip() for u in config.webrtc_ice_servers.split(",")
                            if u.strip()]
        self.pulls: dict[str, EdgePull] = {}
        # a fresh connection per WHEP request (one offer and one DELETE per pull): a kept-alive
        # one the origin closed meanwhile would fail the offer
        from twisted.web.client import Agent, HTTPConnectionPool
        self.agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False),
                           connectTimeout=client.timeout)
        self._idle = task.LoopingCall(self._release_idle)
        self._idle.clock = reactor

    def start(self) -> None:
        self._idle.start(1.0, now=False)

    def stop(self) -> None:
        if self._idle.running:
            self._idle.stop()
        for pull in list(self.pulls.values()):
            self.end(pull, StreamStatus.UNPUBLISHED, "")

    def find(self, name: str):
        """A stream of another node: this node's pull of it (made now if there is none)."""
        pull = self.pulls.get(name)
        if pull is not None:
            return pull.stream
        owner = self.node.stream_nodes.get(name)
        origin = self.node.live.get(owner) if owner else None
        if origin is None or owner == self.node.id:
            return None
        pull = EdgePull(self, name, origin, self.node.stream_info.get(name) or {})
        self.pulls[name] = pull
        self.registry.add(pull.stream)
        log.info("cluster: pulling {name} from node {node}", name=name, node=origin.id)
        d = defer.Deferred.fromFuture(asyncio.ensure_future(pull.start()))
        d.addErrback(lambda f: self._failed(pull, f))
        return pull.stream

    def _failed(self, pull: EdgePull, failure) -> None:
        log.warn("cluster: pulling {name} from {node} failed: {error}", name=pull.stream.name,
                 node=pull.origin.id, error=failure.getErrorMessage()[:200])
        if failure.check(OriginRefused):
            self.end(pull, StreamStatus.FAILED, ORIGIN_GONE)
            return
        pull.connection_lost()  # no answer at all: the origin may be dying



    async def post_offer(self, url: str, sdp: str):
        """POST the offer to the origin's WHEP endpoint: (code, headers, answer SDP)."""
        from io import BytesIO

        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        from sipgw.hooks import read_body
        headers = Headers({b"Content-Type": [b"application/sdp"], b"User-Agent": [b"sipgw"],
                           b"Authorization": [b"Bearer " + self.client._token.encode("ascii")]})
        loop = asyncio.get_running_loop()
        d = self.agent.request(b"POST", url.encode("ascii"), headers,
                               FileBodyProducer(BytesIO(sdp.encode("utf-8"))))
        timer = self.reactor.callLater(self.client.timeout, d.cancel)
        try:
            response = await d.asFuture(loop)
            body = await read_body(response, MAX_SDP).asFuture(loop)
        finally:
            if timer.active():
                timer.cancel()
        return response.code, response.headers, body.decode("utf-8", "replace")

    def _delete(self, pull: EdgePull) -> None:
        """Tell the origin the WHEP session is over (DELETE its Location)."""
        if not pull.location:
            return
        from twisted.web.http_headers import Headers
        url = pull.origin.url.rstrip("/") + pull.location
        headers = Headers({b"Authorization": [b"Bearer " + self.client._token.encode("ascii")]})
        from sipgw.hooks import read_body
        d = self.agent.request(b"DELETE", url.encode("ascii"), headers).addCallback(
            lambda response: read_body(response, MAX_SDP, keep=False))
        timer = self.reactor.callLater(self.client.timeout, d.cancel)

        def done(result):
            if timer.active():
                timer.cancel()
            if isinstance(result, Failure):
                log.info("cluster: DELETE of the pull of {name} at {node} failed: {error}",
                         name=pull.stream.name, node=pull.origin.id,
                         error=result.getErrorMessage()[:200])
        d.addBoth(done)

    # -- the end of a pull ------------------------------------------------------------------
    def end(self, pull: EdgePull, status: StreamStatus, info: str) -> None:
        if self.pulls.get(pull.stream.name) is not pull:
            return
        del self.pulls[pull.stream.name]
        closing = not pull.closed
        pull.closed = True
        pull.stream.end(status, info)
        self.registry.remove(pull.stream)  # its viewers are told (the players' factory)
        log.info("cluster: pull of {name} from {node} ended ({status}{info})",
                 name=pull.stream.name, node=pull.origin.id, status=status.value,
                 info=f": {info}" if info else "")
        if closing:
            if status != StreamStatus.FAILED:
                self._delete(pull)
            defer.Deferred.fromFuture(asyncio.ensure_future(pull.close()))

    def _release_idle(self) -> None:
        """A pull nobody has watched for two checks in a row is released."""
        for pull in list(self.pulls.values()):
            if self.players.viewers_of(pull.stream):
                pull.idle_checks = 0
                continue
            pull.idle_checks += 1
            if pull.idle_checks >= 2:
                self.end(pull, StreamStatus.UNPUBLISHED, "no viewer left")

    def origin_ended(self, name: str, node: str, failed: bool, info: str) -> None:
        pull = self.pulls.get(name)
        if pull is not None and pull.origin.id == node:
            self.end(pull, StreamStatus.FAILED if failed else StreamStatus.UNPUBLISHED, info)

    def node_lost(self, node: str) -> None:
        for pull in [p for p in self.pulls.values() if p.origin.id == node]:
            self.end(pull, StreamStatus.FAILED, NODE_LOST)
