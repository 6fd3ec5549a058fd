"""The real sipgw daemon, run as `twistd -n --reactor=asyncio sipgw` in a child process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from peers import free_port, track_group


class RestError(Exception):
    def __init__(self, code: int, body: dict | None):
        super().__init__(f"HTTP {code}: {body}")
        self.code = code
        self.body = body


#: what Sipgw(defaults=True) still sets: free ports, so that daemons run side by side
PORT_SETTINGS = ("rest_port", "hls_port", "ws_port", "sip_local_port", "media_port_from",
                 "media_port_to")


class Sipgw:
    """Starts the daemon with test settings, talks to its REST API, stops it by pid.

    ``defaults=True``: the built-in defaults but for the ports (PORT_SETTINGS)."""

    def __init__(self, workdir: str, twistd: list[str] | None = None, defaults: bool = False,
                 **settings):
        self.workdir = workdir
        # how twistd is run: this interpreter by default, or e.g. another venv's twistd
        self.twistd = twistd or [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
        self.rest_port = free_port("tcp")
        self.sip_port = free_port("udp")
        media_from = free_port("udp", count=40)  # 20 RTP/RTCP pairs
        self.hls_port = free_port("tcp")
        self.settings = {"rest_bind_address": "127.0.0.1", "rest_port": self.rest_port,
                         "hls_port": self.hls_port,
                         "ws_bind_address": "127.0.0.1", "ws_port": free_port("tcp"),
                         "webrtc_ice_address": "127.0.0.1",
                         "sip_bind_address": "127.0.0.1", "sip_local_port": self.sip_port,
                         "media_port_from": media_from, "media_port_to": media_from + 39,
                         "call_retention": 30,
                         # stop() waits 10 s: a call whose peer is already gone when the
                         # daemon stops must not hold the ordered shutdown longer than that
                         "shutdown_timeout": 3}
        if defaults:
            self.settings = {k: v for k, v in self.settings.items() if k in PORT_SETTINGS}
        self.settings.update(settings)
        self.proc = None
        self.log_path = os.path.join(workdir, "sipgw.log")

    def start(self, timeout: float = 20) -> "Sipgw":
        args = [*self.twistd, "-n", "--pidfile=", "--logfile", self.log_path,
                "--reactor=asyncio", "sipgw"]
        for key, value in self.settings.items():
            args += ["--set", f"{key}={value}"]
        with open(os.path.join(self.workdir, "sipgw.out"), "wb") as out:
            # its own process group, as the peers have: a daemon a test leaves running is
            # reported and killed at the end of the session (conftest.no_peer_left_running)
            self.proc = subprocess.Popen(args, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        track_group(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sipgw exited with {self.proc.returncode}:\n{self.log()}")
            try:
                self.rest("/call/find_all")
            except RestError:
                return self  # 404 (no calls) means REST is up
            except OSError:
                time.sleep(0.05)
                continue
            return self
        self.stop()
        raise RuntimeError(f"sipgw did not start in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """The daemon's log file, after whatever it printed before logging started."""
        text = ""
        for path in (os.path.join(self.workdir, "sipgw.out"), self.log_path):
            try:
                with open(path, encoding="utf-8", errors="replace") as handle:
                    text += handle.read()
            except OSError:
                pass
        return text

    def rest(self, method: str, body: dict | None = None):
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.rest_port}/rest-api{method}",
                                         data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            raise RestError(exc.code, json.loads(raw) if raw else None) from None

    def found(self, method: str, body: dict | None = None) -> list:
        """A find method's answer; [] when it finds nothing (WCS answers 404)."""
        try:
            return self.rest(method, body)
        except RestError as exc:
            if exc.code == 404:
                return []
            raise

    def call(self, call_id: str) -> dict | None:
        """/call/find by callId; None when there is no such call."""
        return next(iter(self.found("/call/find", {"callId": call_id})), None)

    def stream(self, name: str) -> dict | None:
        """/stream/find by name; None when the stream does not exist (404)."""
        return next(iter(self.found("/stream/find", {"name": name})), None)

    def start_call_to_bob(self, kamailio_port: int, call_id: str, **extra) -> None:
        """/call/startup: alice calls bob (baresip) through Kamailio, stream "stream-<callId>"."""
        body = {"callId": call_id, "callee": "bob", "toStream": f"stream-{call_id}",
                "sipLogin": "alice", "sipPassword": "alicepw", "sipDomain": "127.0.0.1",
                "sipPort": str(kamailio_port), "hasAudio": "true", "hasVideo": "true"}
        body.update(extra)
        self.rest("/call/startup", body)

    def start_call_to_sipp(self, port: int | str, call_id: str, domain: str = "127.0.0.1",
                           **extra):
        """/call/startup: alice calls bob at ``domain``:``port`` (a SIPp callee, or 5060 for
        RFC 3263 to decide), audio only, stream "stream-<callId>"; ``extra`` adds or changes.
        Returns the answer (None when accepted)."""
        body = {"callId": call_id, "callee": "bob", "sipLogin": "alice", "sipPassword": "s3cret",
                "sipDomain": domain, "sipPort": str(port), "hasVideo": "false",
                "toStream": f"stream-{call_id}", **extra}
        return self.rest("/call/startup", body)

    def call_bob(self, kamailio_port: int, call_id: str, **extra) -> dict:
        """start_call_to_bob, then wait for ESTABLISHED."""
        self.start_call_to_bob(kamailio_port, call_id, **extra)
        return self.wait_status(call_id, "ESTABLISHED", timeout=30)

    def wait_status(self, call_id: str, *statuses: str, timeout: float = 20) -> dict:
        """Poll /call/find (as WCS pages do) until the call reaches one of ``statuses``."""
        deadline = time.monotonic() + timeout
        call = None
        while time.monotonic() < deadline:
            call = self.call(call_id)
            if call is not None and call["status"] in statuses:
                return call
            time.sleep(0.05)
        raise AssertionError(f"call {call_id} never reached {statuses}; last: {call}\n"
                             f"{self.log()[-3000:]}")

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc and self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def call_once(workdir, call_id: str, domain: str, port: str = "5060", during=None,
              body: dict | None = None, **settings) -> tuple[Sipgw, dict]:
    """Start a daemon with ``settings`` in ``workdir`` (made here), call bob@``domain``
    (``port`` 5060: RFC 3263 decides), wait for ESTABLISHED, run ``during(gw, call)``, hang
    up, wait for FINISH and stop the daemon. ``body`` adds to or changes /call/startup's.
    Returns the daemon (for its log) and the ESTABLISHED call."""
    os.makedirs(workdir)
    gw = Sipgw(str(workdir), **settings).start()
    try:
        assert gw.start_call_to_sipp(port, call_id, domain, **(body or {})) is None
        call = gw.wait_status(call_id, "ESTABLISHED")
        if during is not None:
            during(gw, call)
        gw.rest("/call/terminate", {"callId": call_id})
        gw.wait_status(call_id, "FINISH")
    finally:
        gw.stop()
    return gw, call
