"""Where sipgw may send packets: the one place for the egress policy.

Two rule sets, one for SIP destinations (``sip_egress_allow``/``sip_egress_deny``: sipDomain,
sipOutboundProxy, the callee's host, and every in-dialog target) and one for RTMP servers
(``rtmp_egress_allow``/``rtmp_egress_deny``: the host of ``/push/startup`` rtmpUrl).  A rule
list holds networks (``10.0.0.0/8``, ``192.0.2.7``), host names (``pbx.example.org``) and
domains (``.example.org`` or ``*.example.org``: the domain and every name below it).

A destination is refused when its name or its address is denied, or, when an allow list is
set, when neither its name nor its address is allowed.  Names are checked before they are
resolved (the REST layer answers 403 at once) and the resolved address again before a packet
leaves, so a name cannot smuggle a denied address.  The default deny list holds what no call
or push needs and an attacker wants: link-local (cloud metadata at 169.254.169.254),
multicast, unspecified and broadcast addresses.  Pure: no Twisted import.
"""
from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field

from .policy import Denied, PolicyError, parse_networks

_UNSEEN = object()
_VERDICTS_KEPT = 1024  # destinations remembered (then forgotten all at once)

DEFAULT_DENY = ("169.254.0.0/16,fe80::/10,224.0.0.0/4,ff00::/8,0.0.0.0/8,::/128,"
                "255.255.255.255/32")


class EgressDenied(Denied):
    """A destination the policy refuses (403); ``field`` names the request field it came from."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(403, message, field)


@dataclass(frozen=True)
class Rules:
    """Networks and host names/domains of one allow or deny list."""

    networks: tuple = ()
    names: tuple = ()  # lower case; a leading "." matches the domain and every name below it

    @classmethod
    def parse(cls, text: str, name: str) -> "Rules":
        networks, names = [], []
        for item in (i.strip() for i in text.split(",")):
            if not item:
                continue
            host = item.lower().removeprefix("*").rstrip(".")
            if _address(item) is not None or "/" in item:
                networks += parse_networks(item, name)
            elif host.strip(".") and all(part.replace("-", "").replace("_", "").isalnum()
                                         for part in host.lstrip(".").split(".")):
                names.append(host)
            else:
                raise PolicyError(f"{name}: {item!r} is not a network, address, host or domain")
        return cls(tuple(networks), tuple(names))

    def __bool__(self) -> bool:
        return bool(self.networks or self.names)

    def match_name(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return any(host == n or (n.startswith(".") and (host.endswith(n) or host == n[1:]))
                   for n in self.names)

    def match_address(self, address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)


@dataclass(frozen=True)
class EgressPolicy:
    """One rule set (SIP or RTMP); the default denies only ``DEFAULT_DENY``."""

    allow: Rules = field(default_factory=Rules)
    deny: Rules = field(default_factory=lambda: Rules.parse(DEFAULT_DENY, "egress_deny"))
    setting: str = "egress"  # the settings' prefix, named in refusals
    # (host, field, resolved) -> refusal or None: a pure function of the frozen rules above,
    # so never stale; worked out once per destination, not three times a call over the list
    _verdicts: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config, kind: str) -> "EgressPolicy":
        """``kind`` is ``sip`` or ``rtmp``: the ``{kind}_egress_allow/deny`` settings."""
        allow, deny = f"{kind}_egress_allow", f"{kind}_egress_deny"
        return cls(Rules.parse(getattr(config, allow), allow),
                   Rules.parse(getattr(config, deny), deny), f"{kind}_egress")

    def check(self, host: str, field_name: str | None = None, resolved: str | None = None) -> None:
        """Raise EgressDenied unless ``host`` (a name or an address) may be sent to.  With
        ``resolved`` (the address the name resolved to) both are checked; for a name without
        it, only what the name alone decides (an allow list of networks waits for the address)."""
        key = (host, field_name, resolved)
        verdicts = self._verdicts
        refusal = verdicts.get(key, _UNSEEN)
        if refusal is _UNSEEN:
            if len(verdicts) >= _VERDICTS_KEPT:
                verdicts.clear()
            refusal = verdicts[key] = self._refusal(host, field_name, resolved)
        if refusal is not None:
            raise EgressDenied(refusal, field_name)

    def _refusal(self, host: str, field_name: str | None, resolved: str | None) -> str | None:
        host = host.strip("[]")
        address = _address(resolved or host)
        name = None if _address(host) is not None else host
        what = f"{field_name} " if field_name else ""
        shown = host if resolved is None or resolved == host else f"{host} ({resolved})"
        if (name and self.deny.match_name(name)) or (address and self.deny.match_address(address)):
            return f"{what}destination {shown} is denied by {self.setting}_deny"
        if not self.allow:
            return None
        if (name and self.allow.match_name(name)) or (address and self.allow.match_address(address)):
            return None
        if address is None and self.allow.networks:
            return None  # the resolved address decides
        return f"{what}destination {shown} is not in {self.setting}_allow"

    def allows(self, host: str, resolved: str | None = None) -> bool:
        try:
            self.check(host, resolved=resolved)
        except EgressDenied:
            return False
        return True


@functools.lru_cache(maxsize=1024)  # pure, and its answers are immutable: parsed once per host
def _address(text: str):
    """The IP address in ``text`` (IPv4-mapped IPv6 unwrapped), or None for a name."""
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
