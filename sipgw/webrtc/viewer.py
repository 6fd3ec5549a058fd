"""One WebRTC viewer of a stream: an aiortc RTCPeerConnection fed from a Sink.

H264 access units and audio the browser accepted in the callee's codec take the
forwarding fast path (``forward.py``): packetized once per stream, per viewer only
the RTP header, SRTP and the send; nothing is decoded or re-encoded. Audio in
another codec is decoded here and handed to aiortc as frames (``SinkTrack``), which
aiortc encodes to opus in its executor, off the event loop.
Runs on the asyncio loop that the Twisted asyncio reactor drives.
"""
from __future__ import annotations

import asyncio
import fractions
import random

import aioice.ice
import av
from aiortc import (RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpSender,
                    RTCSessionDescription)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.sdp import candidate_from_sdp
from aiortc.rtp import (RTCP_PSFB_FIR, RTCP_PSFB_PLI, RTCP_RTPFB_NACK, RtcpPsfbPacket,
                        RtcpRtpfbPacket)
from twisted.logger import Logger

from .forward import Egress, RtpForwarder, SendParameters

log = Logger(namespace="sipgw.webrtc")

MAX_TIMESTAMP_GAP = 5  # seconds
CATCH_UP_FRAMES, CATCH_UP_PAUSE = 6, 0.01  # a cached GOP goes out at 20x real time (30 fps)
AUDIO_CODECS = {"PCMU": "audio/PCMU", "PCMA": "audio/PCMA", "opus": "audio/opus"}


class NoCommonCodecs(ValueError):
    """The browser's offer has no codec the stream can be sent with."""


def pin_ice_host(address: str) -> None:
    """Gather ICE host candidates on ``address`` only (aioice has no option for it;
    it also skips 127.0.0.1, which loopback tests need)."""
    if address:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: [address]


def ice_configuration(urls: list[str]) -> RTCConfiguration:
    """No public STUN unless configured (aiortc would use Google's by default)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in urls])


def offered_codecs(sdp: str) -> dict[str, set[str]]:
    """Codec names (upper case) per media kind in an offer's rtpmap lines."""
    codecs: dict[str, set[str]] = {}
    kind = None
    for line in sdp.replace("\r\n", "\n").split("\n"):
        if line.startswith("m="):
            kind = line[2:].split(" ", 1)[0]
            codecs.setdefault(kind, set())
        elif kind and line.startswith("a=rtpmap:"):
            name = line.split(" ", 1)[-1].split("/", 1)[0]
            codecs[kind].add(name.upper())
    return codecs


class SinkTrack(MediaStreamTrack):
    """A track whose frames come from a Sink of the stream, one kind only."""

    def __init__(self, kind: str, sink, viewer: "Viewer"):
        super().__init__()
        self.kind = kind
        self.sink = sink
        self.viewer = viewer
        self.prev_ts: int | None = None
        self.pts = 0
        self.step = 0  # the usual timestamp step between frames
        self.discontinuities = 0
        self.decoder = None  # audio transcoding only
        self.frames = 0
        self.forwarded = False  # the fast path owns the sink: aiortc gets nothing from recv()
        self._stopped: asyncio.Future | None = None

    def stop(self) -> None:
        super().stop()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def _pts(self, timestamp: int, clock_rate: int) -> int:
        """RTP timestamps (32-bit, wrapping) to a pts that only grows. A jump backwards or of
        more than MAX_TIMESTAMP_GAP seconds (a callee's file source looping, a new sender
        after a re-INVITE) continues the timeline by one usual step instead: a browser drops
        frames whose timestamps go back."""
        if self.prev_ts is None:
            self.prev_ts = timestamp
            return 0
        delta = (timestamp - self.prev_ts) & 0xFFFFFFFF
        if delta > 0x7FFFFFFF:
            delta -= 0x100000000
        self.prev_ts = timestamp
        if delta < 0 or delta > MAX_TIMESTAMP_GAP * clock_rate:
            self.discontinuities += 1
            delta = self.step or clock_rate // 50
        elif delta:
            self.step = delta
        self.pts += delta
        return self.pts

    async def recv(self):
        loop = asyncio.get_running_loop()
        if self.forwarded:  # aiortc's sender waits here, idle, until the track stops
            if self._stopped is None:
                self._stopped = loop.create_future()
            if self.readyState != "ended":
                await self._stopped
            raise MediaStreamError
        while True:
            frame = await self.sink.get().asFuture(loop)
            if frame is None:
                self.stop()
                raise MediaStreamError
            if frame.kind != self.kind:
                continue
            self.frames += 1
            if self.frames == 1:
                self.viewer.first_media(self.kind)
            pts = self._pts(frame.timestamp, frame.clock_rate)
            if self.kind == "audio" and self.viewer.transcode_audio:
                # PyAV work goes off the reactor thread; aiortc encodes opus in the same pool.
                decoded = await loop.run_in_executor(None, self._decode, frame, pts)
                if decoded is None:
                    continue
                return decoded
            packet = av.Packet(frame.data)
            packet.pts = pts
            packet.time_base = fractions.Fraction(1, frame.clock_rate)
            return packet

    def _decode(self, frame, pts):
        """Callee codec the browser did not take: decode; aiortc encodes opus."""
        if self.decoder is None:
            name = {"PCMU": "pcm_mulaw", "PCMA": "pcm_alaw", "opus": "opus"}[frame.codec]
            self.decoder = av.CodecContext.create(name, "r")
            self.decoder.sample_rate = frame.clock_rate
            self.decoder.layout = "mono"
        packet = av.Packet(frame.data)
        packet.pts = pts
        packet.time_base = fractions.Fraction(1, frame.clock_rate)
        decoded = self.decoder.decode(packet)
        if not decoded:
            return None
        out = decoded[0]
        out.pts = pts
        out.time_base = fractions.Fraction(1, frame.clock_rate)
        return out


class Viewer:
    """A browser playing a stream: its peer connection, tracks and sinks."""

    def __init__(self, stream, *, media_session_id: str, ice_servers: list[str],
                 on_state=None, queue_frames: int = 256):
        self.stream = stream
        self.media_session_id = media_session_id
        self.pc = RTCPeerConnection(ice_configuration(ice_servers))
        self.on_state = on_state  # callable(status, info)
        self.queue_frames = queue_frames
        self.transcode_audio = False
        self.tracks: list[SinkTrack] = []
        self.transceivers: dict[str, object] = {}
        self.forwarders: dict[str, RtpForwarder] = {}
        self.playing = False
        self.closed = False
        self.trickled = 0  # remote candidates added after the offer (WHEP PATCH)

        @self.pc.on("connectionstatechange")
        def _state():
            state = self.pc.connectionState
            if state == "connected":
                # PLAYING as WCS sends it, once the browser is connected, not at the first
                # frame: until PLAYING the WebSDK's stop() loops without sending stopStream.
                self.first_media("connected")
                self._start_forwarding()
            elif state in ("failed", "closed") and not self.closed:
                self._notify("FAILED" if state == "failed" else "STOPPED",
                             "WebRTC connection " + state)

    def _notify(self, status: str, info: str = "") -> None:
        if self.on_state is not None:
            self.on_state(status, info)

    def first_media(self, kind: str) -> None:
        if not self.playing:
            self.playing = True
            self._notify("PLAYING")

    async def answer(self, offer_sdp: str) -> str:
        """Apply the browser's recvonly offer and return our answer with its candidates."""
        offered = offered_codecs(offer_sdp)
        if not offered:
            raise ValueError("the offer has no media (m=) line")
        stream = self.stream
        kinds = [k for k, on in (("video", stream.has_video), ("audio", stream.has_audio)) if on]
        # H264 is passed through, audio can be transcoded to opus: what the browser must take.
        usable = {"video": {"H264"}, "audio": {"PCMU", "PCMA", "OPUS"}}
        kinds = [k for k in kinds if offered.get(k, set()) & usable[k]]
        if not kinds:
            raise NoCommonCodecs("No common codecs")
        for kind in kinds:
            sink = stream.subscribe(maxlen=self.queue_frames, name=f"webrtc-{kind}",
                                    kinds=(kind,))
            track = SinkTrack(kind, sink, self)
            self.tracks.append(track)
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
            transceiver.setCodecPreferences(self._preferences(kind))
            self.transceivers[kind] = transceiver
            self._forward_keyframe_requests(kind, transceiver.sender)
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        answer = await self.pc.createAnswer()
        if not any(f"m={k}" in answer.sdp and f"m={k} 0 " not in answer.sdp for k in kinds):
            raise NoCommonCodecs("No common codecs")
        await self.pc.setLocalDescription(answer)
        self._check_audio_codec()
        for track in self.tracks:
            track.forwarded = track.kind == "video" or not self.transcode_audio
        return self.pc.localDescription.sdp

    def _start_forwarding(self) -> None:
        """Connected (ICE + DTLS): the fast path takes each forwarded sink, queued GOP first."""
        if self.forwarders or self.closed or self.pc.localDescription is None:
            return
        sdp = self.pc.localDescription.sdp
        for track in self.tracks:
            transceiver = self.transceivers[track.kind]
            if not track.forwarded or transceiver.mid is None:
                continue
            egress = Egress(transceiver.sender.transport)
            if not egress.attach():
                log.warn("viewer {id}: no SRTP session or ICE pair for {kind}",
                         id=self.media_session_id, kind=track.kind)
                continue
            forwarder = RtpForwarder(track, SendParameters(sdp, transceiver.mid), egress,
                                     transceiver.sender, track.sink.max_bytes,
                                     random.getrandbits(16), random.getrandbits(32))
            self.forwarders[track.kind] = forwarder
            asyncio.ensure_future(self._catch_up(track.sink, self._deliver(track, forwarder)))

    async def _catch_up(self, sink, deliver) -> None:
        """Send what the sink queued before the connection was up (the cached GOP) at
        CATCH_UP_FRAMES per CATCH_UP_PAUSE, not in one burst a receiver's socket cannot
        hold, then switch the sink to push mode."""
        sent = 0
        while not self.closed and (frame := sink.take()) is not None:
            if not deliver(frame):
                sink.congested(frame)
                break
            sent += 1
            if sent % CATCH_UP_FRAMES == 0:
                await asyncio.sleep(CATCH_UP_PAUSE)
        if not self.closed:
            sink.listen(deliver)

    def _deliver(self, track: SinkTrack, forwarder: RtpForwarder):
        def deliver(frame) -> bool:
            if frame.kind != track.kind:
                return True
            track.frames += 1
            try:
                return forwarder.forward(frame)
            except (ConnectionError, OSError) as e:  # the socket is gone: the viewer ends
                if not forwarder.failed:
                    forwarder.failed = True
                    log.info("viewer {id}: {kind} not sent: {e!r}", id=self.media_session_id,
                             kind=track.kind, e=e)
                return True
        return deliver

    def _preferences(self, kind: str):
        capabilities = RTCRtpSender.getCapabilities(kind).codecs
        if kind == "video":
            # H264 Constrained Baseline, packetization-mode 1 first (baresip sends 42e01f).
            def rank(c):
                params = c.parameters or {}
                return (params.get("packetization-mode") != "1",
                        not str(params.get("profile-level-id", "")).startswith("42e0"))
            return sorted([c for c in capabilities if c.mimeType == "video/H264"], key=rank)
        wanted = AUDIO_CODECS.get(self.stream.audio_codec)
        order = [wanted] if wanted else []
        order += [m for m in ("audio/opus", "audio/PCMU", "audio/PCMA") if m not in order]
        return [c for m in order for c in capabilities if c.mimeType == m]

    def _check_audio_codec(self) -> None:
        for transceiver in self.pc.getTransceivers():
            if transceiver.kind != "audio" or not transceiver._codecs:
                continue
            chosen = transceiver._codecs[0].mimeType
            source = AUDIO_CODECS.get(self.stream.audio_codec)
            self.transcode_audio = source is not None and chosen != source
            if self.transcode_audio:
                log.info("viewer {id}: browser took {chosen}, stream is {source}: transcoding",
                         id=self.media_session_id, chosen=chosen, source=source)

    def _forward_keyframe_requests(self, kind: str, sender) -> None:
        """Browser PLI/FIR go upstream: aiortc ignores them for passed-through packets.
        NACKs for forwarded packets are answered from the forwarder's history."""
        handle = sender._handle_rtcp_packet
        stream = self.stream

        async def handle_rtcp(packet):
            if isinstance(packet, RtcpPsfbPacket) and packet.fmt in (RTCP_PSFB_PLI, RTCP_PSFB_FIR):
                stream.request_keyframe()
            elif isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
                forwarder = self.forwarders.get(kind)
                if forwarder is not None:
                    try:
                        forwarder.retransmit(packet.lost)
                    except (ConnectionError, OSError):
                        pass
                    return
            await handle(packet)
        sender._handle_rtcp_packet = handle_rtcp

    def remote_ice(self) -> tuple[str, str]:
        """The player's ICE ufrag and pwd, from its offer."""
        ufrag = pwd = ""
        description = self.pc.remoteDescription
        for line in (description.sdp if description else "").splitlines():
            if line.startswith("a=ice-ufrag:") and not ufrag:
                ufrag = line[12:].strip()
            elif line.startswith("a=ice-pwd:") and not pwd:
                pwd = line[10:].strip()
        return ufrag, pwd

    def parse_candidates(self, candidates) -> list:
        """Trickled candidates of the player (``(sdp value, mid)``; a missing mid means the
        first m= section, which every other one is bundled with) as aiortc's; ValueError for
        one that does not parse."""
        first = next((t.mid for t in self.pc.getTransceivers() if t.mid is not None), None)
        parsed = []
        for value, mid in candidates:
            try:
                candidate = candidate_from_sdp(value)
            except Exception as exc:  # noqa: BLE001 - aiortc asserts, indexes, converts
                raise ValueError(f"a=candidate:{value[:60]} does not parse "
                                 f"({type(exc).__name__})") from None
            candidate.sdpMid = mid if mid is not None else first
            parsed.append(candidate)
        return parsed

    async def add_remote_candidates(self, parsed: list, end: bool = False) -> None:
        """``parse_candidates``' result added to ICE; ``end``: no more come."""
        for candidate in parsed:
            await self.pc.addIceCandidate(candidate)
        if end:
            await self.pc.addIceCandidate(None)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for track in self.tracks:
            track.sink.close()
        await self.pc.close()
