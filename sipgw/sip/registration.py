"""Registrations (RFC 3261 §10): one account's binding at its registrar, refreshed before it
expires and removed after the account's last call."""
from __future__ import annotations

import collections
import hashlib

from twisted.internet import defer
from twisted.logger import Logger

from .. import entropy
from .auth import ChallengeAnswerer, DigestClient
from .headers import Address, URI
from .message import Request, Response
from .resolver import Destination, fails_over

log = Logger(namespace="sipgw.sip.registration")


class RegistrationFailed(Exception):
    """The registrar refused the binding a call needs (the message says how)."""


def new_tag() -> str:
    return entropy.token_hex(6)


class RegistrationIds:
    """One Call-ID per account per boot, its CSeq rising across bindings (RFC 3261 §10.2);
    at most ``limit`` accounts kept, the least recently used forgotten first."""

    def __init__(self, limit: int = 10000):
        self.limit = limit
        self._ids: collections.OrderedDict[tuple, list] = collections.OrderedDict()

    def entry(self, key: tuple) -> list:
        """[Call-ID, last CSeq] of the account, shared by its Registration objects."""
        entry = self._ids.pop(key, None) or [f"{entropy.token_hex(10)}@sipgw", 0]
        self._ids[key] = entry
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)
        return entry


class Registration:
    """One account's binding at its registrar (RFC 3261 §10), refreshed before expiry."""

    def __init__(self, ua, request, dest: Destination):
        self.ua = ua
        self.key = account_key(request)
        self.aor = URI("sip", request.sip_domain, user=request.sip_login)
        self.registrar = URI("sip", request.sip_domain,
                             port=request.sip_port if request.sip_port != 5060 else None)
        self.dest = dest
        self._ids = ua.register_ids.entry(self.key)
        self.call_id = self._ids[0]
        self.tag = new_tag()
        self.cseq = self._ids[1]
        self.digest = DigestClient(request.auth_name, request.sip_password)
        self.state = "idle"
        self.waiters: list[defer.Deferred] = []
        self.users = 0
        self._refresh = None
        self._keepalive = None
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
        self._ids[1] += 1
        self.cseq = self._ids[1]
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
        floor = response.get("Min-Expires", "").strip()
        if response.status == 423 and expires and floor.isdigit() and int(floor) > expires:
            # §10.2.8: again, asking for Min-Expires (refreshes too), with the credentials known
            self._send(int(floor), self._auth.credentials("REGISTER", str(self.registrar)) or [])
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
            # Refresh ahead of expiry (RFC 3261 §10.2.4); at once when behind a NAT, so the
            # binding has the public Contact.
            delay = 0 if self._learn_public(response) else max(granted * 0.8, granted - 30, 1)
            self._refresh = self.ua.reactor.callLater(delay, self._start, expires)
            self._keep_alive_later()
            waiters, self.waiters = self.waiters, []
            for d in waiters:
                d.callback(self)
            return
        reason = f"{response.status} {response.reason}"
        self.state = "failed" if expires else "idle"
        log.warn("REGISTER {aor} failed: {reason}", aor=str(self.aor), reason=reason)
        waiters, self.waiters = self.waiters, []
        for d in waiters:
            d.errback(RegistrationFailed(f"Registration failed: {reason}"))
        if expires:
            self.ua.registrations.pop(self.key, None)
        if self.users <= 0:  # released already: nothing more will be sent
            self.ua.registration_left(self, False)

    def _learn_public(self, response: Response) -> bool:
        """sip_nat_rewrite_contact: our address as the registrar sees it, from the 200's
        Via ``received``/``rport`` (RFC 3581 §4), kept for the Contact of this account's
        REGISTERs and calls (``contact_address``). True when it changed the Contact."""
        if not self.ua.config.sip_nat_rewrite_contact:
            return False
        via = response.top_via
        rport = via.params.get("rport") or ""
        host = (via.params.get("received") or via.host).strip("[]")
        port = int(rport) if rport.isascii() and rport.isdigit() else (via.port or 5060)
        transport = self.ua.transport
        key = (self.dest.transport, self.dest.host, self.dest.port)
        if transport.contact_address(*key) == (host, port):
            return False
        log.info("REGISTER {aor}: behind a NAT, public address {host}:{port}",
                 aor=str(self.aor), host=host, port=port)
        transport.public[key] = (host, port)
        return True

    def _keep_alive_later(self) -> None:
        interval = self.ua.config.sip_keepalive_interval
        if self.ua.config.sip_nat_keepalive == "off":
            return
        if interval and (self._keepalive is None or not self._keepalive.active()):
            self._keepalive = self.ua.reactor.callLater(interval, self._keep_alive)

    def _keep_alive(self) -> None:
        """NAT keep-alive every sip_keepalive_interval while registered, so the NAT binding
        the registrar reaches us through stays open: ``crlf``, RFC 5626 §4.4 (double CRLF
        on TCP/TLS, STUN on UDP); ``options``, an OPTIONS to the registrar as phones do
        (its answer is not needed)."""
        if self.state != "registered" or self.users <= 0:
            return
        ua = self.ua
        if ua.config.sip_nat_keepalive == "crlf":
            ua.transport.send_keepalive(self.dest.transport, self.dest.host, self.dest.port)
            self._keep_alive_later()
            return
        headers = [("Via", ua.via(self.dest)), ("Max-Forwards", "70"),
                   ("From", f"<{self.aor}>;tag={self.tag}"), ("To", f"<{self.registrar}>"),
                   ("Call-ID", f"{entropy.token_hex(10)}@sipgw"), ("CSeq", "1 OPTIONS"),
                   ("User-Agent", ua.config.sip_user_agent)]
        ua.transactions.send_request(Request("OPTIONS", self.registrar, headers),
                                     self.dest.transport, self.dest.host, self.dest.port,
                                     lambda response: None)
        self._keep_alive_later()

    def _granted(self, response: Response, asked: int) -> int:
        """§10.2.4: the expires of the Contact that is ours (user, host and port compared as
        §19.1.4 says), else the Expires header, else the shortest one granted, else ``asked``."""
        ours = Address.parse(self.ua.contact(self.aor.user, self.dest)).uri
        granted = {}
        for contact in response.contacts:
            value = contact.params.get("expires", "")
            if value.isascii() and value.isdigit():
                granted[_binding(contact.uri)] = int(value)
        if _binding(ours) in granted:
            return granted[_binding(ours)]
        expires = response.get("Expires")
        if expires and expires.isascii() and expires.isdigit():
            return int(expires)
        return min(granted.values(), default=asked)

    def release(self) -> None:
        """A call of this account ended; unregister after the last one."""
        self.users -= 1
        if self.users > 0:
            return
        for timer in (self._refresh, self._keepalive):
            if timer is not None and timer.active():
                timer.cancel()
        if self.ua.registrations.get(self.key) is self:
            del self.ua.registrations[self.key]
        if self.state in ("registered", "registering"):
            self.ua.leaving.add(self)  # until the binding is removed (§10.2.2)
        if self.state == "registered":
            self._start(0)


def _binding(uri: URI) -> tuple:
    """What makes two Contact URIs the same binding (§19.1.4): user, host, port, transport."""
    return (uri.user, uri.host.lower().strip("[]"), uri.port or 5060,
            (uri.params.get("transport") or "udp").lower())


def account_key(r) -> tuple:
    """Calls of the same account share one registration: the same login, authentication
    name and password (a call with a wrong password must not ride on another call's binding)
    toward the same registrar. The password is held as a digest, never as text."""
    password = hashlib.sha256(r.sip_password.encode("utf-8", "surrogatepass")).digest()
    return (r.sip_login, r.auth_name, password, r.sip_domain, r.sip_outbound_proxy, r.sip_port)
