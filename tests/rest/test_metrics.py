"""/metrics and /health on the REST port of the whole daemon (service.make_service) on a fake
reactor: a call placed over REST, answered and fed RTP through the fake sockets, shows in the
scrape (parsed with prometheus_client's own text parser); both paths are admitted as REST is."""
from __future__ import annotations

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address

from fakes import UDPMemoryReactor
from sipgw.config import Config
from sipgw.rest.router import RestSite
from sipgw.rtp.packet import RtpPacket
from sipgw.sip.message import make_response
from sipgw.sip.parser import parse
from sipgw.sip.sdp import make_offer

STRANGER = IPv4Address("TCP", "192.0.2.7", 40313)
METRICS_TOKEN = "metrics-token-0123456789ab"
CALLS_TOKEN = "calls-token-0123456789abcd"
CALLEE = ("127.0.0.1", 5060)
ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=None, session_id=9))


@pytest.fixture
def daemon(tmp_path):
    from sipgw.service import make_service
    clock = UDPMemoryReactor()
    config = Config(sip_bind_address="127.0.0.1", sip_local_port=0, record_dir=str(tmp_path),
                    rest_auth_tokens=f"{METRICS_TOKEN}:metrics,{CALLS_TOKEN}:calls")
    top = make_service(config, clock)
    top.startService()
    top.site = RestSite(top.getServiceNamed("rest").args[1].resource, reactor=clock, timeout=None)
    top.clock = clock
    yield top
    if top.running:
        top.stopService()


def scrape(http_get, daemon) -> dict:
    """{(sample name, sorted labels): value} of one scrape."""
    response = http_get(daemon.site, "/metrics")
    assert response.code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode("utf-8")):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def place_call(daemon, http_get) -> None:
    """/call/startup over REST; the callee answers 200 with audio, then sends 50 RTP packets."""
    body = json.dumps({"callId": "c1", "callee": "bob", "sipLogin": "alice",
                       "sipDomain": "127.0.0.1", "sipPort": "5060", "toStream": "s1",
                       "hasAudio": "true", "hasVideo": "false"}).encode()
    started = http_get(daemon.site, "/rest-api/call/startup", method="POST", body=body,
                       headers={"Content-Type": "application/json"})
    assert started.code == 200
    sip = daemon.clock.udp_ports[daemon.ua.transport.port]
    invite = parse(sip.written[-1][0])
    daemon.clock.advance(0.2)
    ok = make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp")])
    sip.proto.datagramReceived(bytes(ok), CALLEE)
    audio_port = daemon.calls.calls["c1"].media_session.endpoints["audio"].port
    rtp = daemon.clock.udp_ports[audio_port]
    for seq in range(50):
        packet = RtpPacket(payload_type=0, sequence_number=seq, timestamp=160 * seq,
                           ssrc=0x1234, payload=b"\xff" * 160)
        rtp.proto.datagramReceived(bytes(packet), ("127.0.0.1", 6000))


def test_a_call_shows_in_the_scrape(daemon, http_get):
    """Calls by status, the setup time, SIP messages by method and code, RTP packets and bytes
    all move after one call; the call's end counts it by its final status."""
    before = scrape(http_get, daemon)
    assert before["sipgw_calls", (("status", "ESTABLISHED"),)] == 0
    assert before["sipgw_call_setup_seconds_count", ()] == 0
    assert before["sipgw_rtp_packets_total", (("kind", "audio"),)] == 0
    place_call(daemon, http_get)
    after = scrape(http_get, daemon)
    assert after["sipgw_calls", (("status", "ESTABLISHED"),)] == 1
    assert after["sipgw_call_setup_seconds_count", ()] == 1
    assert after["sipgw_call_setup_seconds_sum", ()] == pytest.approx(0.2)
    assert after["sipgw_call_setup_seconds_bucket", (("le", "0.25"),)] == 1
    assert after["sipgw_sip_messages_sent_total", (("code", ""), ("method", "INVITE"))] == 1
    assert after["sipgw_sip_messages_sent_total", (("code", ""), ("method", "ACK"))] == 1
    assert after["sipgw_sip_messages_received_total", (("code", "200"), ("method", "INVITE"))] \
        == 1
    assert after["sipgw_rtp_packets_total", (("kind", "audio"),)] == 50
    assert after["sipgw_rtp_bytes_total", (("kind", "audio"),)] == 50 * 172
    assert after["sipgw_rtp_lost_total", (("kind", "audio"),)] == 0
    assert after["sipgw_rtp_srtp_auth_failures_total", (("kind", "audio"),)] == 0
    assert ("sipgw_rtp_jitter", (("kind", "audio"), ("stream", "s1"))) in after
    assert after["sipgw_streams", ()] == 1
    daemon.calls.terminate("c1")
    sip = daemon.clock.udp_ports[daemon.ua.transport.port]
    bye = parse(sip.written[-1][0])
    sip.proto.datagramReceived(bytes(make_response(bye, 200)), CALLEE)
    ended = scrape(http_get, daemon)
    assert ended["sipgw_calls_ended_total", (("status", "FINISH"),)] == 1
    assert ended["sipgw_streams", ()] == 0
    # the call's stream is gone, its packets stay counted
    assert ended["sipgw_rtp_packets_total", (("kind", "audio"),)] == 50


def test_retransmissions_and_reactor_lag_are_counted(daemon, http_get):
    """An unanswered INVITE's Timer A retransmissions are counted; the lag timer (due every
    second) fired 0.5 s late at 1.5 s and 1 s late at 3.5 s."""
    place_call_body = {"callId": "c2", "callee": "bob", "sipLogin": "alice",
                       "sipDomain": "127.0.0.1", "toStream": "s2"}
    daemon.calls.startup(_request(place_call_body))
    daemon.clock.pump([0.5, 1.0, 2.0])  # Timer A: 0.5, 1.5, 3.5 s
    samples = scrape(http_get, daemon)
    assert samples["sipgw_sip_retransmissions_total", (("method", "INVITE"),)] == 3
    assert samples["sipgw_sip_messages_sent_total", (("code", ""), ("method", "INVITE"))] == 4
    assert samples["sipgw_reactor_lag_seconds_count", ()] == 2
    assert samples["sipgw_reactor_lag_seconds_sum", ()] == 1.5
    assert samples["sipgw_viewers", (("kind", "websocket"),)] == 0
    assert samples["sipgw_recordings", ()] == 0


def _request(body):
    from sipgw.rest.calls import parse_call_request
    return parse_call_request(body)


def test_health_is_200_while_up_and_503_while_stopping(daemon, http_get):
    """/health answers 200 with SIP and REST up, 503 once the daemon begins to shut down."""
    up = http_get(daemon.site, "/health")
    assert (up.code, up.json()) == (200, {"status": "up", "sip": True, "rest": True})
    daemon.stopService()
    down = http_get(daemon.site, "/health")
    assert (down.code, down.json()["status"]) == (503, "stopping")


@pytest.mark.parametrize("path", ["/metrics", "/health"])
def test_metrics_and_health_are_admitted_as_rest_is(daemon, http_get, path):
    """Outside trusted_networks: no token 401, a token without the metrics scope 403, a
    metrics token (or loopback without one) 200."""
    missing = http_get(daemon.site, path, peer=STRANGER)
    assert missing.code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="sipgw"'
    assert missing.json()["error"].startswith("a bearer token is required")
    other = http_get(daemon.site, path, {"Authorization": f"Bearer {CALLS_TOKEN}"}, STRANGER)
    assert (other.code, other.json()["error"]) == (
        403, "the bearer token does not have the metrics scope")
    good = http_get(daemon.site, path, {"Authorization": f"Bearer {METRICS_TOKEN}"}, STRANGER)
    assert good.code == 200
    assert http_get(daemon.site, path).code == 200
    post = http_get(daemon.site, path, method="POST")
    assert (post.code, post.headers["allow"], post.json()["error"]) == (
        405, "GET, HEAD", "POST not allowed: GET only")


def test_two_daemons_count_apart(tmp_path, http_get):
    """Each daemon has its own registry: one's calls never show in the other's scrape."""
    from sipgw.service import make_service
    tops = [make_service(Config(sip_bind_address="127.0.0.1", sip_local_port=0,
                                record_dir=str(tmp_path)), UDPMemoryReactor()) for _ in range(2)]
    assert tops[0].metrics.registry is not tops[1].metrics.registry
    tops[0].metrics.calls_ended.labels("FAILED").inc()
    assert tops[1].metrics.calls_ended.labels("FAILED")._value.get() == 0


def test_pushes_and_recordings_running_are_gauges(daemon, http_get):
    """Pushes by status and recordings are read from the media managers at each scrape."""
    pushes, recordings = daemon.media.pushes.pushes, daemon.media.recorders.active
    pushes.update({"p1": _Job("PUBLISHING"), "p2": _Job("RECONNECTING"), "p3": _Job("PUBLISHING")})
    recordings["r1"] = _Job("RECORDING")
    samples = scrape(http_get, daemon)
    assert samples["sipgw_pushes", (("status", "PUBLISHING"),)] == 2
    assert samples["sipgw_pushes", (("status", "RECONNECTING"),)] == 1
    assert samples["sipgw_recordings", ()] == 1
    pushes.clear()
    recordings.clear()
    samples = scrape(http_get, daemon)
    assert samples["sipgw_recordings", ()] == 0
    assert not [key for key in samples if key[0] == "sipgw_pushes"]


def test_injections_running_are_a_gauge_by_status(daemon, http_get):
    """Injections into calls (/call/inject_*) running, by status, read at each scrape; an
    ended one (still shown in /call/find) is not counted."""
    injections = daemon.media.injections.injections
    ended = _Job("FINISHED")
    ended.finished = True
    injections.update({"c1": _Job("INJECTING"), "c2": _Job("STARTING"), "c3": ended})
    samples = scrape(http_get, daemon)
    assert samples["sipgw_injections", (("status", "INJECTING"),)] == 1
    assert samples["sipgw_injections", (("status", "STARTING"),)] == 1
    assert ("sipgw_injections", (("status", "FINISHED"),)) not in samples
    injections.clear()
    assert not [key for key in scrape(http_get, daemon) if key[0] == "sipgw_injections"]


class _Job:
    """A push, recording or injection as the managers hold it: only its state is read (and
    whether it is over)."""

    finished = False

    def __init__(self, state):
        self.state = state


def test_sip_counters_stay_bounded_whatever_methods_arrive(daemon, http_get):
    """500 requests with 500 made-up methods (and our answers to them) are counted under
    method "other": a peer cannot grow the metrics without bound."""
    sip = daemon.clock.udp_ports[daemon.ua.transport.port]
    for i in range(500):
        sip.proto.datagramReceived((
            f"X{i} sip:gw@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK{i}"
            f"\r\nFrom: <sip:x@198.51.100.7>;tag=f{i}\r\nTo: <sip:gw@127.0.0.1>\r\n"
            f"Call-ID: c{i}@x\r\nCSeq: 1 X{i}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        ).encode(), ("198.51.100.7", 5060))
    samples = scrape(http_get, daemon)
    received = {k: v for k, v in samples.items() if k[0] == "sipgw_sip_messages_received_total"}
    assert received == {("sipgw_sip_messages_received_total",
                         (("code", ""), ("method", "other"))): 500}
    sent = {k for k in samples if k[0] == "sipgw_sip_messages_sent_total"}
    assert {dict(labels)["method"] for _, labels in sent} <= {"other"}


def test_hls_players_streams_requests_and_blocking_reloads_are_counted(daemon, http_get):
    """The HLS manager's figures at each scrape: streams muxed, players (client addresses
    asking within hls_idle_timeout: tests/media/test_llhls.py counts them), requests by kind,
    held requests, blocking reloads by outcome."""
    hls = daemon.media.hls
    samples = scrape(http_get, daemon)
    assert samples["sipgw_hls_streams", ()] == 0
    assert samples["sipgw_viewers", (("kind", "hls"),)] == 0
    assert samples["sipgw_hls_held_requests", ()] == 0
    assert samples["sipgw_hls_requests_total", (("kind", "playlist"),)] == 0
    hls.part("nope", "seg-1.m4s", client="192.0.2.1")
    hls.part("nope", "index.html")
    hls.reloads.update({"answered": 3, "too_far": 1})
    samples = scrape(http_get, daemon)
    assert samples["sipgw_hls_requests_total", (("kind", "segment"),)] == 1
    assert samples["sipgw_hls_requests_total", (("kind", "unknown"),)] == 1
    assert samples["sipgw_hls_blocking_reloads_total", (("result", "answered"),)] == 3
    assert samples["sipgw_hls_blocking_reloads_total", (("result", "too_far"),)] == 1
    assert samples["sipgw_hls_blocking_reloads_total", (("result", "timed_out"),)] == 0
