"""/stream/find filters as WCS documents them: published and display."""
import pytest

from sipgw.rest.router import RestResource
from sipgw.rest.streams import StreamApi
from sipgw.streams.registry import StreamRegistry
from sipgw.streams.stream import Stream


@pytest.fixture
def client(client_for):
    registry = StreamRegistry()
    stream = registry.add(Stream("s1"))
    stream.counters = {"video": {"frames": 10, "keyframes": 2, "lost": 3}, "audio": {"lost": 1}}
    return client_for(RestResource(StreamApi(registry)))


@pytest.mark.parametrize("published", [False, "false"])
def test_find_played_streams_is_404(client, published):
    """published=false asks for played streams, which sipgw does not list: 404."""
    response = client.post("/stream/find", {"name": "s1", "published": published})
    assert (response.code, response.json()["error"]) == (404, "Stream not found")


def test_find_published_with_metrics(client):
    """published=true finds the stream; display ["metrics"] adds WCS's metrics object."""
    plain = client.post("/stream/find", {"name": "s1", "published": True}).json()[0]
    assert "metrics" not in plain
    (found,) = client.post("/stream/find", {"name": "s1", "published": True,
                                            "display": ["metrics"]}).json()
    assert found["metrics"] == {"VIDEO_WIDTH": found["width"], "VIDEO_HEIGHT": found["height"],
                                "VIDEO_K_FRAMES": 2, "VIDEO_P_FRAMES": 8, "VIDEO_LOST": 3,
                                "AUDIO_LOST": 1}


@pytest.mark.parametrize("body, field", [({"display": "metrics"}, "display"),
                                         ({"display": [1]}, "display"),
                                         ({"published": "maybe"}, "published")])
def test_bad_filters_are_400(client, body, field):
    """A display that is not a list of names, a published that is not a boolean: 400 naming it."""
    response = client.post("/stream/find", {"name": "s1", **body})
    assert (response.code, response.json()["field"]) == (400, field)
