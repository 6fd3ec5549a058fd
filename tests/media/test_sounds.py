"""The sound sipgw ships for the SIP-as-RTMP pages' Music box: made by sipgw itself, and a
chord a listener hears (three tones, no click at the loop point)."""
import numpy

from sipgw import sounds
from sipgw.media.audio import SoundLoop


def _peaks(samples, rate, count):
    spectrum = numpy.abs(numpy.fft.rfft(samples * numpy.hanning(len(samples))))
    freqs = numpy.fft.rfftfreq(len(samples), 1 / rate)
    return sorted(freqs[numpy.argsort(spectrum)[-count * 3:]])


def test_the_shipped_sample_is_exactly_what_sipgw_makes():
    """sipgw/sounds/sample.wav is the bytes of sounds.chord(): no third-party recording."""
    path = sounds.builtin(sounds.SAMPLE)
    with open(path, "rb") as f:
        assert f.read() == sounds.chord()


def test_the_sample_decodes_to_an_a_major_chord_that_loops_without_a_click():
    """Decoded as a push decodes it (PyAV, 16 kHz mono): strong components at A4, C#5 and
    E5 only; the ends fade to near silence, so looping does not click."""
    loop = SoundLoop(sounds.builtin(sounds.SAMPLE), 16000)
    samples = loop.samples
    assert len(samples) == 32000 and numpy.sqrt(numpy.mean(samples ** 2)) > 0.1
    peaks = _peaks(samples[4000:20000], 16000, 3)
    for hz in sounds.CHORD_HZ:
        assert any(abs(p - hz) < 3 for p in peaks), (hz, peaks)
    assert all(min(abs(p - hz) for hz in sounds.CHORD_HZ) < 3 for p in peaks), peaks
    assert abs(samples[0]) < 0.01 and abs(samples[-1]) < 0.01


def test_only_wav_names_that_exist_are_builtin():
    assert sounds.builtin("nope.wav") is None and sounds.builtin("__init__.py") is None
