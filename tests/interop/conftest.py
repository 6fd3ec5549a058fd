"""Fixtures that start real peers (SIPp, Kamailio, baresip) and stop them by pid.

A missing peer program FAILS the test with a hint to run
tools/install-test-deps.sh: an interop test that silently skips proves nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import peers
from sipgw_daemon import Sipgw


require = peers.require  # the fixtures below use it; test modules import it from peers


@pytest.fixture(scope="session", autouse=True)
def no_peer_left_running() -> Iterator[None]:
    """At the end of the session, no process started by these fixtures is alive."""
    yield
    left = peers.leftover_processes()
    peers.kill_leftovers()
    assert not left, f"peer processes left running (now killed): {left}"


SippFactory = Callable[..., peers.Sipp]


@pytest.fixture
def sipp_factory(tmp_path: Path) -> Iterator[SippFactory]:
    """Start SIPp instances: ``sipp_factory(scenario, port=None, **Sipp kwargs)``.

    The port defaults to a free one; tmpdir to the test's tmp_path.  Returns
    the started Sipp; all are stopped at teardown.
    """
    require("sipp")
    started: list[peers.Sipp] = []

    def start(scenario: str, *, port: int | None = None, **kwargs) -> peers.Sipp:
        kwargs.setdefault("tmpdir", tmp_path)
        if port is None:
            kind = "tcp" if kwargs.get("transport", "u1").startswith("t") else "udp"
            port = peers.free_port(kind)
        sipp = peers.Sipp(scenario, port=port, **kwargs)
        started.append(sipp)
        return sipp.start()

    yield start
    for sipp in reversed(started):
        sipp.stop()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Sipgw]:
    """The sipgw daemon on the harness's test settings (sipgw_daemon.Sipgw), stopped
    afterwards; a module that needs other settings defines its own ``daemon``."""
    gw = Sipgw(str(tmp_path)).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def kamailio(tmp_path: Path) -> Iterator[peers.Kamailio]:
    """A fresh Kamailio (users alice/alicepw, bob/bobpw; realm 127.0.0.1)."""
    require("kamailio")
    proxy = peers.Kamailio(tmp_path, port=peers.free_port())
    try:
        yield proxy.start()
    finally:
        proxy.stop()


@pytest.fixture
def dnsmasq(tmp_path: Path) -> Iterator[Callable[..., peers.Dnsmasq]]:
    """Starts dnsmasq serving sip.test with the given records: ``dnsmasq(records)``;
    stops it afterwards."""
    require("dnsmasq")
    started: list[peers.Dnsmasq] = []

    def start(records) -> peers.Dnsmasq:
        dns = peers.Dnsmasq(tmp_path, port=peers.free_port("udp"), domain="sip.test",
                            records=records)
        started.append(dns)
        return dns.start()
    yield start
    for dns in started:
        dns.stop()


@pytest.fixture(scope="session")
def test_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 120 s 320x240 H264 baseline mkv without audio, made once per session. Long on
    purpose: at the end of its file baresip 1.0.0 stops sending video for about 10 s before
    looping, which no test should run into."""
    require("ffmpeg")
    return peers.make_test_video(tmp_path_factory.mktemp("media") / "testsrc-320x240.mkv",
                                 seconds=120)


@pytest.fixture
def baresip_mediaenc() -> str:
    """baresip's ``mediaenc``: none (plain RTP); a test module overrides this fixture, or a
    test parametrizes it, for SRTP ("srtp", "srtp-mand")."""
    return ""


@pytest.fixture
def baresip(kamailio: peers.Kamailio, tmp_path: Path, test_video: Path,
            baresip_mediaenc: str) -> Iterator[peers.Baresip]:
    """baresip registered at ``kamailio`` as bob, auto-answering with H264 + audio."""
    require("baresip", "stdbuf")
    phone = peers.Baresip(
        tmp_path,
        user="bob",
        password=kamailio.users["bob"],
        registrar_port=kamailio.port,
        sip_port=peers.free_port(count=2),  # TLS takes sip_port + 1
        video_file=test_video,
        mediaenc=baresip_mediaenc,
    )
    try:
        yield phone.start()
    finally:
        phone.stop()


@pytest.fixture
def nginx_rtmp(tmp_path: Path) -> Iterator[peers.NginxRtmp]:
    """nginx-rtmp on 127.0.0.1 (application ``live``, recording every stream as FLV)."""
    require("nginx")
    server = peers.NginxRtmp(tmp_path, port=peers.free_port("tcp"), record=True)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[peers.Chromium]:
    """Headless Chromium (selenium + /usr/bin/chromedriver), loopback ICE on; killed by pid."""
    require("chromium", "chromedriver")
    try:
        import selenium  # noqa: F401  (setup.py test extra)
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]'", pytrace=False)
    browser = peers.Chromium(tmp_path)
    try:
        yield browser.start()
    finally:
        browser.stop()


@pytest.fixture(scope="session")
def websdk_site() -> Iterator[peers.StaticSite]:
    """The installed @flashphoner/websdk npm package, served unchanged over HTTP on 127.0.0.1."""
    try:
        root = peers.websdk_dir()
    except peers.PeerMissing as missing:
        pytest.fail(str(missing), pytrace=False)
    site = peers.StaticSite(root).start()
    try:
        yield site
    finally:
        site.stop()
