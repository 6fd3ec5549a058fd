"""RTP sipgw sends into a call (sipgw/rtp/sender.py) on a fake reactor clock: one SSRC, sequence
numbers one after the other and one timeline across silence -> injection -> another injection ->
silence, pacing without drift, the marker bit on each new talkspurt, SRTP when the call agreed
SDES keys, and video moved onto the endpoint's timeline."""
from collections import deque

from sipgw.rtp.packet import RtpPacket
from sipgw.rtp.sender import AudioSender, VideoSender
from sipgw.rtp.srtp import SrtpContext
from sipgw.sip.sdes import offer_keys
from test_session import AUDIO_SRC, VIDEO_SRC, start

PAYLOAD = b"\x11" * 160


def sent(clock, port, to=AUDIO_SRC):
    """Every RTP packet written on our local ``port`` to ``to``, parsed."""
    return [RtpPacket.parse(data) for data, addr in clock.udp_ports[port].written if addr == to]


def feeder(count):
    """take(): ``count`` distinct payloads, then None (nothing ready)."""
    items = deque(bytes([i % 200 + 1]) * 160 for i in range(count))
    return lambda: items.popleft() if items else None


def audio_sender(session, take):
    return AudioSender(session.clock, session.endpoints["audio"], take)


def test_one_packet_every_20_ms_from_the_call_socket_silence_when_nothing_is_ready(clock, pool):
    """The sender writes on the call's own RTP port to the callee, one packet per 20 ms
    (51 in 1 s: the first at once), the payloads in order, then the codec's silence."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    sender = audio_sender(session, feeder(10)).start()
    clock.pump([0.02] * 50)
    packets = sent(clock, ports["audio"])
    assert len(packets) == 51
    assert [p.payload[0] for p in packets[:10]] == list(range(1, 11))
    assert all(p.payload == b"\xff" * 160 for p in packets[10:])
    assert sender.sent == 10 and sender.silent == 41
    assert {p.payload_type for p in packets} == {0}


def test_seq_ts_continuous_across_silence_inject_switch_stop(clock, pool):
    """With the session's own silence on: silence, an injection, a second one replacing it,
    then silence again form one stream: one SSRC, each sequence number the previous + 1, each
    timestamp the previous + 160; the first packet of each injection carries the marker, and
    no silence is sent while an injection runs."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",), send_silence=True)
    clock.pump([0.02] * 10)
    first = audio_sender(session, feeder(100)).start()
    clock.pump([0.02] * 10)
    first.stop()
    second = audio_sender(session, feeder(100)).start()
    clock.pump([0.02] * 10)
    second.stop()
    clock.pump([0.02] * 10)
    packets = sent(clock, ports["audio"])
    assert len(packets) >= 38
    assert len({p.ssrc for p in packets}) == 1
    for before, after in zip(packets, packets[1:]):
        assert after.sequence_number == (before.sequence_number + 1) & 0xFFFF
        assert after.timestamp == (before.timestamp + 160) & 0xFFFFFFFF
    markers = [i for i, p in enumerate(packets) if p.marker]
    kinds = ["silence" if p.payload == b"\xff" * 160 else "inject" for p in packets]
    assert kinds[markers[0]] == "inject" and kinds[markers[0] - 1] == "silence"
    assert len(markers) == 2 and kinds[markers[1] - 1] == "inject"  # the switch
    assert kinds[-1] == "silence" and kinds.count("inject") == first.sent + second.sent


def test_after_an_idle_gap_the_timestamp_advances_by_the_gap(clock, pool):
    """Without the session's silence, an injection 3 s after the last one continues the
    sequence numbers and moves the timestamp on by the 3 s (RFC 3550 §5.1), marker set."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    sender = audio_sender(session, feeder(5)).start()
    clock.pump([0.02] * 4)
    sender.stop()
    last = sent(clock, ports["audio"])[-1]
    clock.advance(3)
    audio_sender(session, feeder(5)).start()
    resumed = sent(clock, ports["audio"])[-1]
    assert resumed.sequence_number == (last.sequence_number + 1) & 0xFFFF
    assert resumed.timestamp == (last.timestamp + 3 * 8000) & 0xFFFFFFFF  # 3 s later
    assert resumed.marker


def test_pacing_does_not_drift_and_a_stall_is_skipped_over(clock, pool):
    """Late ticks (every 30 ms) still send 50 packets a second; a 1 s stall of the reactor
    sends at most MAX_CATCH_UP at once and keeps the timestamps on the clock."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    sender = audio_sender(session, lambda: PAYLOAD).start()
    clock.pump([0.03] * 33)  # 0.99 s
    assert len(sent(clock, ports["audio"])) == 50
    before = sent(clock, ports["audio"])[-1]
    clock.advance(1.0)
    after = sent(clock, ports["audio"])
    assert len(after) - 50 <= 5 and sender.skipped >= 40
    assert after[-1].timestamp == (before.timestamp + 50 * 160) & 0xFFFFFFFF
    assert after[-1].sequence_number == (before.sequence_number + len(after) - 50) & 0xFFFF


def test_srtp_when_the_call_agreed_sdes_keys(clock, pool):
    """Injected packets of an SDES call are SRTP the callee unprotects with our key."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    ours, theirs = offer_keys()[0], offer_keys()[0]
    session.secure({"audio": (ours, theirs)})
    callee = SrtpContext(ours.suite, theirs.key, ours.key)
    audio_sender(session, feeder(5)).start()
    clock.pump([0.02] * 4)
    written = [d for d, a in clock.udp_ports[ports["audio"]].written if a == AUDIO_SRC]
    assert len(written) == 5
    plain = [callee.unprotect(d) for d in written]
    assert all(p is not None for p in plain)
    assert [RtpPacket.parse(p).payload[0] for p in plain] == [1, 2, 3, 4, 5]
    assert RtpPacket.parse(written[0][:12] + PAYLOAD).payload != bytes([1]) * 160


def test_stops_with_the_session(clock, pool):
    """A closed session (the call ended) stops the sender: nothing more is written."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    sender = audio_sender(session, lambda: PAYLOAD).start()
    audio = session.endpoints["audio"]
    session.close()
    clock.pump([0.02] * 5)
    assert not sender.running and not audio.injecting


def test_video_keeps_the_source_timing_on_the_endpoint_timeline(clock, pool):
    """Each access unit's payloads go out with one timestamp, the marker on the last; the
    source's timestamp steps are kept, a jump of the source is smoothed to one frame step."""
    session, _, ports, _ = start(clock, pool, kinds=("audio", "video"))
    video = session.endpoints["video"]
    sender = VideoSender(clock, video)
    base = video.ts
    sender.send(1_000_000, [b"a", b"b", b"c"])
    sender.send(1_003_000, [b"d"])
    sender.send(5, [b"e"])  # the source went back: a jump
    packets = sent(clock, ports["video"], VIDEO_SRC)
    assert [p.payload for p in packets] == [b"a", b"b", b"c", b"d", b"e"]
    assert [p.marker for p in packets] == [False, False, True, True, True]
    assert [p.timestamp for p in packets] == [base] * 3 + [base + 3000, base + 3000 + 3600]
    assert [p.payload_type for p in packets] == [102] * 5
    assert sender.jumps == 1 and sender.frames == 3
    seqs = [p.sequence_number for p in packets]
    assert all(b == (a + 1) & 0xFFFF for a, b in zip(seqs, seqs[1:]))


def test_nothing_is_sent_while_the_callee_holds_the_call(clock, pool):
    """A re-INVITE putting us on hold (our side recvonly): the sender goes on with the
    timeline but writes nothing; taken off hold it sends again, the timestamp moved on."""
    from test_session import answer
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    audio_sender(session, lambda: PAYLOAD).start()
    clock.pump([0.02] * 4)
    before = sent(clock, ports["audio"])
    session.negotiate(answer(ports, direction="sendonly"))  # the callee holds: we only receive
    clock.pump([0.02] * 10)
    assert len(sent(clock, ports["audio"])) == len(before)
    session.negotiate(answer(ports))
    clock.pump([0.02] * 2)
    after = sent(clock, ports["audio"])[len(before):]
    moved = (after[0].timestamp - before[-1].timestamp) & 0xFFFFFFFF
    assert moved in (10 * 160, 11 * 160)  # the ~0.2 s on hold (the fake clock's float steps)
    assert after[0].sequence_number == (before[-1].sequence_number + 1) & 0xFFFF
    assert after[0].marker and not after[1].marker  # a new talkspurt


def test_dtmf_during_an_injection_marks_the_next_audio_packet(clock, pool):
    """RFC 4733 digits sent meanwhile move the endpoint's timeline past the event: the next
    injected packet continues there, on the same sequence, with the marker bit."""
    session, _, ports, _ = start(clock, pool, kinds=("audio",))
    audio_sender(session, lambda: PAYLOAD).start()
    clock.pump([0.02] * 3)
    session.send_dtmf("5")
    moved = session.endpoints["audio"].ts
    clock.pump([0.02] * 20)
    audio = [p for p in sent(clock, ports["audio"]) if p.payload == PAYLOAD]
    resumed = next(p for p in audio if p.timestamp == moved)
    assert resumed.marker and sum(p.marker for p in audio) == 2  # the start, after the digit
    packets = sent(clock, ports["audio"])
    seqs = [p.sequence_number for p in packets]
    assert all(b == (a + 1) & 0xFFFF for a, b in zip(seqs, seqs[1:]))
