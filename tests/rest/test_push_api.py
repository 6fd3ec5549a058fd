"""The WCS /push/* REST methods over HTTP/1.1 bytes, with the real push manager."""
from __future__ import annotations

import queue
import time

import pytest

from sipgw.media.push import PushManager
from sipgw.rest.push import PushApi
from sipgw.rest.router import RestResource
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream

# Nothing listens on port 1: every push stays RECONNECTING, which is all these tests need.
URL = "rtmp://127.0.0.1:1/live"
SECRET_URL = "rtmp://bob:hunter2@127.0.0.1:1/live?token=t0ken"


class ThreadCalls:
    """Stands in for the reactor: callFromThread queues, ``run_until`` runs the calls."""

    def __init__(self):
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, fn, *args, **kwargs):
        self.calls.put((fn, args, kwargs))

    def run_until(self, condition, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            try:
                fn, args, kwargs = self.calls.get(timeout=0.02)
            except queue.Empty:
                continue
            fn(*args, **kwargs)


@pytest.fixture
def env(client_for):
    calls = ThreadCalls()
    registry = StreamRegistry()
    stream = registry.add(Stream("call1"))
    manager = PushManager(calls, registry, reconnect_min=5, reconnect_max=5, timeout=1)
    client = client_for(RestResource(PushApi(manager)))
    yield client, manager, stream
    closing = manager.close(timeout=0)  # ThreadCalls has no clock: no deadline
    calls.run_until(lambda: closing.called)


def test_startup_answers_the_push_with_the_republished_name(env):
    """200 with mediaSessionId, streamName rtmp_<name>, rtmpUrl and the stream's size."""
    client, manager, stream = env
    stream.width, stream.height = 320, 240
    answer = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL})
    assert answer.code == 200
    body = answer.json()
    assert body["streamName"] == "rtmp_call1" and body["rtmpUrl"] == URL
    assert (body["width"], body["height"]) == (320, 240)
    assert body["mediaSessionId"] in manager.pushes
    found = client.post("/push/find", {"streamName": "rtmp_call1", "rtmpUrl": URL}).json()
    assert [p["mediaSessionId"] for p in found] == [body["mediaSessionId"]]
    assert found[0]["status"] in ("PENDING", "RECONNECTING")


def test_duplicate_unknown_and_unusable(env):
    """409 for the same stream to the same URL, 404 for an unknown stream, 400 for an
    unusable or missing URL."""
    client, _, _ = env
    assert client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL}).code == 200
    assert client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL}).code == 409
    assert client.post("/push/startup", {"streamName": "nope", "rtmpUrl": URL}).code == 404
    bad = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": "http://x/live"})
    assert bad.code == 400 and bad.json()["field"] == "rtmpUrl"
    assert client.post("/push/startup", {"streamName": "call1"}).code == 400
    assert client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL,
                                         "options": "x"}).code == 400


def test_full_url_keeps_the_name_of_the_url(env):
    """rtmpTransponderFullUrl (as the string the pages send): the URL's last segment is
    the republished name."""
    client, _, _ = env
    body = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL + "/mykey",
                                         "rtmpTransponderFullUrl": "true"}).json()
    assert body["streamName"] == "mykey"


def test_credentials_are_neither_answered_nor_logged(env, logs):
    """A URL with user:password and a token never shows them in answers or logs."""
    client, _, _ = env
    body = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": SECRET_URL}).json()
    shown = repr(body) + repr(client.post("/push/find_all").json()) + logs.everything()
    assert "hunter2" not in shown and "t0ken" not in shown and "bob" not in shown
    assert client.post("/push/find", {"rtmpUrl": SECRET_URL}).code == 200


def test_terminate_and_find(env):
    """terminate → 200 then 404 from find; unknown ids 404; find needs a key."""
    client, manager, _ = env
    session = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL}).json()
    assert client.post("/push/terminate", {"mediaSessionId": session["mediaSessionId"]}).code == 200
    assert client.post("/push/terminate", {"mediaSessionId": "nope"}).code == 404
    assert client.post("/push/find", {}).code == 400
    assert client.post("/push/find", {"streamName": "rtmp_other"}).code == 404


@pytest.mark.parametrize("url", ["rtmp://169.254.169.254/live", "rtmp://[fe80::1]:1935/live",
                                 "rtmp://u:p@224.0.0.1/live", "rtmp://0.0.0.0:1935/live"])
def test_push_to_a_denied_host_is_403_naming_rtmp_url(env, url):
    """Link-local (cloud metadata), multicast and unspecified RTMP hosts are refused before
    any connection, with a 403 naming rtmpUrl and never quoting the URL's credentials."""
    client, manager, _ = env
    answer = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": url})
    assert answer.code == 403 and answer.json()["field"] == "rtmpUrl"
    assert "denied by rtmp_egress_deny" in answer.json()["error"]
    assert "u:p" not in answer.json()["error"] and manager.pushes == {}


def test_rtmp_allow_list_and_max_pushes(client_for):
    """rtmp_egress_allow admits only its hosts; beyond max_pushes startup is a 429."""
    from sipgw.config import Config
    calls = ThreadCalls()
    registry = StreamRegistry()
    registry.add(Stream("call1"))
    registry.add(Stream("call2"))
    manager = PushManager(calls, registry, reconnect_min=5, reconnect_max=5, timeout=1)
    config = Config(rtmp_egress_allow="127.0.0.1,.example.org", max_pushes=1)
    client = client_for(RestResource(PushApi(manager, config)))
    refused = client.post("/push/startup", {"streamName": "call1",
                                            "rtmpUrl": "rtmp://10.0.0.1/live"})
    assert refused.code == 403
    assert refused.json()["error"] == "rtmpUrl destination 10.0.0.1 is not in rtmp_egress_allow"
    assert client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL}).code == 200
    full = client.post("/push/startup", {"streamName": "call2", "rtmpUrl": URL})
    assert full.code == 429
    assert full.json() == {"error": "too many pushes: 1 of max_pushes=1", "field": None}
    closing = manager.close(timeout=0)  # ThreadCalls has no clock: no deadline
    calls.run_until(lambda: closing.called)


def test_find_does_not_say_why_a_push_cannot_connect(env):
    """/push/find is no port scanner: a RECONNECTING push says neither "refused" nor "timed
    out" nor what answered, only that it cannot publish (the reason goes to the log)."""
    from sipgw.rest.push import UNREACHABLE
    client, manager, _ = env
    client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL})
    push, = manager.pushes.values()
    calls = push.reactor
    calls.run_until(lambda: push.state == "RECONNECTING")
    assert "refused" in push.info  # the manager knows, for the log
    found, = client.post("/push/find", {"rtmpUrl": URL}).json()
    assert found["info"] == UNREACHABLE + "; next try in 5 s"


def test_push_audio_options_and_methods(client_for, tmp_path):
    """options.action mute starts the push muted, sound_on (soundFile in sound_dir) plays
    the file; /push/mute, /unmute, /sound_on, /sound_off change it and answer the push with
    muted and soundEnabled; unknown pushes 404, a sound file not in sound_dir 404, a path or
    an unknown action 400."""
    from sipgw.config import Config
    (tmp_path / "sample.wav").write_bytes(b"RIFF")
    calls = ThreadCalls()
    registry = StreamRegistry()
    registry.add(Stream("call1"))
    registry.add(Stream("call2"))
    manager = PushManager(calls, registry, reconnect_min=5, reconnect_max=5, timeout=1)
    client = client_for(RestResource(PushApi(manager, Config(sound_dir=str(tmp_path)))))
    muted = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL,
                                          "options": {"action": "mute"}}).json()
    assert (muted["muted"], muted["soundEnabled"]) == (True, False)
    push = manager.pushes[muted["mediaSessionId"]]
    assert push.audio_action == ("mute",)
    sound = client.post("/push/startup", {"streamName": "call2", "rtmpUrl": URL, "options": {
        "action": "sound_on", "soundFile": "sample.wav"}}).json()
    assert sound["soundEnabled"] is True
    assert manager.pushes[sound["mediaSessionId"]].audio_action == (
        "sound", str(tmp_path / "sample.wav"), True)
    ref = {"mediaSessionId": muted["mediaSessionId"]}
    assert client.post("/push/unmute", ref).json()["muted"] is False
    assert push.audio_action == ("live",)
    on = client.post("/push/sound_on", {**ref, "soundFile": "sample.wav", "loop": False})
    assert on.json()["soundEnabled"] is True
    assert push.audio_action == ("sound", str(tmp_path / "sample.wav"), False)
    assert client.post("/push/mute", ref).json()["muted"] is True
    assert push.audio_action[0] == "sound"  # the sound plays over a muted call
    assert client.post("/push/sound_off", ref).json()["soundEnabled"] is False
    assert push.audio_action == ("mute",)
    assert client.post("/push/mute", {"mediaSessionId": "nope"}).code == 404
    missing = client.post("/push/sound_on", {**ref, "soundFile": "nope.wav"})
    assert missing.code == 404 and missing.json()["field"] == "soundFile"
    assert client.post("/push/sound_on", {**ref, "soundFile": "../etc/passwd"}).code == 400
    bad = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL + "2",
                                        "options": {"action": "louder"}})
    assert bad.code == 400 and bad.json()["field"] == "options"
    closing = manager.close(timeout=0)
    calls.run_until(lambda: closing.called)


def test_sound_on_sample_wav_plays_the_shipped_chord_when_sound_dir_lacks_it(client_for,
                                                                            tmp_path):
    """The pages' Music box asks for sample.wav: with none in sound_dir the one sipgw ships
    plays; a name neither has is still 404."""
    from sipgw import sounds
    from sipgw.config import Config
    calls = ThreadCalls()
    registry = StreamRegistry()
    registry.add(Stream("call1"))
    manager = PushManager(calls, registry, reconnect_min=5, reconnect_max=5, timeout=1)
    client = client_for(RestResource(PushApi(manager, Config(sound_dir=str(tmp_path)))))
    push = client.post("/push/startup", {"streamName": "call1", "rtmpUrl": URL, "options": {
        "action": "sound_on", "soundFile": "sample.wav"}}).json()
    assert manager.pushes[push["mediaSessionId"]].audio_action == (
        "sound", sounds.builtin("sample.wav"), True)
    missing = client.post("/push/sound_on", {"mediaSessionId": push["mediaSessionId"],
                                             "soundFile": "nope.wav"})
    assert missing.code == 404
    for one in list(manager.pushes.values()):
        one.stop()
