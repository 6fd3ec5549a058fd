"""Place one call with sipgw's own user agent (in this process, asyncio reactor) and write
the H264 access units its stream publishes to a file, for PyAV to decode.

    python3 capture_stream.py KAMAILIO_PORT OUT.h264 FRAMES [SRTP_MODE]
prints one JSON line: {"frames": n, "keyframes": k, "width": w, "height": h}
"""
import json
import sys

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor  # noqa: E402

from sipgw.calls import CallRequest  # noqa: E402
from sipgw.config import Config  # noqa: E402
from sipgw.gateway.manager import CallManager  # noqa: E402


async def capture(port: int, path: str, wanted: int, srtp: str = "") -> dict:
    ua = CallManager(reactor, Config(sip_bind_address="127.0.0.1", sip_local_port=0,
                                     media_port_from=39000, media_port_to=39199))
    ua.start()
    ua.startup(CallRequest(call_id="capture", callee="bob", sip_login="alice",
                           sip_password="alicepw", sip_domain="127.0.0.1", sip_port=port,
                           sip_srtp=srtp))
    stream = ua.streams.get(name="capture")
    sink = stream.subscribe(maxlen=100000)
    frames = keyframes = 0
    timeout = reactor.callLater(30, sink.close)
    with open(path, "wb") as out:
        while frames < wanted:
            frame = await sink.get()
            if frame is None:
                break
            if frame.kind == "video":
                out.write(frame.data)
                frames += 1
                keyframes += frame.keyframe
    if timeout.active():
        timeout.cancel()
    counters = stream.counters_source() if stream.counters_source else {}  # before the close
    ua.terminate("capture")
    d = defer.Deferred()
    reactor.callLater(0.5, d.callback, None)
    await d
    await ua.stop()
    return {"frames": frames, "keyframes": keyframes, "width": stream.width,
            "height": stream.height,
            "counters": counters}


def main():
    port, path, wanted = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    srtp = sys.argv[4] if len(sys.argv) > 4 else ""
    result = {}

    def done(value):
        result.update(value)
        reactor.stop()

    def failed(failure):
        result["error"] = failure.getTraceback()
        reactor.stop()

    reactor.callWhenRunning(
        lambda: defer.ensureDeferred(capture(port, path, wanted, srtp)).addCallbacks(done, failed))
    reactor.run()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
