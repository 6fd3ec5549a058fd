"""A real baresip call republished with /push/* to a real nginx-rtmp, read back live with
ffprobe; nginx restarting mid-push; the push ending with the call."""
import json
import subprocess
import time

import pytest

from peers import require_program, wait_for
from sipgw_daemon import Sipgw


@pytest.fixture
def daemon(tmp_path):
    # Retries 3 s apart: nginx restarts within 1 s, so the player (LiveProbe) is waiting
    # in nginx before the push comes back.
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=10, rtmp_reconnect_delay=3,
               rtmp_reconnect_max_delay=3, rtmp_timeout=3,
               record_dir=str(tmp_path / "records")).start()
    yield gw
    gw.stop()


def _push(daemon, name):
    return next(iter(daemon.found("/push/find", {"streamName": name})), None)


class LiveProbe:
    """ffprobe playing a live RTMP URL, started before the push publishes: nginx-rtmp
    starts a player's video at a keyframe, and baresip sends one only every 10 s unless
    asked (a push asks when it connects), so the player must already be waiting."""

    def __init__(self, url: str):
        self.proc = subprocess.Popen(
            [require_program("ffprobe"), "-v", "error", "-rw_timeout", "15000000",
             "-show_streams", "-of", "json", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self, timeout: float = 40) -> dict:
        """{codec_type: stream} as ffprobe saw them."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.returncode == 0, err[-2000:]
        return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def test_pushed_call_is_watchable_from_nginx_and_survives_a_restart(daemon, kamailio, baresip,
                                                                    nginx_rtmp):
    """The call's stream read back live from nginx-rtmp is h264 320x240 + aac; after nginx
    restarts the push reconnects and is watchable again; it ends with the call."""
    daemon.call_bob(kamailio.port, "r1")
    probe = LiveProbe(nginx_rtmp.url("rtmp_stream-r1"))
    time.sleep(0.5)  # the player is waiting in nginx
    answer = daemon.rest("/push/startup", {"streamName": "stream-r1", "rtmpUrl": nginx_rtmp.url()})
    assert answer["streamName"] == "rtmp_stream-r1"
    wait_for(lambda: (p := _push(daemon, "rtmp_stream-r1")) and p["status"] == "PUBLISHING"
             and p["sent"]["video"] > 0 and p["sent"]["audio"] > 0, 20, "the push to publish")
    streams = probe.result()
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert audio["codec_name"] == "aac"

    sent = _push(daemon, "rtmp_stream-r1")["sent"]["video"]
    nginx_rtmp.restart(down_for=0.3)
    probe = LiveProbe(nginx_rtmp.url("rtmp_stream-r1"))
    wait_for(lambda: (p := _push(daemon, "rtmp_stream-r1")) and p["reconnects"] >= 1
             and p["status"] == "PUBLISHING" and p["sent"]["video"] > sent + 25, 30,
             f"the push to resume\n{daemon.log()[-2000:]}")
    streams = probe.result()
    assert (streams["video"]["codec_name"], streams["audio"]["codec_name"]) == ("h264", "aac")
    assert "RECONNECTING" in daemon.log()

    daemon.rest("/call/terminate", {"callId": "r1"})
    daemon.wait_status("r1", "FINISH")
    wait_for(lambda: _push(daemon, "rtmp_stream-r1") is None, 10, "the push to end")
    assert "hunter" not in daemon.log()


def test_push_to_a_server_that_is_down_keeps_retrying_and_is_terminated(daemon, kamailio,
                                                                         baresip, tmp_path):
    """Nothing listening: the push shows RECONNECTING (the reason only in the log, so
    /push/find is no port scanner), retries, and /push/terminate removes it; credentials in
    the URL never reach the log."""
    daemon.call_bob(kamailio.port, "r2")
    url = "rtmp://user:hunter2@127.0.0.1:1/live?token=s3cret"
    answer = daemon.rest("/push/startup", {"streamName": "stream-r2", "rtmpUrl": url})
    push = wait_for(lambda: (p := _push(daemon, "rtmp_stream-r2")) and p["reconnects"] >= 2
                    and p, 20, "retries")
    assert push["status"] == "RECONNECTING" and "refused" not in push["info"]
    assert "refused" in daemon.log()
    daemon.rest("/push/terminate", {"mediaSessionId": answer["mediaSessionId"]})
    wait_for(lambda: _push(daemon, "rtmp_stream-r2") is None, 10, "the push to stop")
    log = daemon.log()
    assert "hunter2" not in log and "s3cret" not in log
    daemon.rest("/call/terminate", {"callId": "r2"})


def test_sip_as_rtmp_call_is_watchable_from_nginx(daemon, kamailio, baresip, nginx_rtmp):
    """/call/startup with rtmpUrl + rtmpStream (as the sip-as-rtmp-3 page sends it, no
    toStream) republishes the call to nginx-rtmp as rtmp_<rtmpStream>, read back live as
    h264 320x240 + aac; /call/find shows the push's status; it ends with the call."""
    probe = LiveProbe(nginx_rtmp.url("rtmp_sar1"))
    time.sleep(0.5)  # the player is waiting in nginx
    daemon.start_call_to_bob(kamailio.port, "sar1", toStream="", rtmpUrl=nginx_rtmp.url(),
                             rtmpStream="sar1")
    call = wait_for(lambda: (c := daemon.call("sar1")) and c["rtmpStreamStatus"] == "PUBLISHING"
                    and c, 30, f"the call's push to publish\n{daemon.log()[-2000:]}")
    assert (call["streamName"], call["rtmpStream"], call["rtmpUrl"]) == \
        ("sar1", "sar1", nginx_rtmp.url())
    streams = probe.result()
    video, audio = streams["video"], streams["audio"]
    assert (video["codec_name"], video["width"], video["height"]) == ("h264", 320, 240)
    assert audio["codec_name"] == "aac"
    daemon.rest("/call/terminate", {"callId": "sar1"})
    wait_for(lambda: _push(daemon, "rtmp_sar1") is None, 15, "the push to end with the call")


def test_muted_push_and_periodic_keyframes_as_nginx_records_them(tmp_path, kamailio, baresip,
                                                                 nginx_rtmp):
    """options.action mute: what nginx-rtmp receives (its FLV recording, decoded with PyAV)
    has silent AAC until /push/unmute, then baresip's 440 Hz; and with
    periodic_fir_request_interval=2000 baresip (a 10 s GOP of its own) is asked for a
    keyframe every 2 s, so a player joining the RTMP stream at any moment waits at most
    about that long for a picture (no gap between keyframes over 3 s)."""
    import av
    import numpy
    gw = Sipgw(str(tmp_path), rtp_activity_timeout=10, periodic_fir_request_interval=2000,
               record_dir=str(tmp_path / "gw-records")).start()
    try:
        gw.call_bob(kamailio.port, "m1")
        answer = gw.rest("/push/startup", {"streamName": "stream-m1", "rtmpUrl": nginx_rtmp.url(),
                                           "options": {"action": "mute"}})
        assert (answer["muted"], answer["soundEnabled"]) == (True, False)
        wait_for(lambda: (p := _push(gw, "rtmp_stream-m1")) and p["status"] == "PUBLISHING"
                 and p["sent"]["video"] > 0, 20, "the push to publish")
        published = time.monotonic()
        time.sleep(6)
        ref = {"mediaSessionId": answer["mediaSessionId"]}
        assert gw.rest("/push/unmute", ref)["muted"] is False
        unmuted = time.monotonic() - published
        time.sleep(5)
        gw.rest("/push/terminate", ref)
        wait_for(lambda: _push(gw, "rtmp_stream-m1") is None, 10, "the push to stop")
        gw.rest("/call/terminate", {"callId": "m1"})
    finally:
        gw.stop()
    path = nginx_rtmp.record_dir / "rtmp_stream-m1.flv"
    wait_for(lambda: path.exists() and path.stat().st_size > 0, 10, "nginx's recording")
    keyframes, audio = [], []
    with av.open(str(path)) as container:
        rate = container.streams.audio[0].sample_rate
        for packet in container.demux():
            if packet.pts is None:
                continue
            at = float(packet.pts * packet.time_base)
            if packet.stream.type == "video" and packet.is_keyframe:
                keyframes.append(at)
            elif packet.stream.type == "audio":
                for frame in packet.decode():
                    audio.append((at, frame.to_ndarray().reshape(-1)))
    gaps = [b - a for a, b in zip(keyframes, keyframes[1:])]
    assert len(keyframes) >= 5 and max(gaps) < 3.0, keyframes
    muted = numpy.concatenate([s for at, s in audio if 0.5 < at < unmuted - 1.5])
    live = numpy.concatenate([s for at, s in audio if unmuted + 1.5 < at < audio[-1][0] - 0.5])
    assert numpy.abs(muted).max() < 1e-3
    assert numpy.abs(live).max() > 0.05
    pitch = numpy.argmax(numpy.abs(numpy.fft.rfft(live))) * rate / len(live)
    assert abs(pitch - 440) < 20
