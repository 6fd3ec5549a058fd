"""Settings: a ``key=value`` properties file (WCS ``flashphoner.properties`` style)
loaded and validated into one frozen dataclass.

Every setting, its type and its default is declared once, on ``Config``; the
shipped ``etc/sipgw.properties`` documents them all.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "etc", "sipgw.properties")


class ConfigError(ValueError):
    """A settings file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Config:
    # REST API and websocket
    rest_bind_address: str = "0.0.0.0"
    rest_port: int = 8081
    rest_cors_origin: str = "*"
    ws_port: int = 8080
    ws_bind_address: str = "0.0.0.0"
    wss_port: int = 8443
    wss_certificate: str = ""
    wss_private_key: str = ""
    ws_auth_tokens: str = ""
    ws_connection_timeout: int = 10
    webrtc_ice_address: str = ""
    webrtc_ice_servers: str = ""
    # SIP user agent
    sip_bind_address: str = "0.0.0.0"
    sip_local_port: int = 5070
    sip_address: str = ""
    sip_use_tcp_transport: bool = False
    sip_register_expires: int = 3600
    sip_ring_timeout: int = 120
    sip_max_message_size: int = 65535
    sip_user_agent: str = "sipgw/0.1"
    call_retention: int = 60
    call_retention_max: int = 1000
    call_find_limit: int = 200
    shutdown_timeout: int = 10
    # media
    media_address: str = ""
    media_port_from: int = 31000
    media_port_to: int = 31999
    rtp_activity_timeout: int = 60
    rtp_session_init_always: bool = False
    sip_single_route_only: bool = False
    # recording and RTMP republishing (/push/*)
    record_dir: str = "/var/lib/sipgw/records"
    record_file_template: str = "{streamName}-{startTimeMillis}"
    sip_record_stream: bool = False
    rtmp_reconnect_delay: int = 1
    rtmp_reconnect_max_delay: int = 30
    rtmp_timeout: int = 10

    def __post_init__(self):
        for name in ("rest_port", "ws_port", "wss_port", "sip_local_port", "media_port_from", "media_port_to"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise ConfigError(f"{name}={value}: a port must be between 0 and 65535")
        if bool(self.wss_certificate) != bool(self.wss_private_key):
            raise ConfigError("wss_certificate and wss_private_key go together")
        if self.media_port_from > self.media_port_to - 1:
            raise ConfigError("media_port_from must be below media_port_to")
        for name in ("sip_register_expires", "sip_max_message_size", "call_find_limit"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("call_retention", "call_retention_max", "shutdown_timeout",
                     "sip_ring_timeout", "rtp_activity_timeout", "ws_connection_timeout"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


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
    """Read ``path`` (default: the shipped etc/sipgw.properties) and apply overrides."""
    values: dict[str, str] = {}
    path = path or DEFAULT_PATH
    try:
        with open(path, encoding="utf-8") as handle:
            values.update(parse_properties(handle.read(), path))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    values.update(overrides or {})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
    return Config(**{key: _convert(key, raw) for key, raw in values.items()})
