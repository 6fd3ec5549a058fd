"""Stream name -> Stream: the one shared mutable state of the daemon's media."""
from __future__ import annotations

from ..logtext import Logger  # the lean emit: two lines per call
from .stream import Stream

log = Logger(namespace="sipgw.streams")


class StreamExists(Exception):
    """A second publisher for a name already published (REST 409)."""


class StreamRegistry:
    def __init__(self):
        self._by_name: dict[str, Stream] = {}
        self._by_id: dict[str, Stream] = {}
        self.listeners: list = []  # callables(stream, event) for "published"/"ended"
        self.remote = None  # callable(name) -> Stream | None: another node's (sipgw/cluster)

    def add(self, stream: Stream) -> Stream:
        if stream.name in self._by_name:
            raise StreamExists("Stream name is already in use")
        self._by_name[stream.name] = stream
        self._by_id[stream.media_session_id] = stream
        log.info("stream {name} created ({id})", name=stream.name, id=stream.media_session_id)
        for listener in list(self.listeners):
            listener(stream, "published")
        return stream

    def remove(self, stream: Stream) -> None:
        if self._by_name.get(stream.name) is stream:
            del self._by_name[stream.name]
            del self._by_id[stream.media_session_id]
            log.info("stream {name} removed ({status}{info})", name=stream.name,
                     status=stream.status.value, info=f": {stream.info}" if stream.info else "")
            for listener in list(self.listeners):
                listener(stream, "ended")

    def get(self, name: str | None = None, media_session_id: str | None = None) -> Stream | None:
        if name is not None:
            return self._by_name.get(name)
        if media_session_id is not None:
            return self._by_id.get(media_session_id)
        return None

    def playable(self, name: str) -> Stream | None:
        """The stream a player asks for: this node's, else in a cluster this node's pull of
        the node that publishes it."""
        stream = self._by_name.get(name)
        if stream is None and self.remote is not None:
            stream = self.remote(name)
        return stream

    def all(self) -> list[Stream]:
        return list(self._by_name.values())
