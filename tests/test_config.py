"""Settings: the shipped properties file, overrides and clear errors."""
import dataclasses
import os

import pytest

from sipgw import config

SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "etc", "sipgw.properties")


def test_shipped_file_documents_every_setting_with_its_default():
    """etc/sipgw.properties lists each Config field, commented, with the built-in default."""
    with open(SHIPPED, encoding="utf-8") as handle:
        text = handle.read()
    values = {config.setting_name(k): v for k, v in config.parse_properties(text).items()}
    fields = {f.name: f.default for f in dataclasses.fields(config.Config)}
    assert sorted(values) == sorted(fields)
    assert config.load(SHIPPED) == config.Config()
    # each block of settings has a comment above it saying what they do
    previous = ""
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            assert previous.startswith("#") or "=" in previous, line
        previous = line.strip()


def test_no_file_means_the_built_in_defaults():
    """Without --config the daemon needs no file: load() is the dataclass defaults."""
    assert config.load() == config.Config()
    assert config.load(None, {"rest_port": "9081"}) == dataclasses.replace(
        config.Config(), rest_port=9081)


def test_wcs_dotted_names_are_read_with_underscores(tmp_path):
    """WCS writes keep_alive.probes, https.port: a dot reads as an underscore, in the file
    and in --set; WCS's http.port is rest_port."""
    path = tmp_path / "flashphoner.properties"
    path.write_text("keep_alive.server_interval=2000\nhttp.port=9081\nws.port=9080\n")
    loaded = config.load(str(path), {"keep_alive.probes": "3"})
    assert (loaded.keep_alive_server_interval, loaded.keep_alive_probes) == (2000, 3)
    assert (loaded.rest_port, loaded.ws_port) == (9081, 9080)


def test_unknown_keys_in_the_file_are_logged_and_ignored(tmp_path):
    """A WCS flashphoner.properties loads: keys that name no sipgw setting (and are no typo of
    one) are ignored, with one log line naming them."""
    from twisted.logger import globalLogPublisher
    path = tmp_path / "flashphoner.properties"
    path.write_text("cdn_enabled=false\ndisable_rest_auth=true\nkeep_alive.algorithm=NONE\n"
                    "rest_port=9081\n")
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        loaded = config.load(str(path))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert loaded.rest_port == 9081
    (event,) = [e for e in events if e.get("log_namespace") == "sipgw.config"]
    assert event["keys"] == "cdn_enabled, disable_rest_auth, keep_alive.algorithm"


@pytest.mark.parametrize("line, nearest", [("rest_prot=9000", "rest_port"),
                                           ("keep_alive.probe=3", "keep_alive_probes"),
                                           ("sip_record_streams=true", "sip_record_stream")])
def test_a_typo_of_a_setting_is_an_error_naming_it(tmp_path, line, nearest):
    """A key within two edits of a setting's name is a typo: refused, naming the setting."""
    path = tmp_path / "x.properties"
    path.write_text(line + "\n")
    with pytest.raises(config.ConfigError) as info:
        config.load(str(path))
    key = line.partition("=")[0]
    assert str(info.value) == f"{path}: unknown setting {key}: did you mean {nearest}?"


def test_overrides_are_typed():
    """--set values are converted to the field's type."""
    loaded = config.load(overrides={"rest_port": "9081", "sip_use_tcp_transport": "true",
                                    "hls_part_duration": "0.33"})
    assert loaded.rest_port == 9081 and loaded.sip_use_tcp_transport is True
    assert loaded.hls_part_duration == 0.33


@pytest.mark.parametrize("overrides,message", [
    ({"rest_port": "http"}, "rest_port='http': expected an integer"),
    ({"rest_port": "70000"}, "rest_port=70000: a port must be between 0 and 65535"),
    ({"sip_use_tcp_transport": "maybe"}, "expected true or false"),
    ({"no_such_key": "1"}, "unknown setting(s): no_such_key"),
    ({"rest_prot": "1"}, "unknown setting(s): rest_prot (did you mean rest_port?)"),
    ({"media_port_from": "5000", "media_port_to": "4000"}, "media_port_from must be below"),
    ({"call_retention": "-1"}, "call_retention must not be negative"),
    ({"sip_dns_servers": "dns.example.org"}, "sip_dns_servers: 'dns.example.org' is not an IP"),
    ({"call_retention_max": "-1"}, "call_retention_max must not be negative"),
    ({"call_find_limit": "0"}, "call_find_limit must be positive"),
    ({"sip_min_se": "60"}, "sip_min_se must be at least 90 (RFC 4028 §4)"),
    ({"sip_session_expires": "100", "sip_min_se": "120"}, "sip_session_expires at least sip_min_se"),
    ({"sip_max_redirects": "-1"}, "sip_max_redirects must not be negative"),
    ({"sip_nat_keepalive": "stun"}, "sip_nat_keepalive must be options, crlf or off"),
    ({"rest_max_body": "0"}, "rest_max_body must be positive"),
    ({"hls_segments": "0"}, "hls_segments must be positive"),
    ({"hls_port": "70000"}, "hls_port=70000: a port must be between 0 and 65535"),
    ({"hls_part_duration": "inf"}, "hls_part_duration='inf': expected a number"),
    ({"hls_part_duration": "half"}, "hls_part_duration='half': expected a number"),
    ({"hls_part_duration": "-0.5"}, "hls_part_duration must not be negative"),
    ({"hls_max_blocked_requests": "0"}, "hls_max_blocked_requests must be positive"),
])
def test_bad_values_name_the_setting(overrides, message):
    """Every unusable setting raises ConfigError naming the key."""
    assert message in _refusal(overrides)


def _refusal(overrides: dict) -> str:
    """The message of the ConfigError that ``overrides`` raise."""
    with pytest.raises(config.ConfigError) as info:
        config.load(overrides=overrides)
    return str(info.value)


def test_bad_line_and_missing_file(tmp_path):
    """A line without '=' names the file and line; a missing file says so."""
    path = tmp_path / "x.properties"
    path.write_text("# comment\nrest_port 8081\n")
    with pytest.raises(config.ConfigError, match=r"x.properties:2: expected key=value"):
        config.load(str(path))
    missing = str(tmp_path / "missing.properties")
    with pytest.raises(config.ConfigError) as info:
        config.load(missing)
    assert str(info.value) == f"cannot read config {missing}: No such file or directory"


def test_control_plane_defaults_are_loopback_only():
    """REST and websocket bind loopback, trust loopback only, no token, CORS for loopback pages."""
    loaded = config.load()
    assert (loaded.rest_bind_address, loaded.ws_bind_address) == ("127.0.0.1", "127.0.0.1")
    assert loaded.trusted_networks == "127.0.0.0/8,::1/128"
    assert (loaded.rest_auth_tokens, loaded.rest_cors_origin) == ("", "loopback")


@pytest.mark.parametrize("overrides,message", [
    ({"rest_bind_address": "0.0.0.0"},
     "rest_bind_address=0.0.0.0 listens beyond loopback, but only loopback clients would be "
     "admitted: set rest_auth_tokens (and ws_auth_tokens for the websocket) or add the clients' "
     "networks to trusted_networks, or bind rest_bind_address=127.0.0.1"),
    ({"ws_bind_address": "192.0.2.1"}, "ws_bind_address=192.0.2.1 listens beyond loopback"),
    ({"hls_bind_address": "0.0.0.0"}, "hls_bind_address=0.0.0.0 listens beyond loopback"),
    ({"rest_bind_address": "::", "trusted_networks": "::1"}, "rest_bind_address=:: listens"),
    ({"trusted_networks": "10.0.0.0/8,lan"}, "trusted_networks: 'lan' is not an address"),
    ({"rest_auth_tokens": "s3cret"}, "rest_auth_tokens: token #1 must be at least 16"),
])
def test_open_control_plane_is_refused(overrides, message):
    """Listening beyond loopback with no token and only loopback trusted is refused at start,
    with a message that says what to set; secrets are never quoted."""
    refusal = _refusal(overrides)
    assert message in refusal
    assert "s3cret" not in refusal


@pytest.mark.parametrize("overrides", [
    {"rest_bind_address": "0.0.0.0", "rest_auth_tokens": "0123456789abcdef0123"},
    {"rest_bind_address": "0.0.0.0", "ws_bind_address": "0.0.0.0",
     "trusted_networks": "10.0.0.0/8"},
    {"ws_bind_address": "0.0.0.0", "ws_auth_tokens": "app-key"},
    {"hls_bind_address": "0.0.0.0", "rest_auth_tokens": "0123456789abcdef0123"},
])
def test_non_loopback_bind_with_credentials_starts(overrides):
    """A token or a trusted network beyond loopback makes a public bind acceptable."""
    config.load(overrides=overrides)


def test_wcs_record_template_name_is_record_file_template(tmp_path):
    """WCS's stream_record_policy_template sets record_file_template, with its tokens
    {login} and {sessionId}."""
    path = tmp_path / "flashphoner.properties"
    path.write_text("stream_record_policy_template=stream-{mediaSessionId}-{login}\n")
    assert config.load(str(path)).record_file_template == "stream-{mediaSessionId}-{login}"
    loaded = config.load(None, {"stream_record_policy_template": "{sessionId}"})
    assert loaded.record_file_template == "{sessionId}"
