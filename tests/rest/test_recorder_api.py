"""The recording REST methods over HTTP/1.1 bytes, with the real recorder manager."""
from __future__ import annotations

import pytest

from sipgw.media.recorder import RecorderManager
from sipgw.rest.recorder import RecorderApi
from sipgw.rest.router import RestResource
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream
from test_push_api import ThreadCalls


@pytest.fixture
def env(client_for, tmp_path):
    calls = ThreadCalls()
    registry = StreamRegistry()
    stream = registry.add(Stream("call1"))
    manager = RecorderManager(calls, registry, str(tmp_path), "{streamName}")
    client = client_for(RestResource(RecorderApi(manager, registry)))
    yield client, manager, stream, calls
    closing = manager.close(timeout=0)
    calls.run_until(lambda: closing.called)


def test_recorder_startup_find_all_and_terminate(env):
    """startup → 200 and listed with its file name; a second startup (as WCS) stops that
    recording and starts a new one with its settings; terminate answers once the recording
    is closed; one that never got a keyframe (no file) is then no longer listed."""
    client, manager, stream, calls = env
    sid = stream.media_session_id
    body = {"mediaSessionId": sid, "config": {"fileTemplate": "{streamName}-rec", "rotation": "disabled"}}
    assert client.post("/recorder/startup", {"mediaSessionId": sid}).code == 200
    first = manager.active[sid]
    assert client.post("/recorder/startup", body).code == 200
    calls.run_until(lambda: first.finished)
    assert manager.active[sid] is not first
    listed = client.post("/recorder/find_all").json()
    assert [(r["fileName"], r["mediaSessionId"]) for r in listed] == [("call1-rec.mp4", sid)]
    exchange = client.send("POST", "/recorder/terminate",
                           b'{"mediaSessionId": "%s"}' % sid.encode(),
                           headers={"Content-Type": "application/json"})
    calls.run_until(lambda: exchange.done)
    assert exchange.response.code == 200
    assert client.post("/recorder/find_all").code == 404
    assert client.post("/recorder/terminate", {"mediaSessionId": sid}).code == 404


@pytest.mark.parametrize("body,code", [
    ({"mediaSessionId": "nope"}, 404),
    ({}, 400),
    ({"mediaSessionId": "SID", "config": {"fileTemplate": "../../etc/passwd"}}, 400),
    ({"mediaSessionId": "SID", "config": {"fileTemplate": "{bogus}"}}, 400),
    ({"mediaSessionId": "SID", "config": {"rotation": "20K"}}, 400),
    ({"mediaSessionId": "SID", "config": {"rotation": True}}, 400),
    ({"mediaSessionId": "SID", "config": "x"}, 400),
])
def test_recorder_startup_refusals(env, body, code):
    """Unknown stream 404; missing id, escaping names, unknown tokens, a rotation that is not
    WCS's syntax 400."""
    client, _, stream, _ = env
    if body.get("mediaSessionId") == "SID":
        body = {**body, "mediaSessionId": stream.media_session_id}
    assert client.post("/recorder/startup", body).code == code


def test_stream_start_and_stop_recording(env):
    """The older /stream/startRecording takes a fileName; names with '/' are refused; on a
    stream already recorded it is a 409 unless force restarts the recording."""
    client, manager, stream, calls = env
    sid = stream.media_session_id
    assert client.post("/stream/startRecording", {"mediaSessionId": sid,
                                                  "fileName": "a/../b"}).code == 400
    assert client.post("/stream/startRecording", {"mediaSessionId": sid,
                                                  "fileName": "my call"}).code == 200
    assert manager.active[sid].file_name == "my call.mp4"
    assert client.post("/stream/startRecording", {"mediaSessionId": sid}).code == 409
    again = {"mediaSessionId": sid, "fileName": "again", "force": "true"}
    assert client.post("/stream/startRecording", again).code == 200
    assert manager.active[sid].file_name == "again.mp4"
    exchange = client.send("POST", "/stream/stopRecording",
                           b'{"mediaSessionId": "%s"}' % sid.encode(),
                           headers={"Content-Type": "application/json"})
    calls.run_until(lambda: exchange.done)
    assert exchange.response.code == 200
    assert not manager.active


def test_beyond_max_recordings_is_429(client_for, tmp_path):
    """A recording beyond max_recordings is refused with a 429 naming the setting."""
    from sipgw.config import Config
    calls = ThreadCalls()
    registry = StreamRegistry()
    first, second = registry.add(Stream("call1")), registry.add(Stream("call2"))
    manager = RecorderManager(calls, registry, str(tmp_path), "{streamName}")
    client = client_for(RestResource(RecorderApi(manager, registry, Config(max_recordings=1))))
    assert client.post("/recorder/startup", {"mediaSessionId": first.media_session_id}).code == 200
    refused = client.post("/stream/startRecording", {"mediaSessionId": second.media_session_id})
    assert refused.code == 429
    assert refused.json() == {"error": "too many recordings: 1 of max_recordings=1",
                              "field": "mediaSessionId"}
    closing = manager.close(timeout=0)
    calls.run_until(lambda: closing.called)


def test_recorder_startup_rotation(env):
    """config.rotation in WCS's syntax ("20M", "20" seconds, "disabled") is the recording's;
    without it the record_rotation setting's (the manager's) applies; parts are listed."""
    from sipgw.media.recorder import MB, Rotation
    client, manager, stream, calls = env
    sid = stream.media_session_id
    assert client.post("/recorder/startup", {"mediaSessionId": sid,
                                             "config": {"rotation": "20M"}}).code == 200
    assert manager.active[sid].rotation == Rotation(bytes=20 * MB)
    assert client.post("/recorder/startup", {"mediaSessionId": sid,
                                             "config": {"rotation": 20}}).code == 200
    assert manager.active[sid].rotation == Rotation(seconds=20)
    manager.rotation = Rotation(seconds=60)
    assert client.post("/recorder/startup", {"mediaSessionId": sid}).code == 200
    assert manager.active[sid].rotation == Rotation(seconds=60)
    assert client.post("/recorder/startup", {"mediaSessionId": sid,
                                             "config": {"rotation": "disabled"}}).code == 200
    assert manager.active[sid].rotation is None
    listed, = client.post("/recorder/find_all").json()
    assert listed["parts"] == []
