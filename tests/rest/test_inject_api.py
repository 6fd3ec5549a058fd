"""The WCS /call/inject_stream/* and /call/inject_sound REST methods over HTTP/1.1 bytes, with the
real injection manager, calls whose RTP sessions run on a fake reactor clock: 400 naming the
field, 404 for unknown calls, streams and sound files, 409 for a call not established, 429 past
max_injections, and the injection shown in /call/find."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from fakes import ThreadedUDPReactor, answered_session
from sipgw.calls import CallStatus
from sipgw.config import Config
from sipgw.injections import InjectionManager
from sipgw.rest.calls import CallApi
from sipgw.rest.inject import InjectApi
from sipgw.rest.router import RestResource
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream
from tones import tone_wav


class Calls(dict):
    """The user agent's calls by callId, as far as injection and /call/find look at them."""

    def add(self, reactor, call_id, status=CallStatus.ESTABLISHED, port_from=46000):
        session, _ = answered_session(reactor, call_id=call_id, port_from=port_from)
        self[call_id] = SimpleNamespace(status=status, media_session=session,
                                        request=SimpleNamespace(call_id=call_id, app_key=""))
        return self[call_id]

    # the CallManager side /call/find uses
    def find(self, call_id=None, status=None):
        return [{"callId": c, "status": call.status.value} for c, call in self.items()
                if call_id in (None, c)]


@pytest.fixture
def env(client_for, tmp_path):
    reactor = ThreadedUDPReactor()
    calls = Calls()
    registry = StreamRegistry()
    registry.add(Stream("other", has_video=False, call_id="c9"))
    tone_wav(tmp_path / "tone.wav", 1000, 0.2)
    config = Config(sound_dir=str(tmp_path), max_injections=1)
    manager = InjectionManager(reactor, calls, registry, max_injections=1)
    client = client_for(RestResource(InjectApi(manager, config),
                                     CallApi(calls, config, injections=manager)))
    calls.add(reactor, "c1")
    yield SimpleNamespace(client=client, calls=calls, manager=manager, reactor=reactor,
                          registry=registry)
    manager.close(0)
    reactor.run(lambda: not manager.running())


def test_inject_sound_answers_empty_and_shows_in_call_find(env):
    """200 with an empty body; /call/find shows the call's injection (type, file, status)
    until it is over: FINISHED once a sound played once is through."""
    answer = env.client.post("/call/inject_sound", {"callId": "c1", "soundFile": "tone.wav"})
    assert answer.code == 200 and answer.body == b""
    shown = env.client.post("/call/find", {"callId": "c1"}).json()[0]["injection"]
    assert shown["type"] == "sound" and shown["soundFile"] == "tone.wav"
    assert shown["loop"] is False and shown["status"] in ("STARTING", "INJECTING")
    env.reactor.run(lambda: not env.manager.running())
    shown = env.client.post("/call/find", {"callId": "c1"}).json()[0]["injection"]
    assert shown["status"] == "FINISHED" and shown["sent"]["audio"] >= 9


def test_wcs_file_name_and_terminate(env):
    """WCS's fileName names the file too; loop plays on until /call/inject_stream/terminate,
    which stops it (STOPPED); a second terminate finds nothing (404)."""
    assert env.client.post("/call/inject_sound", {"callId": "c1", "fileName": "tone.wav",
                                                  "loop": "true"}).code == 200
    assert env.client.post("/call/inject_stream/terminate", {"callId": "c1"}).code == 200
    env.reactor.run(lambda: not env.manager.running())
    shown = env.client.post("/call/find", {"callId": "c1"}).json()[0]["injection"]
    assert (shown["status"], shown["info"], shown["loop"]) == (
        "STOPPED", "Stopped by rest /terminate", True)
    again = env.client.post("/call/inject_stream/terminate", {"callId": "c1"})
    assert again.code == 404 and again.json()["field"] == "callId"


def test_inject_stream_and_the_call_end_stops_it(env):
    """inject_stream of another call's stream: 200, INJECTING type stream; the call's end
    (the user agent's observer) stops it."""
    assert env.client.post("/call/inject_stream/startup",
                           {"callId": "c1", "streamName": "other"}).code == 200
    call = env.calls["c1"]
    call.status = CallStatus.FINISH
    env.manager.call_changed(call)
    env.reactor.run(lambda: not env.manager.running())
    shown = env.client.post("/call/find", {"callId": "c1"}).json()[0]["injection"]
    assert shown["type"] == "stream" and shown["streamName"] == "other"
    assert (shown["status"], shown["info"]) == ("STOPPED", "Stopped: the call ended")


@pytest.mark.parametrize("path,body,field", [
    ("/call/inject_sound", {"soundFile": "tone.wav"}, "callId"),
    ("/call/inject_sound", {"callId": "c1"}, "soundFile"),
    ("/call/inject_sound", {"callId": "c1", "soundFile": "../tone.wav"}, "soundFile"),
    ("/call/inject_sound", {"callId": "c1", "soundFile": ".hidden"}, "soundFile"),
    ("/call/inject_sound", {"callId": "c1", "soundFile": "tone.wav", "loop": "often"}, "loop"),
    ("/call/inject_sound", {"callId": "c1", "soundFile": 5}, "soundFile"),
    ("/call/inject_stream/startup", {"callId": "c1"}, "streamName"),
    ("/call/inject_stream/startup", {"callId": "c 1", "streamName": "other"}, "callId"),
    ("/call/inject_stream/startup", {"callId": "c1", "streamName": "a/b"}, "streamName"),
    ("/call/inject_stream/startup", {"callId": "c1", "streamName": "stream-c1"}, "streamName"),
    ("/call/inject_stream/terminate", {}, "callId"),
])
def test_bad_input_is_a_400_naming_the_field(env, path, body, field):
    """Each bad body: 400 whose field names what is wrong (the call's own stream too)."""
    if body.get("streamName") == "stream-c1":  # the stream of call c1 itself
        env.registry.add(env.calls["c1"].media_session.stream)
    answer = env.client.post(path, body)
    assert answer.code == 400 and answer.json()["field"] == field


@pytest.mark.parametrize("path,body,field", [
    ("/call/inject_sound", {"callId": "nope", "soundFile": "tone.wav"}, "callId"),
    ("/call/inject_sound", {"callId": "c1", "soundFile": "missing.wav"}, "soundFile"),
    ("/call/inject_stream/startup", {"callId": "nope", "streamName": "other"}, "callId"),
    ("/call/inject_stream/startup", {"callId": "c1", "streamName": "missing"}, "streamName"),
    ("/call/inject_stream/terminate", {"callId": "nope"}, "callId"),
    ("/call/inject_stream/terminate", {"callId": "c1"}, "callId"),
])
def test_unknown_ids_are_404(env, path, body, field):
    """An unknown call, stream or sound file, or no injection to stop: 404 naming it."""
    answer = env.client.post(path, body)
    assert answer.code == 404 and answer.json()["field"] == field


def test_a_call_not_established_is_409_and_past_the_limit_429(env):
    """A ringing call: 409; with max_injections=1, a second call's injection is 429 naming
    the setting, while replacing the first call's own injection is allowed."""
    env.calls.add(env.reactor, "c2", CallStatus.RING, port_from=46100)
    ringing = env.client.post("/call/inject_sound", {"callId": "c2", "soundFile": "tone.wav"})
    assert ringing.code == 409 and ringing.json()["field"] == "callId"
    env.calls["c2"].status = CallStatus.ESTABLISHED
    body = {"soundFile": "tone.wav", "loop": True}
    assert env.client.post("/call/inject_sound", {"callId": "c1", **body}).code == 200
    over = env.client.post("/call/inject_sound", {"callId": "c2", **body})
    assert over.code == 429 and "max_injections" in over.json()["error"]
    assert env.client.post("/call/inject_stream/startup",
                           {"callId": "c1", "streamName": "other"}).code == 200
    env.reactor.run(lambda: len(env.manager.running()) == 1)
    assert env.manager.injections["c1"].stream.name == "other"
