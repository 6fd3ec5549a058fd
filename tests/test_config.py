"""Settings: the shipped properties file, overrides and clear errors."""
import dataclasses

import pytest

from sipgw import config


def test_shipped_file_documents_every_setting_with_its_default():
    """etc/sipgw.properties lists each Config field with the dataclass default."""
    with open(config.DEFAULT_PATH, encoding="utf-8") as handle:
        values = config.parse_properties(handle.read())
    fields = {f.name: f.default for f in dataclasses.fields(config.Config)}
    assert set(values) == set(fields)
    assert config.load() == config.Config()


def test_overrides_are_typed():
    """--set values are converted to the field's type."""
    loaded = config.load(overrides={"rest_port": "9081", "sip_use_tcp_transport": "true"})
    assert loaded.rest_port == 9081 and loaded.sip_use_tcp_transport is True


@pytest.mark.parametrize("overrides,message", [
    ({"rest_port": "http"}, "rest_port='http': expected an integer"),
    ({"rest_port": "70000"}, "rest_port=70000: a port must be between 0 and 65535"),
    ({"sip_use_tcp_transport": "maybe"}, "expected true or false"),
    ({"no_such_key": "1"}, "unknown setting(s): no_such_key"),
    ({"media_port_from": "5000", "media_port_to": "4000"}, "media_port_from must be below"),
    ({"call_retention": "-1"}, "call_retention must not be negative"),
    ({"call_retention_max": "-1"}, "call_retention_max must not be negative"),
    ({"call_find_limit": "0"}, "call_find_limit must be positive"),
])
def test_bad_values_name_the_setting(overrides, message):
    """Every unusable setting raises ConfigError naming the key."""
    with pytest.raises(config.ConfigError) as info:
        config.load(overrides=overrides)
    assert message in str(info.value)


def test_bad_line_and_missing_file(tmp_path):
    """A line without '=' names the file and line; a missing file says so."""
    path = tmp_path / "x.properties"
    path.write_text("# comment\nrest_port 8081\n")
    with pytest.raises(config.ConfigError, match=r"x.properties:2: expected key=value"):
        config.load(str(path))
    with pytest.raises(config.ConfigError, match="cannot read config"):
        config.load(str(tmp_path / "missing.properties"))
