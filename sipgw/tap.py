"""``twistd sipgw``: command-line options and the service they make."""
from __future__ import annotations

import sys

from twisted.python import usage

from . import config as configlib


class Options(usage.Options):
    synopsis = "[--config PATH] [--set key=value ...]"
    longdesc = ("Run the sipgw daemon. Settings are the built-in defaults, then the "
                "properties file given with --config (etc/sipgw.properties documents "
                "every setting), then --set overrides. "
                "Needs --reactor=asyncio (twistd -n --reactor=asyncio sipgw).")
    optParameters = [["config", "c", None, "Path to the sipgw.properties file."]]

    def __init__(self):
        super().__init__()
        self["overrides"] = {}

    def opt_set(self, value: str) -> None:
        """Override one setting, e.g. --set rest_port=9081 (repeatable)."""
        key, sep, raw = value.partition("=")
        if not sep or not key.strip():
            raise usage.UsageError(f"--set expects key=value, got {value!r}")
        self["overrides"][key.strip()] = raw.strip()

    def opt_version(self) -> None:
        """Print the versions of sipgw, Python, Twisted, aiortc, PyAV and Autobahn, and exit."""
        from .versions import describe
        print(describe())
        sys.exit(0)

    def postOptions(self) -> None:
        self["reactor"] = _require_asyncio_reactor()
        try:
            self["settings"] = settings = configlib.load(self["config"], self["overrides"])
            if settings.wss_certificate:  # unreadable or mismatched PEM files: say so now
                from .service import wss_options
                wss_options(settings.wss_certificate, settings.wss_private_key)
            if settings.sip_tls_ca_file or settings.sip_tls_certificate:  # the same for SIP TLS
                from .sip.transport import TLSClientSettings
                TLSClientSettings(settings.sip_tls_ca_file, settings.sip_tls_certificate,
                                  settings.sip_tls_private_key)
        except (configlib.ConfigError, ValueError) as exc:
            raise usage.UsageError(str(exc)) from None


def _require_asyncio_reactor():
    """aiortc runs on asyncio: the Twisted reactor must be the asyncio one."""
    reactor_module = sys.modules.get("twisted.internet.reactor")
    from twisted.internet import asyncioreactor
    if reactor_module is None or not isinstance(reactor_module, asyncioreactor.AsyncioSelectorReactor):
        found = type(reactor_module).__name__ if reactor_module is not None else "the default"
        raise usage.UsageError(
            f"sipgw needs the asyncio reactor, not {found}: pass --reactor=asyncio, "
            "e.g. twistd -n --reactor=asyncio sipgw")
    return reactor_module


def makeService(options):
    from twisted.logger import Logger

    from .service import make_service
    from .versions import describe
    Logger(namespace="sipgw").info("{versions}; settings: {source}", versions=describe(),
                                   source=options["config"] or "built-in defaults")
    return make_service(options["settings"], options["reactor"])
