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


@pytest.fixture
def llhls():
    """An HLS site over an HlsManager on a task.Clock (0.5 s parts) whose stream s1 has one
    segment of four parts: (site, manager, store, calls)."""
    from media.synthetic import ClockedCalls
    from twisted.internet import defer
    from sipgw.media.hls import HlsManager
    from sipgw.rest.hls import HlsResource
    from sipgw.rest.router import RestSite
    from sipgw.streams.registry import StreamRegistry
    calls = ClockedCalls()
    registry = StreamRegistry()
    registry.add(Stream("s1", has_video=False))
    manager = HlsManager(calls, registry, target=2.0, part=0.5, max_held=2)
    site = RestSite(HlsResource(manager), max_body=1024, reactor=calls.clock, timeout=None)
    first = defer.ensureDeferred(manager.playlist("s1"))
    store = manager.live["s1"].store
    store.restart(b"init")
    for n in range(4):
        store.add_part(0.5, b"%d" % n * 10, n == 0)
    store.close_segment()
    assert first.called
    yield site, manager, store, calls
    job = manager.live["s1"].job
    manager.close()
    calls.run_until(lambda: job.finished, what="the HLS job to stop")


@pytest.mark.parametrize("query,field", [
    ("_HLS_msn=x", "_HLS_msn"), ("_HLS_msn=-1", "_HLS_msn"), ("_HLS_msn=%C2%B2", "_HLS_msn"),
    ("_HLS_msn=1&_HLS_msn=2", "_HLS_msn"), ("_HLS_msn=" + "9" * 21, "_HLS_msn"),
    ("_HLS_msn=1&_HLS_part=+1", "_HLS_part"), ("_HLS_part=1", "_HLS_part"),
    ("_HLS_msn=3", "_HLS_msn"), ("_HLS_msn=1&_HLS_part=7", "_HLS_part"),
])
def test_malformed_or_too_far_delivery_directives_are_400(llhls, http_get, query, field):
    """RFC 8216bis §6.2.5.2: a directive that is not one decimal integer, _HLS_part without
    _HLS_msn, a segment more than two past the last or a part past the Advance Part Limit:
    400 naming the parameter, at once."""
    site, manager, _, _ = llhls
    answer = http_get(site, f"/s1/index.m3u8?{query}")
    assert (answer.code, answer.json()["field"]) == (400, field)
    assert manager.held.count == 0


def test_a_blocking_reload_is_held_until_its_part_then_served(llhls, http_exchange):
    """_HLS_msn=1&_HLS_part=0 is answered when that part is listed, with the playlist that
    lists it; the part itself is served by number; _HLS_skip is ignored."""
    site, manager, store, _ = llhls
    held = http_exchange(site, "/s1/index.m3u8?_HLS_msn=1&_HLS_part=0&_HLS_skip=YES")
    assert not held.done and manager.held.count == 1
    store.add_part(0.5, b"new part", True)
    answer = held.response
    assert answer.code == 200 and answer.headers["cache-control"] == "no-cache"
    assert '#EXT-X-PART:DURATION=0.500,URI="part-4.m4s",INDEPENDENT=YES' in answer.body.decode()
    part = http_exchange(site, "/s1/part-4.m4s").response
    assert (part.code, part.body, part.headers["content-type"]) == (
        200, b"new part", "video/iso.segment")


def test_a_reload_that_does_not_come_is_503_and_the_held_are_bounded(llhls, http_exchange):
    """Held past three target durations: 503 with Retry-After; past max_held held at once:
    503 at once; a player that goes away frees its place."""
    site, manager, _, calls = llhls
    first = http_exchange(site, "/s1/index.m3u8?_HLS_msn=1")
    second = http_exchange(site, "/s1/part-4.m4s")  # the hinted part
    third = http_exchange(site, "/s1/index.m3u8?_HLS_msn=2").response
    assert (third.code, third.headers["retry-after"]) == (503, "1")
    assert third.json()["error"] == "2 HLS requests are held already"
    second.disconnect()
    assert manager.held.count == 1
    calls.advance(6)
    answer = first.response
    assert (answer.code, answer.headers["retry-after"]) == (503, "1")
    assert manager.held.count == 0
