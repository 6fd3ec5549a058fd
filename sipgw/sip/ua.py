"""The user agent (RFC 3261 §8, §12): transport and transactions wired, requests routed.

``UserAgent`` is the transaction user of this daemon: it owns the transport and
transaction layers and the RFC 3263 locator, addresses our requests (Via, Contact, first
hop, in-dialog next hop), keeps the accounts' registrations (``registration.py``), and
routes what peers send to the INVITE session of its Call-ID (``invite.py``); what no
session of ours owns is answered statelessly. Pure SIP: calls, media and streams live a
layer up (``sipgw/gateway``).
"""
from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger

from ..egress import EgressDenied, EgressPolicy
from .dialog import Dialog
from .headers import URI, bracket
from .invite import InviteSession, allow, uri_transport
from .message import Request, Response, make_response
from .transaction import TransactionLayer, new_branch
from .registration import Registration, RegistrationIds, new_tag
from .resolver import Destination, Locator, default_port, send_with_failover
from .transport import MAX_SERVER_NAMES, TLSClientSettings, TransportLayer, is_ip

log = Logger(namespace="sipgw.sip.ua")

# In-dialog next hops named by host name, located and kept per session: the peer's target
# refreshes (re-INVITE Contact) may name a new host each time.
HOPS_KEPT = 8


def _tls_settings(config) -> TLSClientSettings | None:
    """The SIP TLS client settings, read at start when any is set (else made on first use)."""
    if config.sip_tls_ca_file or config.sip_tls_certificate:
        return TLSClientSettings(config.sip_tls_ca_file, config.sip_tls_certificate,
                                 config.sip_tls_private_key)
    return None


class UserAgent:
    """Transaction user for every INVITE session and registration of this daemon."""

    def __init__(self, reactor, config, dns=None):
        self.reactor = reactor
        self.config = config
        # RFC 3263 through twisted.names (``dns``: an IResolver, else sip_dns_servers')
        # A records for an IPv4 socket, AAAA for an IPv6 one, both for a dual-stack "::".
        ipv6 = ":" in config.sip_bind_address
        self.locator = Locator(reactor, dns, config.sip_dns_servers, ipv6=ipv6,
                               ipv4=not ipv6 or config.sip_bind_address == "::")
        self.transactions = TransactionLayer(reactor, tu=self,
                                             max_server=config.sip_max_server_transactions,
                                             requests_per_source=config.sip_max_requests_per_source)
        self.transport = TransportLayer(reactor, self.transactions,
                                        bind_address=config.sip_bind_address,
                                        port=config.sip_local_port,
                                        advertised_address=config.sip_address,
                                        max_size=config.sip_max_message_size,
                                        receive_buffer=config.sip_udp_receive_buffer_bytes,
                                        max_tcp_connections=config.sip_max_tcp_connections,
                                        tcp_idle_timeout=config.sip_tcp_idle_timeout,
                                        tcp_message_timeout=config.sip_tcp_message_timeout,
                                        tls=_tls_settings(config))
        self.transactions.sender = self.transport
        self.timers = self.transactions.timers  # fixed-length timers, one reactor timer each
        self.sessions: dict[str, InviteSession] = {}  # by SIP Call-ID
        self.registrations: dict[tuple, Registration] = {}
        self.register_ids = RegistrationIds()  # one Call-ID per account per boot (§10.2)
        self.egress = EgressPolicy.from_config(config, "sip")
        self.leaving: set[Registration] = set()  # unregistering (or registering, unused)
        self.unregistered = 0
        self.on_registration_left = None  # callable(): a registration was released

    def start(self) -> None:
        self.transport.start()

    def close(self) -> defer.Deferred:
        """Drop every transaction (no retransmission may outlive the sockets) and close
        the sockets."""
        self.transactions.close()
        return defer.maybeDeferred(self.transport.stop)

    # -- sessions ------------------------------------------------------------
    def session(self, params, user) -> InviteSession:
        """A new INVITE session for the call ``params`` (see InviteSession), routed here
        until ``forget``."""
        session = InviteSession(self, params, user)
        self.sessions[session.sip_call_id] = session
        return session

    def forget(self, session: InviteSession) -> None:
        """The session is over for good: no request reaches it any more, and it lets go of
        its user (the call), which holds it: freed at once, not by the cyclic collector."""
        if self.sessions.get(session.sip_call_id) is session:
            del self.sessions[session.sip_call_id]
        session.user = None

    def registration_left(self, registration: Registration, removed: bool) -> None:
        """A released registration is done: unregistered (``removed``), or it never was."""
        self.leaving.discard(registration)
        self.unregistered += removed
        if self.on_registration_left is not None:
            self.on_registration_left()

    def supported(self) -> list[tuple[str, str]]:
        """The Supported header of the extensions turned on (RFC 3262 §3, RFC 4028 §3)."""
        config = self.config
        tags = [t for t, on in (("100rel", config.sip_100rel),
                                ("timer", config.sip_session_timers)) if on]
        return [("Supported", ", ".join(tags))] if tags else []

    # -- addressing --------------------------------------------------------
    def via(self, dest: Destination, branch: str | None = None) -> str:
        """Our Via for a request to ``dest``; its sent-by is the public address learned from
        that peer's received/rport (sip_nat_rewrite_contact, RFC 3581 §4), as in Contact."""
        transport = self.transport
        if self.config.sip_nat_rewrite_contact:
            host, port = transport.contact_address(dest.transport, dest.host, dest.port)
        else:
            host, port = transport.sent_by(dest.host), transport.port
        # TLS: no listener here, so ask the server to send back over this connection
        # (RFC 5923 alias; Kamailio: tcp_accept_aliases).
        alias = ";alias" if dest.transport == "TLS" else ""
        return (f"SIP/2.0/{dest.transport} {bracket(host)}:{port};"
                f"branch={branch or new_branch()};rport{alias}")

    def contact(self, user: str, dest: Destination) -> str:
        host, port = self.transport.contact_address(dest.transport, dest.host, dest.port)
        params = f";transport={dest.transport.lower()}" if dest.transport != "UDP" else ""
        return f"<sip:{user}@{bracket(host)}:{port}{params}>"

    def first_hop(self, r) -> tuple[str | None, str, int | None]:
        """(transport, host, port) for out-of-dialog requests: the outbound proxy if
        given, else the domain at sipPort. None where nothing was asked: RFC 3263 finds it
        (sipPort 5060 is the default WCS forms always send, so it counts as none)."""
        transport = "TCP" if self.config.sip_use_tcp_transport else None
        domain_port = r.sip_port if r.sip_port != 5060 else None
        if r.sip_outbound_proxy:
            scheme, text = "sip", r.sip_outbound_proxy
            if text.startswith(("sip:", "sips:")):
                scheme, _, text = text.partition(":")
            hostport = text.split(";")[0]
            if hostport.count(":") > 1 and "[" not in hostport:  # a bare IPv6 address
                text = f"[{hostport}]" + text[len(hostport):]
            uri = URI.parse(f"{scheme}:{text}")
            return uri_transport(uri) or transport, uri.host, uri.port or domain_port
        return transport, r.sip_domain, domain_port

    def resolve(self, transport: str | None, host: str, port: int | None,
                default_transport: str = "UDP") -> defer.Deferred:
        """A Deferred Destination chain for a URI's parts (RFC 3263 §4); a TLS target's
        certificate is then checked against ``host`` (RFC 5922 §7.2)."""
        def named(dest):
            names = self.transport.server_names
            for target in (tuple(dest), *dest.rest):
                if target[0] == "TLS" and not is_ip(host):
                    names.pop((target[1], target[2]), None)
                    names[(target[1], target[2])] = host.strip("[]")
            while len(names) > MAX_SERVER_NAMES:
                del names[next(iter(names))]
            return dest
        return self.locator.locate(host, port, transport, default_transport).addCallback(named)

    def in_dialog_destination(self, session: InviteSession,
                              dialog: Dialog | None = None) -> Destination:
        """Next hop of an in-dialog request (of ``dialog``: an early one, else the
        session's): the top route, else the outbound proxy, else the remote target
        (§12.2.1.1)."""
        dialog = dialog or session.dialog
        if not dialog.route_set and session.params.sip_outbound_proxy:
            return session.dest
        uri = dialog.next_hop()
        transport = uri_transport(uri) or session.dest.transport
        host = uri.host.strip("[]")
        if not is_ip(host):  # resolved by send_in_dialog (RFC 3263 §4); till then the first hop
            return session.hops.get(self._named_hop(session, dialog), session.dest)
        return Destination(transport, host, uri.port or default_port(transport))

    def _named_hop(self, session: InviteSession, dialog: Dialog | None = None) -> tuple | None:
        """(transport, host, port) of an in-dialog next hop that is a host name, else None."""
        dialog = dialog or session.dialog
        if dialog is None or (not dialog.route_set and session.params.sip_outbound_proxy):
            return None
        uri = dialog.next_hop()
        if is_ip(uri.host):
            return None
        return (uri_transport(uri), uri.host, uri.port)

    def send_in_dialog(self, session: InviteSession, request: Request, on_response=None,
                       dialog: Dialog | None = None) -> None:
        hop = self._named_hop(session, dialog)
        if hop is not None and hop not in session.hops:
            # A Route or Contact naming a host: locate it first (RFC 3263 §4).
            def located(dest):
                session.hops[hop] = self.allowed(hop[1], dest) or dest  # none: refused below
                while len(session.hops) > HOPS_KEPT:  # the oldest go (located again if named)
                    del session.hops[next(iter(session.hops))]
                self.send_in_dialog(session, request, on_response, dialog)

            def failed(failure):
                log.warn("call {call_id}: cannot resolve {host}: {why}", host=hop[1],
                         call_id=session.name, why=failure.getErrorMessage())
                if on_response is not None and request.method != "ACK":
                    on_response(self._refused(request, 503, f"Cannot resolve {hop[1]}"))
            self.resolve(hop[0], hop[1], hop[2], session.dest.transport).addCallbacks(
                located, failed)
            return
        dest = self.in_dialog_destination(session, dialog)
        if not self.egress.allows(hop[1] if hop else dest.host, resolved=dest.host):
            # The peer's Contact or Record-Route names a denied address: send nothing there;
            # the request fails at once as if refused (a BYE still ends the call).
            log.warn("call {call_id}: {method} to {host} refused by sip_egress",
                     call_id=session.name, method=request.method, host=dest.host)
            if on_response is not None and request.method != "ACK":
                self.reactor.callLater(0, on_response,
                                       self._refused(request, 403, "Denied by sip_egress"))
            return
        if request.method == "ACK":
            self.transport.send(request, dest.transport, dest.host, dest.port)
            return

        def moved(nxt):  # later requests go to the target that answered (RFC 3263 §4.3)
            if hop is None:
                session.dest = nxt  # the outbound proxy's next address
            else:
                session.hops[hop] = nxt
        send_with_failover(self.transactions, request, dest, on_response or (lambda r: None),
                           moved)

    def allowed(self, name: str, dest: Destination) -> Destination | None:
        """The targets ``name`` resolved to that sip_egress allows, in order; None if none."""
        allowed = [t for t in (tuple(dest), *dest.rest) if self.egress.allows(name, resolved=t[1])]
        return Destination.chain(allowed) if allowed else None

    def egress_refusal(self, name: str, field: str, dest: Destination) -> str:
        """Why sip_egress refuses every address ``name`` resolved to (``allowed`` None)."""
        try:
            self.egress.check(name, field, resolved=dest.host)
        except EgressDenied as exc:
            return exc.message
        return f"{field} {name} denied by sip_egress"

    @staticmethod
    def _refused(request: Request, status: int, reason: str) -> Response:
        refused = make_response(request, status, reason)
        refused.local = True
        return refused

    # -- the transaction user interface ---------------------------------------
    def request(self, request: Request, tx) -> None:
        method = request.method
        # Requests outside our dialogs are answered statelessly, once (or dropped when
        # sip_answer_unsolicited=false): never retransmitted, no state left behind.
        if method == "OPTIONS":
            tx.respond_once(make_response(request, 200, to_tag=new_tag(), extra=[
                ("Allow", allow(self.config)), ("Accept", "application/sdp"), *self.supported(),
                ("User-Agent", self.config.sip_user_agent)]))
            return
        if method == "CANCEL":
            # We never have an unanswered INVITE from a peer for long: nothing to cancel.
            self._unsolicited(tx, make_response(request, 481))
            return
        session = self.sessions.get(request.call_id)
        if session is None or not session.matches(request):
            if method == "INVITE" and not request.to.tag:
                self._unsolicited(tx, make_response(request, 603, "Incoming calls are not accepted",
                                                    to_tag=new_tag()))
            else:
                self._unsolicited(tx, make_response(request, 481))
            return
        session.receive(request, tx)

    def _unsolicited(self, tx, response: Response) -> None:
        if self.config.sip_answer_unsolicited:
            tx.respond_once(response)
        else:
            tx.drop()

    def ack(self, request: Request, source) -> None:
        session = self.sessions.get(request.call_id)
        if session is not None:
            session.acked(request)

    def stray_response(self, response: Response, source) -> None:
        """2xx retransmissions of an INVITE arrive here (§13.2.2.4): ACK again."""
        session = self.sessions.get(response.call_id)
        if (session is not None and response.cseq.method == "INVITE"
                and 200 <= response.status < 300):
            session.stray_2xx(response)
