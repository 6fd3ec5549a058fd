"""The interop fixtures work by themselves, without sipgw: SIPp against SIPp,
SIPp against Kamailio, and SIPp through Kamailio to baresip."""

from __future__ import annotations

import pytest

import peers

TRANSPORTS = ["u1", "t1"]


def flow(sipp: peers.Sipp) -> list[str]:
    """The first lines SIPp exchanged, '>' sent and '<' received, e.g. '<INVITE', '>200'."""
    return [
        ("<" if m.direction == "received" else ">") + (m.method or str(m.status))
        for m in sipp.messages()
    ]


def run_pair(sipp_factory, uas_scenario, uac_scenario, transport, *, uas_kwargs=None, **uac_kwargs):
    uas = sipp_factory(uas_scenario, transport=transport, **(uas_kwargs or {}))
    uac = sipp_factory(uac_scenario, transport=transport, remote=uas.uri_host, **uac_kwargs)
    return uas, uac, uac.wait(15), uas.wait(15)


CALLEE_FLOWS = {
    "uas_200.xml": ["<INVITE", ">100", ">200", "<ACK", "<BYE", ">200"],
    "uas_180_200.xml": ["<INVITE", ">100", ">180", ">200", "<ACK", "<BYE", ">200"],
    "uas_183sdp_200.xml": ["<INVITE", ">100", ">183", ">200", "<ACK", "<BYE", ">200"],
    "uas_486.xml": ["<INVITE", ">100", ">486", "<ACK"],
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("scenario", sorted(CALLEE_FLOWS))
def test_uas_scenario_completes_a_call(sipp_factory, scenario, transport):
    """Each callee scenario runs its flow to the end against a SIPp caller."""
    uas, uac, uac_rc, uas_rc = run_pair(sipp_factory, scenario, "uac_basic.xml", transport)
    assert (uac_rc, uas_rc) == (0, 0), uas.log() + uac.log()
    assert flow(uas) == CALLEE_FLOWS[scenario]
    assert {m.transport for m in uas.messages()} == {"UDP" if transport == "u1" else "TCP"}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uas_answer_has_pcmu_and_rejects_offered_video(sipp_factory, transport):
    """The 200 answers PCMU on SIPp's media port and rejects an offered m=video with port 0."""
    uas, _, uac_rc, uas_rc = run_pair(sipp_factory, "uas_200.xml", "uac_basic.xml", transport)
    assert (uac_rc, uas_rc) == (0, 0)
    (ok,) = uas.sent(200)[:1]
    assert ok.cseq_method == "INVITE"
    assert ok.header("Content-Type") == "application/sdp"
    assert f"m=audio {uas.media_port} RTP/AVP 0" in ok.body
    assert "m=video 0 RTP/AVP 96" in ok.body


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uas_bye_from_callee(sipp_factory, transport):
    """The callee hangs up: its BYE reaches the caller's Contact and gets 200."""
    uas, uac, uac_rc, uas_rc = run_pair(
        sipp_factory, "uas_bye_from_callee.xml", "uac_wait_bye.xml", transport
    )
    assert (uac_rc, uas_rc) == (0, 0), uas.log() + uac.log()
    assert flow(uas) == ["<INVITE", ">100", ">200", "<ACK", ">BYE", "<200"]
    (bye,) = uas.sent("BYE")
    assert bye.first_line.startswith(f"BYE sip:sipp@127.0.0.1:{uac.port}")
    invite = uas.received("INVITE")[0]
    assert bye.header("To") == invite.header("From")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uas_noanswer_cancel(sipp_factory, transport):
    """A ringing callee answers CANCEL with 200 and the INVITE with 487, then gets the ACK."""
    uas, uac, uac_rc, uas_rc = run_pair(
        sipp_factory, "uas_noanswer_cancel.xml", "uac_cancel.xml", transport
    )
    assert (uac_rc, uas_rc) == (0, 0), uas.log() + uac.log()
    assert flow(uas) == ["<INVITE", ">100", ">180", "<CANCEL", ">200", ">487", "<ACK"]
    ok, terminated = uas.sent(200)[0], uas.sent(487)[0]
    assert ok.header("CSeq") == "1 CANCEL"
    assert terminated.header("CSeq") == "1 INVITE"
    assert terminated.header("Via") == uas.received("INVITE")[0].header("Via")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_uas_401_accepts_right_credentials(sipp_factory, transport):
    """The callee challenges with 401, verifies the digest for real and then answers 200."""
    creds = {"authuser": "sipgw", "authpass": "s3cret"}
    uas, uac, uac_rc, uas_rc = run_pair(
        sipp_factory, "uas_401_200.xml", "uac_basic.xml", transport,
        uas_kwargs={"variables": creds},
        extra_args=["-au", "sipgw", "-ap", "s3cret"],
    )  # fmt: skip
    assert (uac_rc, uas_rc) == (0, 0), uas.log() + uac.log()
    assert flow(uas) == [
        "<INVITE", ">401", "<ACK", "<INVITE", ">100", ">200", "<ACK", "<BYE", ">200"
    ]  # fmt: skip
    first, second = uas.received("INVITE")
    assert first.header("Authorization") is None
    assert second.header("Authorization").startswith('Digest username="sipgw",realm="sipp"')
    assert second.header("Call-ID") == first.header("Call-ID")


def test_uas_401_rejects_wrong_password(sipp_factory):
    """A wrong digest response gets 403 and SIPp exits with 1 (failed call)."""
    uas, uac, uac_rc, uas_rc = run_pair(
        sipp_factory, "uas_401_200.xml", "uac_basic.xml", "u1",
        uas_kwargs={"variables": {"authuser": "sipgw", "authpass": "s3cret"}},
        extra_args=["-au", "sipgw", "-ap", "wrong"],
    )  # fmt: skip
    assert uas_rc == 1
    assert flow(uas) == ["<INVITE", ">401", "<ACK", "<INVITE", ">403", "<ACK"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bench_pair_runs_many_calls(sipp_factory, transport):
    """uac_bench against uas_bench completes 50 calls at 100 cps with no failure."""
    uas = sipp_factory("uas_bench.xml", transport=transport, calls=50, trace=False)
    uac = sipp_factory(
        "uac_bench.xml", transport=transport, remote=uas.uri_host, calls=50, trace=False,
        extra_args=["-r", "100", "-l", "50"],
    )  # fmt: skip
    assert uac.wait(15) == 0, uac.log()
    assert uas.wait(15) == 0, uas.log()
    assert "Successful call" in uas.log()


def test_sipp_stop_is_idempotent(sipp_factory):
    """stop() kills a waiting UAS by pid, and a second stop() is harmless."""
    uas = sipp_factory("uas_200.xml")
    assert uas.running()
    uas.stop()
    assert not uas.running()
    uas.stop()
    assert peers.leftover_processes().get(uas.pid) is None


# --------------------------------------------------------------------------
# Kamailio


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_kamailio_register_with_digest(kamailio, sipp_factory, transport):
    """REGISTER is challenged with 401, the digest answer gets 200 and the binding is stored."""
    uac = sipp_factory(
        "uac_register.xml", transport=transport, remote=kamailio.uri_host,
        extra_args=["-s", "alice", "-au", "alice", "-ap", "alicepw"],
    )  # fmt: skip
    assert uac.wait(10) == 0, uac.log() + kamailio.log()[-3000:]
    assert flow(uac) == [">REGISTER", "<401", ">REGISTER", "<200"]
    challenge = uac.received(401)[0].header("WWW-Authenticate")
    assert challenge.startswith('Digest realm="127.0.0.1"')
    assert kamailio.contacts("alice") == [
        f"sip:alice@127.0.0.1:{uac.port};transport={'UDP' if transport == 'u1' else 'TCP'}"
    ]


def test_kamailio_register_wrong_password_fails(kamailio, sipp_factory):
    """A wrong password is challenged again and nothing is registered."""
    uac = sipp_factory(
        "uac_register.xml", remote=kamailio.uri_host,
        extra_args=["-s", "alice", "-au", "alice", "-ap", "nope"],
    )  # fmt: skip
    assert uac.wait(10) != 0
    assert [m.status for m in uac.received()] == [401, 401]
    assert not kamailio.registered("alice")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_kamailio_proxies_authenticated_call_to_sipp(kamailio, sipp_factory, transport):
    """An INVITE via Kamailio (outbound proxy) gets 407, then reaches the callee record-routed."""
    uas = sipp_factory("uas_200.xml", transport=transport)
    uac = sipp_factory(
        "uac_basic.xml", transport=transport, remote=uas.uri_host,
        extra_args=["-rsa", kamailio.uri_host, "-au", "alice", "-ap", "alicepw"],
    )  # fmt: skip
    assert uac.wait(10) == 0, uac.log() + kamailio.log()[-3000:]
    assert uas.wait(10) == 0, uas.log()
    assert [step for step in flow(uac) if step != "<100"] == [
        ">INVITE", "<407", ">ACK", ">INVITE", "<200", ">ACK", ">BYE", "<200"
    ]  # fmt: skip
    invite = uas.received("INVITE")[0]
    assert f"127.0.0.1:{kamailio.port}" in invite.header("Record-Route")
    assert uas.received("ACK") and uas.received("BYE")


# --------------------------------------------------------------------------
# baresip


def test_baresip_answers_h264_call_through_kamailio(baresip, kamailio, sipp_factory):
    """baresip, registered at Kamailio, auto-answers a SIPp INVITE with H264 video and audio."""
    assert kamailio.registered("bob")
    uac = sipp_factory(
        "uac_basic.xml", remote=kamailio.uri_host, pause_ms=300,
        extra_args=["-s", "bob", "-au", "alice", "-ap", "alicepw"],
    )  # fmt: skip
    assert uac.wait(15) == 0, uac.log() + baresip.log()
    (ok,) = [m for m in uac.received(200) if m.cseq_method == "INVITE"]
    sdp = ok.body
    video = [line for line in sdp.split("\n") if line.startswith("m=video")]
    assert video and not video[0].startswith("m=video 0 "), sdp
    assert "H264/90000" in sdp
    assert "m=audio" in sdp and "PCMU/8000" in sdp
    assert "Call established" in baresip.log()


def test_a_wide_port_block_is_found_when_the_ephemeral_range_is_fragmented(monkeypatch):
    """free_port(count=400) still finds a block when the ports handed out earlier in the
    session leave no 400-wide gap in the kernel's ephemeral range (it failed in a whole-suite
    run)."""
    fragmented = set(peers._handed_out) | set(range(30000, 65535, 300))
    monkeypatch.setattr(peers, "_handed_out", fragmented)
    port = peers.free_port("udp", count=400)
    block = set(range(port, port + 400))
    assert not block & set(range(30000, 65535, 300)) and block <= peers._handed_out
