"""The HLS server on hls_port: admitted as REST is, paths, methods and unknown streams."""
from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address

from fakes import UDPMemoryReactor
from sipgw.config import Config
from sipgw.streams.stream import Stream

STRANGER = IPv4Address("TCP", "192.0.2.7", 40313)
STREAMS_TOKEN = "streams-token-0123456789ab"
CALLS_TOKEN = "calls-token-0123456789abcd"


@pytest.fixture
def daemon(tmp_path):
    """The daemon with a stream s1; its HLS site."""
    from sipgw.service import make_service
    config = Config(record_dir=str(tmp_path),
                    rest_auth_tokens=f"{STREAMS_TOKEN}:streams,{CALLS_TOKEN}:calls")
    top = make_service(config, UDPMemoryReactor())
    hls = top.getServiceNamed("hls")
    assert (hls.args[0], hls.kwargs["interface"]) == (8082, "127.0.0.1")
    top.site = hls.args[1]
    top.calls.streams.add(Stream("s1", has_video=False))
    return top


def test_refusals(daemon, http_get):
    """Strangers need a bearer token with the streams scope; unknown streams, segments and
    paths are 404; only GET, HEAD and OPTIONS are served; a trusted player needs nothing."""
    assert http_get(daemon.site, "/s1/index.m3u8", peer=STRANGER).code == 401
    calls = http_get(daemon.site, "/s1/index.m3u8", {"Authorization": f"Bearer {CALLS_TOKEN}"},
                     STRANGER)
    assert (calls.code, calls.json()["error"]) == (
        403, "the bearer token does not have the streams scope")
    token = {"Authorization": f"Bearer {STREAMS_TOKEN}"}
    assert http_get(daemon.site, "/nope/index.m3u8", token, STRANGER).code == 404
    assert http_get(daemon.site, "/s1/seg-0.m4s").code == 404  # no player asked yet
    assert http_get(daemon.site, "/s1").code == 404
    assert http_get(daemon.site, "/s1/index.m3u8", method="POST").code == 405
    assert http_get(daemon.site, "/s1/index.m3u8", method="OPTIONS").code == 204
    assert daemon.media.hls.live == {}
