"""SIP transactions (RFC 3261 §17): four state machines and the layer that matches them.

Timers run on the clock passed in (``callLater``), so every flow is testable
on ``twisted.internet.task.Clock``. Bytes go through a ``sender`` object with
``send(message, transport, host, port)`` and ``send_response(response, source)``.
"""
from __future__ import annotations

import collections

from twisted.logger import Logger

from .. import entropy
from .message import Request, Response, make_response
from ..loglimit import LogLimiter, held_back
from ..quotas import TokenBuckets
from ..timerqueue import TimerQueues
from .transport import COUNTED_METHODS, set_top_via

log = Logger(namespace="sipgw.sip.transaction")

T1, T2, T4 = 0.5, 4.0, 5.0  # RFC 3261 §17.1.1.1, seconds
BRANCH_MAGIC = "z9hG4bK"  # §8.1.1.7


def new_branch() -> str:
    return BRANCH_MAGIC + entropy.token_hex(8)


def local_response(request: Request, status: int, reason: str) -> Response:
    """A response the stack makes up itself (timeout, transport error), §8.1.3.1."""
    response = make_response(request, status, reason)
    response.local = True
    return response


class _Transaction:
    def __init__(self, layer: "TransactionLayer", request: Request, transport: str):
        self.layer = layer
        self.clock = layer.clock
        self.request = request
        self.transport = transport
        self.reliable = transport != "UDP"
        self.state = "init"
        self._timers: dict[str, object] = {}

    def _start_timer(self, name: str, delay: float, fn) -> None:
        self._cancel_timer(name)
        # Timers A-K have a few fixed lengths: one reactor timer per length (timerqueue.py)
        self._timers[name] = self.layer.timers.callLater(delay, fn)

    def _cancel_timer(self, name: str) -> None:
        call = self._timers.pop(name, None)
        if call is not None and call.active():  # (a timer that fired stays till replaced)
            call.cancel()

    def _terminate(self) -> None:
        self.state = "terminated"
        for name in list(self._timers):
            self._cancel_timer(name)
        self.layer.forget(self)


class ClientTransaction(_Transaction):
    """INVITE (§17.1.1) or non-INVITE (§17.1.2) client transaction.

    ``on_response(response)`` gets every response the TU should see, including
    a locally made 408 on Timer B/F and 503 on a transport error.
    """

    def __init__(self, layer, request, transport, host, port, on_response):
        super().__init__(layer, request, transport)
        self.host, self.port = host, port
        self.on_response = on_response
        self.invite = request.method == "INVITE"
        self.key = (request.top_via.branch, request.method)
        self._interval = T1
        self.last_ack: Request | None = None
        self.udp_fallback = False  # sent over TCP only for its size (§18.1.1)

    def start(self) -> None:
        self.state = "calling" if self.invite else "trying"
        self._send()
        if not self.reliable:
            self._start_timer("A/E", T1, self._retransmit)
        self._start_timer("B/F", 64 * T1, self._timeout)

    def _send(self) -> None:
        self.layer.sender.send(self.request, self.transport, self.host, self.port)

    def _retransmit(self) -> None:
        if self.state not in ("calling", "trying", "proceeding"):
            return
        if self.invite and self.state != "calling":
            return  # Timer A stops once a provisional arrives (§17.1.1.2)
        self.layer.count_retransmission(self.request.method)
        self._send()
        self._interval = self._interval * 2 if self.invite else min(self._interval * 2, T2)
        if self.state == "proceeding":
            self._interval = T2  # §17.1.2.2
        self._start_timer("A/E", self._interval, self._retransmit)

    def _timeout(self) -> None:
        if self.state in ("calling", "trying", "proceeding"):
            self._terminate()
            self._notify(local_response(self.request, 408, "Request Timeout"))

    def cancelled(self) -> None:
        """A CANCEL for this INVITE went out: without a final response within 64*T1 the
        transaction is destroyed (§9.1); in Proceeding no other timer would end it."""
        self._start_timer("cancel", 64 * T1, self._give_up)

    def _give_up(self) -> None:
        if self.state in ("calling", "proceeding"):
            self._terminate()

    def transport_failed(self, why: str) -> None:
        if self.udp_fallback and self.state in ("calling", "trying"):
            # §18.1.1: TCP chosen only for the size was refused: retry over UDP.
            log.info("{method} to {host}:{port}: TCP failed ({why}), retried over UDP",
                     method=self.request.method, host=self.host, port=self.port, why=why)
            self.udp_fallback = False
            self.transport, self.reliable = "UDP", False
            set_top_via(self.request, "UDP")
            self.start()
            return
        if self.state in ("calling", "trying", "proceeding"):
            self._terminate()
            self._notify(local_response(self.request, 503, f"Transport Error: {why}"))

    def receive(self, response: Response) -> None:
        status = response.status
        if self.invite:
            if self.state in ("calling", "proceeding"):
                if status < 200:
                    # §17.1.1.2: in Proceeding neither A nor B runs; the TU owns
                    # how long a call may ring.
                    self.state = "proceeding"
                    self._cancel_timer("A/E")
                    self._cancel_timer("B/F")
                    self._notify(response)
                elif status < 300:
                    # §17.1.1.2: 2xx ends the transaction; the TU ACKs it.
                    self._terminate()
                    self._notify(response)
                else:
                    self.state = "completed"
                    self._cancel_timer("A/E")
                    self._cancel_timer("B/F")
                    self._send_ack(response)
                    self._start_timer("D", 0 if self.reliable else 32.0, self._terminate)
                    self._notify(response)
            elif self.state == "completed" and status >= 300:
                self._send_ack(response)  # retransmitted final: ACK again
        else:
            if self.state in ("trying", "proceeding"):
                if status < 200:
                    self.state = "proceeding"
                    self._notify(response)
                else:
                    self.state = "completed"
                    self._cancel_timer("A/E")
                    self._cancel_timer("B/F")
                    self._start_timer("K", 0 if self.reliable else T4, self._terminate)
                    self._notify(response)

    def _notify(self, response: Response) -> None:
        """Hand a response to the TU.  An exception there (a bug, or e.g. an AuthError from
        a challenge we cannot answer) must not leave the TU's user (call, registration)
        waiting for ever: it gets a local 500 naming the error, as for Timer B (§8.1.3.1)."""
        try:
            self.on_response(response)
        except Exception as exc:
            log.failure("handling {status} to {method} failed", status=response.status,
                        method=self.request.method)
            if getattr(response, "local", False) and response.status == 500:
                return  # the TU failed on our own 500 too: nothing more to tell it
            reason = " ".join(f"Internal error: {exc}".split())
            self._notify(local_response(self.request, 500, reason))

    def _send_ack(self, response: Response) -> None:
        """ACK for a non-2xx final response (§17.1.1.3): same branch, To with the tag."""
        if self.last_ack is None:
            req = self.request
            headers = [("Via", req.get_all("Via")[0]), ("Max-Forwards", "70"),
                       ("From", req.get("From")), ("To", response.get("To")),
                       ("Call-ID", req.call_id), ("CSeq", f"{req.cseq.seq} ACK")]
            headers += [("Route", r) for r in req.get_all("Route")]
            self.last_ack = Request("ACK", req.uri, headers)
        self.layer.sender.send(self.last_ack, self.transport, self.host, self.port)


class ServerTransaction(_Transaction):
    """INVITE (§17.2.1) or non-INVITE (§17.2.2) server transaction."""

    def __init__(self, layer, request, source):
        super().__init__(layer, request, source.transport)
        self.source = source
        self.invite = request.method == "INVITE"
        self.last_response: Response | None = None
        self.state = "proceeding" if self.invite else "trying"
        self._interval = T1
        self.on_ack = None  # callback for the ACK of a non-2xx final (INVITE only)
        self.key: tuple | None = None  # set by the layer, which files it under this key

    def respond(self, response: Response) -> None:
        if self.state in ("completed", "confirmed", "accepted", "terminated"):
            return
        self.last_response = response
        self._send_last()
        status = response.status
        if status < 200:
            if not self.invite:
                self.state = "proceeding"
            return
        if self.invite:
            if status < 300:
                # RFC 6026 §7.1: Accepted; the TU retransmits the 2xx itself (§13.3.1.4), and
                # retransmitted INVITEs are absorbed here until Timer L.
                self.state = "accepted"
                self._start_timer("L", 64 * T1, self._terminate)
                return
            self.state = "completed"
            if not self.reliable:
                self._start_timer("G", T1, self._retransmit)
            self._start_timer("H", 64 * T1, self._terminate)
        else:
            self.state = "completed"
            self._start_timer("J", 0 if self.reliable else 64 * T1, self._terminate)
            # Only absorbing retransmissions for 64*T1 now (its key is kept): the headers
            # parsed from the request and the response are let go (parsed again from the
            # raw values if anything reads them). At a few hundred calls a second these
            # transactions are most of what the cyclic GC walks (a BYE's each, for 32 s).
            self.request.forget_parsed()
            response.forget_parsed()

    def respond_once(self, response: Response) -> None:
        """Answer statelessly (§8.2.7): one response to the request's source, no Timer G
        retransmission, no state kept. For requests nobody asked for (out-of-dialog INVITE,
        OPTIONS, CANCEL or BYE of an unknown dialog): a spoofed source gets at most one answer."""
        if self.state in ("completed", "confirmed", "terminated"):
            return
        self.layer.sender.send_response(response, self.source)
        self._terminate()

    def drop(self) -> None:
        """Forget the request without answering."""
        self._terminate()

    def _send_last(self) -> None:
        self.layer.sender.send_response(self.last_response, self.source)

    def _retransmit(self) -> None:
        if self.state != "completed":
            return
        self.layer.count_retransmission(self.request.method)
        self._send_last()
        self._interval = min(self._interval * 2, T2)
        self._start_timer("G", self._interval, self._retransmit)

    def retransmission(self, request: Request) -> None:
        """The same request again: resend the last response (§17.2.1, §17.2.2)."""
        if request.method == "ACK":
            if self.state == "completed":
                self.state = "confirmed"
                self._cancel_timer("G")
                self._cancel_timer("H")
                self._start_timer("I", 0 if self.reliable else T4, self._terminate)
            return
        if self.state == "accepted":
            return  # RFC 6026 §8.5: absorbed, the TU's 2xx retransmissions answer it
        if self.last_response is not None:
            self.layer.count_retransmission(self.request.method)
            self._send_last()


class TransactionLayer:
    """Matches messages to transactions (§17.1.3, §17.2.3); the rest goes to the TU.

    The TU implements ``request(request, transaction)`` for new server
    transactions, ``stray_response(response, source)`` for responses matching
    no transaction (2xx retransmissions), and ``ack(request, source)`` for ACKs
    of 2xx, which are end-to-end (§13.2.2.4).
    """

    def __init__(self, clock, tu=None, sender=None, max_server: int = 10000,
                 requests_per_source: float = 0):
        self.clock = clock
        self.timers = TimerQueues(clock)
        self.tu = tu
        self.sender = sender
        self.max_server = max_server
        # new requests (and ACKs) per second from one host, a one-second burst (0: no limit)
        self._per_source = TokenBuckets(requests_per_source, requests_per_source, clock)
        # Messages sent again (Timers A, E, G; a response resent for a retransmitted
        # request; the TU's 2xx until its ACK), by method: read by the metrics at scrape time.
        self.retransmissions: collections.Counter = collections.Counter()
        self.client: dict[tuple, ClientTransaction] = {}
        self.server: dict[tuple, ServerTransaction] = {}
        self._log_limiter = LogLimiter(clock)

    def count_retransmission(self, method: str) -> None:
        """One more message of a ``method`` transaction sent again (the TU's 2xx too)."""
        self.retransmissions[method if method in COUNTED_METHODS else "other"] += 1

    @staticmethod
    def _server_key(request: Request) -> tuple:
        via = request.top_via
        method = "INVITE" if request.method == "ACK" else request.method
        return (via.branch, via.host, via.port, method)

    def send_request(self, request: Request, transport: str, host: str, port: int,
                     on_response) -> ClientTransaction:
        chosen = self.sender.transport_for(request, transport)
        tx = ClientTransaction(self, request, chosen, host, port, on_response)
        tx.udp_fallback = chosen != transport
        self.client[tx.key] = tx
        tx.start()
        if request.method == "CANCEL":
            invite = self.client.get((tx.key[0], "INVITE"))
            if invite is not None:
                invite.cancelled()
        return tx

    def forget(self, tx) -> None:
        if isinstance(tx, ClientTransaction):
            if self.client.get(tx.key) is tx:
                del self.client[tx.key]
        elif self.server.get(tx.key) is tx:
            del self.server[tx.key]

    def find_server(self, request: Request) -> ServerTransaction | None:
        return self.server.get(self._server_key(request))

    # the transport's controller interface
    def receive(self, message, source) -> None:
        if isinstance(message, Response):
            tx = self.client.get((message.top_via.branch, message.cseq.method))
            if tx is not None:
                tx.receive(message)
            else:
                self.tu.stray_response(message, source)
            return
        branch = message.top_via.branch or ""
        if not branch.startswith(BRANCH_MAGIC):
            # RFC 2543 peers: not supported; answer statelessly rather than guess.
            if message.method != "ACK":
                self.sender.send_response(make_response(
                    message, 400, "Missing RFC 3261 branch in Via"), source)
            return
        tx = self.find_server(message)
        if tx is not None and not (message.method == "ACK" and tx.state == "accepted"):
            tx.retransmission(message)
            return
        if not self._per_source.allow(source.host):
            self._flooded(message, source)
            return
        if message.method == "ACK":
            self.tu.ack(message, source)
            return
        if len(self.server) >= self.max_server and not self._evict_completed():
            self._overloaded(message, source)
            return
        tx = ServerTransaction(self, message, source)
        tx.key = self._server_key(message)
        self.server[tx.key] = tx
        self.tu.request(message, tx)

    def _flooded(self, request: Request, source) -> None:
        """Over sip_max_requests_per_source: dropped, not answered (an answer would feed a
        reflection); one log line per source and interval."""
        held = self._log_limiter.allow(("flood", source.host))
        if held is not None:
            log.warn("{host} sends more than {rate:g} SIP requests a second: {method} dropped{more}",
                     host=source.host, rate=self._per_source.rate, method=request.method,
                     more=held_back(held))

    def _evict_completed(self, look: int = 16) -> bool:
        """Room for one more: the oldest non-INVITE transaction that is only waiting out Timer
        J to absorb retransmissions (§17.2.2) goes early; among the ``look`` oldest, so a
        table full of unanswered requests costs no scan. A retransmission of its request
        would then reach the TU again, which answers it from the dialog's state (481 once
        the call is gone): at a high call rate one peer's BYEs alone pass the limit
        (64*T1 = 32 s each)."""
        for n, tx in enumerate(self.server.values()):
            if n >= look:
                return False
            if not tx.invite and tx.state == "completed":
                tx._terminate()
                return True
        return False

    def _overloaded(self, request: Request, source) -> None:
        """Over sip_max_server_transactions: a stateless 503 (RFC 3261 §21.5.4), no new state."""
        held = self._log_limiter.allow(source.host)
        if held is not None:
            log.warn("{n} server transactions open: {method} from {host} refused with 503{more}",
                     n=len(self.server), method=request.method, host=source.host,
                     more=held_back(held))
        self.sender.send_response(make_response(request, 503, extra=[("Retry-After", "5")]),
                                  source)

    def close(self) -> None:
        """Daemon shutdown: drop every transaction and its timers, telling no TU, so
        nothing is retransmitted on a closed socket."""
        for tx in list(self.client.values()) + list(self.server.values()):
            tx._terminate()

    def transport_error(self, dest: tuple[str, int], why: str) -> None:
        for tx in list(self.client.values()):
            if (tx.host, tx.port) == dest:
                tx.transport_failed(why)
