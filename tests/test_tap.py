"""The twistd plugin options: reactor check, --config, --set."""
import subprocess
import sys

import pytest
from twisted.python import usage

from sipgw import tap

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def test_plugin_is_found_by_twistd():
    """`twistd --help` lists the sipgw plugin (twisted/plugins/sipgw_plugin.py)."""
    out = subprocess.run(TWISTD + ["--help"], capture_output=True,
                         text=True, timeout=60).stdout
    assert "sipgw" in out


def test_refuses_a_reactor_other_than_asyncio():
    """Without --reactor=asyncio twistd stops with a message saying to pass it."""
    result = subprocess.run(TWISTD + ["-n", "--pidfile=", "sipgw"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "pass --reactor=asyncio" in result.stdout + result.stderr


def test_bad_set_option_is_a_usage_error(monkeypatch):
    """--set without '=' and unknown keys are UsageErrors naming the problem."""
    monkeypatch.setattr(tap, "_require_asyncio_reactor", lambda: None)
    with pytest.raises(usage.UsageError, match="--set expects key=value"):
        tap.Options().parseOptions(["--set", "rest_port"])
    with pytest.raises(usage.UsageError, match="unknown setting"):
        tap.Options().parseOptions(["--set", "nope=1"])
    options = tap.Options()
    options.parseOptions(["--set", "rest_port=9999"])
    assert options["settings"].rest_port == 9999


def test_version_names_sipgw_and_its_libraries():
    """`twistd sipgw --version` prints sipgw's version and those of the libraries under it."""
    from importlib import metadata
    result = subprocess.run(TWISTD + ["sipgw", "--version"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"sipgw {metadata.version('sipgw')} (Python ")
    for name in ("twisted", "aiortc", "av", "autobahn"):
        assert f"{name} {metadata.version(name)}" in line


def test_missing_config_file_is_named(monkeypatch, tmp_path):
    """--config naming a file that is not there stops with the file's path."""
    monkeypatch.setattr(tap, "_require_asyncio_reactor", lambda: None)
    missing = str(tmp_path / "nope.properties")
    with pytest.raises(usage.UsageError, match=f"cannot read config {missing}: No such file"):
        tap.Options().parseOptions(["--config", missing])


def test_unusable_wss_files_are_a_usage_error(monkeypatch, tmp_path):
    """A wss_certificate with no PEM certificate in it stops the start with a message
    naming the setting (a traceback from makeService before)."""
    monkeypatch.setattr(tap, "_require_asyncio_reactor", lambda: None)
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(usage.UsageError, match="wss_certificate=.*no PEM certificate"):
        tap.Options().parseOptions(["--set", f"wss_certificate={tmp_path}/empty.pem",
                                    "--set", f"wss_private_key={tmp_path}/empty.pem"])


def test_unusable_sip_tls_files_are_a_usage_error(monkeypatch, tmp_path):
    """A sip_tls_ca_file without a certificate, or one that is not there, stops the start
    with a message naming the setting."""
    monkeypatch.setattr(tap, "_require_asyncio_reactor", lambda: None)
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(usage.UsageError, match="sip_tls_ca_file=.*no PEM certificate"):
        tap.Options().parseOptions(["--set", f"sip_tls_ca_file={tmp_path}/empty.pem"])
    with pytest.raises(usage.UsageError, match="sip_tls_certificate=.*No such file"):
        tap.Options().parseOptions(["--set", f"sip_tls_certificate={tmp_path}/nope.pem"])
