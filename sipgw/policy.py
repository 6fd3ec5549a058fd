"""Who may use the control plane (REST and websocket): the one place for that policy.

A client is admitted by its address (inside ``trusted_networks``) or by a bearer token from
``rest_auth_tokens``, compared in constant time.  A token may carry scopes
(``TOKEN:calls+streams``); a token without scopes, or with ``admin``, may use every route.
Browsers are admitted cross-origin only from ``rest_cors_origin`` (``loopback``: any page
served from this machine).  Pure: no Twisted import, so config.py validates settings with it.

Tokens never appear in a message, a log line or an answer.
"""
from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

SCOPES = ("calls", "streams", "push", "record", "metrics", "admin")
LOOPBACK = "loopback"
LOOPBACK_NETWORKS = "127.0.0.0/8,::1/128"

# The scope each REST route needs, by its first path segment (or whole path); "" is any
# valid token (the API description).
_ROUTE_SCOPES = {"/call": "calls", "/stream": "streams", "/push": "push", "/recorder": "record",
                 "/app": "admin", "/stream/startRecording": "record",
                 "/stream/stopRecording": "record", "/openapi.json": ""}


class PolicyError(ValueError):
    """A setting of this module that cannot be used; the message names the setting."""


class Denied(Exception):
    """The client may not do this: ``code`` is 401 (no or bad credential), 403 (scope,
    egress) or 429 (quota); ``field`` names the request field at fault, if any."""

    def __init__(self, code: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def parse_networks(text: str, name: str = "trusted_networks") -> tuple:
    """``"10.0.0.0/8, ::1"`` -> ip_network objects; a bad entry names the setting, not the rest."""
    networks = []
    for item in _items(text):
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise PolicyError(f"{name}: {item!r} is not an address or network") from None
    return tuple(networks)


def parse_tokens(text: str, name: str = "rest_auth_tokens") -> dict[bytes, frozenset]:
    """``"tok1,tok2:calls+streams"`` -> {token: scopes}; errors never quote a token."""
    tokens: dict[bytes, frozenset] = {}
    for number, item in enumerate(_items(text), 1):
        token, _, scopes_text = item.partition(":")
        scopes = frozenset(s.strip() for s in scopes_text.split("+") if s.strip())
        unknown = sorted(scopes - set(SCOPES))
        if unknown:
            raise PolicyError(f"{name}: token #{number} has unknown scope(s) {', '.join(unknown)}"
                              f" (known: {', '.join(SCOPES)})")
        if len(token) < 16 or not token.isascii() or not token.isprintable() or " " in token:
            raise PolicyError(f"{name}: token #{number} must be at least 16 printable ASCII "
                              "characters without spaces")
        tokens[token.encode("ascii")] = scopes or frozenset({"admin"})
    return tokens


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def route_scope(path: str) -> str:
    """The scope a REST path needs (``/call/startup`` -> ``calls``, ``""``: any token);
    unknown paths: admin."""
    if path in _ROUTE_SCOPES:
        return _ROUTE_SCOPES[path]
    return _ROUTE_SCOPES.get("/" + path.split("/")[1], "admin")


_ADDRESSES_KEPT = 1024  # client addresses remembered (then forgotten all at once)


@dataclass(frozen=True)
class AccessPolicy:
    """The control plane's admission rules; the default admits loopback clients only."""

    networks: tuple = field(default_factory=lambda: parse_networks(LOOPBACK_NETWORKS))
    tokens: dict = field(default_factory=dict)
    origins: str = LOOPBACK
    # client address -> trusted: a pure function of the frozen networks above, never stale;
    # parsed once per client, not on every request
    _trusted: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_config(cls, config) -> "AccessPolicy":
        tokens = parse_tokens(config.rest_auth_tokens)
        cluster = getattr(config, "cluster_token", "")
        if cluster and getattr(config, "cluster_redis_url", ""):  # the other nodes: every scope
            tokens[cluster.encode("ascii")] = frozenset({"admin"})
        return cls(parse_networks(config.trusted_networks), tokens, config.rest_cors_origin)

    def is_token(self, authorization: bytes | None, token: str) -> bool:
        """Does ``authorization`` carry exactly ``token`` as its bearer (constant time)?"""
        scheme, _, credential = (authorization or b"").strip().partition(b" ")
        return (bool(token) and scheme.lower() == b"bearer"
                and hmac.compare_digest(credential.strip(), token.encode("ascii")))

    def trusts(self, host: str) -> bool:
        """Is ``host`` (a client address) inside a trusted network?"""
        trusted = self._trusted.get(host)
        if trusted is None:
            if len(self._trusted) >= _ADDRESSES_KEPT:
                self._trusted.clear()
            trusted = self._trusted[host] = _trusted(self.networks, host)
        return trusted

    def check(self, host: str, authorization: bytes | None, scope: str) -> None:
        """Admit a REST request or raise Denied: a trusted address, or a bearer token with ``scope``."""
        if self.trusts(host):
            return
        scheme, _, credential = (authorization or b"").strip().partition(b" ")
        if scheme.lower() != b"bearer" or not credential.strip():
            raise Denied(401, "a bearer token is required (Authorization: Bearer <token>)")
        scopes = self._scopes_of(credential.strip())
        if scopes is None:
            raise Denied(401, "the bearer token is not valid")
        if scope and "admin" not in scopes and scope not in scopes:
            raise Denied(403, f"the bearer token does not have the {scope} scope")

    def _scopes_of(self, credential: bytes) -> frozenset | None:
        found = None
        for token, scopes in self.tokens.items():  # every token compared: constant time
            if hmac.compare_digest(token, credential):
                found = scopes
        return found

    def allowed_origin(self, origin: bytes | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for a page at ``origin``, or None (no CORS)."""
        if not origin:
            return None
        text = origin.decode("latin-1")
        for allowed in _items(self.origins):
            if allowed == "*":
                return b"*"
            if allowed == text or (allowed == LOOPBACK and _is_loopback_origin(text)):
                return origin
        return None


def token_matches(value: object, tokens) -> bool:
    """A websocket appKey/authToken against the configured tokens, in constant time; any type."""
    if not isinstance(value, str) or not value.isascii():
        return False
    found = False
    for token in tokens:
        found |= hmac.compare_digest(token.encode("ascii", "replace"), value.encode("ascii"))
    return found


def check_bind(name: str, address: str, credentials: bool, networks: tuple) -> None:
    """Refuse to listen beyond loopback when nobody but loopback could be admitted."""
    if is_loopback(address) or credentials:
        return
    if any(not (n.network_address.is_loopback and n.broadcast_address.is_loopback)
           for n in networks):
        return
    raise PolicyError(f"{name}={address} listens beyond loopback, but only loopback clients "
                      f"would be admitted: set rest_auth_tokens (and ws_auth_tokens for the "
                      f"websocket) or add the clients' networks to trusted_networks, or bind "
                      f"{name}=127.0.0.1")


def _is_loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or parts.path or parts.query or parts.username:
        return False
    return is_loopback(parts.hostname or "")


def _items(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _trusted(networks: tuple, host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
