"""An RTMP server in a thread, just enough to accept one publisher: it answers the
handshake, connect, createStream and publish, and keeps every message the client sent.
It can hang up on its clients (``drop``), refuse new ones, or accept TCP and then say
nothing at all (``silent``), or answer the handshake one byte at a time (``trickle``)."""
from __future__ import annotations

import os
import socket
import threading
import time

from sipgw.media import flv
from sipgw.media.rtmp import _chunks, _ChunkReader


class FakeRtmpServer:
    def __init__(self, *, silent: bool = False, chunk_size: int | None = None,
                 trickle: float = 0.0):
        self.silent = silent
        self.chunk_size = chunk_size  # sent to clients after the handshake, replies use it
        self.trickle = trickle  # > 0: the handshake answer comes one byte per `trickle` s
        self.messages: list[tuple[int, int, bytes]] = []  # (type, timestamp, payload)
        self.published: list[str] = []
        self.connects: list[dict] = []
        self.sessions = 0
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self.port = self._sock.getsockname()[1]
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def url(self, path: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.port}/{path}"

    def flv(self) -> bytes:
        """Everything published, as an FLV file."""
        with self._lock:
            tags = [flv.file_tag(kind, ts, payload) for kind, ts, payload in self.messages]
        return flv.file_header(True, True) + b"".join(tags)

    def media(self, kind: int | None = None) -> list[bytes]:
        with self._lock:
            return [p for t, _, p in self.messages if kind is None or t == kind]

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._clients.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            if self.silent:
                while client.recv(65536):
                    pass
                return
            self._handshake(client)
            if self.chunk_size is not None:
                client.sendall(_chunks(2, 1, 0, 0, self.chunk_size.to_bytes(4, "big"), 128))
            reader = _ChunkReader()
            self.sessions += 1
            while True:
                data = client.recv(65536)
                if not data:
                    return
                for kind, msid, payload, ts in reader.feed(data):
                    self._message(client, kind, msid, payload, ts)
        except OSError:
            return
        finally:
            client.close()

    @staticmethod
    def _recv(client, size) -> bytes:
        out = b""
        while len(out) < size:
            chunk = client.recv(size - len(out))
            if not chunk:
                raise OSError("closed")
            out += chunk
        return out

    def _handshake(self, client) -> None:
        c0c1 = self._recv(client, 1537)
        s1 = b"\x00" * 8 + os.urandom(1528)
        answer = b"\x03" + s1 + c0c1[1:]
        while self.trickle and not self._stopped:
            client.sendall(answer[:1])
            answer = answer[1:]
            time.sleep(self.trickle)
        client.sendall(answer)
        self._recv(client, 1536)

    def _message(self, client, kind, msid, payload, ts) -> None:
        if kind == 20:
            values = flv.amf0_decode(payload)
            name, txn = values[0], values[1]
            if name == "connect":
                self.connects.append(values[2])
                # with a chunk size set, a long reply: thousands of chunks of one message
                self._reply(client, "_result", txn,
                            {"fmsVer": "fake" + ("." * 3000 if self.chunk_size else "")},
                            {"level": "status", "code": "NetConnection.Connect.Success"})
            elif name == "createStream":
                self._reply(client, "_result", txn, None, 1.0)
            elif name == "publish":
                self.published.append(values[3])
                self._reply(client, "onStatus", 0, None,
                            {"level": "status", "code": "NetStream.Publish.Start"}, msid=1)
            return
        if kind in (8, 9, 18):
            with self._lock:
                self.messages.append((kind, ts, payload))

    def _reply(self, client, name, txn, *values, msid=0) -> None:
        body = flv.amf0(name) + flv.amf0(float(txn)) + b"".join(flv.amf0(v) for v in values)
        client.sendall(_chunks(3, 20, msid, 0, body, max(1, self.chunk_size or 128)))

    def drop(self) -> None:
        """Hang up on every connected client."""
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            client.close()

    def stop(self) -> None:
        self._stopped = True
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self._sock.close()
        self.drop()
        self._thread.join(2)


def wait(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(0.01)
