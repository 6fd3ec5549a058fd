"""Digest authentication, client side (RFC 3261 §22.4, RFC 2617, RFC 7616, RFC 8760).

Pure: no I/O, no Twisted. Malformed or unsupported challenges raise ``AuthError``
(a ``ValueError``). Passwords never appear in a repr, and ``redact_authorization``
keeps computed responses out of logs.
"""
from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

__all__ = ["AuthError", "Challenge", "DigestClient", "pick_challenge", "redact_authorization"]


class AuthError(ValueError):
    """A challenge that cannot be parsed or answered."""


# RFC 7616 §3.3 and RFC 8760 §2: algorithm names are case-insensitive.
_ALGORITHMS = {"md5": "MD5", "md5-sess": "MD5-sess", "sha-256": "SHA-256", "sha-256-sess": "SHA-256-sess"}
_HASHES = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}
# challenge header -> (canonical name, the header that answers it); RFC 3261 §22.2, §22.3
_HEADERS = {
    "www-authenticate": ("WWW-Authenticate", "Authorization"),
    "proxy-authenticate": ("Proxy-Authenticate", "Proxy-Authorization"),
}
# RFC 7235 §2.1: auth-param = token BWS "=" BWS ( token / quoted-string ), comma separated.
# Unquoted values are read leniently (anything up to a comma or space).
_PARAM = re.compile(
    r'[\s,]*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(?:,|\Z)', re.S)
_ESCAPE = re.compile(r"\\(.)", re.S)
_NONCES_KEPT = 16  # nonce counts remembered, oldest dropped first


@dataclass(frozen=True)
class Challenge:
    """One Digest challenge from a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate)."""

    realm: str
    nonce: str
    algorithm: str = "MD5"
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False  # RFC 7616 §3.3: the nonce expired, the credentials were fine
    header: str = "WWW-Authenticate"

    @classmethod
    def parse(cls, value: str, header: str = "WWW-Authenticate") -> Challenge:
        """Parse a header value such as 'Digest realm="x", nonce="y", qop="auth"'."""
        if header.lower() not in _HEADERS:
            raise AuthError(f"not a challenge header: {header!r}")
        scheme, _, rest = value.strip().replace("\t", " ").partition(" ")
        if scheme.lower() != "digest":
            raise AuthError(f"not a Digest challenge: {scheme!r}")
        params: dict[str, str] = {}
        position = 0
        while rest[position:].strip(" \t\r\n,"):
            match = _PARAM.match(rest, position)
            if match is None:
                raise AuthError(f"bad Digest challenge parameter at {rest[position:]!r}")
            name, quoted, token = match.groups()
            params.setdefault(name.lower(), _ESCAPE.sub(r"\1", quoted) if quoted is not None else token)
            position = match.end()
        for required in ("realm", "nonce"):
            if required not in params:
                raise AuthError(f"Digest challenge has no {required}")
        algorithm = params.get("algorithm", "MD5")  # RFC 7616 §3.3: MD5 when absent
        if algorithm.lower() not in _ALGORITHMS:
            raise AuthError(f"unsupported Digest algorithm {algorithm!r}")
        qop = tuple(q.strip().lower() for q in params.get("qop", "").split(",") if q.strip())
        return cls(
            realm=params["realm"], nonce=params["nonce"], algorithm=_ALGORITHMS[algorithm.lower()],
            qop=qop, opaque=params.get("opaque"), stale=params.get("stale", "").lower() == "true",
            header=_HEADERS[header.lower()][0])


def pick_challenge(challenges: list[Challenge]) -> Challenge:
    """The challenge to answer: SHA-256 before MD5, else the server's (topmost-first) order.

    RFC 8760 §2.4 says to use the topmost supported challenge "unless a local policy dictates
    otherwise"; preferring SHA-256 is that local policy.
    """
    if not challenges:
        raise AuthError("no Digest challenge to answer")
    return min(challenges, key=lambda c: not c.algorithm.startswith("SHA-256"))  # first among equals


def _quote(value: str) -> str:
    """RFC 7230 §3.2.6 quoted-string."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DigestClient:
    """Holds the credentials of one account and the nonce counts."""

    def __init__(self, username: str, password: str):
        self.username = username
        self._password = password
        self._nonce_counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DigestClient(username={self.username!r})"

    def _next_nc(self, nonce: str) -> str:
        """RFC 7616 §3.4: nc counts the requests made with one nonce, from 00000001."""
        count = self._nonce_counts.pop(nonce, 0) + 1
        self._nonce_counts[nonce] = count
        while len(self._nonce_counts) > _NONCES_KEPT:
            del self._nonce_counts[next(iter(self._nonce_counts))]
        return f"{count:08x}"

    def authorize(self, challenge: Challenge, method: str, uri: str, body: bytes = b"",
                  cnonce: str | None = None) -> tuple[str, str]:
        """The (header name, header value) that answers the challenge for this request."""
        if not challenge.qop:
            qop = None  # RFC 2069 compatibility, RFC 2617 §3.2.2.1
        elif "auth" in challenge.qop:
            qop = "auth"
        elif "auth-int" in challenge.qop:
            qop = "auth-int"
        else:
            raise AuthError(f"no supported qop in {', '.join(challenge.qop)}")
        sess = challenge.algorithm.endswith("-sess")
        hash_new = _HASHES[challenge.algorithm.removesuffix("-sess")]

        def h(data: str | bytes) -> str:
            return hash_new(data.encode() if isinstance(data, str) else data).hexdigest()

        if (qop or sess) and cnonce is None:
            cnonce = secrets.token_hex(8)
        # RFC 7616 §3.4.2: A1, and for -sess the hash of it bound to nonce and cnonce.
        ha1 = h(f"{self.username}:{challenge.realm}:{self._password}")
        if sess:
            ha1 = h(f"{ha1}:{challenge.nonce}:{cnonce}")
        # RFC 7616 §3.4.3: A2; auth-int adds the hash of the body.
        a2 = f"{method}:{uri}" + (f":{h(body)}" if qop == "auth-int" else "")
        if qop:
            nc = self._next_nc(challenge.nonce)
            response = h(f"{ha1}:{challenge.nonce}:{nc}:{cnonce}:{qop}:{h(a2)}")  # RFC 7616 §3.4.1
        else:
            response = h(f"{ha1}:{challenge.nonce}:{h(a2)}")  # RFC 2617 §3.2.2.1

        parts = [
            f"username={_quote(self.username)}", f"realm={_quote(challenge.realm)}",
            f"nonce={_quote(challenge.nonce)}", f"uri={_quote(uri)}", f"response={_quote(response)}",
            f"algorithm={challenge.algorithm}",
        ]
        if qop or sess:
            parts.append(f"cnonce={_quote(cnonce)}")  # type: ignore[arg-type]
        if challenge.opaque is not None:
            parts.append(f"opaque={_quote(challenge.opaque)}")  # RFC 7616 §3.4: echoed unchanged
        if qop:
            parts += [f"qop={qop}", f"nc={nc}"]
        return _HEADERS[challenge.header.lower()][1], "Digest " + ", ".join(parts)


_SECRET = re.compile(r'\b(response|password|passwd|secret)(\s*=\s*)("(?:[^"\\]|\\.)*"|[^\s,]*)',
                     re.IGNORECASE)


def redact_authorization(value: str) -> str:
    """The header value with response= (and any password-like field) replaced by "***"."""
    return _SECRET.sub(lambda m: f'{m.group(1)}{m.group(2)}"***"', value)


# Challenges one request chain answers at most: a proxy's and the callee's (§22.3), each
# with one stale nonce (RFC 7616 §3.3).  RFC 3261 sets no bound; without one a server that
# keeps saying stale=true with new nonces would draw INVITEs from sipgw for ever.
MAX_ANSWERS = 4
# Realms answered at once and kept per dialog: a proxy's and the callee's, and a few more for
# proxies in series (§22.3). A response naming more has only its first MAX_REALMS answered.
MAX_REALMS = 8


class ChallengeAnswerer:
    """Answers 401/407 challenges for one request chain (RFC 3261 §22.2), at most
    ``MAX_ANSWERS`` times, with credentials for every realm that challenged so far (§22.3:
    a proxy's and the callee's both go in the retry). ``chain()`` makes the answerer of
    another request chain of the same dialog, sharing the realms learnt."""

    def __init__(self, digest: DigestClient, realms: dict | None = None):
        self.digest = digest
        self.answered: set[tuple[str, str]] = set()
        self.skipped: list[str] = []  # challenges that could not be used, and why
        self.realms: dict[tuple[str, str], Challenge] = {} if realms is None else realms

    def chain(self) -> "ChallengeAnswerer":
        return ChallengeAnswerer(self.digest, self.realms)

    def headers_for(self, response, method: str, uri: str, body: bytes):
        """Authorization headers for the retry, or None when retrying is pointless."""
        by_realm: dict[tuple[str, str], list[Challenge]] = {}
        for name in ("Proxy-Authenticate", "WWW-Authenticate"):
            for value in response.get_all(name):
                try:
                    challenge = Challenge.parse(value, name)
                except AuthError as exc:  # e.g. an algorithm we lack beside one we have
                    self.skipped.append(str(exc))
                    continue
                key = (challenge.header, challenge.realm)
                if key in by_realm or len(by_realm) < MAX_REALMS:
                    by_realm.setdefault(key, []).append(challenge)
        if not by_realm or len(self.answered) >= MAX_ANSWERS:
            return None
        chosen = {key: pick_challenge(found) for key, found in by_realm.items()}
        for challenge in chosen.values():
            # The same nonce challenged again means the credentials were refused,
            # unless the server says the nonce was merely stale.
            if (challenge.realm, challenge.nonce) in self.answered or (
                    not challenge.stale and any(r == challenge.realm for r, _ in self.answered)):
                return None
        self.answered.update((c.realm, c.nonce) for c in chosen.values())
        self.realms.update(chosen)
        older = [key for key in self.realms if key not in chosen]
        for key in older[:max(0, len(self.realms) - MAX_REALMS)]:  # the oldest realms go first
            del self.realms[key]
        return self.credentials(method, uri, body)

    def credentials(self, method: str, uri: str, body: bytes = b""):
        """One answer per realm known (§22.3), computed for this request; None if none."""
        headers = []
        for key, challenge in list(self.realms.items()):
            try:
                headers.append(self.digest.authorize(challenge, method, uri, body))
            except AuthError as exc:  # e.g. only a qop we do not know: not answered
                self.skipped.append(str(exc))
                del self.realms[key]
        return headers or None
