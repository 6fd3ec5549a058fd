"""Churn with real SIPp callees (issue 10): hundreds of calls through six endings, then
nothing left: no call, stream, recording or push, fds and threads back to the baseline,
and a SIGTERM that finds nothing to end."""
import json
import os
import signal
import socket
import time

from peers import Sipp, free_port, wait_for
from sipgw_daemon import Sipgw

PER_ENDING = 50  # calls per ending; 6 endings
ENDINGS = {  # ending -> (SIPp callee, the status the call must end in)
    "our BYE": ("uas_200.xml", "FINISH"),  # /call/terminate once ESTABLISHED
    "callee's BYE": ("uas_bye_from_callee.xml", "FINISH"),
    "busy": ("uas_486.xml", "BUSY"),
    "our CANCEL": ("uas_noanswer_cancel.xml", "FINISH"),  # /call/terminate once RING
    "200 crossing the ring-timeout CANCEL": ("uas_cancel_crosses_200.xml", "FAILED"),
    "RTP timeout": ("uas_200.xml", "FAILED"),  # no RTP for rtp_activity_timeout: our BYE
}


def _pid_figures(pid):
    with open(f"/proc/{pid}/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    return len(os.listdir(f"/proc/{pid}/fd")), threads


def _pipelined(gw, *requests):
    """Several REST requests in one write on one connection: sipgw reads the next before
    anything else happens (here: /call/terminate before the REGISTER is answered)."""
    data = b""
    for path, body in requests:
        payload = json.dumps(body).encode()
        data += (f"POST /rest-api{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                 ).encode() + payload
    with socket.create_connection(("127.0.0.1", gw.rest_port), timeout=10) as conn:
        conn.sendall(data)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < len(requests) or not answers.endswith(b"\r\n\r\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            answers += chunk
    assert answers.count(b"HTTP/1.1 200") == len(requests), answers[:500]


def test_churn_through_every_ending_leaves_nothing(tmp_path, nginx_rtmp, kamailio):
    """300 calls over 6 endings (our BYE, the callee's BYE, 486, our CANCEL, a 200 crossing
    the ring-timeout CANCEL, RTP timeout), every 10th answered call also recorded and pushed to
    nginx-rtmp before it is hung up, plus 10 calls hung up while registering at Kamailio:
    every call ends as expected, every SIPp callee is satisfied and alice is unregistered;
    afterwards no call, stream, recording or push is left, fds and threads are
    back to what an idle daemon had, and SIGTERM has no call to end."""
    # every call listed by one find_all; ended calls kept long enough for the poll below
    gw = Sipgw(str(tmp_path), call_retention=20, call_find_limit=1000, sip_ring_timeout=4,
               rtp_activity_timeout=3, max_calls=0, max_calls_per_account=0,  # no quota here
               media_port_from=20000, media_port_to=29999,
               record_dir=str(tmp_path / "records")).start()
    callees = {}
    try:
        # a call first: the lazily made parts (REST connection pool, loggers) are counted
        base_callee = Sipp("uas_486.xml", port=free_port("udp"), tmpdir=tmp_path).start()
        gw.rest("/call/startup", {"callId": "warm", "callee": "bob", "sipLogin": "alice",
                                    "sipDomain": "127.0.0.1", "sipPort": str(base_callee.port),
                                    "hasVideo": "false"})
        gw.wait_status("warm", "BUSY")
        base_callee.wait(10)
        baseline = _pid_figures(gw.proc.pid)
        for ending, (scenario, _) in ENDINGS.items():
            callees[ending] = Sipp(scenario, port=free_port("udp"), tmpdir=tmp_path,
                                     calls=PER_ENDING, trace=False, pause_ms=200,
                                     timeout_s=120).start()
        ids, ended, terminated = {}, {}, set()

        def sweep():
            """One find_all: note the ended calls, hang up those waiting for us."""
            for call in gw.found("/call/find_all", {}):
                call_id, status = call["callId"], call["status"]
                ending = ids.get(call_id)
                if ending is None or call_id in ended:
                    continue
                if status in ("FINISH", "FAILED", "BUSY"):
                    ended[call_id] = (status, call["info"])
                elif call_id not in terminated and (
                        status == "ESTABLISHED" and ending == "our BYE"
                        or status == "RING" and ending == "our CANCEL"):
                    terminated.add(call_id)
                    if status == "ESTABLISHED" and call_id.endswith("0"):
                        stream, = gw.found("/stream/find", {"name": call_id})
                        gw.rest("/recorder/startup", {"mediaSessionId": stream["mediaSessionId"]})
                        gw.rest("/push/startup", {"streamName": call_id,
                                                    "rtmpUrl": nginx_rtmp.url()})
                    gw.rest("/call/terminate", {"callId": call_id})

        for n in range(PER_ENDING):
            for k, (ending, sipp) in enumerate(callees.items()):
                call_id = f"c{k}-{n}"
                ids[call_id] = ending
                gw.rest("/call/startup", {
                    "callId": call_id, "callee": "bob", "sipLogin": "alice",
                    "sipDomain": "127.0.0.1", "sipPort": str(sipp.port), "hasVideo": "false"})
            sweep()
        deadline = time.monotonic() + 60
        while len(ended) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
            sweep()
        for n in range(10):  # /call/terminate while the account's REGISTER is under way
            _pipelined(gw, ("/call/startup", {
                "callId": f"r{n}", "callee": "bob", "sipLogin": "alice",
                "sipAuthenticationName": "alice", "sipPassword": "alicepw",
                "sipDomain": "127.0.0.1", "sipPort": str(kamailio.port), "hasVideo": "false",
                "sipRegisterRequired": "true"}), ("/call/terminate", {"callId": f"r{n}"}))
        for n in range(10):
            gw.wait_status(f"r{n}", "FINISH")
        wait_for(lambda: not kamailio.registered("alice"), 10, "alice to be unregistered")
        wrong = {c: s for c, s in ended.items() if s[0] != ENDINGS[ids[c]][1]}
        assert len(ended) == len(ids) and not wrong, (len(ended), wrong)
        for ending, sipp in callees.items():
            assert sipp.wait(60) == 0, f"{ending}: SIPp counted failed calls"
        wait_for(lambda: not gw.found("/call/find_all", {}), 30, "ended calls to expire")
        assert gw.found("/stream/find_all", {}) == []
        assert gw.found("/push/find_all", {}) == []
        # no recording active; these calls sent no media, so none made a file to list
        assert gw.found("/recorder/find_all", {}) == []
        assert gw.log().count("recording c0-") >= 5 and gw.log().count("push of c0-") >= 5
        wait_for(lambda: all(now <= then for now, then in
                             zip(_pid_figures(gw.proc.pid), baseline)), 10,
                 f"fds and threads back to {baseline}, not {_pid_figures(gw.proc.pid)}")
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(10)
        log = gw.log().split("Received SIGTERM")[-1]
        assert "0 call(s) ended" in log and "0 registration(s) removed (0 not)" in log, log
        assert "Traceback" not in gw.log()
    finally:
        for sipp in callees.values():
            sipp.stop()
        gw.stop()
