"""The daemon's services: start, and the ordered stop of issue 10 (SIGTERM)."""
from twisted.logger import formatEvent, globalLogPublisher

from fakes import PEER, UDPMemoryReactor
from sipgw.calls import CallRequest
from sipgw.config import Config
from sipgw.service import make_service
from sipgw.sip.message import make_response
from sipgw.sip.parser import parse
from sipgw.sip.sdp import make_offer

ANSWER = bytes(make_offer("127.0.0.1", audio_port=6000, video_port=6002, session_id=9))


def _sent(reactor, port, method):
    return [m for m in (parse(data) for data, _ in reactor.udp_ports[port].written)
            if getattr(m, "method", None) == method]


def test_stop_closes_listeners_ends_calls_then_logs_one_summary(tmp_path):
    """stopService closes the REST, HLS and websocket listeners at once, BYEs the established
    call while SIP stays open, and once the BYE is answered closes SIP and logs one
    summary line."""
    reactor = UDPMemoryReactor()
    config = Config(sip_local_port=0, sip_bind_address="127.0.0.1", record_dir=str(tmp_path))
    top = make_service(config, reactor)
    top.startService()
    ua, calls = top.ua, top.calls
    sip_port = ua.transport.port
    calls.startup(CallRequest(call_id="c1", callee="bob", sip_login="alice",
                           sip_domain="127.0.0.1", sip_port=5060))
    invite, = _sent(reactor, sip_port, "INVITE")
    ua.transactions.receive(make_response(invite, 200, to_tag="b1", body=ANSWER, extra=[
        ("Contact", "<sip:bob@127.0.0.1:5060>"), ("Content-Type", "application/sdp")]), PEER)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        stopping = top.stopService()
        assert top.getServiceNamed("rest").running == 0 and top.getServiceNamed("ws").running == 0
        assert top.getServiceNamed("hls").running == 0
        bye, = _sent(reactor, sip_port, "BYE")
        assert not stopping.called and sip_port in reactor.udp_ports  # SIP still open
        ua.transactions.receive(make_response(bye, 200), PEER)
        assert stopping.called and sip_port not in reactor.udp_ports
    finally:
        globalLogPublisher.removeObserver(events.append)
    summary = [formatEvent(e) for e in events if e.get("log_namespace") == "sipgw.service"]
    assert len(summary) == 1 and "1 call(s) ended (1 answered" in summary[0]
    assert "0 recording(s) finalized" in summary[0] and "0 push(es) closed" in summary[0]
