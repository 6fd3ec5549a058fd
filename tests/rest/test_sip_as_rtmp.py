"""SIP as RTMP: /call/startup with rtmpUrl + rtmpStream republishes the call through the
/push/* engine (PushManager), from its first media."""
import pytest

from sipgw.calls import CallRequest
from sipgw.config import Config
from sipgw.media.push import PushManager
from sipgw.rest.calls import CallApi
from sipgw.rest.router import RestResource
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream

URL = "rtmp://127.0.0.1:1935/live"
PAGE = {"callee": "bob", "sipLogin": "alice", "sipDomain": "127.0.0.1", "hasAudio": "true",
        "hasVideo": "true", "rtmpUrl": URL, "rtmpStream": "s9"}  # as sip-as-rtmp-3 sends


class ThreadCallsReactor:
    """Enough reactor for a push's worker: calls from its thread wait in a list."""

    def __init__(self):
        self.calls = []

    def callFromThread(self, fn, *args):
        self.calls.append((fn, args))


class StreamingCallManager:
    """Places nothing; publishes each call's stream in the registry as the UA does."""

    def __init__(self, registry):
        self.registry = registry
        self.started: list[CallRequest] = []

    def startup(self, request):
        self.started.append(request)
        self.registry.add(Stream(request.stream_name, call_id=request.call_id))

    def find(self, call_id=None, status=None):
        return [{"callId": r.call_id, "status": "ESTABLISHED", "streamName": r.stream_name}
                for r in self.started if call_id in (None, r.call_id)]

    def active_calls(self):
        return list(self.started)


@pytest.fixture
def gateway(client_for):
    registry = StreamRegistry()
    manager = StreamingCallManager(registry)
    pushes = PushManager(ThreadCallsReactor(), registry)
    client = client_for(RestResource(CallApi(manager, Config(), pushes=pushes)))
    yield client, manager, pushes
    for push in list(pushes.pushes.values()):
        push.stop()


def test_call_with_rtmp_url_is_pushed_once_media_flows(gateway):
    """rtmpUrl + rtmpStream (and no toStream): the call's stream is named rtmpStream and a push
    to rtmpUrl as rtmp_<rtmpStream> waits for its first media; /call/find reports rtmpUrl,
    rtmpStream and rtmpStreamStatus."""
    client, manager, pushes = gateway
    assert client.post("/call/startup", dict(PAGE, callId="c1")).code == 200
    (request,) = manager.started
    assert request.stream_name == "s9"
    (push,) = pushes.find()
    assert (push.stream.name, push.published_name, push.wait_for_media) == ("s9", "rtmp_s9", True)
    (call,) = client.post("/call/find", {"callId": "c1"}).json()
    assert (call["rtmpUrl"], call["rtmpStream"], call["rtmpStreamStatus"]) == (URL, "s9", "PENDING")


def test_a_second_call_to_the_same_rtmp_target_is_409(gateway):
    """The same rtmpUrl and rtmpStream while a push publishes there: 409 naming rtmpStream, and
    the second call is not placed."""
    client, manager, pushes = gateway
    assert client.post("/call/startup", dict(PAGE, callId="c1")).code == 200
    response = client.post("/call/startup", dict(PAGE, callId="c2", toStream="other"))
    assert response.code == 409 and response.json()["field"] == "rtmpStream"
    assert [r.call_id for r in manager.started] == ["c1"]


@pytest.mark.parametrize("changes, field, code", [
    ({"rtmpStream": ""}, "rtmpStream", 400),
    ({"rtmpUrl": ""}, "rtmpUrl", 400),
    ({"rtmpUrl": "http://127.0.0.1/live"}, "rtmpUrl", 400),
    ({"rtmpUrl": "rtmp://169.254.169.254/live"}, "rtmpUrl", 403)])
def test_bad_rtmp_target_is_refused_before_the_call(gateway, changes, field, code):
    """rtmpUrl without rtmpStream (or the reverse), a URL that is not rtmp://, or a denied
    RTMP host (rtmp_egress_deny) is refused naming the field; no call is placed."""
    client, manager, pushes = gateway
    response = client.post("/call/startup", dict(PAGE, callId="c1", **changes))
    assert response.code == code and response.json()["field"] == field
    assert manager.started == [] and pushes.find() == []
