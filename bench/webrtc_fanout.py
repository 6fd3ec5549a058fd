"""WebRTC fan-out benchmark (issue 4 item 8): one call, N WebRTC viewers.

One 720p30 H264 (FU-A, ~1.55 Mbit/s, IDR every 2 s) + PCMU (50 packets/s) call is sent as
RTP, in real time, to a sipgw ``MediaSession`` publishing the Stream "bench"; N synthetic
WebRTC receivers play it through sipgw's WCS websocket signalling (``SignallingFactory``),
for N = 1, 16, 64, 128 (``--quick``: 1, 16). Per N it prints the server's CPU per viewer
(and the derived viewers per core), packet loss, time to first frame (p50/p95) and RSS per
viewer. Targets: >= 250 viewers per core at 0 loss (the 128 step counts), TTFF p50 <= 300 ms,
<= 3 MB RSS per viewer. Baseline, measured in the same run: the same server with the call
and 0 viewers (its RTP intake); the per-viewer cost is also printed as a ratio to it.
"0 loss" means, in the steady window: no RTP sequence gap at any receiver, no frame dropped
by the server for a slow viewer (Sink), none lost at the server's RTP intake (kernel drops
on its sockets, frames its depacketizer dropped).

    .venv/bin/python bench/webrtc_fanout.py            # N = 1, 16, 64, 128; 15 s windows (about 2.5 min)
    .venv/bin/python bench/webrtc_fanout.py --quick    # N = 1, 16; 4 s windows (about 30 s)
    .venv/bin/python bench/webrtc_fanout.py --keep     # keep the work directory (server and client logs)
    .venv/bin/python bench/webrtc_fanout.py --janus    # Janus's streaming plugin at every N too (issue 15)

Processes (all on 127.0.0.1, all stopped at the end of each step):
  server   this file, ``--role server``: the asyncio reactor (as ``twistd --reactor=asyncio``
           runs it), a StreamRegistry with one Stream fed by a MediaSession (audio PCMU +
           video H264, negotiated to send nowhere), a SignallingFactory on a free port with
           webrtc_ice_address=127.0.0.1. A fresh one per N.
  source   ``--role source``: bench/rtp_intake.py's ``h264_packets`` (one 2 s GOP, looped with
           running sequence numbers and timestamps) and PCMU silence, sent by its ``send_at``.
  clients  ``--role clients``: aiortc peers signalled by tests/interop/ws_viewer.py's
           ``WcsSession``/``Player``, one websocket each, joining at ``--join-rate`` per second;
           two processes above 32 viewers. Their RTCRtpReceivers count packets instead of
           depacketizing and decoding (``_handle_rtp_packet`` replaced): no jitter buffer,
           no decoder, no NACK/PLI (RTCP receiver reports still go out). Each reassembles
           its first 90 access units and matches them against the source's (payload check).
  janus    with ``--janus``: Debian's janus, its config written here, one RTP mountpoint fed
           by the same source, watched by the same receivers over its websocket API; the
           whole bench then runs in a private network namespace (libnice needs a non-lo
           interface holding 127.0.0.1/32).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE, os.path.join(ROOT, "tests", "interop")]

from peers import free_port  # noqa: E402
from rtp_intake import cpu_seconds, h264_packets, rss_kb, send_at  # noqa: E402

STREAM = "bench"
STEPS = (1, 16, 64, 128)
QUICK_STEPS = (1, 16)
PER_CLIENT_PROCESS = 32  # above this, the viewers are split over two client processes
TARGET_VIEWERS_PER_CORE = 250
TARGET_TTFF_P50_MS = 300
TARGET_MB_PER_VIEWER = 3.0
VIDEO_PT, AUDIO_PT = 102, 0
GOP_TS = 60 * 3000  # h264_packets: an IDR every 60 frames of 3000 ticks (90 kHz, 30 fps)
PCMU_TS = 50 * 160  # one second of 20 ms PCMU frames
SOURCE_PORTS = {"audio": 47290, "video": 47292}  # where the source sends from: the SDP's ports
FRAMES_PER_SECOND = 30 + 50  # frames a viewer's sinks are offered: video + audio
SATURATED_PCT = 90  # the server's one reactor thread near a full core
LAG_PROBE = 0.01


class HarnessError(RuntimeError):
    """A process of the bench did not start or answer in time."""


# -- source: the call's RTP, in real time ---------------------------------------------------
class Looped:
    """A period of RTP packets repeated forever, sequence numbers and timestamps running on:
    an endless packet list for ``send_at`` (it indexes ``packets[sent % len(packets)]``)."""

    def __init__(self, packets: list[bytes], ts_period: int):
        self.packets = packets
        self.ts_period = ts_period

    def __len__(self) -> int:
        return 1 << 40

    def __getitem__(self, index: int) -> bytes:
        cycle, k = divmod(index, len(self.packets))
        packet = self.packets[k]
        seq, ts = struct.unpack_from("!HI", packet, 2)
        return (packet[:2] + struct.pack("!HI", (seq + cycle * len(self.packets)) & 0xFFFF,
                                         (ts + cycle * self.ts_period) & 0xFFFFFFFF)
                + packet[8:])


def one_gop() -> list[bytes]:
    """The packets of h264_packets' first 2 s GOP (IDR + 59 P frames)."""
    packets = h264_packets(2000)
    return [p for p in packets if struct.unpack_from("!I", p, 4)[0] < GOP_TS]


def pcmu_second() -> list[bytes]:
    return [struct.pack("!BBHII", 0x80, AUDIO_PT, i, i * 160, 0x5678) + b"\xff" * 160
            for i in range(50)]


VERIFY_FRAMES = 90  # per receiver: its first 3 s of video are checked against the source


def source_digests() -> set[bytes]:
    """Digests of the source's access units (Annex-B, as sipgw's depacketizer makes them):
    what a receiver must reassemble, however the server packetized them."""
    import hashlib

    from sipgw.rtp.h264 import H264Depacketizer
    from sipgw.rtp.packet import RtpPacket
    depacketizer = H264Depacketizer()
    return {hashlib.blake2b(unit.data, digest_size=16).digest() for data in one_gop()
            for unit in depacketizer.push(RtpPacket.parse(data))}


def annex_b(payloads: list[bytes]) -> bytes | None:
    """One access unit from its RTP payloads (RFC 6184 single NAL, STAP-A, FU-A)."""
    out, fu = [], None
    for p in payloads:
        nal = p[0] & 0x1F
        if nal == 28:
            if p[1] & 0x80:
                fu = bytearray([(p[0] & 0xE0) | (p[1] & 0x1F)])
            if fu is None:
                return None
            fu += p[2:]
            if p[1] & 0x40:
                out.append(bytes(fu))
                fu = None
        elif nal == 24:
            i = 1
            while i + 2 <= len(p):
                size = p[i] << 8 | p[i + 1]
                out.append(p[i + 2:i + 2 + size])
                i += 2 + size
        else:
            out.append(p)
    return b"".join(b"\x00\x00\x00\x01" + n for n in out)


def viewer_packet_rate() -> float:
    """RTP packets/s one viewer gets at the full rate: the source's GOP through sipgw's
    depacketizer (the access units the Stream publishes), then aiortc's H264 packetizer
    (what each viewer's sender sends), plus 50 PCMU packets/s."""
    import fractions

    import av
    from aiortc.codecs.h264 import H264Encoder

    from sipgw.rtp.h264 import H264Depacketizer
    from sipgw.rtp.packet import RtpPacket

    depacketizer, encoder, packets = H264Depacketizer(), H264Encoder(), 0
    for data in one_gop():
        for unit in depacketizer.push(RtpPacket.parse(data)):
            frame = av.Packet(unit.data)
            frame.pts, frame.time_base = 0, fractions.Fraction(1, 90000)
            packets += len(encoder.pack(frame)[0])
    return packets / (GOP_TS / 90000) + 50


def run_source(audio_port: int, video_port: int, seconds: float) -> None:
    video = one_gop()
    threads = [
        threading.Thread(target=send_at, daemon=True,
                         args=([video_port], Looped(video, GOP_TS), len(video) / 2.0, seconds,
                               SOURCE_PORTS["video"])),
        threading.Thread(target=send_at, daemon=True,
                         args=([audio_port], Looped(pcmu_second(), PCMU_TS), 50.0, seconds,
                               SOURCE_PORTS["audio"])),
    ]
    for thread in threads:
        thread.start()
    payload = sum(len(p) - 12 for p in video) * 8 / 2.0
    print(json.dumps({"ready": True, "video_pps": len(video) / 2.0,
                      "video_kbps": payload / 1000}), flush=True)
    for line in sys.stdin:  # until "stop", or the bench going away (EOF)
        if line.strip() == "stop":
            break


# -- server: a Stream fed by a MediaSession, and the websocket signalling -------------------
def run_server() -> None:
    from twisted.internet import asyncioreactor
    asyncioreactor.install()
    from twisted.internet import reactor, stdio
    from twisted.logger import globalLogBeginner, textFileLogObserver
    from twisted.protocols.basic import LineReceiver

    from sipgw.config import Config
    from sipgw.rtp.ports import PortPool
    from sipgw.rtp.session import MediaSession
    from sipgw.sip.sdp import Codec, NegotiatedMedia
    from sipgw.streams.registry import StreamRegistry
    from sipgw.streams.stream import Stream
    from sipgw.webrtc.viewer import pin_ice_host
    from sipgw.ws.signalling import SignallingFactory

    # Log like the daemon does (to a file); unstarted, Twisted would buffer every event.
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(os.environ["SIPGW_BENCH_LOG"], "a"))],
        redirectStandardIO=False)
    config = Config(ws_bind_address="127.0.0.1", webrtc_ice_address="127.0.0.1",
                    sip_bind_address="127.0.0.1",
                    max_viewers_per_stream=0, max_viewers_per_connection=0)  # up to 128 viewers
    pin_ice_host(config.webrtc_ice_address)
    registry = StreamRegistry()
    stream = registry.add(Stream(STREAM, has_audio=True, has_video=True, call_id="bench"))
    session = MediaSession(reactor, call_id="bench", stream=stream, bind_address="127.0.0.1",
                           ports=PortPool(config.media_port_from, config.media_port_to,
                                          "127.0.0.1"),
                           kinds=["audio", "video"])
    ports = session.open()
    source = dict(address="127.0.0.1", dtmf_pt=None, direction="sendrecv")
    session.negotiate({  # the source's addresses, as a callee's answer names them
        "audio": NegotiatedMedia(kind="audio", codec=Codec(AUDIO_PT, "PCMU", 8000),
                                 packetization_mode=None, recv_pt=AUDIO_PT,
                                 port=SOURCE_PORTS["audio"], rtcp_port=SOURCE_PORTS["audio"] + 1,
                                 **source),
        "video": NegotiatedMedia(kind="video", codec=Codec(VIDEO_PT, "H264", 90000,
                                                           fmtp="packetization-mode=1"),
                                 packetization_mode=1, recv_pt=VIDEO_PT,
                                 port=SOURCE_PORTS["video"], rtcp_port=SOURCE_PORTS["video"] + 1,
                                 **source)})
    stream._on_keyframe_request = session.request_keyframe  # as sipgw/gateway/call.py wires it
    stream.counters_source = session.counters
    session.established()
    factory = SignallingFactory(config, registry, reactor)
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    lags: list[float] = []  # how late a 10 ms timer fires: what every RTP packet waits

    def probe(due: float) -> None:
        now = time.monotonic()
        lags.append(now - due)
        reactor.callLater(LAG_PROBE, probe, now + LAG_PROBE)
    reactor.callLater(LAG_PROBE, probe, time.monotonic() + LAG_PROBE)

    class Control(LineReceiver):
        delimiter = b"\n"
        stopping = False

        def connectionMade(self):
            self.reply({"ws_port": listening.getHost().port, "audio_port": ports["audio"],
                        "video_port": ports["video"]})

        def reply(self, obj):
            self.sendLine(json.dumps(obj).encode())

        def lineReceived(self, line):
            command = line.decode().strip()
            if command == "stats":  # loop lag since the previous "stats"
                window = sorted(lags)
                lags.clear()
                self.reply({"viewers": factory.viewer_count(), "sinks": len(stream.sinks),
                            "sink_dropped": sum(s.dropped for s in stream.sinks),
                            "sinks_waiting_keyframe": sum(s.waiting_keyframe
                                                          for s in stream.sinks),
                            "sink_queue_max": max((len(s.queue) for s in stream.sinks),
                                                  default=0),
                            "lag_p99_ms": percentile(window, 99) * 1000,
                            "lag_max_ms": (window[-1] if window else 0.0) * 1000,
                            "keyframe_requests": stream.keyframe_requests,
                            "rtp": session.counters()})
            elif command == "stop" and not self.stopping:
                self.stopping = True
                reactor.stop()

        def connectionLost(self, reason):
            if not self.stopping:
                self.stopping = True
                reactor.stop()  # the bench went away: do not outlive it

    stdio.StandardIO(Control(), reactor=reactor)
    reactor.run()


# -- Janus: the same source into its streaming plugin, the same receivers -------------------
JANUS_PLUGINS = "/usr/lib/x86_64-linux-gnu/janus"
JANUS_NETNS_SETUP = ("ip link set lo up && ip link add jv0 type veth peer name jv1 && "
                     "ip addr add 127.0.0.1/32 dev jv0 && ip link set jv0 up && ip link set jv1 up")
JANUS_MOUNTPOINT = 1


def janus_config(folder: str, ws_port: int, video_port: int, audio_port: int) -> None:
    """Janus core (ICE on jv0 only: libnice gathers no loopback), the websockets transport
    on 127.0.0.1 and the streaming plugin with one RTP mountpoint for the bench's source."""
    plugins = ",".join(f"libjanus_{p}.so" for p in (
        "audiobridge", "duktape", "echotest", "lua", "nosip", "recordplay", "sip", "textroom",
        "videocall", "videoroom", "voicemail"))
    transports = ",".join(f"libjanus_{t}.so" for t in ("http", "mqtt", "nanomsg", "pfunix",
                                                       "rabbitmq"))
    files = {
        "janus.jcfg": f"""general: {{
  configs_folder = "{folder}"
  plugins_folder = "{JANUS_PLUGINS}/plugins"
  transports_folder = "{JANUS_PLUGINS}/transports"
  events_folder = "{JANUS_PLUGINS}/events"
  loggers_folder = "{JANUS_PLUGINS}/loggers"
  debug_level = 3
}}
media: {{ rtp_port_range = "40000-49999" }}
nat: {{ nice_debug = false
  ice_enforce_list = "jv0" }}
plugins: {{ disable = "{plugins}" }}
transports: {{ disable = "{transports}" }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
events: {{ broadcast = false }}
""",
        "janus.transport.websockets.jcfg": f"""general: {{ json = "plain"
  ws = true
  ws_port = {ws_port}
  ws_ip = "127.0.0.1"
  wss = false }}
admin: {{ admin_ws = false
  admin_wss = false }}
""",
        "janus.plugin.streaming.jcfg": f"""general: {{ }}
bench: {{
  type = "rtp"
  id = {JANUS_MOUNTPOINT}
  description = "bench"
  media = (
    {{ type = "video", mid = "v", port = {video_port}, pt = {VIDEO_PT}, codec = "h264",
       fmtp = "profile-level-id=42e01f;packetization-mode=1" }},
    {{ type = "audio", mid = "a", port = {audio_port}, pt = {AUDIO_PT}, codec = "pcmu" }}
  )
}}
""",
    }
    os.makedirs(folder, exist_ok=True)
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)


class JanusServer:
    """Debian's janus (1.1.2), its config written by the bench; stopped by its pid. Quacks
    like the sipgw server ``Child`` for the step: pid, cpu(), ask("stats"), stop()."""

    def __init__(self, name: str, workdir: str):
        self.name = name
        folder = os.path.join(workdir, name)
        self.ports = {"ws_port": free_port("tcp"),
                      "video_port": free_port("udp"), "audio_port": free_port("udp")}
        janus_config(folder, self.ports["ws_port"], self.ports["video_port"],
                     self.ports["audio_port"])
        self.log = os.path.join(workdir, f"{name}.log")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["janus", "-F", folder, "-C",
                                          os.path.join(folder, "janus.jcfg")],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.pid = self.proc.pid

    def read(self, timeout: float) -> dict:
        """Wait until the websocket API listens: the ports, as the sipgw server gives them."""
        import socket
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise HarnessError(f"janus exited with {self.proc.returncode} (log: {self.log})")
            try:
                socket.create_connection(("127.0.0.1", self.ports["ws_port"]), 0.5).close()
                return dict(self.ports)
            except OSError:
                time.sleep(0.1)
        raise HarnessError(f"janus: websocket API not up within {timeout} s (log: {self.log})")

    def ask(self, command: str, timeout: float = 15) -> dict:
        """No lag probe, no Sinks inside Janus: the columns sipgw alone has are zero."""
        return {"viewers": -1, "sink_dropped": 0, "sinks_waiting_keyframe": 0,
                "sink_queue_max": 0, "lag_p99_ms": float("nan"), "lag_max_ms": float("nan"),
                "rtp": {"video": {"dropped_frames": 0}}}

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 25) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class JanusPlayer:
    """One viewer of the Janus mountpoint over Janus's websocket API (one websocket each):
    create, attach streaming, watch -> Janus's offer, our answer with start."""

    def __init__(self, url: str):
        self.url = url
        self.ws = self.pc = self.started_at = None
        self.session = self.handle = None
        self.tasks: list = []

    async def request(self, body: dict) -> dict:
        import secrets
        transaction = secrets.token_hex(6)
        await self.ws.send(json.dumps(dict(body, transaction=transaction)))
        while True:
            msg = json.loads(await self.ws.recv())
            if msg.get("transaction") == transaction and msg["janus"] != "ack":
                if msg["janus"] == "error":
                    raise RuntimeError(f"janus: {msg['error']}")
                return msg

    async def play(self) -> "JanusPlayer":
        import asyncio
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from websockets.asyncio.client import connect as ws_connect
        self.ws = await ws_connect(self.url, subprotocols=["janus-protocol"], ping_interval=None,
                                   open_timeout=15)
        self.session = (await self.request({"janus": "create"}))["data"]["id"]
        self.handle = (await self.request({"janus": "attach", "plugin": "janus.plugin.streaming",
                                           "session_id": self.session}))["data"]["id"]
        ids = {"session_id": self.session, "handle_id": self.handle}
        self.started_at = time.monotonic()
        offer = await self.request({"janus": "message", **ids,
                                    "body": {"request": "watch", "id": JANUS_MOUNTPOINT}})
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        await self.pc.setRemoteDescription(RTCSessionDescription(offer["jsep"]["sdp"], "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.request({"janus": "message", **ids, "body": {"request": "start"},
                            "jsep": {"type": "answer", "sdp": self.pc.localDescription.sdp}})

        async def keepalive():  # Janus ends a session after 60 s of silence
            while True:
                await asyncio.sleep(15)
                await self.ws.send(json.dumps({"janus": "keepalive", "session_id": self.session,
                                               "transaction": "ka"}))

        async def drain():  # events (webrtcup, media, ...) are read and dropped
            async for _ in self.ws:
                pass
        self.tasks = [asyncio.ensure_future(keepalive()), asyncio.ensure_future(drain())]
        return self

    async def close(self):
        for task in self.tasks:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.ws is not None:
            await self.ws.close()


# -- clients: aiortc receivers that count packets ----------------------------------------
class Counts:
    """One RTCRtpReceiver's packets: RFC 3550 A.1-style extended sequence numbers give the
    expected count; for video also frames (marker bits) and when the first keyframe was
    complete (every packet from its first to its marker, no gap)."""

    __slots__ = ("packets", "base", "cycles", "max_seq", "frames", "first_packet",
                 "first_frame", "key_ts", "key_start", "key_packets", "au", "au_ts", "au_seq",
                 "verified", "corrupt")

    def __init__(self):
        self.packets = self.cycles = self.frames = self.key_packets = 0
        self.base = self.max_seq = self.key_ts = self.key_start = None
        self.first_packet = self.first_frame = None
        self.au, self.au_ts, self.au_seq = [], None, None  # the access unit being checked
        self.verified = self.corrupt = 0

    def expected(self) -> int:
        return 0 if self.base is None else self.cycles + self.max_seq - self.base + 1


KEY_NALS = (5, 7)  # IDR slice, SPS


def starts_keyframe(payload: bytes) -> bool:
    """The packet carries the start of an IDR or an SPS (RFC 6184 single NAL, STAP-A, FU-A)."""
    if not payload:
        return False
    nal = payload[0] & 0x1F
    if nal == 24:
        i = 1
        while i + 2 < len(payload):
            if payload[i + 2] & 0x1F in KEY_NALS:
                return True
            i += 2 + (payload[i] << 8 | payload[i + 1])
        return False
    if nal == 28:
        return len(payload) > 1 and bool(payload[1] & 0x80) and payload[1] & 0x1F in KEY_NALS
    return nal in KEY_NALS


def counts_of(receiver) -> Counts:
    counts = receiver.__dict__.get("_bench_counts")
    if counts is None:
        counts = receiver._bench_counts = Counts()
    return counts


async def count_rtp(receiver, packet, arrival_time_ms) -> None:
    """Replaces RTCRtpReceiver._handle_rtp_packet: count, no depacketizing, no decoding."""
    c = counts_of(receiver)
    now = time.monotonic()
    seq = packet.sequence_number
    c.packets += 1
    if c.base is None:
        c.base = c.max_seq = seq
        c.first_packet = now
    elif (seq - c.max_seq) & 0xFFFF < 0x8000:
        if seq < c.max_seq:
            c.cycles += 0x10000
        c.max_seq = seq
    if receiver._RTCRtpReceiver__kind != "video":
        return
    if packet.marker:
        c.frames += 1
    if c.first_frame is not None and c.verified + c.corrupt < VERIFY_FRAMES:
        check_payload(c, packet)
    if c.first_frame is None:
        ext = c.cycles + seq
        if c.key_ts != packet.timestamp and starts_keyframe(packet.payload):
            c.key_ts, c.key_start, c.key_packets = packet.timestamp, ext, 0
        if c.key_ts == packet.timestamp:
            c.key_packets += 1
            if packet.marker and c.key_packets == ext - c.key_start + 1:
                c.first_frame = now


DIGESTS: set[bytes] = set()


def check_payload(c: Counts, packet) -> None:
    """Reassemble whole access units (no gap inside) and match them against the source's:
    a server that mangles payloads cannot look fast."""
    import hashlib
    if packet.timestamp != c.au_ts or c.au_seq is None \
            or packet.sequence_number != (c.au_seq + 1) & 0xFFFF:
        if packet.timestamp == c.au_ts:  # a gap inside the access unit: not checkable
            c.au, c.au_ts = [], None
            return
        c.au, c.au_ts = [], packet.timestamp
    c.au_seq = packet.sequence_number
    c.au.append(packet.payload)
    if packet.marker:
        data = annex_b(c.au)
        c.au, c.au_ts = [], None
        if data is not None and hashlib.blake2b(data, digest_size=16).digest() in DIGESTS:
            c.verified += 1
        else:
            c.corrupt += 1


def run_clients(url: str, count: int, rate: float, janus: bool = False) -> None:
    import asyncio

    from aiortc.rtcrtpreceiver import RTCRtpReceiver
    from ws_viewer import WcsSession

    RTCRtpReceiver._handle_rtp_packet = count_rtp
    DIGESTS.update(source_digests())

    class Receiver:
        def __init__(self):
            self.session = self.player = self.error = None
            self.receivers = {}

        def snapshot(self) -> dict:
            out = {"error": self.error, "joined": self.player is not None,
                   "started": self.player.started_at if self.player else None}
            for kind, receiver in self.receivers.items():
                c = counts_of(receiver)
                out[kind] = {"packets": c.packets, "expected": c.expected(), "frames": c.frames,
                             "first_packet": c.first_packet, "first_frame": c.first_frame,
                             "verified": c.verified, "corrupt": c.corrupt}
            return out

        async def join(self):
            try:
                if janus:
                    self.player = await asyncio.wait_for(JanusPlayer(url).play(), 30)
                else:
                    self.session = WcsSession(url)
                    await asyncio.wait_for(self.session.connect(), 20)
                    self.player = await asyncio.wait_for(self.session.play(STREAM, decode=False),
                                                         30)
                for transceiver in self.player.pc.getTransceivers():
                    self.receivers[transceiver.kind] = transceiver.receiver
                    counts_of(transceiver.receiver)
            except Exception as exc:  # noqa: BLE001 - reported per viewer
                self.error = f"{type(exc).__name__}: {exc}"[:200]

        async def close(self):
            if self.player is not None:
                await self.player.close()
            if self.session is not None and getattr(self.session, "proto", None):
                self.session.close()

    async def main():
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        viewers = [Receiver() for _ in range(count)]
        tasks: list = []
        t0 = loop.time()
        joins = [loop.call_at(t0 + i / rate, lambda v=v: tasks.append(
            asyncio.ensure_future(v.join()))) for i, v in enumerate(viewers)]
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = (await reader.readline()).decode().strip()
            if line == "snapshot":
                print(json.dumps({"now": time.monotonic(),
                                  "viewers": [v.snapshot() for v in viewers]}), flush=True)
            elif line == "stop" or not line:
                break
        for handle in joins:
            handle.cancel()
        for task in tasks:
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.gather(*(v.close() for v in viewers),
                                                  return_exceptions=True), 20)
        except asyncio.TimeoutError:
            pass
        print(json.dumps({"stopped": True}), flush=True)

    asyncio.run(main())
    os._exit(0)  # aiortc decoder threads of half-closed receivers must not hold the exit


# -- the bench ------------------------------------------------------------------------------
class Child:
    """A process of the bench speaking JSON lines on stdin/stdout; stopped by its pid."""

    def __init__(self, name: str, args: list[str], workdir: str):
        self.name = name
        self.log = os.path.join(workdir, f"{name}.log")
        env = dict(os.environ, SIPGW_BENCH_LOG=os.path.join(workdir, f"{name}.twisted.log"),
                   PYTHONUNBUFFERED="1")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *args],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, env=env, cwd=ROOT)
        self.pid = self.proc.pid
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, timeout: float) -> dict:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise HarnessError(f"{self.name}: no answer within {timeout} s (log: {self.log})")
        if line is None:
            raise HarnessError(f"{self.name} exited with {self.proc.wait()} (log: {self.log})")
        return json.loads(line)

    def ask(self, command: str, timeout: float = 15) -> dict:
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self, timeout: float = 25) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"stop\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def udp_drops(ports) -> int:
    """Datagrams the kernel dropped (receive buffer full) on these 127.0.0.1 UDP ports."""
    wanted = {f"0100007F:{port:04X}" for port in ports}
    drops = 0
    with open("/proc/net/udp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[1] in wanted:
                drops += int(fields[-1])
    return drops


def run_queue_seconds(pid: int) -> float:
    """Seconds this process's threads spent runnable but waiting for a core (schedstat)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total / 1e9


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


class Marks:
    """CPU seconds of the bench's processes and of the machine, at one instant."""

    def __init__(self, server: Child, clients: list[Child], source: Child):
        self.at = time.monotonic()
        self.server = server.cpu()
        self.server_wait = run_queue_seconds(server.pid)
        self.clients = sum(c.cpu() for c in clients)
        self.source = source.cpu()
        self.busy, self.total = machine_jiffies()

    def pct(self, later: "Marks", attr: str) -> float:
        """% of one core used between self and later."""
        return (getattr(later, attr) - getattr(self, attr)) / (later.at - self.at) * 100

    def machine_pct(self, later: "Marks") -> float:
        """% of one core used by everything on the machine (N cores -> up to N x 100)."""
        cores = os.cpu_count() or 1
        return (later.busy - self.busy) / max(later.total - self.total, 1) * cores * 100


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * len(values) + 0.5) - 1))]


def loss(before: list[dict], after: list[dict]) -> tuple[float, float, float]:
    """(loss in the window, loss since each receiver's first packet, video fps per viewer)."""
    got = expected = total_got = total_expected = frames = viewers = 0
    for b, a in zip(before, after):
        for kind in ("video", "audio"):
            if kind not in a or kind not in b:
                continue
            got += a[kind]["packets"] - b[kind]["packets"]
            expected += a[kind]["expected"] - b[kind]["expected"]
            total_got += a[kind]["packets"]
            total_expected += a[kind]["expected"]
        if "video" in a and "video" in b:
            frames += a["video"]["frames"] - b["video"]["frames"]
            viewers += 1
    window = max(1 - got / expected, 0) if expected else float("nan")
    overall = max(1 - total_got / total_expected, 0) if total_expected else float("nan")
    return window, overall, frames / viewers if viewers else 0.0


def run_step(n: int, opts, workdir: str, target: str = "sipgw") -> dict:
    children: list[Child] = []
    try:
        if target == "janus":
            server = JanusServer(f"janus-{n}", workdir)
        else:
            server = Child(f"server-{n}", ["--role", "server"], workdir)
        children.append(server)
        info = server.read(30)
        bound = opts.warmup + opts.baseline + n / opts.join_rate + 60 + 2 * opts.window
        source = Child(f"source-{target}-{n}", ["--role", "source", "--audio-port",
                                       str(info["audio_port"]), "--video-port",
                                       str(info["video_port"]), "--seconds", str(bound)], workdir)
        children.append(source)
        source_info = source.read(10)
        time.sleep(opts.warmup)  # the GOP is cached, the intake warm
        # Baseline: the call alone, no viewer.
        b0 = Marks(server, [], source)
        time.sleep(opts.baseline)
        b1 = Marks(server, [], source)
        rss0 = rss_kb(server.pid)
        stats0 = server.ask("stats")
        # N viewers join at --join-rate per second in total.
        split = [n] if n <= PER_CLIENT_PROCESS else [n - n // 2, n // 2]
        url = f"ws://127.0.0.1:{info['ws_port']}"
        clients = []
        for i, count in enumerate(split):
            client = Child(f"clients-{target}-{n}-{i}",
                           ["--role", "clients", "--url", url, "--count", str(count),
                            "--join-rate", str(opts.join_rate / len(split))]
                           + (["--janus"] if target == "janus" else []), workdir)
            children.append(client)
            clients.append(client)
        for client in clients:
            client.read(30)
        deadline = time.monotonic() + n / opts.join_rate + 40
        while True:
            snaps = [v for c in clients for v in c.ask("snapshot")["viewers"]]
            settled = [v for v in snaps if v["error"] or (v.get("video") or {}).get("first_frame")]
            if len(settled) == n or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        time.sleep(opts.settle)
        # The steady window.
        intake_ports = [info["audio_port"], info["video_port"]]
        m0 = Marks(server, clients, source)
        drops0 = udp_drops(intake_ports)
        before = [v for c in clients for v in c.ask("snapshot")["viewers"]]
        stats1 = server.ask("stats")
        time.sleep(opts.window)
        m1 = Marks(server, clients, source)
        drops1 = udp_drops(intake_ports)
        after = [v for c in clients for v in c.ask("snapshot")["viewers"]]
        stats2 = server.ask("stats")
        rss1 = rss_kb(server.pid)
    finally:
        for child in reversed(children):
            child.stop()

    joined = [v for v in after if v["joined"] and not v["error"]]
    errors = sorted({v["error"] for v in after if v["error"]})
    ttff = [(v["video"]["first_frame"] - v["started"]) * 1000 for v in joined
            if v.get("video") and v["video"]["first_frame"]]
    first_packet = [(v["video"]["first_packet"] - v["started"]) * 1000 for v in joined
                    if v.get("video") and v["video"]["first_packet"]]
    window_loss, overall_loss, frames = loss(before, after)
    base_cpu = b0.pct(b1, "server")
    cpu = m0.pct(m1, "server")
    per_viewer = (cpu - base_cpu) / n
    delivered = sum(a[k]["packets"] - b[k]["packets"] for b, a in zip(before, after)
                    for k in ("video", "audio") if k in a and k in b)
    us_per_packet = ((cpu - base_cpu) / 100 * (m1.at - m0.at) / delivered * 1e6
                     if delivered else float("nan"))
    rtp0, rtp1, rtp2 = stats0["rtp"], stats1["rtp"], stats2["rtp"]
    return {
        "target": target, "n": n, "joined": len(joined),
        "frames_verified": sum(v["video"]["verified"] for v in after if v.get("video")),
        "frames_corrupt": sum(v["video"]["corrupt"] for v in after if v.get("video")), "errors": errors,
        "no_frame": len(joined) - len(ttff),
        "server_viewers": stats2["viewers"],
        "base_cpu_pct": base_cpu, "cpu_pct": cpu, "cpu_pct_per_viewer": per_viewer,
        "viewers_per_core": 100 / per_viewer if per_viewer > 0 else float("inf"),
        "packets_delivered_per_s": delivered / (m1.at - m0.at),
        "us_per_packet": us_per_packet,
        "viewers_per_core_full_rate": 1e6 / (us_per_packet * opts.viewer_pps),
        "loss_window": window_loss, "loss_since_join": overall_loss,
        "fps_per_viewer": frames / (m1.at - m0.at),
        "sink_dropped_window": stats2["sink_dropped"] - stats1["sink_dropped"],
        "sink_drop_window": ((stats2["sink_dropped"] - stats1["sink_dropped"])
                             / (FRAMES_PER_SECOND * (m1.at - m0.at) * max(len(joined), 1))),
        "sink_dropped_total": stats2["sink_dropped"],
        "intake_udp_drops_window": drops1 - drops0,
        "intake_dropped_frames_window": (rtp2["video"]["dropped_frames"]
                                         - rtp1["video"]["dropped_frames"]),
        "intake_dropped_frames_total": (rtp2["video"]["dropped_frames"]
                                        - rtp0["video"]["dropped_frames"]),
        "lag_p99_ms": stats2["lag_p99_ms"], "lag_max_ms": stats2["lag_max_ms"],
        "sinks_waiting_keyframe": stats2["sinks_waiting_keyframe"],
        "sink_queue_max": stats2["sink_queue_max"],
        "ttff_p50_ms": percentile(ttff, 50), "ttff_p95_ms": percentile(ttff, 95),
        "first_packet_p50_ms": percentile(first_packet, 50),
        "kb_per_viewer": (rss1 - rss0) / n, "rss0_mb": rss0 / 1024, "rss_mb": rss1 / 1024,
        "server_wait_pct": m0.pct(m1, "server_wait"),
        "base_server_wait_pct": b0.pct(b1, "server_wait"),
        "clients_cpu_pct": m0.pct(m1, "clients"), "source_cpu_pct": m0.pct(m1, "source"),
        "machine_pct": m0.machine_pct(m1), "baseline_machine_pct": b0.machine_pct(b1),
        "video_kbps": source_info["video_kbps"],
    }


HEADER = ("     N join srv cpu% wait% base% %/viewer v/core us/pkt rtp loss% (all)  fps srv drop%"
          " intake drop lag p99/max ms TTFF p50/p95 ms KB/viewer clients% src% machine%")


def row(r: dict) -> str:
    intake = f"{r['intake_udp_drops_window']}p/{r['intake_dropped_frames_window']}f"
    since = "(" + format(r["loss_since_join"] * 100, ".3f") + ")"
    return (f"  {r['n']:4d} {r['joined']:4d} {r['cpu_pct']:8.1f} {r['server_wait_pct']:5.1f}"
            f" {r['base_cpu_pct']:5.1f} {r['cpu_pct_per_viewer']:8.3f}"
            f" {r['viewers_per_core']:6.0f} {r['us_per_packet']:6.1f}"
            f" {r['loss_window'] * 100:9.3f} {since:>7}"
            f" {r['fps_per_viewer']:4.1f} {r['sink_drop_window'] * 100:9.3f} {intake:>11}"
            f" {r['lag_p99_ms']:7.0f}/{r['lag_max_ms']:<6.0f}"
            f" {r['ttff_p50_ms']:7.0f}/{r['ttff_p95_ms']:<6.0f} {r['kb_per_viewer']:9.0f}"
            f" {r['clients_cpu_pct']:8.1f} {r['source_cpu_pct']:4.1f} {r['machine_pct']:8.0f}")


def clean(r: dict) -> bool:
    """0 loss: every viewer joined and, in the window, no RTP packet missing at the
    receivers, no frame dropped by the server for a viewer, none lost at its RTP intake."""
    return (r["joined"] == r["n"] and r["loss_window"] == 0 and r["frames_corrupt"] == 0 and r["sink_dropped_window"] == 0
            and r["no_frame"] == 0 and r["intake_udp_drops_window"] == 0
            and r["intake_dropped_frames_window"] == 0)


def met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def reexec_in_netns() -> int:
    """Janus's ICE (libnice) gathers no loopback address and falls back to every interface:
    run the whole bench, sipgw too, in a private network namespace whose only other
    interface is a veth holding 127.0.0.1/32 (see /work/shared/PEERS.md)."""
    if not shutil.which("janus") or not os.path.isdir(JANUS_PLUGINS):
        print("--janus needs Debian's janus package: apt-get install -y janus "
              "(a bench peer, not installed by tools/install-test-deps.sh)", flush=True)
        return 2
    if os.geteuid() != 0 or not shutil.which("unshare"):
        print("--janus needs root and unshare(1) for its private network namespace", flush=True)
        return 2
    env = dict(os.environ, SIPGW_BENCH_NETNS="1")
    argv = ["unshare", "-n", "--", "sh", "-c", JANUS_NETNS_SETUP + ' && exec "$@"', "sh",
            sys.executable, os.path.abspath(__file__), *sys.argv[1:]]
    return subprocess.call(argv, env=env)


def target_names(opts) -> str:
    return f"first {VERIFY_FRAMES} frames per viewer"


def print_janus_comparison(results: list[dict], janus_results: list[dict]) -> None:
    """sipgw and Janus at each N, from the same run, and the issue-15 ratios."""
    print("\nsipgw vs Janus 1.1.2 streaming plugin, same source, same aiortc receivers, same run:")
    print("     N  us/pkt sipgw janus  ratio   %/viewer sipgw janus  loss% sipgw janus"
          "  TTFF p50 sipgw janus  KB/viewer sipgw janus  ratio")
    for r, j in zip(results, janus_results):
        print(f"  {r['n']:4d}  {r['us_per_packet']:12.1f} {j['us_per_packet']:5.1f}"
              f" {r['us_per_packet'] / j['us_per_packet']:6.2f}"
              f"  {r['cpu_pct_per_viewer']:15.3f} {j['cpu_pct_per_viewer']:5.3f}"
              f"  {r['loss_window'] * 100:11.3f} {j['loss_window'] * 100:5.3f}"
              f"  {r['ttff_p50_ms']:14.0f} {j['ttff_p50_ms']:5.0f}"
              f"  {r['kb_per_viewer']:15.0f} {j['kb_per_viewer']:5.0f}"
              f" {r['kb_per_viewer'] / j['kb_per_viewer'] if j['kb_per_viewer'] > 0 else float('nan'):6.2f}",
              flush=True)
    print("targets (issue 15): CPU per viewer <= 1.2x Janus's, memory <= 2x Janus's, "
          "TTFF p50 <= 250 ms; us/pkt is the server's CPU above its baseline per RTP packet "
          "delivered")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 1, 16 with 4 s windows")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--steps", help="comma-separated viewer counts (default 1,16,64,128)")
    parser.add_argument("--join-rate", type=float, default=16.0,
                        help="viewers joining per second, in total (default 16)")
    parser.add_argument("--janus", action="store_true",
                        help="also run Janus's streaming plugin at every N, side by side (needs "
                             "Debian's janus and root for a private network namespace)")
    parser.add_argument("--role", choices=("server", "source", "clients"), help=argparse.SUPPRESS)
    parser.add_argument("--audio-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--video-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.role == "server":
        run_server()
        return 0
    if opts.role == "source":
        run_source(opts.audio_port, opts.video_port, opts.seconds)
        return 0
    if opts.role == "clients":
        run_clients(opts.url, opts.count, opts.join_rate, opts.janus)
        return 0
    if opts.janus and os.environ.get("SIPGW_BENCH_NETNS") != "1":
        return reexec_in_netns()

    steps = ([int(s) for s in opts.steps.split(",")] if opts.steps
             else list(QUICK_STEPS if opts.quick else STEPS))
    opts.warmup, opts.settle = (2.0, 2.0) if opts.quick else (3.0, 3.0)
    opts.baseline, opts.window = (4.0, 4.0) if opts.quick else (10.0, 15.0)
    opts.viewer_pps = viewer_packet_rate()
    workdir = tempfile.mkdtemp(prefix="sipgw-fanout-")
    started = time.monotonic()
    load_before = os.getloadavg()
    print(f"== WebRTC fan-out: one 720p30 H264 + PCMU call, N aiortc receivers "
          f"(steps {', '.join(map(str, steps))}; {opts.window:.0f} s windows; "
          f"joins {opts.join_rate:g}/s) ==")
    print(f"  machine: {os.cpu_count()} cores shared by sipgw, the clients, the source and "
          f"anything else running; load average {load_before[0]:.2f} {load_before[1]:.2f} "
          f"{load_before[2]:.2f}")
    print(HEADER, flush=True)
    results = []
    janus_results = []
    try:
        for n in steps:
            if opts.janus:  # same N, same minutes: Janus right after sipgw
                janus_results.append(run_step(n, opts, workdir, "janus"))
                print(row(janus_results[-1]) + "  (janus)", flush=True)
            result = run_step(n, opts, workdir)
            results.append(result)
            print(row(result), flush=True)
            if result["errors"]:
                print(f"        {n - result['joined']} viewer(s) failed: "
                      f"{'; '.join(result['errors'][:3])}", flush=True)
            print(f"        payload check ({target_names(opts)}): "
                  + "; ".join(f"{r['target']} {r['frames_verified']} frames as the source sent "
                              f"them, {r['frames_corrupt']} corrupt"
                              for r in ([janus_results[-1]] if opts.janus else []) + [result]),
                  flush=True)
            if result["no_frame"]:
                print(f"        {result['no_frame']} viewer(s) got no complete keyframe",
                      flush=True)
            if result["cpu_pct"] >= SATURATED_PCT:
                print(f"        server saturated ({result['cpu_pct']:.0f} % of its one reactor "
                      f"thread): the per-viewer figure is the work it managed, not the cost",
                      flush=True)
    except HarnessError as exc:
        print(f"harness error: {exc}\nwork directory kept: {workdir}", flush=True)
        return 2
    load_after = os.getloadavg()
    top = results[-1]
    base = statistics.fmean(r["base_cpu_pct"] for r in results)
    ratio = top["cpu_pct_per_viewer"] / base if base else float("nan")
    ok_cpu = top["viewers_per_core"] >= TARGET_VIEWERS_PER_CORE and clean(top)
    clean_steps = [r for r in results if clean(r) and r["cpu_pct"] < SATURATED_PCT]
    print()
    state = ("0 loss" if clean(top) else
             f"NOT clean: {top['fps_per_viewer']:.1f} fps/viewer, RTP loss "
             f"{top['loss_window'] * 100:.3f} %, server drops {top['sink_drop_window'] * 100:.3f} %,"
             f" intake drops {top['intake_udp_drops_window']} packets / "
             f"{top['intake_dropped_frames_window']} frames")
    print(f"webrtc fan-out at {top['n']} viewers ({top['joined']} joined, {state}): "
          f"{top['cpu_pct_per_viewer']:.3f} % of a core per viewer -> "
          f"{top['viewers_per_core']:.0f} viewers/core as measured; "
          f"{top['us_per_packet']:.1f} us of server CPU per RTP packet delivered -> "
          f"{top['viewers_per_core_full_rate']:.0f} viewers/core at the full "
          f"{opts.viewer_pps:.0f} packets/s per viewer; "
          f"TTFF p50 {top['ttff_p50_ms']:.0f} ms p95 {top['ttff_p95_ms']:.0f} ms; "
          f"{top['kb_per_viewer'] / 1024:.2f} MB RSS per viewer")
    if clean_steps:
        best = clean_steps[-1]
        print(f"largest step at 0 loss: {best['n']} viewers, {best['cpu_pct_per_viewer']:.3f} % "
              f"of a core per viewer -> {best['viewers_per_core']:.0f} viewers/core "
              f"({best['us_per_packet']:.1f} us/packet), TTFF p50 {best['ttff_p50_ms']:.0f} ms")
    else:
        print("no step ran at 0 loss")
    print(f"baseline in the same run: the call alone (source -> MediaSession -> Stream, 0 "
          f"viewers) {base:.2f} % of a core; one viewer at {top['n']} costs {ratio:.2f}x that")
    print(f"targets: >= {TARGET_VIEWERS_PER_CORE} viewers/core at 0 loss {met(ok_cpu)}; "
          f"TTFF p50 <= {TARGET_TTFF_P50_MS} ms {met(top['ttff_p50_ms'] <= TARGET_TTFF_P50_MS)}; "
          f"<= {TARGET_MB_PER_VIEWER:g} MB/viewer "
          f"{met(top['kb_per_viewer'] <= TARGET_MB_PER_VIEWER * 1024)}"
          + ("" if top["n"] >= 128 else f"  (measured at {top['n']}, the target asks 128)"))
    print("TTFF: playStream sent -> last packet (marker) of the first complete H264 keyframe "
          "(SPS/IDR) at the receiver, no decode")
    busy = max(r["machine_pct"] for r in results)
    if busy > 170:
        print(f"note: the machine's {os.cpu_count()} cores were up to {busy:.0f} % busy (server, "
              f"clients, source and other work); 'wait%' is the time the server was runnable "
              f"but had no core: the figures of such steps are bounded by the machine")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"took {time.monotonic() - started:.0f} s")
    if janus_results:
        print_janus_comparison(results, janus_results)
    print(json.dumps({"steps": results, "baseline_cpu_pct": base,
                      "per_viewer_to_baseline": ratio, "janus_steps": janus_results}))
    if opts.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
