"""Media injected into a call (sipgw/media/inject.py): the transcoder on frames (PCMU, PCMA,
opus both ways), the bounded payload queue, and whole injections on a fake reactor clock with
the real worker thread: a sound file played once (FINISHED) or looped, a stream transcoded to
the call's codec until the stream ends (UNPUBLISHED), stop() (STOPPED), video passed through."""
from __future__ import annotations

import dataclasses


import pytest

from fakes import CALLEE, CALLEE_VIDEO, answered_session
from fakes import ThreadedUDPReactor as Reactor
from sipgw.media.inject import (FINISHED, INJECTING, STOPPED, UNPUBLISHED, AudioDecoder,
                                Injection, PayloadEncoder, PayloadQueue)
from sipgw.rtp.packet import FullIntraRequest, PictureLossIndication, RtpPacket
from sipgw.sip.sdp import Codec
from sipgw.streams.stream import MediaFrame, Stream
from synthetic import h264_access_units
from tones import decode, dominant_hz, tone_payloads, tone_wav

def received(reactor, port, to=CALLEE):
    return [RtpPacket.parse(d) for d, a in reactor.udp_ports[port].written if a == to]


@pytest.mark.parametrize("source,target", [("PCMU", "PCMA"), ("PCMA", "opus"),
                                           ("opus", "PCMU"), ("PCMU", "PCMU")])
def test_transcoder_keeps_the_tone(source, target):
    """A 440 Hz sine in ``source`` payloads, decoded and encoded to ``target``, is 20 ms
    payloads (160 bytes for G.711) that decode to 440 Hz."""
    encoder = PayloadEncoder(Codec(96, target, 48000 if target == "opus" else 8000))
    decoder = AudioDecoder(source, 48000 if source == "opus" else 8000, encoder.rate)
    out = []
    for payload in tone_payloads(source, 440, 1.0):
        out += encoder.encode(decoder.decode(payload))
    assert 45 <= len(out) <= 50
    if target != "opus":
        assert {len(p) for p in out} == {160}
    samples, rate = decode(target, out)
    assert abs(dominant_hz(samples[rate // 10:], rate) - 440) < 10


def test_decoder_counts_a_bad_payload_and_goes_on():
    """A payload opus cannot decode gives no samples and is counted, never raised."""
    decoder = AudioDecoder("opus", 48000, 8000)
    assert len(decoder.decode(b"\xff\xff\xff\xff")) == 0 and decoder.bad == 1
    assert len(decoder.decode(tone_payloads("opus", 440, 0.02)[0])) > 100  # ~160 (resampler)


def test_payload_queue_is_bounded_and_drops_the_oldest():
    """put beyond maxlen drops the oldest (counted); take never blocks; close empties it."""
    queue = PayloadQueue(3)
    for i in range(5):
        queue.put(bytes([i]))
    assert queue.dropped == 2 and [queue.take() for _ in range(4)] == [b"\x02", b"\x03",
                                                                         b"\x04", None]
    assert queue.wait_room(0) and queue.wait_empty(0)
    queue.put(b"x")
    queue.close()
    assert queue.take() is None and not queue.wait_room(0)
    with pytest.raises(ValueError):
        PayloadQueue(0)


def test_sound_file_played_once_into_a_pcmu_call(tmp_path):
    """inject_sound: a 0.5 s 1 kHz WAV reaches the callee as PCMU from the call's RTP port,
    1 kHz, about 25 packets of it; the injection ends FINISHED and silence stops with it."""
    reactor = Reactor()
    session, ports = answered_session(reactor)
    path = tone_wav(tmp_path / "tone.wav", 1000, 0.5)
    injection = Injection(reactor, session, call_id="c1", sound=(str(path), "tone.wav", False))
    states = []
    injection.observers.append(lambda job: states.append(job.state))
    injection.start()
    reactor.run(lambda: injection.finished)
    assert injection.state == FINISHED and states[0] == INJECTING
    packets = received(reactor, ports["audio"])
    tone = [p.payload for p in packets if p.payload != b"\xff" * 160]
    assert 24 <= len(tone) <= 26
    samples, rate = decode("PCMU", tone)
    assert abs(dominant_hz(samples, rate) - 1000) < 10
    assert not session.endpoints["audio"].injecting
    count = len(received(reactor, ports["audio"]))
    reactor.advance(1)
    assert len(received(reactor, ports["audio"])) == count  # nothing after the end
    body = injection.to_json()
    assert body["type"] == "sound" and body["soundFile"] == "tone.wav" and body["loop"] is False
    assert body["sent"]["audio"] >= 24 and body["audioCodec"] == "PCMU"


def test_sound_file_looped_until_stopped_into_an_opus_call(tmp_path):
    """loop: a 0.2 s tone keeps playing (well past its length) into an opus call until
    stop(): STOPPED, and the sender stops."""
    reactor = Reactor()
    session, ports = answered_session(reactor, "opus")
    path = tone_wav(tmp_path / "tone.wav", 1000, 0.2)
    injection = Injection(reactor, session, call_id="c1", sound=(str(path), "tone.wav", True))
    injection.start()
    reactor.run(lambda: injection.to_json()["sent"]["audio"] >= 60)
    injection.stop("Stopped by rest /terminate")
    reactor.run(lambda: injection.finished)
    assert (injection.state, injection.info) == (STOPPED, "Stopped by rest /terminate")
    packets = received(reactor, ports["audio"])
    assert {p.payload_type for p in packets} == {111}
    samples, rate = decode("opus", [p.payload for p in packets])
    assert rate == 48000 and abs(dominant_hz(samples[4800:], rate) - 1000) < 10
    assert not session.endpoints["audio"].injecting


def test_an_unusable_sound_file_fails_the_injection(tmp_path):
    """A file PyAV cannot read: FAILED naming the file, nothing injected but silence."""
    reactor = Reactor()
    session, _ = answered_session(reactor)
    (tmp_path / "bad.wav").write_bytes(b"RIFF nothing")
    injection = Injection(reactor, session, call_id="c1",
                          sound=(str(tmp_path / "bad.wav"), "bad.wav", False)).start()
    reactor.run(lambda: injection.finished)
    assert injection.state == "FAILED" and "bad.wav" in injection.info


def test_stream_audio_transcoded_until_the_stream_ends():
    """inject_stream: another stream's PCMU 440 Hz, published as a call would, reaches a
    PCMA call as PCMA 440 Hz; the stream's end ends the injection UNPUBLISHED."""
    reactor = Reactor()
    session, ports = answered_session(reactor, "PCMA")
    source = Stream("other", has_audio=True, has_video=False, call_id="c2")
    injection = Injection(reactor, session, call_id="c1", source=source).start()
    payloads = tone_payloads("PCMU", 440, 1.0)
    sent = 0

    def publish_some():
        nonlocal sent
        if sent < len(payloads):  # 20 ms of source media for each 20 ms of clock
            source.publish(MediaFrame("audio", "PCMU", 8000, sent * 160, payloads[sent]))
            sent += 1
        return sent == len(payloads) and injection.to_json()["sent"]["audio"] >= 45
    reactor.run(publish_some)
    source.end()
    reactor.run(lambda: injection.finished)
    assert injection.state == UNPUBLISHED and injection.info == "Stream other ended"
    packets = received(reactor, ports["audio"])
    assert {p.payload_type for p in packets} == {8}
    tone = [p.payload for p in packets if p.payload != b"\xd5" * 160]
    samples, rate = decode("PCMA", tone)
    assert abs(dominant_hz(samples, rate) - 440) < 10


def test_stream_video_passed_through_from_a_keyframe():
    """A call with H264 gets the stream's access units (RTP payloads of aiortc's packetizer,
    marker on each last one), from the first keyframe on; the callee's PLI or FIR for our
    SSRC asks the stream's callee for a keyframe while it runs."""
    reactor = Reactor()
    session, ports = answered_session(reactor, "PCMU", video=True)
    source = Stream("other", has_audio=True, has_video=True, call_id="c2")
    injection = Injection(reactor, session, call_id="c1", source=source).start()
    assert injection.to_json()["video"] is True
    units = h264_access_units(30, gop=10)
    for i, (data, key) in enumerate(units[5:], start=5):  # starts mid-GOP: waits for a key
        source.publish(MediaFrame("video", "H264", 90000, 3600 * i, data, key))
    packets = received(reactor, ports["video"], CALLEE_VIDEO)
    frames = sum(p.marker for p in packets)
    assert frames == 20 and injection.video_sender.frames == 20  # from frame 10 (a keyframe)
    assert {p.payload_type for p in packets} == {102}
    stamps = sorted({p.timestamp for p in packets})
    assert all(b - a == 3600 for a, b in zip(stamps, stamps[1:]))
    ours = session.endpoints["video"].local_ssrc
    asked = source.keyframe_requests
    rtcp = reactor.udp_ports[ports["video"] + 1].proto
    rtcp.datagramReceived(bytes(PictureLossIndication(0x5EED, ours)), CALLEE_VIDEO)
    rtcp.datagramReceived(bytes(FullIntraRequest(0x5EED, [(ours, 1)])), CALLEE_VIDEO)
    rtcp.datagramReceived(bytes(PictureLossIndication(0x5EED, ours ^ 1)), CALLEE_VIDEO)
    assert source.keyframe_requests == asked + 2  # the callee's PLI and FIR, for our SSRC
    injection.stop()
    reactor.run(lambda: injection.finished)
    assert session.endpoints["video"].keyframe_wanted is None


def test_a_reinvite_changing_the_codec_is_followed(tmp_path):
    """The callee's re-INVITE moves the call from PCMU to PCMA mid-injection: the packets go
    on in PCMA (payload type 8, the tone intact) on the same sequence; a change to a codec
    that cannot be injected stops the injection."""
    from fakes import CALLEE as ADDRESS
    from sipgw.sip.sdp import SessionDescription, make_offer, negotiate
    reactor = Reactor()
    session, ports = answered_session(reactor, "PCMU")
    path = tone_wav(tmp_path / "tone.wav", 1000, 0.2)
    injection = Injection(reactor, session, call_id="c1", sound=(str(path), "t", True)).start()
    reactor.run(lambda: injection.to_json()["sent"]["audio"] >= 20)

    def answer(pt, rtpmap):
        offer = make_offer("127.0.0.1", audio_port=ports["audio"], video_port=None,
                           session_id=1)
        sdp = ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
               f"m=audio {ADDRESS[1]} RTP/AVP {pt}\r\na=rtpmap:{pt} {rtpmap}\r\n")
        return negotiate(offer, SessionDescription.parse(sdp))
    count = len(received(reactor, ports["audio"]))
    session.negotiate(answer(8, "PCMA/8000"))
    reactor.run(lambda: len(received(reactor, ports["audio"])) >= count + 40)
    packets = received(reactor, ports["audio"])
    seqs = [p.sequence_number for p in packets]
    assert all(b == (a + 1) & 0xFFFF for a, b in zip(seqs, seqs[1:]))
    after = packets[count:]
    assert {p.payload_type for p in after} == {8} and injection.codec.name == "PCMA"
    samples, rate = decode("PCMA", [p.payload for p in after[5:]])
    assert abs(dominant_hz(samples, rate) - 1000) < 10
    pcma = answer(8, "PCMA/8000")
    g722 = dataclasses.replace(pcma["audio"], codec=Codec(9, "G722", 8000))  # not offered
    session.negotiate({"audio": g722})
    reactor.run(lambda: injection.finished)
    assert injection.state == STOPPED and "G722" in injection.info
