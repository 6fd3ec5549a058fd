"""The unchanged WebSDK sip-as-rtmp-2 page's Music box: it asks for soundFile "sample.wav",
which sipgw ships (sipgw/sounds); the pushed audio nginx-rtmp records is that chord, not the
callee's 440 Hz tone."""
import time

import av
import numpy
from selenium.webdriver.common.by import By

from peers import wait_for
from sipgw import sounds
from test_browser_websdk import SIP_AS_RTMP_PAGE, _call_from_sip_as_rtmp_page


def _audio(path):
    """The recorded FLV's audio as mono float samples and their rate."""
    chunks, rate = [], 0
    with av.open(str(path)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono")
        for frame in container.decode(audio=0):
            rate = frame.sample_rate
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
    return numpy.concatenate(chunks), rate


def test_music_box_pushes_the_shipped_chord(daemon, kamailio, baresip, chromium, websdk_site,
                                            nginx_rtmp):
    """Music ticked, then Start: /push/startup with options sound_on sample.wav (not in
    sound_dir) publishes; the audio nginx-rtmp records has the chord's C#5 and E5, loud."""
    driver = _call_from_sip_as_rtmp_page(chromium, websdk_site.url(SIP_AS_RTMP_PAGE), daemon,
                                         kamailio, nginx_rtmp, "music")
    chromium.wait_text("callStatus", "ESTABLISHED", timeout=30)
    chromium.wait(lambda: driver.find_element(By.ID, "startRtmp").is_enabled(), 10,
                  "the RTMP Start button")
    driver.find_element(By.CSS_SELECTOR, "#music + .slider").click()  # the switch a person clicks
    driver.find_element(By.ID, "startRtmp").click()
    (push,) = chromium.wait(
        lambda: [p for p in daemon.rest("/push/find_all") if p["status"] == "PUBLISHING"], 30,
        "the push to publish")
    assert push["soundEnabled"] is True and push["options"]["soundFile"] == "sample.wav"
    wait_for(lambda: daemon.rest("/push/find_all")[0]["sent"]["audio"] > 250, 30,
             "5 s of pushed audio")  # 16 kHz AAC: 15.6 frames a second
    driver.find_element(By.ID, "callBtn").click()  # Hangup: the push ends with the call
    chromium.wait_text("callStatus", "FINISH", "FINISHED", timeout=20)
    record = nginx_rtmp.record_dir / "rtmp_music.flv"
    wait_for(lambda: not daemon.found("/push/find_all"), 15, "the push to end")
    time.sleep(0.5)  # nginx closes the file when the publisher goes
    samples, rate = _audio(record)
    assert len(samples) > 3 * rate
    middle = samples[rate:3 * rate]
    spectrum = numpy.abs(numpy.fft.rfft(middle * numpy.hanning(len(middle))))
    freqs = numpy.fft.rfftfreq(len(middle), 1 / rate)

    def level(hz):
        return spectrum[(freqs > hz - 5) & (freqs < hz + 5)].max()
    noise = numpy.median(spectrum)
    for hz in sounds.CHORD_HZ:
        assert level(hz) > 100 * noise, (hz, level(hz), noise)
    assert numpy.sqrt(numpy.mean(middle ** 2)) > 0.05  # audible, not near silence
