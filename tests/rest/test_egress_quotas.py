"""Egress policy (403) and quotas (429) of /call/* and /push/*, over HTTP/1.1 bytes."""
from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from sipgw.calls import CallStatus
from sipgw.config import Config
from sipgw.rest.calls import CallApi
from sipgw.rest.router import RestResource

from test_calls_api import MINIMAL_BODY, RecordingCallManager


def _client(client_for, manager, clock=None, **settings):
    return client_for(RestResource(CallApi(manager, Config(**settings), clock)))


@pytest.mark.parametrize("field,value,shown", [
    ("sipDomain", "169.254.169.254", "169.254.169.254"),
    ("sipDomain", "0.0.0.0", "0.0.0.0"),
    ("sipOutboundProxy", "224.0.0.1:5060", "224.0.0.1"),
    ("sipOutboundProxy", "sip:[fe80::1]:5060;transport=tcp", "fe80::1"),
    ("sipOutboundProxy", "sips:[fe80::1]:5061", "fe80::1"),
    ("callee", "bob@169.254.169.254:5060", "169.254.169.254"),
    ("sipDomain", "::", "::"),
])
def test_denied_destinations_are_403_naming_the_field(client_for, field, value, shown):
    """Link-local, multicast and unspecified destinations are refused before the manager
    sees the call, with a 403 that names the field."""
    manager = RecordingCallManager()
    answer = _client(client_for, manager).post("/call/startup", {**MINIMAL_BODY, field: value})
    assert answer.code == 403
    assert answer.json() == {"error": f"{field} destination {shown} is denied by sip_egress_deny",
                             "field": field}
    assert manager.started == []


def test_loopback_and_private_destinations_are_allowed_by_default(client_for):
    """PBXs live on loopback and private ranges: the default lets them through."""
    manager = RecordingCallManager()
    client = _client(client_for, manager)
    for domain in ("127.0.0.1", "10.1.2.3", "192.168.0.9", "pbx.example.org"):
        assert client.post("/call/startup", {**MINIMAL_BODY, "sipDomain": domain}).code == 200


def test_an_allow_list_narrows_and_a_deny_list_names(client_for):
    """With sip_egress_allow only those domains/networks pass; sip_egress_deny adds names."""
    manager = RecordingCallManager()
    client = _client(client_for, manager, sip_egress_allow=".example.org,10.0.0.0/8",
                     sip_egress_deny="bad.example.org")
    assert client.post("/call/startup", {**MINIMAL_BODY, "sipDomain": "pbx.example.org"}).code == 200
    assert client.post("/call/startup", {**MINIMAL_BODY, "sipDomain": "10.0.0.5"}).code == 200
    refused = client.post("/call/startup", {**MINIMAL_BODY, "sipDomain": "192.168.1.1"})
    assert refused.code == 403
    assert refused.json()["error"] == "sipDomain destination 192.168.1.1 is not in sip_egress_allow"
    denied = client.post("/call/startup", {**MINIMAL_BODY, "sipDomain": "BAD.example.org."})
    assert denied.code == 403 and "sip_egress_deny" in denied.json()["error"]


def test_max_calls_and_max_calls_per_account_are_429(client_for):
    """Beyond max_calls, or max_calls_per_account for one sipLogin@sipDomain, startup is a
    429 saying which limit; an ended call frees its place."""
    manager = RecordingCallManager()
    client = _client(client_for, manager, max_calls=3, max_calls_per_account=2)
    assert client.post("/call/startup", {**MINIMAL_BODY, "callId": "a1"}).code == 200
    assert client.post("/call/startup", {**MINIMAL_BODY, "callId": "a2"}).code == 200
    third = client.post("/call/startup", {**MINIMAL_BODY, "callId": "a3"})
    assert third.code == 429
    assert third.json() == {"error": "too many calls of the account alice@sip.example.com: 2 of "
                                     "max_calls_per_account=2", "field": "sipLogin"}
    assert client.post("/call/startup", {**MINIMAL_BODY, "callId": "b1",
                                         "sipLogin": "bob"}).code == 200
    full = client.post("/call/startup", {**MINIMAL_BODY, "callId": "c1", "sipLogin": "carol"})
    assert full.code == 429 and full.json()["error"] == "too many calls: 3 of max_calls=3"
    manager.calls["a1"]["status"] = CallStatus.FINISH.value
    assert client.post("/call/startup", {**MINIMAL_BODY, "callId": "c1",
                                         "sipLogin": "carol"}).code == 200


def test_dtmf_rate_per_call_is_refused(client_for):
    """A call may send dtmf_max_digits at once, then dtmf_digits_per_second; another call
    has its own budget."""
    manager = RecordingCallManager()
    clock = Clock()
    client = _client(client_for, manager, clock, dtmf_max_digits=8, dtmf_digits_per_second=2)
    manager.add_call("c1")
    manager.add_call("c2")
    assert client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "12345678"}).code == 200
    refused = client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "1"})
    # 200 with the call and the refusal: the SIP-as-RTMP pages end the call on an HTTP error
    assert refused.code == 200 and refused.json()[0]["field"] == "dtmf"
    assert "dtmf_digits_per_second=2" in refused.json()[0]["error"]
    assert client.post("/call/send_dtmf", {"callId": "c2", "dtmf": "1"}).body == b""
    clock.advance(1)
    assert client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "12"}).body == b""
    assert "error" in client.post("/call/send_dtmf", {"callId": "c1", "dtmf": "1"}).json()[0]
    assert [d[1] for d in manager.dtmf] == ["12345678", "1", "12"]


def test_quotas_follow_the_call_managers_calls_without_scanning_them(client_for):
    """With the real call manager the quotas count the calls its status observer saw start
    and not end yet: a call refused by the callee frees its place, ended calls kept findable
    for call_retention do not count."""
    from fakes import PEER, RecordingSender, UDPMemoryReactor, gateway_on, reply

    clock = UDPMemoryReactor()
    sender = RecordingSender()
    gw = gateway_on(clock, sender, max_calls=2, max_calls_per_account=2)
    gw.active_calls = None  # never asked: the counts come from the observer
    client = client_for(RestResource(CallApi(gw, gw.config, clock)))
    body = {**MINIMAL_BODY, "sipDomain": "127.0.0.1"}
    assert client.post("/call/startup", {**body, "callId": "a1", "toStream": "a1"}).code == 200
    assert client.post("/call/startup", {**body, "callId": "a2", "toStream": "a2"}).code == 200
    full = client.post("/call/startup", {**body, "callId": "a3", "toStream": "a3"})
    assert full.code == 429 and full.json()["error"] == "too many calls: 2 of max_calls=2"
    invite = sender.requests("INVITE")[0]
    gw.sip.transactions.receive(reply(invite, 486), PEER)
    assert gw.find("a1")[0]["status"] == "BUSY"  # ended, still findable
    assert client.post("/call/startup", {**body, "callId": "a3", "toStream": "a3",
                                         "sipLogin": "bob"}).code == 200
    again = client.post("/call/startup", {**body, "callId": "a4", "toStream": "a4"})
    assert again.code == 429
