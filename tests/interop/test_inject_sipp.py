"""Media injected into calls of the real daemon (/call/inject_sound, /call/inject_stream): SIPp
callees whose SDP answers put the call's audio on a UDP socket of the test, which therefore
sees exactly what sipgw sends (and sends the callee's own media back).

- inject_sound: a 1 kHz WAV made here reaches the callee in the codec it answered (PCMU, PCMA,
  opus), from the RTP port of sipgw's offer, one SSRC, sequence numbers one after the other;
  the payload decodes to 1 kHz, as long as the file; the injection ends FINISHED.
- inject_stream: a second call's stream (440 Hz PCMU the test sends as that callee) goes into
  a first call answered with PCMA: 440 Hz arrives as PCMA, transcoded, while the first
  callee's own media keeps flowing into its stream; with rtp_session_init_always the packets
  are silence -> injection -> silence on one SSRC and one sequence; ending the second call
  ends the injection (UNPUBLISHED, with a log line); ending the first call stops its next one.
- inject_sound into a call that agreed SDES keys: SRTP the callee unprotects, the tone inside.
- inject_stream of a baresip call (ausine 440 Hz, H264) into a call answered with PCMU and
  H264 (packetization-mode 1 and 0): the video the callee gets rebuilds into access units that
  decode at 320x240, the audio is 440 Hz.
"""
from __future__ import annotations

import base64
import re
import secrets
import socket
import threading
import time

import av
import pytest

from peers import wait_for
from sipgw.rtp.h264 import FU_A, STAP_A, H264Depacketizer
from sipgw.rtp.packet import RtpPacket
from sipgw.rtp.srtp import SrtpContext
from sipgw.sip.sdes import Crypto
from sipgw_daemon import Sipgw
from tones import decode, dominant_hz, tone_payloads, tone_wav

ANSWERS = {"PCMU": (0, "PCMU/8000"), "PCMA": (8, "PCMA/8000"), "opus": (111, "opus/48000/2")}
SILENCE = {b"\xff" * 160, b"\xd5" * 160, b"\xf8\xff\xfe"}


def _rtcp(data: bytes) -> bool:
    """RTCP by its packet type (RFC 5761 §4), else RTP."""
    return len(data) > 1 and 192 <= data[1] <= 223


class RtpCallee:
    """The callee's media side: a UDP socket on 127.0.0.1 keeping every datagram that arrives
    (with its source) and, once sipgw has sent something, answering each with ``reply``'s
    next payload (the callee's own media) when one is given."""

    def __init__(self, reply: list[bytes] | None = None, pt: int = 0):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[bytes, tuple]] = []
        self.reply = reply or []
        self.pt = pt
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append((data, source))
            if self.reply and not _rtcp(data):  # RTP: answer with our own
                payload = self.reply[self.sent % len(self.reply)]
                packet = RtpPacket(payload_type=self.pt, sequence_number=self.sent & 0xFFFF,
                                   timestamp=self.sent * 160, ssrc=0xCA11EE, payload=payload)
                self.sock.sendto(bytes(packet), source)
                self.sent += 1

    def rtp(self) -> list[tuple[RtpPacket, tuple]]:
        return [(RtpPacket.parse(d), s) for d, s in list(self.received) if not _rtcp(d)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def callees():
    made: list[RtpCallee] = []

    def make(**kwargs) -> RtpCallee:
        made.append(RtpCallee(**kwargs))
        return made[-1]
    yield make
    for callee in made:
        callee.close()


@pytest.fixture
def gw(tmp_path):
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    tone_wav(sounds / "tone.wav", 1000, 1.0)
    daemon = Sipgw(str(tmp_path), sound_dir=str(sounds), rtp_session_init_always="true").start()
    try:
        yield daemon
    finally:
        daemon.stop()


def answered(sipp_factory, callee: RtpCallee, codec: str):
    pt, rtpmap = ANSWERS[codec]
    return sipp_factory("uas_200_media_to.xml", variables={"rtp_port": str(callee.port),
                                                           "pt": str(pt), "rtpmap": rtpmap})


def offered_audio_port(sipp) -> int:
    """The m=audio port of the INVITE SIPp received (sipgw's offer), from its message trace."""
    text = sipp.messages_path.read_text(errors="replace")
    return int(re.search(r"m=audio (\d+) ", text).group(1))


def injection(gw: Sipgw, call_id: str) -> dict | None:
    return (gw.call(call_id) or {}).get("injection")


def check_one_sequence(packets: list[RtpPacket], step: int) -> None:
    """One SSRC, each sequence number the previous + 1, timestamps moving on by ``step`` a
    packet (a switch, or a stall of the daemon's loop, may move them by the time between two
    packets, never backwards)."""
    assert len({p.ssrc for p in packets}) == 1
    steps = []
    for a, b in zip(packets, packets[1:]):
        assert b.sequence_number == (a.sequence_number + 1) & 0xFFFF
        delta = (b.timestamp - a.timestamp) & 0xFFFFFFFF
        assert delta % step == 0 and 0 < delta <= 50 * step, delta
        steps.append(delta)
    assert steps.count(step) >= 0.95 * len(steps)


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "opus"])
def test_inject_sound_reaches_the_callee_as_its_codec(gw, sipp_factory, callees, codec):
    """/call/inject_sound of a 1 s 1 kHz WAV: the callee gets it in its answered codec from
    sipgw's offered RTP port, 1 kHz, about 50 packets, and the injection ends FINISHED."""
    callee = callees()
    sipp = answered(sipp_factory, callee, codec)
    assert gw.start_call_to_sipp(sipp.port, "inj1") is None
    gw.wait_status("inj1", "ESTABLISHED")
    assert gw.rest("/call/inject_sound", {"callId": "inj1", "soundFile": "tone.wav"}) is None
    wait_for(lambda: (injection(gw, "inj1") or {}).get("status") == "FINISHED", 20,
             "the injection to finish", log=gw.log)
    packets = callee.rtp()
    assert {source for _, source in packets} == {("127.0.0.1", offered_audio_port(sipp))}
    assert {p.payload_type for p, _ in packets} == {ANSWERS[codec][0]}
    check_one_sequence([p for p, _ in packets], 960 if codec == "opus" else 160)
    tone = [p.payload for p, _ in packets if p.payload not in SILENCE]
    assert 45 <= len(tone) <= 55
    samples, rate = decode(codec, tone)
    assert abs(dominant_hz(samples, rate) - 1000) < 10
    shown = injection(gw, "inj1")
    assert shown["audioCodec"] == codec and shown["sent"]["audio"] >= 49
    gw.rest("/call/terminate", {"callId": "inj1"})
    gw.wait_status("inj1", "FINISH")


def test_inject_stream_of_another_call_transcoded_while_the_callee_still_publishes(
        gw, sipp_factory, callees):
    """Call B's callee sends 440 Hz PCMU; /call/inject_stream puts stream-injB into call A
    (answered PCMA): A's callee gets 440 Hz PCMA between silence, on one sequence, while its
    own media still reaches stream-injA; call B's end ends the injection UNPUBLISHED."""
    a = callees(reply=tone_payloads("PCMA", 1000, 1.0), pt=8)
    b = callees(reply=tone_payloads("PCMU", 440, 1.0), pt=0)
    sipp_a = answered(sipp_factory, a, "PCMA")
    sipp_b = answered(sipp_factory, b, "PCMU")
    gw.start_call_to_sipp(sipp_a.port, "injA")
    gw.start_call_to_sipp(sipp_b.port, "injB")
    gw.wait_status("injA", "ESTABLISHED")
    gw.wait_status("injB", "ESTABLISHED")

    def audio_packets(name):
        stream = gw.stream(name) or {}
        return stream.get("counters", {}).get("audio", {}).get("packets", 0)
    wait_for(lambda: audio_packets("stream-injB") > 25, 20, "call B's tone in its stream",
             log=gw.log)
    time.sleep(0.3)  # a stretch of silence into A before the injection, on purpose
    before = audio_packets("stream-injA")
    gw.rest("/call/inject_stream/startup", {"callId": "injA", "streamName": "stream-injB"})
    wait_for(lambda: (injection(gw, "injA") or {}).get("sent", {}).get("audio", 0) >= 100, 20,
             "2 s injected into call A", log=gw.log)
    assert audio_packets("stream-injA") >= before + 80  # A's callee still publishes
    gw.rest("/call/terminate", {"callId": "injB"})
    wait_for(lambda: (injection(gw, "injA") or {}).get("status") == "UNPUBLISHED", 20,
             "the injection to end with stream-injB", log=gw.log)
    assert "injection of stream-injB into call injA: UNPUBLISHED" in gw.log()
    count = len(a.rtp())
    wait_for(lambda: len(a.rtp()) > count + 10, 10, "silence again after the injection")
    packets = [p for p, _ in a.rtp()]
    assert {p.payload_type for p in packets} == {8}
    check_one_sequence(packets, 160)
    kinds = ["silence" if p.payload in SILENCE else "tone" for p in packets]
    first, last = kinds.index("tone"), len(kinds) - 1 - kinds[::-1].index("tone")
    assert kinds[0] == "silence" and kinds[-1] == "silence" and first > 5
    markers = [i for i, p in enumerate(packets) if p.marker]  # the injection's first packet
    assert len(markers) == 1 and 0 <= first - markers[0] <= 10  # then <= 200 ms to transcode
    tone = [p.payload for p in packets[first:last + 1] if p.payload not in SILENCE]
    assert len(tone) >= 90
    samples, rate = decode("PCMA", tone)
    assert abs(dominant_hz(samples, rate) - 440) < 10
    gw.rest("/call/inject_sound", {"callId": "injA", "soundFile": "tone.wav", "loop": True})
    wait_for(lambda: (injection(gw, "injA") or {}).get("status") == "INJECTING", 10,
             "the sound injection", log=gw.log)
    gw.rest("/call/terminate", {"callId": "injA"})
    gw.wait_status("injA", "FINISH")
    shown = wait_for(lambda: (i := injection(gw, "injA")) and i["status"] == "STOPPED" and i,
                     10, "the call's end to stop its injection", log=gw.log)
    assert shown["info"] == "Stopped: the call ended" and shown["type"] == "sound"


@pytest.mark.parametrize("mode", [1, 0])
def test_inject_stream_of_a_baresip_call_with_video(gw, kamailio, baresip, sipp_factory,
                                                    callees, mode):
    """baresip's stream (ausine 440 Hz, H264 320x240) injected into a SIPp callee's call
    answered with PCMU and H264 packetization-mode ``mode``: the callee's RTP rebuilds to
    access units that decode at 320x240 (mode 0: single NAL unit packets only), and the audio
    is 440 Hz; terminate stops it."""
    gw.call_bob(kamailio.port, "bob1")
    wait_for(lambda: (s := gw.stream("stream-bob1")) and s["width"] and s, 30,
             "baresip's video in stream-bob1", log=gw.log)
    audio = callees(reply=tone_payloads("PCMU", 1000, 1.0), pt=0)
    video = callees()
    sipp = sipp_factory("uas_200_av_media_to.xml", variables={
        "rtp_port": str(audio.port), "video_port": str(video.port),
        "vpt": "102" if mode else "103", "mode": str(mode)})
    gw.start_call_to_sipp(sipp.port, "v2", hasVideo="true")
    gw.wait_status("v2", "ESTABLISHED")
    gw.rest("/call/inject_stream/startup", {"callId": "v2", "streamName": "stream-bob1"})
    wait_for(lambda: (injection(gw, "v2") or {}).get("sent", {}).get("video", 0) >= 50, 30,
             "50 video frames injected", log=gw.log)
    assert injection(gw, "v2")["video"] is True
    gw.rest("/call/inject_stream/terminate", {"callId": "v2"})
    wait_for(lambda: (injection(gw, "v2") or {}).get("status") == "STOPPED", 20,
             "the injection to stop", log=gw.log)
    packets = [p for p, _ in video.rtp()]
    assert {p.payload_type for p in packets} == {102 if mode else 103}
    seqs = [p.sequence_number for p in packets]
    assert len({p.ssrc for p in packets}) == 1
    assert all(b == (a + 1) & 0xFFFF for a, b in zip(seqs, seqs[1:]))
    if mode == 0:
        assert not {p.payload[0] & 0x1F for p in packets} & {STAP_A, FU_A}
    depacketizer = H264Depacketizer()
    units = [unit for packet in packets for unit in depacketizer.push(packet)]
    assert units[0].keyframe and len(units) >= 50
    decoder = av.CodecContext.create("h264", "r")
    frames = [f for unit in units for f in decoder.decode(av.Packet(unit.data))]
    assert len(frames) >= 45 and {(f.width, f.height) for f in frames} == {(320, 240)}
    tone = [p.payload for p, _ in audio.rtp() if p.payload not in SILENCE]
    samples, rate = decode("PCMU", tone)
    assert len(tone) >= 50 and abs(dominant_hz(samples, rate) - 440) < 10


def test_inject_sound_into_an_srtp_call(gw, sipp_factory, callees):
    """A call that agreed SDES keys (sipSrtp optional, the callee's a=crypto): the injected
    packets are SRTP the callee unprotects with sipgw's offered key, and the tone is there."""
    suite = "AES_CM_128_HMAC_SHA1_80"
    callee_key = secrets.token_bytes(30)
    callee = callees()
    sipp = sipp_factory("uas_200_srtp_media_to.xml", variables={
        "rtp_port": str(callee.port), "key": base64.b64encode(callee_key).decode()})
    gw.start_call_to_sipp(sipp.port, "srtp1", sipSrtp="optional")
    gw.wait_status("srtp1", "ESTABLISHED")
    gw.rest("/call/inject_sound", {"callId": "srtp1", "soundFile": "tone.wav"})
    wait_for(lambda: (injection(gw, "srtp1") or {}).get("status") == "FINISHED", 20,
             "the injection to finish", log=gw.log)
    offer = sipp.messages_path.read_text(errors="replace")
    line = re.search(r"a=crypto:(\d+ AES_CM_128_HMAC_SHA1_80 inline:\S+)", offer).group(1)
    sipgw_key = Crypto.parse(line).key
    plain = [SrtpContext(suite, callee_key, sipgw_key).unprotect(d)
             for d, _ in list(callee.received) if not _rtcp(d)]
    assert plain and all(p is not None for p in plain)
    tone = [RtpPacket.parse(p).payload for p in plain]
    tone = [p for p in tone if p not in SILENCE]
    assert 45 <= len(tone) <= 55
    samples, rate = decode("PCMU", tone)
    assert abs(dominant_hz(samples, rate) - 1000) < 10
    raw = [RtpPacket.parse(d).payload for d, _ in list(callee.received) if not _rtcp(d)]
    assert not {r[:160] for r in raw} & set(tone)  # encrypted on the wire
