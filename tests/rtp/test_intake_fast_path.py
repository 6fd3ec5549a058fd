"""The RTP intake's fast path (plain header, latched source, next in sequence: no RtpPacket,
no payload copy) against the general path, on the same streams.

Every packet goes to two sessions at the same clock time: one gets it as sent, the other with
a CSRC added, which RFC 3550 allows and which keeps it off the fast path (the header is no
longer the plain 12 bytes). Both must publish the same frames and end with the same counters,
statistics and depacketizer state, whatever the stream does: loss, reordering, duplicates,
an SSRC change, FU-A/STAP-A/single NAL units, oversized NAL units.
"""
from __future__ import annotations

import random
import struct

import pytest

from sipgw.rtp.packet import RtpPacket
from sipgw.rtp.session import MediaSession
from sipgw.streams.stream import Stream
from test_session import AUDIO_SRC, VIDEO_SRC, answer, receive

SPS = bytes.fromhex("6742c00dda0507e840000003004000000f23c50aa8")
PPS = bytes.fromhex("68ce0fc8")


def with_csrc(data: bytes) -> bytes:
    """The same packet with one CSRC (CC=1): parsed by RtpPacket.parse, same payload."""
    return bytes([data[0] | 1]) + data[1:12] + struct.pack("!I", 0xC5C5C5C5) + data[12:]


def pair(clock, pool, kinds, **kwargs):
    out = []
    for name in ("fast", "general"):
        stream = Stream(name, has_audio="audio" in kinds, has_video="video" in kinds,
                        call_id=name)
        session = MediaSession(clock, call_id=name, stream=stream, bind_address="127.0.0.1",
                               ports=pool, kinds=list(kinds), **kwargs)
        ports = session.open()
        sink = stream.subscribe(name="test", maxlen=100000, max_bytes=1 << 30)
        session.negotiate(answer(ports))
        session.established()
        out.append((session, stream, ports, sink))
    return out


def video_stream(rng: random.Random, ssrc: int, seq: int, count: int) -> list[bytes]:
    """``count`` access units: IDR pictures with SPS+PPS in a STAP-A, slices as FU-A or single
    NAL units, some big enough to pass max_nal_size."""
    packets = []
    ts = rng.randrange(1 << 32)
    for n in range(count):
        if n % 10 == 0:
            stap = b"\x18" + b"".join(struct.pack("!H", len(x)) + x for x in (SPS, PPS))
            packets.append(bytes(RtpPacket(102, False, seq & 0xFFFF, ts, ssrc, stap)))
            seq += 1
            nal = b"\x65" + rng.randbytes(rng.randrange(200, 3000))
        else:
            nal = b"\x41" + rng.randbytes(rng.choice([30, 500, 2500, 6000]))
        if len(nal) < 400:
            packets.append(bytes(RtpPacket(102, True, seq & 0xFFFF, ts, ssrc, nal)))
            seq += 1
        else:
            size = rng.choice([300, 1100])
            body = nal[1:]
            chunks = [body[i:i + size] for i in range(0, len(body), size)]
            for i, chunk in enumerate(chunks):  # RFC 6184 §5.8
                end = i == len(chunks) - 1
                fu = bytes([nal[0] & 0xE0 | 28, (0x80 if i == 0 else 0) | (0x40 if end else 0)
                            | nal[0] & 0x1F])
                packets.append(bytes(RtpPacket(102, end, seq & 0xFFFF, ts, ssrc, fu + chunk)))
                seq += 1
        ts = (ts + 3000) & 0xFFFFFFFF
    return packets


def perturb(rng: random.Random, packets: list[bytes]) -> list[bytes]:
    """Lose, swap neighbours, repeat: what a network does."""
    out = []
    i = 0
    while i < len(packets):
        r = rng.random()
        if r < 0.02:
            i += 1  # lost
            continue
        if r < 0.04 and i + 1 < len(packets):
            out += [packets[i + 1], packets[i]]  # reordered
            i += 2
            continue
        out.append(packets[i])
        if r < 0.05:
            out.append(packets[i])  # duplicated
        i += 1
    return out


def state(session, kind):
    ep = session.endpoints[kind]
    counters = dict(ep.counters)  # but bytes: the CSRC adds 4 a packet (checked apart)
    stats = ep.stats
    dep = ep.depacketizer
    return {
        "counters": {k: v for k, v in counters.items() if k != "bytes"},
        "stats": (stats.received, stats.expected, stats.lost, stats.jitter,
                  stats.extended_highest, stats.fraction_lost()),
        "reorder": (ep.reorder.duplicates, ep.reorder.late, ep.reorder.restarts),
        "depacketizer": None if dep is None else (
            dep.packets, dep.frames, dep.keyframes, dep.dropped_frames, dep.bad_packets,
            dep.unsupported, dep.oversized, dep.needs_keyframe, dep.width, dep.height),
        "ssrc": ep.ssrc,
        "last_rtp": ep.last_rtp,
    }


def frames(sink):
    return [(f.kind, f.codec, f.timestamp, bytes(f.data), f.keyframe) for f in sink.queue]


def feed(clock, rng, packets, fast_port, slow_port, source, batched, steps):
    """Each packet to both sessions at the same clock time; with ``batched``, the fast
    session takes them in wake-up batches (``datagramsReceived``, as RtpPort gives them)."""
    i = 0
    while i < len(packets):
        n = rng.randrange(1, 40) if batched else 1
        chunk = packets[i:i + n]
        i += n
        clock.advance(rng.choice(steps))
        if batched:
            clock.udp_ports[fast_port].proto.datagramsReceived([(d, source) for d in chunk])
        else:
            for data in chunk:
                receive(clock, fast_port, data, source)
        for data in chunk:
            receive(clock, slow_port, with_csrc(data), source)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_video_fast_path_publishes_and_counts_what_the_general_path_does(clock, pool, seed,
                                                                         batched):
    rng = random.Random(seed)
    (fast, fast_stream, fast_ports, fast_sink), (slow, slow_stream, slow_ports, slow_sink) = pair(
        clock, pool, ["video"], max_packets_per_second=10 ** 6)
    for ep in (fast.endpoints["video"], slow.endpoints["video"]):
        ep.depacketizer.max_nal_size = 5000  # some slices are over it
    first = video_stream(rng, 0x71DE0, rng.randrange(1 << 16), 60)
    second = video_stream(rng, 0x5EC0D, rng.randrange(1 << 16), 40)  # the callee restarts
    packets = perturb(rng, first) + perturb(rng, second)
    feed(clock, rng, packets, fast_ports["video"], slow_ports["video"], VIDEO_SRC, batched,
         [0.0, 0.001, 0.004, 0.03])
    sizes = sum(map(len, packets))
    assert frames(fast_sink) == frames(slow_sink)
    assert len(frames(fast_sink)) > 20
    assert state(fast, "video") == state(slow, "video")
    fast_ep, slow_ep = fast.endpoints["video"], slow.endpoints["video"]
    assert fast_ep.counters["bytes"] == sizes
    assert slow_ep.counters["bytes"] == sizes + 4 * slow_ep.counters["packets"]
    assert (fast_stream.width, fast_stream.height) == (slow_stream.width, slow_stream.height)
    assert fast_ep.depacketizer.oversized > 0 and fast_ep.reorder.duplicates > 0


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_audio_fast_path_publishes_and_counts_what_the_general_path_does(clock, pool, seed,
                                                                         batched):
    rng = random.Random(seed)
    (fast, _, fast_ports, fast_sink), (slow, _, slow_ports, slow_sink) = pair(
        clock, pool, ["audio"], max_packets_per_second=10 ** 6)
    seq, ts = rng.randrange(1 << 16), rng.randrange(1 << 32)
    packets = []
    for n in range(400):
        pt = 96 if n % 50 == 7 else 0  # a telephone-event now and then: in order, not published
        packets.append(bytes(RtpPacket(pt, n == 0, (seq + n) & 0xFFFF, (ts + 160 * n) & 0xFFFFFFFF,
                                       0xA0D10, rng.randbytes(160))))
    feed(clock, rng, perturb(rng, packets), fast_ports["audio"], slow_ports["audio"], AUDIO_SRC,
         batched, [0.015, 0.02, 0.025])
    assert frames(fast_sink) == frames(slow_sink) and len(frames(fast_sink)) > 300
    assert state(fast, "audio") == state(slow, "audio")
    assert all(type(f.data) is bytes for f in fast_sink.queue)  # audio frames own their bytes


@pytest.mark.parametrize("limit", [7, 50])
def test_a_batch_over_the_rate_limit_is_cut_where_single_packets_are(clock, pool, limit):
    """The call's packet limit applies inside a batch at the same packet as one by one."""
    (fast, _, fast_ports, fast_sink), (slow, _, slow_ports, slow_sink) = pair(
        clock, pool, ["audio"], max_packets_per_second=limit)
    packets = [bytes(RtpPacket(0, False, n, 160 * n, 0xA0D10, bytes([n]) * 160))
               for n in range(120)]
    for start in range(0, 120, 30):  # four batches of 30 in the same second
        clock.advance(0.01)
        clock.udp_ports[fast_ports["audio"]].proto.datagramsReceived(
            [(d, AUDIO_SRC) for d in packets[start:start + 30]])
        for data in packets[start:start + 30]:
            receive(clock, slow_ports["audio"], with_csrc(data), AUDIO_SRC)
    assert frames(fast_sink) == frames(slow_sink)
    assert state(fast, "audio") == state(slow, "audio")
    assert fast.endpoints["audio"].counters["rate_limited"] == 120 - limit
