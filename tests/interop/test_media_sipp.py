"""A SIPp callee playing a pcap of RTP (PCMA) into the real daemon: the stream is listed with the
callee's codec, counts every packet of the capture, the callee gets RTCP receiver reports (RFC
3550 §6.4.2) saying nothing was lost and a BYE at the end, and the stream goes with the call.

A stranger spraying RTP at the media range before a callee that starts its media late (RTP
bleed) gets nothing in and nothing back (strict source); a callee sending from another port
than its answer names (NAT) is learned after probation.

sipgw sends its RTCP to the answer's port + 1 (no a=rtcp in SIPp's answer), which SIPp leaves
unbound: the test listens there itself, so every wait below is on a real event (a REST state or a
datagram), never on a fixed sleep.
"""
import select
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

import peers
from peers import wait_for
from sipgw_daemon import Sipgw
from sipgw.rtp.packet import Bye, ReceiverReport, SenderReport, SourceDescription, parse_rtcp

PCAP = Path("/usr/share/sip-tester/g711a.pcap")  # what uas_pcap_pcma.xml plays
LINKTYPE_ETHERNET = 1


def pcap_rtp(path: Path) -> list[tuple[int, int, int]]:
    """(payload type, sequence number, SSRC) of each packet of a classic pcap file holding
    Ethernet / IPv4 / UDP / RTP, in capture order."""
    data = path.read_bytes()
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path} is not a classic pcap file")
    linktype = struct.unpack_from(endian + "I", data, 20)[0]
    if linktype != LINKTYPE_ETHERNET:
        raise ValueError(f"{path}: link type {linktype}, not Ethernet")
    packets = []
    pos = 24
    while pos + 16 <= len(data):
        captured = struct.unpack_from(endian + "I", data, pos + 8)[0]
        frame = data[pos + 16:pos + 16 + captured]
        pos += 16 + captured
        ip = frame[14:]
        if struct.unpack_from("!H", frame, 12)[0] != 0x0800 or ip[9] != 17:
            continue  # not IPv4 / UDP
        rtp = ip[(ip[0] & 0x0F) * 4 + 8:]
        _, pt, seq, _, ssrc = struct.unpack_from("!BBHII", rtp)
        packets.append((pt & 0x7F, seq, ssrc))
    return packets


def _rtcp_until(sock, accept):
    """A function for wait_for: read the RTCP that has arrived, return the first compound
    packet ``accept`` takes, else None."""
    def poll():
        while True:
            try:
                data, _ = sock.recvfrom(65536)
            except BlockingIOError:
                return None
            packets = parse_rtcp(data)
            if accept(packets):
                return packets
    return poll


def test_pcma_pcap_is_published_counted_and_reported(daemon, sipp_factory):
    """Every PCMA packet a SIPp callee replays from a pcap is counted on the stream with no loss,
    the callee gets receiver reports and a final BYE, and the stream ends with the call."""
    if not PCAP.is_file():
        pytest.fail(f"{PCAP} is missing: {peers.INSTALL_HINT}", pytrace=False)
    captured = pcap_rtp(PCAP)
    assert {pt for pt, _, _ in captured} == {8}
    [ssrc] = {s for _, _, s in captured}
    last_seq = captured[-1][1]
    enough = int(0.9 * len(captured))

    sipp = sipp_factory("uas_pcap_pcma.xml")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
        rtcp.bind((peers.HOST, sipp.media_port + 1))  # SIPp's RTCP port, which it leaves free
        rtcp.setblocking(False)
        assert daemon.rest("/call/startup", {
            "callId": "p1", "callee": "bob", "toStream": "stream-p1", "sipLogin": "alice",
            "sipPassword": "alicepw", "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
            "hasAudio": "true", "hasVideo": "false"}) is None
        daemon.wait_status("p1", "ESTABLISHED")
        invite = sipp.received("INVITE")[0]
        assert "m=audio" in invite.body and "m=video" not in invite.body

        seen = []

        def counted():
            stream = daemon.stream("stream-p1")
            seen.append(stream["counters"].get("audio", {}).get("packets", 0))
            return seen[-1] >= enough and stream

        stream = wait_for(counted, 30, f"{enough} audio packets on the stream", log=daemon.log)
        assert stream["audioCodec"] == "PCMA" and stream["hasVideo"] is False
        assert stream["status"] == "PUBLISHING"
        assert seen == sorted(seen) and seen[0] < enough  # it grew while we watched

        # The first receiver report sent after the capture's last packet arrived.
        report = wait_for(_rtcp_until(rtcp, lambda packets: isinstance(packets[0], ReceiverReport)
                                      and packets[0].reports
                                      and packets[0].reports[0].highest_sequence & 0xFFFF
                                      == last_seq),
                          30, "an RTCP receiver report covering the whole capture", log=daemon.log)
        rr, sdes = report[:2]
        [block] = rr.reports
        assert block.ssrc == ssrc and block.packets_lost == 0 and block.fraction_lost == 0
        assert isinstance(sdes, SourceDescription) and sdes.chunks[0][0] == rr.ssrc

        counters = daemon.stream("stream-p1")["counters"]["audio"]
        assert enough <= counters["packets"] <= len(captured)
        assert counters["frames"] == counters["packets"]
        assert counters["lost"] == 0
        assert counters["bad_packets"] == counters["wrong_source"] == 0
        assert counters["wrong_payload_type"] == counters["ssrc_changes"] == 0

        daemon.rest("/call/terminate", {"callId": "p1"})
        assert daemon.wait_status("p1", "FINISH")["info"] == "Stopped by rest /terminate"
        assert daemon.stream("stream-p1") is None
        bye = wait_for(_rtcp_until(rtcp, lambda packets: isinstance(packets[-1], Bye)), 10,
                       "the RTCP BYE", log=daemon.log)
        assert bye[-1].sources == [rr.ssrc]
        assert isinstance(bye[0], ReceiverReport)  # a compound packet (RFC 3550 §6.1)
    assert sipp.wait(15) == 0
    assert [m.method for m in sipp.received()] == ["INVITE", "ACK", "BYE"]


class Sprayer:
    """A stranger spraying in-sequence PCMA RTP (its own SSRC) at every even port of a media
    range, 50 packets/s each, from a socket of its own (RTP bleed); keeps what comes back."""

    def __init__(self, ports: range):
        self.ports = ports
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((peers.HOST, 0))
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seq = 0
        while not self.stop.wait(0.02):
            packet = struct.pack("!BBHII", 0x80, 8, seq, seq * 160, 0x57A) + b"\xd5" * 160
            for port in self.ports:
                self.sock.sendto(packet, (peers.HOST, port))
            seq += 1
            self.sent += 1

    def received(self) -> list:
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recvfrom(65536))
            except BlockingIOError:
                return out

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_a_stranger_spraying_rtp_before_the_callee_gets_nothing(daemon, sipp_factory):
    """A stranger spraying in-sequence RTP at every media port from before the call gets none
    of its packets into the stream and nothing back (no RTCP, no DTMF), even once the callee has
    gone quiet; every packet of the callee (at its SDP address) is taken, and DTMF goes to it."""
    if not PCAP.is_file():
        pytest.fail(f"{PCAP} is missing: {peers.INSTALL_HINT}", pytrace=False)
    captured = pcap_rtp(PCAP)
    last_seq = captured[-1][1]
    first = int(daemon.settings["media_port_from"])
    media = range(first + first % 2, int(daemon.settings["media_port_to"]), 2)

    sipp = sipp_factory("uas_pcap_pcma_dtmf.xml")
    with Sprayer(media) as stranger, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtcp:
        rtcp.bind((peers.HOST, sipp.media_port + 1))  # SIPp's RTCP port, which it leaves free
        rtcp.setblocking(False)
        wait_for(lambda: stranger.sent >= 5, 10, "the stranger's first packets")
        assert daemon.rest("/call/startup", {
            "callId": "s1", "callee": "bob", "toStream": "stream-s1", "sipLogin": "alice",
            "sipPassword": "alicepw", "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
            "hasAudio": "true", "hasVideo": "false"}) is None
        daemon.wait_status("s1", "ESTABLISHED")
        report = wait_for(_rtcp_until(rtcp, lambda packets: isinstance(packets[0], ReceiverReport)
                                      and packets[0].reports
                                      and packets[0].reports[0].highest_sequence & 0xFFFF
                                      == last_seq),
                          30, "a receiver report covering the whole capture", log=daemon.log)
        [block] = report[0].reports
        assert block.packets_lost == 0 and block.ssrc == captured[0][2]

        assert daemon.rest("/call/send_dtmf", {"callId": "s1", "dtmf": "1"}) is None
        wait_for(_rtcp_until(rtcp, lambda packets: isinstance(packets[0], SenderReport)
                             and packets[0].packet_count > 0),
                 15, "a sender report counting the DTMF packets", log=daemon.log)
        counters = daemon.stream("stream-s1")["counters"]["audio"]
        assert counters["wrong_source"] > 0 and counters["ssrc_changes"] == 0
        assert counters["packets"] == counters["frames"] <= len(captured)
        assert stranger.received() == []
        daemon.rest("/call/terminate", {"callId": "s1"})
        daemon.wait_status("s1", "FINISH")
    assert sipp.wait(15) == 0


def test_a_callee_behind_nat_is_learned_after_probation(tmp_path, sipp_factory):
    """A callee whose RTP comes from another port than its answer names (as behind a NAT), the
    SDP address silent, is learned after the answer's first second and the probation: the
    packets before are dropped as wrong_source, the rest are counted, and sipgw's own RTP
    (silence, rtp_session_init_always) goes to where the callee sends from."""
    gw = Sipgw(str(tmp_path), rtp_session_init_always="true").start()
    try:
        sipp = sipp_factory("uas_200.xml")  # answers PCMU on its media port, sends no RTP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as nat:
            nat.bind((peers.HOST, 0))
            assert gw.rest("/call/startup", {
                "callId": "n1", "callee": "bob", "toStream": "stream-n1", "sipLogin": "alice",
                "sipPassword": "alicepw", "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
                "hasAudio": "true", "hasVideo": "false"}) is None
            gw.wait_status("n1", "ESTABLISHED")
            offer = sipp.received("INVITE")[0].body
            port = int(offer.split("m=audio ", 1)[1].split()[0])
            for seq in range(150):  # 3 s of 20 ms PCMU from the NAT's port
                nat.sendto(struct.pack("!BBHII", 0x80, 0, seq, seq * 160, 0xA7) + b"\xff" * 160,
                           (peers.HOST, port))
                time.sleep(0.02)
            nat.setblocking(False)
            back = wait_for(lambda: nat.recvfrom(2048)[1] if _readable(nat) else None, 5,
                            "sipgw's RTP at the learned address", log=gw.log)
            assert back == (peers.HOST, port)
            counters = wait_for(lambda: (c := gw.stream("stream-n1")["counters"]["audio"])
                                ["wrong_source"] + c["packets"] == 150 and c, 5, "150 packets")
            assert counters["wrong_source"] > 0 and counters["packets"] >= 50
            assert f"latched to 127.0.0.1:{nat.getsockname()[1]}" in gw.log()
            gw.rest("/call/terminate", {"callId": "n1"})
            gw.wait_status("n1", "FINISH")
        assert sipp.wait(15) == 0
    finally:
        gw.stop()


def _readable(sock) -> bool:
    return bool(select.select([sock], [], [], 0)[0])
