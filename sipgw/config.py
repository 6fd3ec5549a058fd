"""Settings: a ``key=value`` properties file (WCS ``flashphoner.properties`` style)
loaded and validated into one frozen dataclass.

Every setting, its type and its default is declared once, on ``Config``: with no
file the daemon runs on these built-in defaults. ``etc/sipgw.properties`` is the
annotated copy users edit; a test keeps it equal to the defaults.

Names are WCS's where WCS has the setting. WCS writes some with dots (``keep_alive.probes``,
``https.port``): a dot in a key is read as an underscore, so ``keep_alive.probes`` and
``keep_alive_probes`` name the same field; WCS's ``http.port`` is ``rest_port``.

A key of the file that names no setting is logged and ignored, so a WCS
``flashphoner.properties`` can be used as it is; one within two edits of a setting's name is
taken for a typo of it and refused, naming the setting. ``--set`` of an unknown key is refused.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from twisted.logger import Logger

from . import egress, policy

log = Logger(namespace="sipgw.config")


class ConfigError(ValueError):
    """A settings file or override that cannot be used; the message names the key."""


# The bound of an int setting, declared with its default (``max_calls: int = not_negative(200)``)
# and checked by ``Config.__post_init__``: a new setting cannot be left out of the check.
_BOUNDS = {
    "port": (lambda value: 0 <= value <= 65535,
             "{name}={value}: a port must be between 0 and 65535"),
    "positive": (lambda value: value > 0, "{name} must be positive"),
    "not_negative": (lambda value: value >= 0, "{name} must not be negative"),
}


def _bounded(kind: str, default: int):
    return dataclasses.field(default=default, metadata={"bound": kind})


def port(default: int):
    """A port, 0 to 65535 (0: any free one)."""
    return _bounded("port", default)


def positive(default: int):
    """A count, size or duration that must be above 0."""
    return _bounded("positive", default)


def not_negative(default: int):
    """A count, size or duration where 0 is allowed (often: no limit, or off)."""
    return _bounded("not_negative", default)


@dataclass(frozen=True)
class Config:
    # REST API and websocket
    rest_bind_address: str = "127.0.0.1"
    rest_port: int = port(8081)
    https_port: int = port(8444)
    rest_cors_origin: str = "loopback"
    rest_auth_tokens: str = ""
    trusted_networks: str = "127.0.0.0/8,::1/128"
    rest_max_body: int = positive(65536)
    ws_port: int = port(8080)
    ws_bind_address: str = "127.0.0.1"
    wss_port: int = port(8443)
    wss_certificate: str = ""
    wss_private_key: str = ""
    ws_auth_tokens: str = ""
    ws_connection_timeout: int = not_negative(10)
    ws_max_connections: int = not_negative(2000)
    ws_max_connections_per_address: int = not_negative(100)
    ws_messages_per_second: int = not_negative(50)
    keep_alive_server_interval: int = not_negative(5000)
    keep_alive_probes: int = not_negative(10)
    mse_send_queue_bytes: int = positive(2097152)
    webrtc_ice_address: str = ""
    webrtc_ice_servers: str = ""
    # SIP user agent
    sip_bind_address: str = "0.0.0.0"
    sip_local_port: int = port(5070)
    sip_address: str = ""
    sip_use_tcp_transport: bool = False
    sip_register_expires: int = positive(3600)
    sip_ring_timeout: int = not_negative(120)
    sip_max_message_size: int = positive(65535)
    sip_udp_receive_buffer_bytes: int = not_negative(4194304)
    sip_user_agent: str = "sipgw/0.1"
    sip_answer_unsolicited: bool = True
    sip_hold_direction: str = "sendonly"
    sip_max_server_transactions: int = positive(10000)
    sip_max_requests_per_source: int = not_negative(2000)
    call_retention: int = not_negative(60)
    call_retention_max: int = not_negative(1000)
    call_find_limit: int = positive(200)
    shutdown_timeout: int = not_negative(10)
    # media
    media_address: str = ""
    media_port_from: int = port(31000)
    media_port_to: int = port(31999)
    rtp_activity_timeout: int = not_negative(60)
    rtp_probation_packets: int = positive(3)
    rtp_max_packets_per_second: int = positive(2000)
    rtp_receive_buffer_bytes: int = not_negative(1048576)
    stream_gop_cache_max_bytes: int = positive(8388608)
    sink_queue_max_bytes: int = positive(4194304)
    rtp_session_init_always: bool = False
    sip_srtp: str = "off"
    sip_single_route_only: bool = False
    # recording and RTMP republishing (/push/*)
    record_dir: str = "/var/lib/sipgw/records"
    record_file_template: str = "{streamName}-{startTimeMillis}"
    sip_record_stream: bool = False
    record_min_free_space_mb: int = not_negative(100)
    record_max_size_mb: int = not_negative(0)
    record_max_duration: int = not_negative(0)
    record_rotation: str = "disabled"
    rtmp_reconnect_delay: int = not_negative(1)
    rtmp_reconnect_max_delay: int = not_negative(30)
    rtmp_timeout: int = not_negative(10)
    sound_dir: str = "/var/lib/sipgw/media"
    # media injected into calls (/call/inject_stream, /call/inject_sound)
    inject_queue_frames: int = positive(100)
    inject_buffer_ms: int = positive(200)
    periodic_fir_request: bool = True
    periodic_fir_request_interval: int = positive(5000)
    # HLS (sipgw/media/hls.py)
    hls_bind_address: str = "127.0.0.1"
    hls_port: int = port(8082)
    hls_target_duration: int = positive(2)
    hls_segments: int = positive(6)
    hls_max_bytes: int = positive(33554432)
    hls_idle_timeout: int = positive(20)
    hls_part_duration: float = not_negative(0.5)
    hls_max_blocked_requests: int = positive(1000)
    hls_blocking_timeout: int = not_negative(0)
    # egress policy and quotas
    sip_egress_allow: str = ""
    sip_egress_deny: str = egress.DEFAULT_DENY
    rtmp_egress_allow: str = ""
    rtmp_egress_deny: str = egress.DEFAULT_DENY
    max_calls: int = not_negative(200)
    max_calls_per_account: int = not_negative(50)
    max_pushes: int = not_negative(20)
    max_recordings: int = not_negative(50)
    max_injections: int = not_negative(20)
    dtmf_max_digits: int = positive(32)
    dtmf_digits_per_second: int = not_negative(10)
    max_viewers_per_stream: int = not_negative(100)
    max_viewers_per_connection: int = not_negative(10)
    max_apps: int = not_negative(100)
    whep_max_trickle_candidates: int = not_negative(32)
    # SIP over TCP
    sip_max_tcp_connections: int = not_negative(1000)
    sip_tcp_idle_timeout: int = not_negative(300)
    sip_tcp_message_timeout: int = not_negative(30)
    # SIP over TLS (client side: sips: and ;transport=tls destinations)
    sip_tls_ca_file: str = ""
    sip_tls_certificate: str = ""
    sip_tls_private_key: str = ""
    # DNS (RFC 3263)
    sip_dns_servers: str = ""
    # SIP extensions: 100rel/PRACK (RFC 3262), session timers (RFC 4028)
    sip_100rel: bool = True
    sip_session_timers: bool = True
    sip_session_expires: int = 1800
    sip_min_se: int = 90
    # 3xx redirects followed per call (RFC 3261 §8.1.3.4); 0: none
    sip_max_redirects: int = not_negative(5)
    # seconds a transfer (our REFER, RFC 3515) waits for its final NOTIFY; 0: for ever
    sip_transfer_timeout: int = not_negative(32)
    # the callee's REFER: accepted (a new INVITE to Refer-To feeds the same stream) or 403
    sip_accept_refer: bool = False
    # NAT keep-alive: seconds between keep-alives to the registrar while registered; 0: none
    sip_keepalive_interval: int = not_negative(0)
    # what the keep-alive is: options (an OPTIONS request), crlf (RFC 5626 §4.4: double
    # CRLF on TCP/TLS, a STUN Binding request on UDP), off
    sip_nat_keepalive: str = "options"
    # Contact and Via sent-by of an account's later REGISTERs and calls from the REGISTER
    # 200's received/rport
    sip_nat_rewrite_contact: bool = False
    # REST hooks: the application server of each appKey (sipgw/hooks.py)
    rest_apps: str = ""
    rest_request_timeout: int = not_negative(5)
    rest_max_connections: int = positive(20)
    rest_queue_size: int = positive(1000)
    rest_queue_bytes: int = positive(16 << 20)
    rest_hook_failure_allows: bool = False
    rest_egress_allow: str = ""
    rest_egress_deny: str = egress.DEFAULT_DENY
    # several nodes as one service on Redis (sipgw/cluster/); empty redis URL: one node alone
    cluster_redis_url: str = ""
    cluster_node_id: str = ""
    cluster_node_url: str = ""
    cluster_heartbeat_interval: int = positive(1)
    cluster_node_ttl: int = positive(5)
    cluster_token: str = ""
    cluster_placement: str = "least-loaded"
    cluster_request_timeout: int = positive(5)

    def __post_init__(self):
        self._check_bounds("port")
        if self.sip_hold_direction not in ("sendonly", "inactive"):
            raise ConfigError("sip_hold_direction must be sendonly or inactive")
        if self.sip_nat_keepalive not in ("options", "crlf", "off"):
            raise ConfigError("sip_nat_keepalive must be options, crlf or off")
        if self.sip_srtp not in ("off", "optional", "mandatory"):
            raise ConfigError("sip_srtp must be off, optional or mandatory")
        if self.sip_tls_private_key and not self.sip_tls_certificate:
            raise ConfigError("sip_tls_private_key needs sip_tls_certificate")
        if bool(self.wss_certificate) != bool(self.wss_private_key):
            raise ConfigError("wss_certificate and wss_private_key go together")
        if self.media_port_from > self.media_port_to - 1:
            raise ConfigError("media_port_from must be below media_port_to")
        self._check_bounds("positive")
        self._check_bounds("not_negative")
        try:
            networks = policy.parse_networks(self.trusted_networks)
            rest_tokens = policy.parse_tokens(self.rest_auth_tokens)
            policy.check_bind("rest_bind_address", self.rest_bind_address, bool(rest_tokens),
                              networks)
            policy.check_bind("hls_bind_address", self.hls_bind_address, bool(rest_tokens),
                              networks)
            policy.check_bind("ws_bind_address", self.ws_bind_address,
                              bool(self.ws_auth_tokens.strip(", ")), networks)
            egress.EgressPolicy.from_config(self, "sip")
            egress.EgressPolicy.from_config(self, "rtmp")
            from .hooks import parse_apps
            parse_apps(self.rest_apps, egress.EgressPolicy.from_config(self, "rest"))
        except (policy.PolicyError, ValueError, egress.EgressDenied) as exc:
            raise ConfigError(str(exc)) from None
        if self.sip_min_se < 90 or self.sip_session_expires < self.sip_min_se:
            raise ConfigError("sip_min_se must be at least 90 (RFC 4028 §4) and "
                              "sip_session_expires at least sip_min_se")
        from .sip.resolver import parse_servers
        try:
            parse_servers(self.sip_dns_servers)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._check_cluster()

    def _check_cluster(self) -> None:
        """The cluster settings matter only with cluster_redis_url; messages never quote the
        token or the URL (it may hold the Redis password)."""
        if self.cluster_placement not in ("least-loaded", "local", "round-robin"):
            raise ConfigError("cluster_placement must be least-loaded, local or round-robin")
        if self.cluster_token:
            try:
                policy.parse_tokens(self.cluster_token, "cluster_token")
            except policy.PolicyError as exc:
                raise ConfigError(str(exc)) from None
            if ":" in self.cluster_token or "," in self.cluster_token:
                raise ConfigError("cluster_token: one token, without scopes")
        if not self.cluster_redis_url:
            return
        if not self.cluster_redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError("cluster_redis_url must be a redis://, rediss:// or unix:// URL")
        if not self.cluster_node_id or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}",
                                                         self.cluster_node_id):
            raise ConfigError("cluster_node_id: 1 to 64 of A-Z a-z 0-9 _ . - (needed with "
                              "cluster_redis_url)")
        if not self.cluster_node_url.startswith(("http://", "https://")):
            raise ConfigError("cluster_node_url must be this node's REST base URL "
                              "(http://HOST:PORT), needed with cluster_redis_url")
        if not self.cluster_token:
            raise ConfigError("cluster_token is needed with cluster_redis_url")
        if self.cluster_node_ttl <= self.cluster_heartbeat_interval:
            raise ConfigError("cluster_node_ttl must be above cluster_heartbeat_interval")


    def _check_bounds(self, kind: str) -> None:
        allowed, message = _BOUNDS[kind]
        for item in dataclasses.fields(self):
            if item.metadata.get("bound") == kind:
                value = getattr(self, item.name)
                if not allowed(value):
                    raise ConfigError(message.format(name=item.name, value=value))


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# WCS names that are not ours with dots as underscores
_WCS_NAMES = {"http.port": "rest_port", "stream_record_policy_template": "record_file_template"}


def setting_name(key: str) -> str:
    """The ``Config`` field a key of the file or of ``--set`` names."""
    return _WCS_NAMES.get(key, key.replace(".", "_"))


def _convert(key: str, raw: str):
    kind = _FIELDS[key].type
    raw = raw.strip()
    if kind == "bool":
        if raw.lower() in ("true", "yes", "1", "on"):
            return True
        if raw.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected true or false")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected an integer") from None
    if kind == "float":
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key}={raw!r}: expected a number")
        return value
    return raw


def parse_properties(text: str, origin: str = "<config>") -> dict[str, str]:
    values = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{origin}:{number}: expected key=value, got {line!r}")
        values[key.strip()] = value.strip()
    return values


def load(path: str | None = None, overrides: dict[str, str] | None = None) -> Config:
    """Read ``path`` (none: the built-in defaults) and apply overrides."""
    values: dict[str, str] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
        ignored = []
        for key, raw in parse_properties(text, path).items():
            name = setting_name(key)
            if name in _FIELDS:
                values[name] = raw
                continue
            nearest = _nearest(name)
            if nearest:
                raise ConfigError(f"{path}: unknown setting {key}: did you mean {nearest}?")
            ignored.append(key)
        if ignored:
            log.warn("{path}: not sipgw settings, ignored: {keys}", path=path,
                     keys=", ".join(ignored))
    overrides = {setting_name(key): raw for key, raw in (overrides or {}).items()}
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        named = [f"{key} (did you mean {_nearest(key)}?)" if _nearest(key) else key
                 for key in unknown]
        raise ConfigError(f"unknown setting(s): {', '.join(named)}")
    values.update(overrides)
    return Config(**{key: _convert(key, raw) for key, raw in values.items()})


def _nearest(name: str, limit: int = 2) -> str | None:
    """The setting within ``limit`` edits of ``name`` (a typo of it), the closest first."""
    scored = sorted((_edits(name, field), field) for field in _FIELDS)
    distance, field = scored[0]
    return field if distance <= limit else None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions from a to b."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]
