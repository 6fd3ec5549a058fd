"""The worker-side pipeline: a callee that switches audio codec mid-call."""
import av
import numpy

from sipgw.media.pipeline import Pipeline
from sipgw.streams.stream import MediaFrame


def _g711(codec: str, seconds: float, hz: float = 440.0) -> list[bytes]:
    """20 ms G.711 payloads of a sine, encoded by FFmpeg."""
    encoder = av.CodecContext.create("pcm_mulaw" if codec == "PCMU" else "pcm_alaw", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 8000, "mono", "s16"
    encoder.open()
    n = int(8000 * seconds)
    tone = (numpy.sin(2 * numpy.pi * hz * numpy.arange(n) / 8000) * 12000).astype("<i2")
    frame = av.AudioFrame.from_ndarray(tone.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    data = b"".join(bytes(p) for p in encoder.encode(frame))
    return [data[i:i + 160] for i in range(0, len(data), 160)]


def _purity(samples: numpy.ndarray, rate: int, hz: float) -> float:
    """Share of the signal's energy within 20 Hz of ``hz``."""
    spectrum = numpy.abs(numpy.fft.rfft(samples)) ** 2
    freqs = numpy.fft.rfftfreq(len(samples), 1 / rate)
    return spectrum[abs(freqs - hz) < 20].sum() / spectrum.sum()


def test_a_mid_call_switch_from_pcmu_to_pcma_keeps_the_aac_clean():
    """PCMU for 1 s, then PCMA (as a callee answering '0 8' may do): the AAC decoder is
    switched, so the second second is still a clean 440 Hz tone (decoded with the first
    decoder it would be distortion), on one unbroken AAC timeline."""
    pipeline = Pipeline(has_video=False)
    out = []
    for i, payload in enumerate(_g711("PCMU", 1.0) + _g711("PCMA", 1.0)):
        codec = "PCMU" if i < 50 else "PCMA"
        out += pipeline.feed(MediaFrame("audio", codec, 8000, 1000 + 160 * i, payload, False),
                             10.0 + 0.02 * i)
    out += pipeline.flush()
    assert pipeline.aac.switches == 1
    pts = [p for _, p, _ in out]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)
    decoder = av.CodecContext.create("aac", "r")
    decoder.extradata = pipeline.aac.extradata
    samples = []
    for _, _, raw in out:
        for frame in decoder.decode(av.Packet(raw)):
            samples.append(frame.to_ndarray()[0])
    pcm = numpy.concatenate(samples)
    rate = pipeline.aac.rate
    first, second = pcm[int(0.2 * rate):int(0.9 * rate)], pcm[int(1.2 * rate):int(1.9 * rate)]
    assert _purity(first, rate, 440) > 0.9
    assert numpy.abs(second).max() > 0.1 and _purity(second, rate, 440) > 0.9
