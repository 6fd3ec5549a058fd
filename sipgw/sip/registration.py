"""Registrations (RFC 3261 §10): one account's binding at its registrar, refreshed before it
expires and removed after the account's last call."""
from __future__ import annotations

import hashlib
import secrets

from twisted.internet import defer
from twisted.logger import Logger

from ..calls import CallError, CallRequest
from .auth import ChallengeAnswerer, DigestClient
from .headers import URI
from .message import Request, Response
from .resolver import Destination, fails_over

log = Logger(namespace="sipgw.sip.ua")


def new_tag() -> str:
    return secrets.token_hex(6)


class Registration:
    """One account's binding at its registrar (RFC 3261 §10), refreshed before expiry."""

    def __init__(self, ua, request: CallRequest, dest: Destination):
        self.ua = ua
        self.key = account_key(request)
        self.aor = URI("sip", request.sip_domain, user=request.sip_login)
        self.registrar = URI("sip", request.sip_domain,
                             port=request.sip_port if request.sip_port != 5060 else None)
        self.dest = dest
        self.call_id = f"{secrets.token_hex(10)}@sipgw"
        self.tag = new_tag()
        self.cseq = 0
        self.digest = DigestClient(request.auth_name, request.sip_password)
        self.state = "idle"
        self.waiters: list[defer.Deferred] = []
        self.users = 0
        self._refresh = None
        self._auth = None

    def ensure(self) -> defer.Deferred:
        d = defer.Deferred()
        if self.state == "registered":
            d.callback(self)
            return d
        self.waiters.append(d)
        if self.state != "registering":
            self._start(self.ua.config.sip_register_expires)
        return d

    def _start(self, expires: int) -> None:
        self.state = "registering" if expires else "unregistering"
        self._auth = ChallengeAnswerer(self.digest)
        self._send(expires, [])

    def _send(self, expires: int, auth_headers) -> None:
        self.cseq += 1
        ua = self.ua
        headers = [("Via", ua.via(self.dest)), ("Max-Forwards", "70"),
                   ("From", f"<{self.aor}>;tag={self.tag}"), ("To", f"<{self.aor}>"),
                   ("Call-ID", self.call_id), ("CSeq", f"{self.cseq} REGISTER"),
                   ("Contact", ua.contact(self.aor.user, self.dest)), ("Expires", str(expires)),
                   ("User-Agent", ua.config.sip_user_agent)]
        headers += auth_headers
        request = Request("REGISTER", self.registrar, headers)
        ua.transactions.send_request(request, self.dest.transport, self.dest.host, self.dest.port,
                                     lambda r: self._on_response(request, expires, r))

    def _on_response(self, request: Request, expires: int, response: Response) -> None:
        if response.status < 200:
            return
        if fails_over(response) and self.dest.rest:  # RFC 3263 §4.3: the next target
            log.info("REGISTER {aor}: {status} from {dest}, trying {next}", aor=str(self.aor),
                     status=response.status, dest=repr(self.dest), next=repr(self.dest.next()))
            self.dest = self.dest.next()
            self._send(expires, [])
            return
        if response.status in (401, 407):
            headers = self._auth.headers_for(response, "REGISTER", str(self.registrar), b"")
            if headers is not None:
                self._send(expires, headers)
                return
        if 200 <= response.status < 300:
            if expires == 0:
                self.state = "idle"
                log.info("unregistered {aor}", aor=str(self.aor))
                self.ua.registration_left(self, True)
                return
            granted = self._granted(response, expires)
            self.state = "registered"
            log.info("registered {aor} at {dest} for {granted} s", aor=str(self.aor),
                     dest=repr(self.dest), granted=granted)
            if self.users <= 0:  # every call that wanted it ended while registering
                self._start(0)
                return
            # Refresh ahead of expiry (RFC 3261 §10.2.4).
            delay = max(granted * 0.8, granted - 30, 1)
            self._refresh = self.ua.reactor.callLater(delay, self._start, expires)
            waiters, self.waiters = self.waiters, []
            for d in waiters:
                d.callback(self)
            return
        reason = f"{response.status} {response.reason}"
        self.state = "failed" if expires else "idle"
        log.warn("REGISTER {aor} failed: {reason}", aor=str(self.aor), reason=reason)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.errback(CallError(f"Registration failed: {reason}"))
        if expires:
            self.ua.registrations.pop(self.key, None)
        if self.users <= 0:  # released already: nothing more will be sent
            self.ua.registration_left(self, False)

    def _granted(self, response: Response, asked: int) -> int:
        for contact in response.contacts:
            value = contact.params.get("expires")
            if value and value.isascii() and value.isdigit() and contact.uri.host.strip("[]") == self.ua.transport.sent_by(self.dest.host):
                return int(value)
        expires = response.get("Expires")
        return int(expires) if expires and expires.isascii() and expires.isdigit() else asked

    def release(self) -> None:
        """A call of this account ended; unregister after the last one."""
        self.users -= 1
        if self.users > 0:
            return
        if self._refresh is not None and self._refresh.active():
            self._refresh.cancel()
        if self.ua.registrations.get(self.key) is self:
            del self.ua.registrations[self.key]
        if self.state in ("registered", "registering"):
            self.ua.leaving.add(self)  # until the binding is removed (§10.2.2)
        if self.state == "registered":
            self._start(0)


def account_key(r: CallRequest) -> tuple:
    """Calls of the same account share one registration: the same login, authentication
    name and password (a call with a wrong password must not ride on another call's binding)
    toward the same registrar. The password is held as a digest, never as text."""
    password = hashlib.sha256(r.sip_password.encode("utf-8", "surrogatepass")).digest()
    return (r.sip_login, r.auth_name, password, r.sip_domain, r.sip_outbound_proxy, r.sip_port)
