"""REST hooks from the real daemon to an app server the test runs (http.server on loopback, in
a thread of this process): every hook of a call to a SIPp callee and of a websocket player, in
order; a connect the app refuses; and a dead app server while 100 calls still set up."""
import asyncio
import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from certs import TestCA
from peers import free_port, wait_for
from sipgw.hooks import UNREACHABLE
from sipgw_daemon import Sipgw
from ws_viewer import WcsSession, refused_then_let_in


class AppServer:
    """A WCS-style application server: records every hook (method, body) as it arrives and
    answers 200, or 403 to a ``connect`` whose authToken is "let-me-not-in"."""

    def __init__(self, tls=None):
        self.hooks = []
        self.lock = threading.Lock()
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                method = self.path.rsplit("/", 1)[1]
                with app.lock:
                    app.hooks.append((method, body))
                refused = method == "connect" and body.get("authToken") == "let-me-not-in"
                self.send_response(403 if refused else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # (certificate, key): https
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.server.handle_error = lambda *args: None  # refused handshakes are expected
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/apps/TestApp"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def seen(self, predicate=lambda method, body: True):
        with self.lock:
            return [(m, b) for m, b in self.hooks if predicate(m, b)]

    def wait(self, predicate, timeout=15):
        return wait_for(lambda: self.seen(predicate), timeout, "a hook",
                        log=lambda: f"got {self.seen()}")

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def app_server():
    server = AppServer()
    yield server
    server.close()


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_every_hook_of_a_call_and_a_player_in_order(tmp_path, app_server, sipp_factory):
    """A call to SIPp and a player of its stream: the app server gets StreamStatusEvent and
    CallStatusEvent for every status the call goes through, in order, then connect,
    ConnectionStatusEvent, playStream and the player's StreamStatusEvents, in order."""
    sipp = sipp_factory("uas_200.xml")
    gw = Sipgw(str(tmp_path), rest_apps=f"defaultApp={app_server.url}").start()
    try:
        assert gw.rest("/app/find_all")[0]["url"] == app_server.url
        gw.rest("/call/startup", {"callId": "h1", "callee": "bob", "sipLogin": "alice",
                                  "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
                                  "hasVideo": "false", "toStream": "stream-h1",
                                  "appKey": "defaultApp"})
        gw.wait_status("h1", "ESTABLISHED")

        async def player():
            session = WcsSession(f"ws://127.0.0.1:{gw.settings['ws_port']}")
            assert (await session.connect())["message"] == "getUserData"
            played = await session.play("stream-h1", decode=False)
            await session.status(played.id, "PLAYING", timeout=20)
            gw.rest("/call/terminate", {"callId": "h1"})
            stopped = await session.status(played.id, "STOPPED", "FAILED", timeout=10)
            await played.close()
            session.close()
            return stopped
        assert _run(player())["status"] == "STOPPED"
        history = gw.wait_status("h1", "FINISH")["history"]
        app_server.wait(lambda m, b: m == "ConnectionStatusEvent"
                        and b["status"] == "DISCONNECTED")
        app_server.wait(lambda m, b: m == "StreamStatusEvent" and b.get("published")
                        and b["status"] == "UNPUBLISHED")
    finally:
        gw.stop()
    of_call = [(m, b["status"]) for m, b in app_server.seen(lambda m, b: b.get("callId") == "h1")]
    assert of_call == ([("StreamStatusEvent", "PENDING")]
                       + [("CallStatusEvent", s) for s in history[1:]]
                       + [("StreamStatusEvent", "UNPUBLISHED")])
    assert history[1:] == ["PENDING", "TRYING", "ESTABLISHED", "FINISH"] or \
        history[1:] == ["PENDING", "ESTABLISHED", "FINISH"]
    finish = app_server.seen(lambda m, b: m == "CallStatusEvent" and b["status"] == "FINISH")
    assert finish[0][1]["info"] == "Stopped by rest /terminate"
    assert finish[0][1]["callee"] == "bob" and finish[0][1]["appKey"] == "defaultApp"
    of_player = [(m, b.get("status")) for m, b in app_server.seen(
        lambda m, b: "callId" not in b)]
    assert of_player == [("connect", None), ("ConnectionStatusEvent", "ESTABLISHED"),
                         ("playStream", None), ("StreamStatusEvent", "PLAYING"),
                         ("StreamStatusEvent", "STOPPED"),
                         ("ConnectionStatusEvent", "DISCONNECTED")]
    connect = app_server.seen(lambda m, b: m == "connect")[0][1]
    assert connect["appKey"] == "defaultApp" and connect["sessionId"]
    play = app_server.seen(lambda m, b: m == "playStream")[0][1]
    assert play["name"] == "stream-h1" and play["sessionId"] == connect["sessionId"]


def test_a_connect_the_app_refuses(tmp_path, app_server):
    """The app answers connect with 403: that player gets a fail naming it and the socket
    closes; another player the app lets in gets getUserData."""
    gw = Sipgw(str(tmp_path), rest_apps=f"defaultApp={app_server.url}").start()
    try:
        answer, closed, welcome = _run(refused_then_let_in(
            f"ws://127.0.0.1:{gw.settings['ws_port']}", "let-me-not-in", "fine"))
    finally:
        gw.stop()
    assert answer["message"] == "fail" and "403 Forbidden" in answer["data"][0]["info"]
    assert closed["data"][0]["code"] == 4003
    assert welcome["message"] == "getUserData"
    assert ("ConnectionStatusEvent", "FAILED") in [
        (m, b.get("status")) for m, b in app_server.seen()]


@pytest.fixture(params=["refusing", "silent"])
def dead_app_url(request):
    """An app server that is down: nothing listens (connections refused), or a socket that
    takes connections and never answers (each hook waits for rest_request_timeout)."""
    if request.param == "refusing":
        yield f"http://127.0.0.1:{free_port('tcp')}/dead"
        return
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1024)  # never accepted: the kernel completes handshakes, nobody reads
        yield f"http://127.0.0.1:{silent.getsockname()[1]}/silent"


def test_a_dead_app_server_costs_no_call(tmp_path, dead_app_url, sipp_factory):
    """With the app server down, 100 calls to a SIPp callee still set up and end, quickly;
    its events fail or are dropped (a small queue), counted in /app/find_all, and logged at
    most once a minute."""
    media = free_port("udp", count=400)
    sipp = sipp_factory("uas_bench.xml", calls=100, trace=False)
    gw = Sipgw(str(tmp_path), rest_apps=f"defaultApp={dead_app_url}", rest_request_timeout=1,
               rest_max_connections=5, rest_queue_size=50, max_calls_per_account=0,
               media_port_from=media, media_port_to=media + 399, call_retention=120).start()
    ids = [f"d{n}" for n in range(100)]
    try:
        started = time.monotonic()
        for call_id in ids:
            gw.rest("/call/startup", {"callId": call_id, "callee": "bob", "sipLogin": "alice",
                                      "sipDomain": "127.0.0.1", "sipPort": str(sipp.port),
                                      "hasVideo": "false", "toStream": f"s-{call_id}"})
        for call_id in ids:
            gw.wait_status(call_id, "ESTABLISHED", timeout=30)
        set_up = time.monotonic() - started
        for call_id in ids:
            gw.rest("/call/terminate", {"callId": call_id})
        for call_id in ids:
            gw.wait_status(call_id, "FINISH", timeout=30)
        assert sipp.wait(30) == 0
        deadline = time.monotonic() + 10  # the silent server's hooks time out after 1 s
        while True:
            (app,) = gw.rest("/app/find_all")
            if app["failed"] >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        gw.stop()
    assert set_up < 20, f"100 calls took {set_up:.1f} s to set up"
    assert app["queued"] <= 50 and app["failed"] >= 10
    if "silent" in dead_app_url:
        assert app["dropped"] > 0  # 5 in flight for 1 s each: the queue of 50 overflows
    lines = gw.log().splitlines()
    failed = [line for line in lines if "hook " in line and " of defaultApp:" in line]
    dropped = [line for line in lines if "hooks of defaultApp: queue full" in line]
    assert 1 <= len(failed) <= 2 and len(dropped) <= 2, failed + dropped


def test_https_app_servers_are_verified(tmp_path, monkeypatch):
    """An https app server is asked only when its certificate verifies: with one from a test
    CA the daemon does not trust, connect is refused and the app sees nothing; once the
    daemon trusts that CA (SSL_CERT_FILE), the same app is asked and lets the player in."""
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["127.0.0.1"], tmp_path)
    app = AppServer(tls=(str(cert), str(key)))
    try:
        answers = []
        for trusted in (False, True):
            if trusted:
                monkeypatch.setenv("SSL_CERT_FILE", str(ca.path))
            workdir = tmp_path / f"trusted-{trusted}"
            workdir.mkdir()
            gw = Sipgw(str(workdir), rest_apps=f"defaultApp={app.url}").start()
            try:
                async def connect():
                    session = WcsSession(f"ws://127.0.0.1:{gw.settings['ws_port']}")
                    answer = await session.connect()
                    session.close()
                    return answer
                answers.append(_run(connect()))
            finally:
                gw.stop()
            if not trusted:
                assert app.seen() == []
                log = gw.log()
    finally:
        app.close()
    assert answers[0]["message"] == "fail"
    assert answers[0]["data"][0]["info"] == UNREACHABLE
    assert "certificate verify failed" in log
    assert answers[1]["message"] == "getUserData"
    assert [m for m, _ in app.seen()][:1] == ["connect"]
