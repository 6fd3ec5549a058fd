"""A minimal RTMP publisher (Adobe RTMP 1.0 spec): handshake, connect, createStream,
publish, then FLV tag bodies as audio/video/data messages.

Blocking socket I/O, every call bounded by ``timeout``: it runs on a media worker
thread only, never on the reactor.  (FFmpeg's own rtmp:// output connects while holding
the GIL in PyAV 18, so a server that accepts TCP and never answers froze the whole
daemon; here a stalled server costs only this worker ``timeout`` seconds.)

URLs may carry credentials (``rtmp://user:pass@host/app``, or a token in the query or
the stream key): only ``redact(url)`` ever goes to logs and REST answers' errors.
"""
from __future__ import annotations

import os
import re
import select
import socket
import struct
import time
import urllib.parse
from dataclasses import dataclass

from . import flv

DEFAULT_PORT = 1935
CHUNK_SIZE = 4096
# What a server may make this client hold (§5.4.1: chunk sizes 1..0x7FFFFFFF).  A message
# is at most 0xFFFFFF bytes, so a larger chunk size reads the same as this cap.
MAX_CHUNK_SIZE = 0xFFFFFF
MAX_SERVER_MESSAGE = 1 << 20  # a server's replies are commands and control: small
MAX_CHUNK_STREAMS = 64
_HANDSHAKE_SIZE = 1536
_CONTROL_TYPES = {1, 2, 3, 5, 6}
_MSG_SET_CHUNK_SIZE = 1
_MSG_ABORT = 2
_MSG_ACK = 3
_MSG_USER_CONTROL = 4
_MSG_WINDOW_ACK = 5
_MSG_PEER_BW = 6
_MSG_AMF0_COMMAND = 20
_CSID = {flv.TAG_AUDIO: 4, flv.TAG_VIDEO: 6, flv.TAG_SCRIPT: 5}
_BAD_URL_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


class RtmpError(Exception):
    """The server refused, closed, or did not answer in time."""


@dataclass(frozen=True)
class RtmpTarget:
    """Where one push publishes: server, application and stream name."""

    host: str
    port: int
    app: str
    stream: str
    tc_url: str
    redacted: str  # for logs: credentials, query values and the stream key masked

    def __str__(self) -> str:
        return self.redacted


def redact(url: str) -> str:
    """``url`` with any user:password and query values replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        query = "&".join(f"{p.partition('=')[0]}=***" if "=" in p else "***"
                         for p in query.split("&"))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def mask_key(stream: str) -> str:
    """A stream name as logs show it: for RTMP services the name is the secret stream key,
    so only its first two characters and its length are shown."""
    stream = stream.partition("?")[0]
    return f"{stream[:2]}***({len(stream)})" if len(stream) > 4 else "***"


def target(rtmp_url: str, stream_name: str = "", full_url: bool = False) -> RtmpTarget:
    """Where to publish.  ``full_url``: ``rtmp_url`` ends with the stream name; otherwise
    ``stream_name`` is published in the application ``rtmp_url`` names.  ValueError
    says what is wrong without quoting the URL (it may hold a password)."""
    if not isinstance(rtmp_url, str) or not rtmp_url:
        raise ValueError("rtmpUrl is required")
    if _BAD_URL_CHARS.search(rtmp_url):
        raise ValueError("rtmpUrl must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(rtmp_url)
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError("rtmpUrl is not a valid URL (bad port?)") from None
    if parts.scheme.lower() != "rtmp":
        raise ValueError("rtmpUrl must be an rtmp:// URL")
    host = parts.hostname
    if not host:
        raise ValueError("rtmpUrl has no host")
    if parts.fragment:
        raise ValueError("rtmpUrl must not have a #fragment")
    path = urllib.parse.unquote(parts.path).strip("/")
    query = f"?{parts.query}" if parts.query else ""
    if full_url:
        app, _, stream = path.rpartition("/")
        if not app or not stream:
            raise ValueError("rtmpUrl must be rtmp://host[:port]/app/streamName "
                             "when rtmpTransponderFullUrl is true")
        stream += query
        app_query = ""
    else:
        app, stream, app_query = path, stream_name, query
        if not app:
            raise ValueError("rtmpUrl must name an application: rtmp://host[:port]/app")
        if not stream:
            raise ValueError("no stream name to publish")
    host_part = f"[{host}]" if ":" in host else host
    tc_url = f"rtmp://{host_part}:{port}/{app}{app_query}"
    shown = redact(rtmp_url)
    if full_url:
        shown_path = urllib.parse.urlsplit(shown)
        head, _, key = shown_path.path.rpartition("/")
        shown = urllib.parse.urlunsplit(shown_path._replace(path=f"{head}/{mask_key(key)}"))
    else:
        shown += f" ({mask_key(stream_name)})"
    return RtmpTarget(host=host, port=port, app=app + app_query, stream=stream, tc_url=tc_url,
                      redacted=shown)


class _ChunkReader:
    """Reassembles messages from the server's chunk stream (§5.3)."""

    def __init__(self):
        self.chunk_size = 128
        self._buf = bytearray()
        self._streams: dict[int, dict] = {}

    def feed(self, data: bytes) -> list[tuple[int, int, bytes, int]]:
        """Complete messages as (type, stream id, payload, timestamp).  RtmpError when
        the server sets an unusable chunk size or sends more than this client holds."""
        self._buf += data
        out = []
        while True:
            message = self._one()
            if message is None:
                return out
            if message[0] == _MSG_SET_CHUNK_SIZE and len(message[2]) >= 4:
                size = struct.unpack(">I", message[2][:4])[0] & 0x7FFFFFFF
                if size < 1:
                    raise RtmpError(f"the server set chunk size {size} (must be at least 1)")
                self.chunk_size = min(size, MAX_CHUNK_SIZE)
            out.append(message)

    def _one(self):
        """The next complete message, or None when more bytes are needed.  One chunk per
        turn of the loop (a chunk size of 1 means one turn per byte: no recursion)."""
        while True:
            done, message = self._chunk()
            if not done or message is not None:
                return message

    def _chunk(self):
        """(False, None): wait for more bytes; (True, message or None): one chunk taken."""
        buf = self._buf
        if not buf:
            return False, None
        fmt, csid = buf[0] >> 6, buf[0] & 0x3F
        pos = 1
        if csid == 0:
            if len(buf) < 2:
                return False, None
            csid, pos = 64 + buf[1], 2
        elif csid == 1:
            if len(buf) < 3:
                return False, None
            csid, pos = 64 + buf[1] + buf[2] * 256, 3
        state = self._streams.get(csid)
        if state is None:
            if len(self._streams) >= MAX_CHUNK_STREAMS:
                raise RtmpError(f"the server used more than {MAX_CHUNK_STREAMS} chunk streams")
            state = self._streams[csid] = {"ts": 0, "delta": 0, "len": 0, "type": 0, "msid": 0,
                                           "data": bytearray(), "ext": False}
        header_len = (11, 7, 3, 0)[fmt]
        if len(buf) < pos + header_len:
            return False, None
        head = buf[pos:pos + header_len]
        pos += header_len
        ts_field = int.from_bytes(head[0:3], "big") if fmt < 3 else None
        ext = ts_field == 0xFFFFFF if ts_field is not None else state["ext"]
        if ext:
            if len(buf) < pos + 4:
                return False, None
            ts_field = int.from_bytes(buf[pos:pos + 4], "big")
            pos += 4
        new_message = not state["data"]
        if fmt <= 1:
            length, kind = int.from_bytes(head[3:6], "big"), head[6]
            if length > MAX_SERVER_MESSAGE:
                raise RtmpError(f"the server sent a {length}-byte message "
                                f"(at most {MAX_SERVER_MESSAGE} accepted)")
        else:
            length, kind = state["len"], state["type"]
        remaining = length - (len(state["data"]) if fmt == 3 else 0)
        take = min(self.chunk_size, max(remaining, 0))
        if len(buf) < pos + take:
            return False, None
        # the whole chunk is here: commit the header
        if fmt == 0:
            state["ts"] = ts_field
            state["msid"] = int.from_bytes(head[7:11], "little")
        elif fmt in (1, 2):
            state["delta"] = ts_field
            state["ts"] += ts_field
        elif new_message:
            state["ts"] += state["delta"]
        state["ts"] &= 0xFFFFFFFF
        if fmt <= 1:
            state["len"], state["type"] = length, kind
        if fmt < 3:
            state["data"] = bytearray()
        state["ext"] = ext
        state["data"] += buf[pos:pos + take]
        del buf[:pos + take]
        if len(state["data"]) >= state["len"]:
            payload = bytes(state["data"])
            state["data"] = bytearray()
            return True, (state["type"], state["msid"], payload, state["ts"])
        return True, None


def _chunks(csid: int, kind: int, msid: int, timestamp: int, payload: bytes,
            chunk_size: int) -> bytes:
    """One message as a type-0 chunk followed by type-3 continuation chunks."""
    ts = timestamp & 0xFFFFFFFF
    extended = ts >= 0xFFFFFF
    head = bytes([csid & 0x3F]) + (0xFFFFFF if extended else ts).to_bytes(3, "big")
    head += len(payload).to_bytes(3, "big") + bytes([kind]) + msid.to_bytes(4, "little")
    ext = ts.to_bytes(4, "big") if extended else b""
    out = bytearray(head + ext)
    out += payload[:chunk_size]
    for start in range(chunk_size, len(payload), chunk_size):
        out += bytes([0xC0 | (csid & 0x3F)]) + ext + payload[start:start + chunk_size]
    return bytes(out)


class RtmpPublisher:
    """One RTMP publishing connection.  Every method blocks at most ``timeout`` seconds."""

    def __init__(self, where: RtmpTarget, timeout: float = 10.0, egress=None,
                 connect=socket.create_connection):
        self.target = where
        self.timeout = timeout
        self.egress = egress  # sipgw.egress.EgressPolicy: checks the resolved address
        self._connect = connect
        self._sock: socket.socket | None = None
        self._reader = _ChunkReader()
        self._pending: list = []  # messages read but not looked at yet
        self._stream_id = 0
        self._txn = 0
        self._window = 2_500_000
        self._received = 0
        self._acked = 0

    # -- connection ---------------------------------------------------------------
    def open(self) -> None:
        t = self.target
        try:
            host = t.host if self.egress is None else allowed_address(t.host, t.port, self.egress)
            self._sock = self._connect((host, t.port), timeout=self.timeout)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._handshake()
            self._send_raw(_chunks(2, _MSG_SET_CHUNK_SIZE, 0, 0, struct.pack(">I", CHUNK_SIZE), 128))
            self._command("connect", {"app": t.app, "type": "nonprivate",
                                      "flashVer": "FMLE/3.0 (compatible; sipgw)",
                                      "tcUrl": t.tc_url})
            self._wait_result(self._txn, "connect")
            self._command("releaseStream", None, t.stream)
            self._command("FCPublish", None, t.stream)
            self._command("createStream", None)
            result = self._wait_result(self._txn, "createStream")
            stream_id = result[0] if result else None
            self._stream_id = int(stream_id) if isinstance(stream_id, float) and \
                1 <= stream_id < 2 ** 32 else 1
            self._command("publish", None, t.stream, "live", msid=self._stream_id, csid=8, txn=0)
            self._wait_status("NetStream.Publish.Start")
        except (OSError, ValueError) as exc:
            self.close()
            raise RtmpError(_describe(exc)) from None
        except RtmpError:
            self.close()
            raise

    def _handshake(self) -> None:
        # One deadline for the whole handshake: a server trickling bytes cannot stretch it.
        deadline = time.monotonic() + self.timeout
        c1 = struct.pack(">II", 0, 0) + os.urandom(_HANDSHAKE_SIZE - 8)
        self._send_raw(b"\x03" + c1)
        s0s1 = self._recv_exact(1 + _HANDSHAKE_SIZE, deadline)
        if s0s1[0] != 3:
            raise RtmpError(f"not an RTMP server (version byte {s0s1[0]})")
        s1 = s0s1[1:]
        self._send_raw(s1[:4] + struct.pack(">I", int(time.monotonic() * 1000) & 0xFFFFFFFF)
                       + s1[8:])
        self._recv_exact(_HANDSHAKE_SIZE, deadline)  # S2: echo of C1, not checked (as most clients)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if self._stream_id:
                sock.settimeout(1.0)
                sock.sendall(self._command_bytes("FCUnpublish", None, self.target.stream)
                             + self._command_bytes("deleteStream", None, float(self._stream_id)))
        except OSError:
            pass
        finally:
            self._stream_id = 0
            sock.close()

    def abort(self) -> None:
        """Any thread: shut the socket down so a call blocked on it returns at once (and
        fails); the owner still calls ``close``."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- media ----------------------------------------------------------------------
    def send(self, kind: int, timestamp_ms: int, body: bytes) -> None:
        """One FLV tag body as an RTMP message (audio 8, video 9, data 18)."""
        if self._sock is None:
            raise RtmpError("not connected")
        self._drain()
        try:
            self._send_raw(_chunks(_CSID[kind], kind, self._stream_id, timestamp_ms, body,
                                   CHUNK_SIZE))
        except OSError as exc:
            self.close()
            raise RtmpError(_describe(exc)) from None

    # -- commands ---------------------------------------------------------------------
    def _command_bytes(self, name, obj, *args, msid=0, csid=3, txn=None) -> bytes:
        if txn is None:
            self._txn += 1
            txn = self._txn
        payload = flv.amf0(name) + flv.amf0(float(txn)) + flv.amf0(obj)
        payload += b"".join(flv.amf0(a) for a in args)
        return _chunks(csid, _MSG_AMF0_COMMAND, msid, 0, payload, CHUNK_SIZE)

    def _command(self, name, obj, *args, msid=0, csid=3, txn=None) -> None:
        self._send_raw(self._command_bytes(name, obj, *args, msid=msid, csid=csid, txn=txn))

    def _commands(self, what: str):
        """The server's AMF0 commands, decoded, until ``timeout``; messages that arrived
        in the same read as the awaited one stay queued for the next wait."""
        deadline = time.monotonic() + self.timeout
        while True:
            while self._pending:
                kind, _msid, payload, _ts = self._pending.pop(0)
                if kind == _MSG_AMF0_COMMAND:
                    yield flv.amf0_decode(payload)
            self._pending = self._read(deadline, what)

    def _wait_result(self, txn: int, what: str) -> list:
        for values in self._commands(what):
            if len(values) >= 2 and values[1] == txn:
                if values[0] == "_result":
                    return values[3:]
                if values[0] == "_error":
                    raise RtmpError(f"{what} refused: {_status_text(values)}")

    def _wait_status(self, code: str) -> None:
        for values in self._commands("publish"):
            if values and values[0] == "onStatus":
                info = values[3] if len(values) > 3 and isinstance(values[3], dict) else {}
                if info.get("code") == code:
                    return
                if info.get("level") == "error" or "Failed" in str(info.get("code", "")):
                    raise RtmpError(f"publish refused: {_status_text(values)}")

    def _read(self, deadline: float, what: str) -> list:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RtmpError(f"no answer to {what} within {self.timeout:g} s")
        self._sock.settimeout(left)
        try:
            data = self._sock.recv(65536)
        except socket.timeout:
            raise RtmpError(f"no answer to {what} within {self.timeout:g} s") from None
        if not data:
            raise RtmpError(f"server closed the connection during {what}")
        return self._received_data(data)

    def _received_data(self, data: bytes) -> list:
        self._received += len(data)
        messages = self._reader.feed(data)
        for kind, _msid, payload, _ts in messages:
            if kind == _MSG_WINDOW_ACK and len(payload) >= 4:
                self._window = max(1, struct.unpack(">I", payload[:4])[0])
        if self._received - self._acked >= self._window:
            self._acked = self._received
            self._send_raw(_chunks(2, _MSG_ACK, 0, 0,
                                   struct.pack(">I", self._received & 0xFFFFFFFF), CHUNK_SIZE))
        return messages

    def _drain(self) -> None:
        """Read what the server sent meanwhile (acks, status); fail if it hung up."""
        sock = self._sock
        while True:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return
            try:
                data = sock.recv(65536)
            except OSError as exc:
                self.close()
                raise RtmpError(_describe(exc)) from None
            if not data:
                self.close()
                raise RtmpError("server closed the connection")
            for kind, _msid, payload, _ts in self._received_data(data):
                if kind == _MSG_AMF0_COMMAND:
                    try:
                        values = flv.amf0_decode(payload)
                    except ValueError as exc:
                        self.close()
                        raise RtmpError(f"bad command from the server: {exc}") from None
                    if values and values[0] == "onStatus" and len(values) > 3 and \
                            isinstance(values[3], dict) and values[3].get("level") == "error":
                        self.close()
                        raise RtmpError(f"server stopped the stream: {_status_text(values)}")

    def _send_raw(self, data: bytes) -> None:
        self._sock.settimeout(self.timeout)
        self._sock.sendall(data)

    def _recv_exact(self, size: int, deadline: float) -> bytes:
        out = bytearray()
        while len(out) < size:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RtmpError(f"no handshake within {self.timeout:g} s")
            self._sock.settimeout(left)
            chunk = self._sock.recv(size - len(out))
            if not chunk:
                raise RtmpError("server closed the connection during the handshake")
            out += chunk
        return bytes(out)


MAX_STATUS_TEXT = 200  # of a server's reason, in a push's info and its log line


def _status_text(values: list) -> str:
    """The server's code and description, cut short and printable (it reaches logs)."""
    for value in values[2:]:
        if isinstance(value, dict) and ("code" in value or "description" in value):
            text = " ".join(str(value[k]) for k in ("code", "description") if value.get(k))
            return "".join(c if c.isprintable() else "?" for c in text[:MAX_STATUS_TEXT])
    return "no reason given"


def allowed_address(host: str, port: int, egress) -> str:
    """The first address of ``host`` the egress policy allows (the name was checked at
    /push/startup; this checks what it resolves to now); ValueError when there is none."""
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
        if egress.allows(host, resolved=sockaddr[0]):
            return sockaddr[0]
    raise ValueError("the RTMP server's address is denied by rtmp_egress")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout):
        return "timed out"
    if isinstance(exc, socket.gaierror):
        return "cannot resolve the server's host name"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__
