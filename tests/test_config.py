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
    values = config.parse_properties(text)
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
    missing = str(tmp_path / "missing.properties")
    with pytest.raises(config.ConfigError) as info:
        config.load(missing)
    assert str(info.value) == f"cannot read config {missing}: No such file or directory"
