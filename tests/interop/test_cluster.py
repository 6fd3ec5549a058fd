"""Three sipgw nodes as one service on a real redis-server (issue 18): each a real daemon on
its own ports, all on one loopback Redis started by the test.

- a call placed through node A lands where the placement policy says, is found, listed and
  terminated through the other nodes; callId and stream names are unique cluster-wide (409);
- a stream is played through a node that does not own it (an edge pull from the origin over
  WHEP, shared by the edge's viewers, released when the last one leaves);
- SIGKILL of the owner: its calls are FAILED "Node lost" on the others within the heartbeat
  TTL, the players of its streams on other nodes get FAILED, and the node restarted does not
  bring them back.
"""
from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

import peers
from peers import wait_for
from peers import require
from sipgw_daemon import RestError, Sipgw
from ws_viewer import WcsSession

TOKEN = "cluster-test-token-0123456789"
TTL = 3  # cluster_node_ttl: a killed node is lost within TTL + one heartbeat


@pytest.fixture
def redis(tmp_path):
    require("redis-server")
    server = peers.Redis(tmp_path, port=peers.free_port("tcp"))
    try:
        yield server.start()
    finally:
        server.stop()


def node(tmp_path, redis, node_id: str, **settings) -> Sipgw:
    """One cluster node (not started): its REST URL is its cluster_node_url."""
    workdir = tmp_path / f"node-{node_id}"
    workdir.mkdir(exist_ok=True)
    gw = Sipgw(str(workdir), cluster_redis_url=redis.url, cluster_node_id=node_id,
               cluster_token=TOKEN, cluster_heartbeat_interval=1, cluster_node_ttl=TTL,
               **settings)
    gw.settings["cluster_node_url"] = f"http://127.0.0.1:{gw.rest_port}"
    return gw


@pytest.fixture
def cluster(tmp_path, redis):
    """Nodes a, b, c (least-loaded placement), started; stopped (those still running)."""
    nodes = [node(tmp_path, redis, i) for i in "abc"]
    try:
        for gw in nodes:
            gw.start()
        wait_for(lambda: len(live_nodes(redis)) == 3, 10, "three live nodes in Redis")
        yield nodes
    finally:
        for gw in nodes:
            gw.stop()


def live_nodes(redis) -> list[str]:
    return [i for i in "abc" if redis.command("EXISTS", f"sipgw:node:{i}") == ":1"]


def local(gw: Sipgw, method: str, body: dict) -> list:
    """What ``gw`` alone knows (a request as another node sends it): [] for its 404."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.rest_port}/rest-api{method}", data=json.dumps(body).encode(),
        method="POST", headers={"Content-Type": "application/json",
                                "Authorization": f"Bearer {TOKEN}",
                                "X-Sipgw-Cluster-Hop": "test"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw else []
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise


def owner(nodes: list[Sipgw], call_id: str) -> Sipgw:
    holders = [gw for gw in nodes if local(gw, "/call/find", {"callId": call_id})]
    assert len(holders) == 1, f"call {call_id} held by {len(holders)} nodes"
    return holders[0]


def test_calls_land_by_policy_and_any_node_finds_and_ends_them(cluster, sipp_factory):
    """Least-loaded: the first call through A stays on A (all idle, no hop), the second goes
    to B (A has a call); C and B find, list and terminate them; a callId or stream name in
    use anywhere is refused with 409 by every node; a bad body is the router's 400."""
    a, b, c = cluster
    first, second = sipp_factory("uas_200.xml"), sipp_factory("uas_200.xml")
    assert a.start_call_to_sipp(first.port, "k1") is None
    assert c.wait_status("k1", "ESTABLISHED")["callId"] == "k1"
    assert owner(cluster, "k1") is a
    assert a.start_call_to_sipp(second.port, "k2") is None
    assert c.wait_status("k2", "ESTABLISHED")["streamName"] == "stream-k2"
    assert owner(cluster, "k2") is b
    assert sorted(x["callId"] for x in c.rest("/call/find_all")) == ["k1", "k2"]
    assert [x["callId"] for x in a.rest("/call/find", {"status": "ESTABLISHED"})] in (
        ["k1", "k2"], ["k2", "k1"])
    assert sorted(s["name"] for s in c.rest("/stream/find_all")) == ["stream-k1", "stream-k2"]
    assert c.stream("stream-k2")["callId"] == "k2"
    with pytest.raises(RestError) as taken:
        c.start_call_to_sipp(second.port, "k2", toStream="other")
    assert (taken.value.code, taken.value.body["field"]) == (409, "callId")
    with pytest.raises(RestError) as taken:
        b.start_call_to_sipp(second.port, "k3", toStream="stream-k1")
    assert taken.value.code == 409 and "Stream name" in taken.value.body["error"]
    with pytest.raises(RestError) as bad:
        c.rest("/call/startup", {"callId": "k4", "callee": "bob"})
    assert bad.value.code == 400 and bad.value.body["field"]
    c.rest("/call/terminate", {"callId": "k2"})  # B's call, ended through C
    assert a.wait_status("k2", "FINISH")["info"] == "Stopped by rest /terminate"
    assert second.wait(15) == 0  # SIPp got its BYE
    b.rest("/call/terminate", {"callId": "k1"})  # A's call, ended through B
    assert c.wait_status("k1", "FINISH")
    assert first.wait(15) == 0
    for gw in cluster:
        gw.stop()
        assert TOKEN not in gw.log()


def test_the_owner_killed_its_calls_are_failed_node_lost_everywhere(cluster, redis,
                                                                    sipp_factory, tmp_path):
    """SIGKILL of the node holding a call: within the TTL the others show it FAILED "Node
    lost"; the node started again with the same id does not bring it back."""
    a, b, c = cluster
    callee = sipp_factory("uas_200.xml", pause_ms=60000)
    assert b.start_call_to_sipp(callee.port, "lost1") is None
    a.wait_status("lost1", "ESTABLISHED")
    held = owner(cluster, "lost1")
    others = [gw for gw in cluster if gw is not held]
    held.proc.send_signal(signal.SIGKILL)
    held.proc.wait(5)
    for gw in others:
        call = gw.wait_status("lost1", "FAILED", timeout=TTL + 3)
        assert call["info"] == "Node lost"
    assert [x["callId"] for x in others[0].rest("/call/find_all")] == ["lost1"]
    again = node(tmp_path, redis, held.settings["cluster_node_id"])
    again.workdir = str(tmp_path / "again")
    (tmp_path / "again").mkdir()
    again.log_path = str(tmp_path / "again" / "sipgw.log")
    try:
        again.start()
        wait_for(lambda: len(live_nodes(redis)) == 3, 10, "the node back in Redis")
        for gw in (again, *others):
            assert gw.call("lost1")["status"] == "FAILED"
    finally:
        again.stop()


def whep_viewers(gw: Sipgw) -> int:
    """sipgw_viewers{kind="whep"} of ``gw``'s /metrics (an edge pulls as a WHEP viewer)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.rest_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('sipgw_viewers{kind="whep"}'):
                return int(float(line.split()[-1]))
    raise AssertionError("no sipgw_viewers{kind=whep} in /metrics")


async def whep_play(gw: Sipgw, name: str):
    """A WHEP client (aiortc) playing ``name`` from ``gw``: its peer connection once 10 video
    frames have been decoded."""
    loop = asyncio.get_running_loop()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    frames = []

    async def consume(track):
        while True:
            frames.append(await track.recv())
    pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    await pc.setLocalDescription(await pc.createOffer())
    request = urllib.request.Request(
        f"http://127.0.0.1:{gw.rest_port}/whep/{name}", data=pc.localDescription.sdp.encode(),
        method="POST", headers={"Content-Type": "application/sdp"})
    answer = await loop.run_in_executor(None, lambda: urllib.request.urlopen(request, timeout=10))
    assert answer.status == 201
    await pc.setRemoteDescription(RTCSessionDescription(answer.read().decode(), "answer"))
    deadline = loop.time() + 20
    while sum(getattr(f, "width", 0) == 320 for f in frames) < 10:
        assert loop.time() < deadline, len(frames)
        await asyncio.sleep(0.1)
    return pc


def test_a_stream_plays_through_a_node_that_does_not_own_it(cluster, kamailio, baresip):
    """Players on C of A's call (baresip's H264 + audio): C pulls it once from A for both of
    its websocket players and a WHEP player; they decode 320x240 video and audio, their first frame within twice the time a player
    on A takes; the pull goes when they have left; a new pull's player gets FAILED "Node
    lost" when A is SIGKILLed."""
    a, b, c = cluster
    a.call_bob(kamailio.port, "e1")
    assert owner(cluster, "e1") is a
    url = f"ws://127.0.0.1:{c.settings['ws_port']}"

    async def scenario():
        loop = asyncio.get_running_loop()
        origin = WcsSession(f"ws://127.0.0.1:{a.settings['ws_port']}")  # the baseline
        assert (await origin.connect())["message"] == "getUserData"
        direct = await origin.play("stream-e1")
        deadline = loop.time() + 30
        while direct.frames["video"] < 10:
            assert loop.time() < deadline, direct.frames
            await asyncio.sleep(0.1)
        origin_ttff = direct.first_frame_at - direct.started_at
        await direct.close()
        origin.close()
        session = WcsSession(url)
        assert (await session.connect())["message"] == "getUserData"
        players = [await session.play("stream-e1"), await session.play("stream-e1")]
        deadline = loop.time() + 30
        while not all(p.frames["video"] >= 10 and p.frames["audio"] >= 10 for p in players):
            assert loop.time() < deadline, [p.frames for p in players]
            await asyncio.sleep(0.2)
        ttff = [p.first_frame_at - p.started_at for p in players]
        sizes = {p.size for p in players}
        whep = await whep_play(c, "stream-e1")  # a WHEP player on C shares the pull too
        pulls = await loop.run_in_executor(None, whep_viewers, a)
        await whep.close()
        edge = await loop.run_in_executor(None, local, c, "/stream/find", {"name": "stream-e1"})
        for player in players:
            session.send("stopStream", {"mediaSessionId": player.id})
            await session.status(player.id, "STOPPED")
            await player.close()
        await loop.run_in_executor(None, lambda: wait_for(
            lambda: whep_viewers(a) == 0 and not local(c, "/stream/find", {"name": "stream-e1"}),
            10, "the pull released"))
        again = await session.play("stream-e1")
        await session.status(again.id, "PLAYING")
        await loop.run_in_executor(None, lambda: wait_for(lambda: whep_viewers(a) == 1, 10,
                                                          "a new pull"))
        a.proc.send_signal(signal.SIGKILL)
        failed = await session.status(again.id, "FAILED", timeout=TTL + 5)
        await again.close()
        session.close()
        return origin_ttff, ttff, sizes, pulls, edge, failed

    origin_ttff, ttff, sizes, pulls, edge, failed = asyncio.run(
        asyncio.wait_for(scenario(), 120))
    assert sizes == {(320, 240)}
    assert pulls == 1  # one pull for both players
    assert edge and edge[0]["name"] == "stream-e1" and edge[0]["status"] == "PUBLISHING"
    assert failed["info"] == "Node lost"
    print(f"time to first frame: origin {origin_ttff:.3f} s, through the edge "
          f"{[round(t, 3) for t in ttff]} s")
    # issue 18: TTFF through an edge <= 2x the origin's (+0.25 s: a shared 2-core machine)
    assert max(ttff) <= 2 * origin_ttff + 0.25, (origin_ttff, ttff)


def test_the_websdk_player_plays_through_another_node_until_the_call_ends(
        cluster, kamailio, baresip, chromium, websdk_site):
    """The unchanged WebSDK Player page, pointed at node C's websocket, plays A's call
    (320x240 video and audio flowing) and shows STOPPED when the call is terminated through
    B: the origin's end reaches the edge's players as on one node."""
    from test_browser_websdk import play_with_player_page

    a, b, c = cluster
    a.call_bob(kamailio.port, "w1")
    assert owner(cluster, "w1") is a
    play_with_player_page(chromium, websdk_site, c.settings["ws_port"], "stream-w1")
    assert whep_viewers(a) == 1  # C's pull
    b.rest("/call/terminate", {"callId": "w1"})
    chromium.wait_text("status", "STOPPED", timeout=10)
    assert c.wait_status("w1", "FINISH")["info"] == "Stopped by rest /terminate"
