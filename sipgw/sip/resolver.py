"""Locating SIP servers (RFC 3263): NAPTR -> SRV -> A/AAAA, with failover between targets.

The pure part orders records the way RFC 3263 and RFC 2782 say (``naptr_services``,
``order_srv``) and decides what a failed transaction moves on from (``fails_over``). The
Twisted part (``Locator``) asks a ``twisted.names`` resolver (never blocking the reactor),
keeps answers for their TTL on the clock passed in, and returns every target in order as a
``Destination`` chain: the first one to use, then ``next()`` after a timeout, a 503 or a
transport error (§4.3).
"""
from __future__ import annotations

import random
import socket
from dataclasses import dataclass

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError, DNSServerError, DomainError

from .transaction import new_branch
from .transport import is_ip, set_top_via

log = Logger(namespace="sipgw.sip.resolver")

DEFAULT_PORT = 5060
DEFAULT_PORTS = {"TLS": 5061}  # §4.2 / RFC 3261 §19.1.2: 5061 for TLS, 5060 otherwise
# RFC 3263 §4.1: NAPTR services this stack can use, and the SRV prefix of each transport.
# TLS (SIPS+D2T, _sips._tcp) is looked up only for a sips: URI or ;transport=tls.
NAPTR_SERVICES = {"SIP+D2U": "UDP", "SIP+D2T": "TCP", "SIPS+D2T": "TLS"}
SRV_PREFIX = {"UDP": "_sip._udp.", "TCP": "_sip._tcp.", "TLS": "_sips._tcp."}


def default_port(transport: str | None) -> int:
    return DEFAULT_PORTS.get(transport or "", DEFAULT_PORT)
LOOKUP_TIMEOUT = (1, 3)  # seconds per retry: a SIP transaction cannot wait for 60 s of DNS
NEGATIVE_TTL = 30  # how long "no such record" is kept (RFC 2308 would read the SOA)
# Bounds on what DNS answers may make us do and keep: a name's answer over TCP may hold
# thousands of records, and in-dialog hops (a peer's Record-Route or Contact) name any host.
MAX_SRV_RECORDS = 32  # per SRV name, the lowest priorities kept (each one is an A lookup)
MAX_TARGETS = 32  # addresses in one Destination chain
MAX_CACHED = 4096  # (name, type) answers kept; expired ones, then the oldest, go first


class Destination:
    """Where a request goes: transport, IP address, port; ``rest`` holds the targets after
    this one, in RFC 3263 order."""

    def __init__(self, transport: str, host: str, port: int, rest: tuple = ()):
        self.transport, self.host, self.port = transport, host, port
        self.rest = tuple(rest)

    @classmethod
    def chain(cls, targets) -> "Destination":
        """The first of ``targets`` (transport, host, port triples), the others behind it."""
        (transport, host, port), *rest = targets
        return cls(transport, host, port, tuple(rest))

    def next(self) -> "Destination | None":
        return Destination.chain(self.rest) if self.rest else None

    def __iter__(self):
        return iter((self.transport, self.host, self.port))

    def __repr__(self):
        return f"{self.transport}:{self.host}:{self.port}"


def fails_over(response) -> bool:
    """RFC 3263 §4.3: a timeout (the locally made 408 of Timer B/F), a transport error (a
    local 503) or a 503 from the server sends the request to the next target."""
    return response.status == 503 or (response.status == 408 and getattr(response, "local", False))


def send_with_failover(transactions, request, dest: Destination, on_response,
                       moved=lambda dest: None) -> None:
    """Send ``request`` to ``dest``; after a timeout, transport error or 503 send it again,
    in a new transaction (new branch), to the next target (RFC 3263 §4.3), telling
    ``moved(next)``. ``on_response`` gets the responses of the last transaction."""
    def answered(response):
        nxt = dest.next() if fails_over(response) else None
        if nxt is None:
            on_response(response)
            return
        log.info("{method} got {status} from {dest}, trying {next}", method=request.method,
                 status=response.status, dest=repr(dest), next=repr(nxt))
        moved(nxt)
        set_top_via(request, nxt.transport, new_branch())
        send_with_failover(transactions, request, nxt, on_response, moved)
    transactions.send_request(request, dest.transport, dest.host, dest.port, answered)


@dataclass(frozen=True)
class Naptr:
    order: int
    preference: int
    flags: str
    service: str
    replacement: str


@dataclass(frozen=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str


def naptr_services(records, transports) -> list[tuple[str, str]]:
    """(transport, SRV name) of the usable NAPTR records, by order then preference
    (RFC 3263 §4.1: flag "s", a service we support, the replacement is the SRV name)."""
    usable = [r for r in records if r.flags.lower() == "s"
              and NAPTR_SERVICES.get(r.service.upper()) in transports]
    usable.sort(key=lambda r: (r.order, r.preference))
    return [(NAPTR_SERVICES[r.service.upper()], r.replacement) for r in usable]


def order_srv(records, rng=random) -> list[Srv]:
    """RFC 2782: lowest priority first; within one priority a weighted random order (weight
    0 first in the running sum, so it is picked rarely). A lone "." target means there is no
    such service."""
    if len(records) == 1 and records[0].target in (".", ""):
        return []
    ordered = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight)
        while group:
            total = sum(r.weight for r in group)
            pick = rng.randint(0, total) if total else 0
            running = 0
            for index, record in enumerate(group):
                running += record.weight
                if running >= pick:
                    ordered.append(group.pop(index))
                    break
    return ordered


def _text(value) -> str:
    """A NAPTR character-string (twisted.names Charstr) as text."""
    return getattr(value, "string", value).decode("ascii", "replace")


def parse_servers(text: str) -> list[tuple[str, int]]:
    """``sip_dns_servers``: "host[:port],..." (IPv6 as [addr]:port); empty is the system's."""
    servers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.lstrip(":")
        elif item.count(":") == 1:
            host, _, port = item.partition(":")
        else:
            host, port = item, ""
        if not is_ip(host) or (port and not (port.isdigit() and 0 < int(port) < 65536)):
            raise ValueError(f"sip_dns_servers: {item!r} is not an IP address[:port]")
        servers.append((host, int(port) if port else 53))
    return servers


def system_resolver(servers: str, reactor):
    """twisted.names asking ``servers`` (else /etc/resolv.conf's), /etc/hosts first."""
    from twisted.names import client, hosts, resolve
    listed = parse_servers(servers)
    dns_client = client.Resolver(resolv=None if listed else "/etc/resolv.conf",
                                 servers=listed or None, reactor=reactor)
    return resolve.ResolverChain([hosts.Resolver(b"/etc/hosts"), dns_client])


class Locator:
    """RFC 3263 §4 for one stack: ``locate(host, port, transport)`` -> a Deferred
    ``Destination`` chain (or an error when nothing resolves). ``dns`` is an
    ``IResolver`` (made from ``servers`` on first use when not given)."""

    def __init__(self, clock, dns_resolver=None, servers: str = "", *, ipv4: bool = True,
                 ipv6: bool = False, transports=("UDP", "TCP"), rng=random):
        self.clock = clock
        self._dns = dns_resolver
        self.servers = servers
        self.ipv4, self.ipv6 = ipv4, ipv6
        self.transports = transports
        self.rng = rng
        self._cache: dict[tuple[str, int], tuple[float, list]] = {}

    @property
    def names(self):
        """The twisted.names IResolver, made on first use."""
        if self._dns is None:
            self._dns = system_resolver(self.servers, self.clock)
        return self._dns

    # -- lookups with a TTL cache --------------------------------------------
    _LOOKUPS = {dns.NAPTR: "lookupNamingAuthorityPointer", dns.SRV: "lookupService",
                dns.A: "lookupAddress", dns.AAAA: "lookupIPV6Address"}

    async def _records(self, name: str, kind: int) -> list:
        """The payloads of ``kind`` for ``name``; [] when the name or record does not exist.
        Answers are kept for their smallest TTL, absent ones for NEGATIVE_TTL."""
        key = (name.lower(), kind)
        now = self.clock.seconds()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            answers, _, _ = await getattr(self.names, self._LOOKUPS[kind])(name, timeout=LOOKUP_TIMEOUT)
        except (DNSNameError, DomainError, DNSServerError):
            # NXDOMAIN, or the hosts file knowing nothing of this record type.
            self._keep(key, now + NEGATIVE_TTL, [])
            return []
        except Exception as exc:
            if kind in (dns.A, dns.AAAA):
                raise
            # A NAPTR/SRV query that gets no answer (timeout, no route to the DNS server) is
            # as good as no record (§4.1): go on to the next step, e.g. /etc/hosts' address.
            log.info("DNS {kind} query for {name} failed: {why}", kind=dns.QUERY_TYPES[kind],
                     name=name, why=exc.__class__.__name__)
            return []
        matching = [rr for rr in answers if rr.type == kind]
        ttl = min((rr.ttl for rr in matching), default=NEGATIVE_TTL)
        payloads = [rr.payload for rr in matching]
        self._keep(key, now + ttl, payloads)
        return payloads

    def _keep(self, key: tuple[str, int], until: float, payloads: list) -> None:
        cache = self._cache
        cache.pop(key, None)
        cache[key] = (until, payloads)
        if len(cache) > MAX_CACHED:
            now = self.clock.seconds()
            for old in [k for k, (expires, _) in cache.items() if expires <= now]:
                del cache[old]
            while len(cache) > MAX_CACHED:
                del cache[next(iter(cache))]

    async def _addresses(self, name: str) -> list[str]:
        """A records, then AAAA, of the families our sockets can reach (RFC 3263 §4.2)."""
        addresses = []
        if self.ipv4:
            addresses += [record.dottedQuad() for record in await self._records(name, dns.A)]
        if self.ipv6:
            addresses += [socket.inet_ntop(socket.AF_INET6, record.address)
                          for record in await self._records(name, dns.AAAA)]
        return addresses

    async def _srv_targets(self, transport: str, srv_name: str) -> list[tuple[str, str, int]]:
        records = [Srv(r.priority, r.weight, r.port, r.target.name.decode("ascii"))
                   for r in await self._records(srv_name, dns.SRV)]
        records = sorted(records, key=lambda r: r.priority)[:MAX_SRV_RECORDS]  # stable
        targets = []
        for srv in order_srv(records, self.rng):
            if len(targets) >= MAX_TARGETS:
                break
            try:
                addresses = await self._addresses(srv.target)
            except Exception as exc:  # one target's name not answering: the others remain
                log.info("DNS lookup of SRV target {target} failed: {why}", target=srv.target,
                         why=exc.__class__.__name__)
                continue
            targets += [(transport, address, srv.port) for address in addresses]
        return targets

    async def _targets(self, host: str, port: int | None, transport: str | None,
                       default_transport: str) -> list[tuple[str, str, int]]:
        host = host.strip("[]")
        # §4.1/§4.2: a numeric host, or an explicit port, needs no NAPTR or SRV.
        if is_ip(host):
            chosen = transport or default_transport
            return [(chosen, host, port or default_port(chosen))]
        if port:
            return [(transport or default_transport, a, port)
                    for a in await self._addresses(host)][:MAX_TARGETS]
        from_naptr = False
        if transport and transport != "TLS":
            services = [(transport, SRV_PREFIX[transport] + host)]
        else:  # TLS: NAPTR SIPS+D2T first, then _sips._tcp (§4.1)
            naptr = [Naptr(r.order, r.preference, _text(r.flags), _text(r.service),
                           r.replacement.name.decode("ascii"))
                     for r in await self._records(host, dns.NAPTR)]
            services = naptr_services(naptr, (transport,) if transport else self.transports)
            from_naptr = bool(services)
            if transport and not services:
                services = [(transport, SRV_PREFIX[transport] + host)]
            if not services:  # §4.1: no NAPTR: an SRV query per transport, ours first
                order = [default_transport] + [t for t in self.transports if t != default_transport]
                services = [(t, SRV_PREFIX[t] + host) for t in order]
        targets = []
        for service_transport, srv_name in services:
            if len(targets) >= MAX_TARGETS:
                break
            targets += await self._srv_targets(service_transport, srv_name)
            if targets and not from_naptr:
                break  # §4.1: without NAPTR, the first transport whose SRV answers is used
        if not targets:  # §4.2: no SRV either: the name's address at the default port
            chosen = transport or default_transport
            targets = [(chosen, a, default_port(chosen)) for a in await self._addresses(host)]
        return targets[:MAX_TARGETS]

    def locate(self, host: str, port: int | None = None, transport: str | None = None,
               default_transport: str = "UDP") -> defer.Deferred:
        """A Deferred Destination chain for a SIP URI's host, port and transport parameter
        (None: not in the URI)."""
        if is_ip(host):  # §4.1/§4.2: a numeric host needs no lookup: answered at once
            chosen = transport or default_transport
            return defer.succeed(Destination.chain(
                [(chosen, host.strip("[]"), port or default_port(chosen))]))

        async def run():
            targets = await self._targets(host, port, transport, default_transport)
            if not targets:
                raise DNSNameError(f"no address for {host}")
            if len(targets) > 1 or not is_ip(host):
                log.debug("{host} resolves to {targets}", host=host, targets=targets)
            return Destination.chain(targets)
        return defer.ensureDeferred(run())
