"""The RTMP publisher: URLs, redaction, chunking, and a publish against a small server."""
import threading
import time

import pytest

from fake_rtmp import FakeRtmpServer, wait
from sipgw.media import flv
from sipgw.media.rtmp import (MAX_STATUS_TEXT, RtmpError, RtmpPublisher, _chunks, _ChunkReader,
                              _status_text, redact, target)


def test_target_from_an_application_url_and_a_stream_name():
    """rtmpUrl names the application; the republished name is the stream key."""
    t = target("rtmp://cdn.example.com/live", "rtmp_call1")
    assert (t.host, t.port, t.app, t.stream) == ("cdn.example.com", 1935, "live", "rtmp_call1")
    assert t.tc_url == "rtmp://cdn.example.com:1935/live"


def test_target_from_a_full_url():
    """With rtmpTransponderFullUrl the last path segment (and query) is the stream key."""
    t = target("rtmp://127.0.0.1:1940/app/inst/key123?token=s3cret", "ignored", full_url=True)
    assert (t.port, t.app, t.stream) == (1940, "app/inst", "key123?token=s3cret")


@pytest.mark.parametrize("url,message", [
    ("", "rtmpUrl is required"),
    ("http://example.com/live", "must be an rtmp:// URL"),
    ("rtmp:///live", "has no host"),
    ("rtmp://example.com", "must name an application"),
    ("rtmp://example.com:99999/live", "bad port"),
    ("rtmp://exa mple.com/live", "spaces or control characters"),
])
def test_unusable_urls_are_refused_without_quoting_them(url, message):
    """Each unusable URL gets a ValueError that says why and does not repeat the URL."""
    with pytest.raises(ValueError) as info:
        target(url, "rtmp_x")
    assert message in str(info.value)
    assert not url or url not in str(info.value)


def test_full_url_needs_a_stream_key():
    """A full URL without app/stream is refused."""
    with pytest.raises(ValueError, match="app/streamName"):
        target("rtmp://example.com/live", "", full_url=True)


def test_redact_hides_user_password_and_query_values():
    """Credentials and tokens never appear in what is logged."""
    shown = redact("rtmp://bob:hunter2@example.com:1935/live/key?token=abc&x")
    assert "bob" not in shown and "hunter2" not in shown and "abc" not in shown
    assert shown == "rtmp://***@example.com:1935/live/key?token=***&***"
    assert "hunter2" not in target("rtmp://bob:hunter2@h/live", "s").redacted


def test_logged_target_masks_the_stream_key():
    """The stream name is an RTMP service's secret key: logs show two characters and its length."""
    key = "abcd-1234-efgh-5678"
    full = target(f"rtmp://bob:pw@a.rtmp.example.com/live2/{key}?t=1", full_url=True)
    assert key not in full.redacted and "pw" not in full.redacted
    assert full.redacted == "rtmp://***@a.rtmp.example.com/live2/ab***(19)?t=***"
    assert full.stream == f"{key}?t=1"
    split = target("rtmp://h/live", key)
    assert key not in split.redacted and split.redacted == "rtmp://h/live (ab***(19))"
    assert target("rtmp://h/live", "abc").redacted == "rtmp://h/live (***)"


def test_chunk_reader_reassembles_messages_split_in_chunks_and_bytes():
    """A message larger than the chunk size, fed one byte at a time, comes out whole."""
    payload = bytes(range(256)) * 3
    data = _chunks(6, 9, 1, 0x1000000, payload, 128) + _chunks(6, 9, 1, 5, b"xy", 128)
    reader = _ChunkReader()
    out = []
    for i in range(len(data)):
        out += reader.feed(data[i:i + 1])
    assert out == [(9, 1, payload, 0x1000000), (9, 1, b"xy", 5)]


def test_publish_sends_media_to_the_server():
    """open() does handshake, connect, createStream and publish; send() delivers tags."""
    server = FakeRtmpServer()
    try:
        publisher = RtmpPublisher(target(server.url(), "rtmp_s"), timeout=5)
        publisher.open()
        publisher.send(flv.TAG_VIDEO, 0, b"\x17\x00\x00\x00\x00abc")
        publisher.send(flv.TAG_AUDIO, 20, b"\xaf\x01" + b"z" * 5000)
        wait(lambda: len(server.media()) == 2, 5, "two media messages")
        assert server.published == ["rtmp_s"]
        assert server.connects[0]["app"] == "live"
        assert server.media(flv.TAG_AUDIO) == [b"\xaf\x01" + b"z" * 5000]
        publisher.close()
    finally:
        server.stop()


def test_a_server_that_never_answers_costs_only_the_timeout_and_never_the_gil():
    """Against a server that accepts TCP and stays silent, open() fails after its timeout
    while another thread keeps running (FFmpeg's rtmp:// output held the GIL here)."""
    server = FakeRtmpServer(silent=True)
    gaps = []
    stop = threading.Event()

    def ticker():
        last = time.monotonic()
        while not stop.is_set():
            time.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        started = time.monotonic()
        with pytest.raises(RtmpError, match="no answer|timed out|closed"):
            RtmpPublisher(target(server.url(), "rtmp_s"), timeout=0.5).open()
        assert time.monotonic() - started < 3
    finally:
        stop.set()
        thread.join()
        server.stop()
    assert max(gaps) < 0.2


def test_a_refused_connection_is_an_rtmp_error():
    """Nothing listening: RtmpError with the reason, at once."""
    server = FakeRtmpServer()
    url = server.url()
    server.stop()
    with pytest.raises(RtmpError, match="refused"):
        RtmpPublisher(target(url, "s"), timeout=2).open()


def test_send_after_the_server_hung_up_raises():
    """When the server drops the connection, a later send raises RtmpError."""
    server = FakeRtmpServer()
    try:
        publisher = RtmpPublisher(target(server.url(), "rtmp_s"), timeout=2)
        publisher.open()
        server.drop()
        with pytest.raises(RtmpError):
            for _ in range(200):
                publisher.send(flv.TAG_VIDEO, 0, b"x" * 10000)
                time.sleep(0.005)
    finally:
        server.stop()


def test_a_server_chunk_size_of_one_byte_publishes():
    """A server that sets chunk size 1 and answers in 1-byte chunks: open() reads its
    replies without recursing (it raised RecursionError) and the push publishes."""
    server = FakeRtmpServer(chunk_size=1)
    try:
        publisher = RtmpPublisher(target(server.url(), "rtmp_s"), timeout=5)
        publisher.open()
        publisher.send(flv.TAG_VIDEO, 0, b"\x17\x00\x00\x00\x00abc")
        wait(lambda: len(server.media()) == 1, 5, "one media message")
        publisher.close()
    finally:
        server.stop()


def test_a_server_chunk_size_of_zero_fails_the_publish_with_the_reason():
    """Chunk size 0 (spec: at least 1) is a clear RtmpError, not a hang or a crash."""
    server = FakeRtmpServer(chunk_size=0)
    try:
        with pytest.raises(RtmpError, match="chunk size 0"):
            RtmpPublisher(target(server.url(), "rtmp_s"), timeout=2).open()
    finally:
        server.stop()


def test_chunk_reader_bounds_what_a_server_makes_it_hold():
    """A huge chunk size is capped; a message over 1 MiB or a 65th chunk stream is refused;
    100,000 one-byte chunks are read in a loop."""
    reader = _ChunkReader()
    reader.feed(_chunks(2, 1, 0, 0, (0x7FFFFFFF).to_bytes(4, "big"), 128))
    assert reader.chunk_size == 0xFFFFFF
    with pytest.raises(RtmpError, match="message"):
        _ChunkReader().feed(b"\x03" + b"\x00" * 3 + (2 << 20).to_bytes(3, "big") + b"\x14" + bytes(4))
    with pytest.raises(RtmpError, match="chunk streams"):
        _ChunkReader().feed(b"".join(bytes([0, n]) + bytes(6) + b"\x14" + bytes(4)
                                     for n in range(65)))
    reader = _ChunkReader()
    reader.chunk_size = 1
    payload = bytes(range(256)) * 400
    assert reader.feed(_chunks(6, 9, 1, 0, payload, 1)) == [(9, 1, payload, 0)]


def test_amf0_nested_too_deep_is_a_value_error():
    """Objects nested 10,000 deep in a server's reply raise ValueError, not RecursionError."""
    with pytest.raises(ValueError, match="nested"):
        flv.amf0_decode(b"\x03\x00\x01a" * 10000)


def test_replies_that_arrive_in_one_read_are_all_used():
    """A server that sends every reply at once (connect, createStream and publish results
    in one TCP read): open() keeps what follows the awaited reply (it dropped them and
    failed 'server closed the connection during createStream')."""
    import socket

    def reply(name, txn, *values, msid=0):
        body = flv.amf0(name) + flv.amf0(float(txn)) + b"".join(flv.amf0(v) for v in values)
        return _chunks(3, 20, msid, 0, body, 128)

    listener = socket.create_server(("127.0.0.1", 0))
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    try:
        theirs.sendall(b"\x03" + bytes(3072) + reply("_result", 1, None, {"code": "x"})
                       + reply("_result", 4, None, 7.0)
                       + reply("onStatus", 0, None, {"level": "status",
                                                     "code": "NetStream.Publish.Start"}))
        publisher = RtmpPublisher(target("rtmp://127.0.0.1/live", "s"), timeout=2,
                                  connect=lambda *a, **kw: ours)
        publisher.open()
        assert publisher._stream_id == 7
    finally:
        for sock in (ours, theirs, listener):
            sock.close()


def test_a_trickled_handshake_is_bounded_by_the_timeout_in_total():
    """A server sending its handshake one byte every 0.1 s cannot keep open() past its
    timeout: the timeout bounds the whole handshake, not each read."""
    server = FakeRtmpServer(trickle=0.1)
    errors = []

    def connect():
        try:
            RtmpPublisher(target(server.url(), "rtmp_s"), timeout=0.5).open()
        except RtmpError as exc:
            errors.append(str(exc))
    thread = threading.Thread(target=connect, daemon=True)
    try:
        thread.start()
        thread.join(3)
        assert not thread.is_alive() and errors
    finally:
        server.stop()
        thread.join(3)


def test_a_servers_reason_is_cut_short_and_printable():
    """A status description of a megabyte with control characters reaches the push's info
    and log line as at most MAX_STATUS_TEXT printable characters."""
    text = _status_text(["onStatus", 0, None, {"code": "NetStream.Publish.BadName",
                                              "description": "x\r\n" * 500_000}])
    assert len(text) == MAX_STATUS_TEXT and text.isprintable()
    assert text.startswith("NetStream.Publish.BadName x??x")
