"""SIP dialogs (RFC 3261 §12): identifiers, CSeq, route set, remote target.

Pure. A UAC dialog is made from the INVITE it sent and the 2xx (or 1xx with a
tag) it got; it then builds in-dialog requests and checks incoming ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .headers import Address, URI
from .message import Request, Response


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    remote_tag: str
    local_uri: Address
    remote_uri: Address
    remote_target: URI
    local_seq: int
    remote_seq: int | None = None
    route_set: list[Address] = field(default_factory=list)

    @classmethod
    def from_uac(cls, request: Request, response: Response) -> "Dialog":
        """§12.1.2: route set is the Record-Route reversed, target the Contact."""
        contacts = response.contacts
        if not contacts and response.status >= 200:
            raise ValueError("2xx to INVITE without Contact")
        target = contacts[0].uri if contacts else request.uri
        return cls(call_id=request.call_id, local_tag=request.from_.tag or "",
                   remote_tag=response.to.tag or "", local_uri=Address(request.from_.uri),
                   remote_uri=Address(request.to.uri), remote_target=target,
                   local_seq=request.cseq.seq, route_set=list(reversed(response.record_routes)))

    @property
    def id(self) -> tuple[str, str, str]:
        return (self.call_id, self.local_tag, self.remote_tag)

    def update_target(self, message) -> None:
        """A target refresh (re-INVITE or its 2xx) replaces the remote target (§12.2)."""
        contacts = message.contacts
        if contacts:
            self.remote_target = contacts[0].uri

    def create_request(self, method: str, *, via: str, contact: str | None = None,
                       cseq: int | None = None, headers=(), body: bytes = b"") -> Request:
        """Build an in-dialog request (§12.2.1.1) with loose or strict routing."""
        if cseq is None:
            if method not in ("ACK", "CANCEL"):
                self.local_seq += 1
            cseq = self.local_seq
        routes = [str(r) for r in self.route_set]
        uri = self.remote_target
        if self.route_set and "lr" not in self.route_set[0].uri.params:
            # Strict router (§12.2.1.1): it becomes the Request-URI.
            uri = self.route_set[0].uri
            routes = routes[1:] + [f"<{self.remote_target}>"]
        local = Address(self.local_uri.uri, params={"tag": self.local_tag})
        remote = Address(self.remote_uri.uri, params={"tag": self.remote_tag} if self.remote_tag else {})
        hdrs = [("Via", via), ("Max-Forwards", "70"), ("From", str(local)), ("To", str(remote)),
                ("Call-ID", self.call_id), ("CSeq", f"{cseq} {method}")]
        hdrs += [("Route", r) for r in routes]
        if contact:
            hdrs.append(("Contact", contact))
        hdrs += list(headers)
        return Request(method, uri, hdrs, body)

    def next_hop(self) -> URI:
        """Where an in-dialog request goes first: the top route, else the target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def matches(self, request: Request) -> bool:
        return (request.call_id == self.call_id and request.to.tag == self.local_tag
                and request.from_.tag == self.remote_tag)

    def accept_remote_seq(self, request: Request) -> bool:
        """§12.2.2: a lower CSeq than seen before is out of order (500)."""
        seq = request.cseq.seq
        if request.method in ("ACK", "CANCEL"):
            return True
        if self.remote_seq is not None and seq <= self.remote_seq:
            return False
        self.remote_seq = seq
        return True
