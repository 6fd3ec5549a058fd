"""SDES (RFC 4568): a=crypto lines, keys never shown, and the off/optional/mandatory choice."""
import base64

import pytest

from sipgw.sip import sdes
from sipgw.sip.sdes import Crypto, CryptoError, agree, mask, offer_keys
from sipgw.sip.sdp import SessionDescription, make_offer

KEY = base64.b64encode(bytes(range(30))).decode()


def _answer(proto="RTP/AVP", crypto=()):
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
             f"m=audio 4000 {proto} 0", "a=rtpmap:0 PCMU/8000"]
    lines += [f"a=crypto:{c}" for c in crypto]
    return SessionDescription.parse("\r\n".join(lines) + "\r\n")


def test_crypto_line_round_trips_and_hides_its_key_in_repr():
    """tag suite inline:KEY|lifetime parses to a 30-byte key; str() writes it back; repr
    never shows it."""
    c = Crypto.parse(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^20")
    assert (c.tag, c.suite, c.key) == (1, "AES_CM_128_HMAC_SHA1_80", bytes(range(30)))
    assert str(c) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"
    assert KEY not in repr(c) and str(bytes(range(30))) not in repr(c)


@pytest.mark.parametrize("value", ["x AES_CM_128_HMAC_SHA1_80 inline:" + KEY,
                                   "1 AES_CM_128_HMAC_SHA1_80 inline:short",
                                   "1 AES_CM_128_HMAC_SHA1_80 inline:" + KEY + "|2^20|1:4",
                                   "1 AES_CM_128_HMAC_SHA1_80"])
def test_unusable_crypto_lines_are_refused_without_showing_the_key(value):
    """A bad tag, a key of the wrong length, an MKI or no key: CryptoError, key masked."""
    with pytest.raises(CryptoError) as caught:
        Crypto.parse(value)
    assert KEY not in str(caught.value)


def test_offer_keys_are_fresh_for_both_suites():
    """Each offer gets new 30-byte keys from secrets, tag 1 for _80 and tag 2 for _32."""
    first, second = offer_keys(), offer_keys()
    assert [(c.tag, c.suite) for c in first] == [(1, "AES_CM_128_HMAC_SHA1_80"),
                                                 (2, "AES_CM_128_HMAC_SHA1_32")]
    assert all(len(c.key) == 30 for c in first) and first[0].key != second[0].key


def test_mandatory_offer_is_rtp_savp_with_crypto_and_mask_hides_the_keys():
    """A mandatory offer says RTP/SAVP and carries a=crypto per stream; mask() of the SDP
    (str or bytes) keeps the lines but not the keys."""
    keys = {"audio": offer_keys(), "video": offer_keys()}
    offer = make_offer("127.0.0.1", audio_port=4000, video_port=4002, session_id=1,
                       crypto=keys, proto="RTP/SAVP")
    text = bytes(offer).decode()
    assert [m.proto for m in offer.media] == ["RTP/SAVP", "RTP/SAVP"]
    assert text.count("a=crypto:") == 4 and str(keys["video"][1]) in text
    masked = mask(text)
    assert masked.count("inline:...") == 4 and "a=crypto:2 AES_CM_128_HMAC_SHA1_32" in masked
    assert all(base64.b64encode(c.key).decode() not in masked for c in keys["audio"])
    assert mask(bytes(offer)) == masked.encode()


def test_answer_with_an_offered_tag_and_suite_gives_both_keys():
    """The answer's a=crypto matching an offered tag and suite: (ours, theirs)."""
    offered = {"audio": offer_keys()}
    answer = _answer("RTP/SAVP", [f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"])
    got = agree("mandatory", offered, answer)
    ours, theirs = got["audio"]
    assert ours is offered["audio"][1] and theirs.key == bytes(range(30))


def test_optional_falls_back_to_rtp_mandatory_fails_without_usable_crypto():
    """No crypto (or one with a suite we did not offer under that tag): plain RTP when
    optional, an error naming the stream when mandatory or when the answer says RTP/SAVP."""
    offered = {"audio": offer_keys()}
    wrong = [f"1 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"]
    assert agree("optional", offered, _answer()) == {}
    assert agree("optional", offered, _answer(crypto=wrong)) == {}
    assert agree("off", offered, _answer(crypto=wrong)) == {}
    for mode, answer in (("mandatory", _answer()), ("mandatory", _answer(crypto=wrong)),
                         ("optional", _answer("RTP/SAVP"))):
        with pytest.raises(CryptoError, match="SRTP required but the audio answer"):
            agree(mode, offered, answer)
    assert sdes.MODES == ("off", "optional", "mandatory")


def test_a_peers_offer_keeps_our_key_while_it_keeps_its_own_and_rekeys_otherwise():
    """answer_keys (RFC 4568 §7.1.4): a first offer gets a fresh key of ours for the peer's
    first supported crypto (an unknown suite skipped); the same crypto again keeps ours; a
    new peer key gets a new key of ours, same tag and suite."""
    other = base64.b64encode(bytes(range(1, 31))).decode()
    offer = _answer("RTP/SAVP", [f"7 F8_128_HMAC_SHA1_80 inline:{KEY}",
                                 f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY}"])
    first = sdes.answer_keys("optional", offer, {})
    ours, theirs = first["audio"]
    assert (ours.tag, ours.suite, theirs.key) == (2, "AES_CM_128_HMAC_SHA1_32", bytes(range(30)))
    assert sdes.answer_keys("optional", offer, first) == first
    rekeyed = _answer("RTP/SAVP", [f"2 AES_CM_128_HMAC_SHA1_32 inline:{other}"])
    new_ours, new_theirs = sdes.answer_keys("optional", rekeyed, first)["audio"]
    assert (new_ours.tag, new_ours.suite) == (2, ours.suite) and new_ours.key != ours.key
    assert new_theirs.key == bytes(range(1, 31))


@pytest.mark.parametrize("mode, proto, current, refused", [
    ("optional", "RTP/AVP", False, False),  # plain RTP stays plain
    ("optional", "RTP/SAVP", False, True),  # SAVP without keys
    ("mandatory", "RTP/AVP", False, True),
    ("optional", "RTP/AVP", True, True),  # no downgrade of an SRTP stream
])
def test_an_offer_without_usable_crypto_is_plain_rtp_only_where_allowed(mode, proto, current,
                                                                         refused):
    """No usable a=crypto: plain RTP in optional mode for an RTP/AVP stream that was not
    SRTP; CryptoError when the stream says SAVP, the mode is mandatory, or it was SRTP."""
    pair = (Crypto.new(1, sdes.SUITES[0]), Crypto.new(1, sdes.SUITES[0]))
    offer = _answer(proto)
    if refused:
        with pytest.raises(CryptoError, match="no usable a=crypto"):
            sdes.answer_keys(mode, offer, {"audio": pair} if current else {})
    else:
        assert sdes.answer_keys(mode, offer, {}) == {}
    assert sdes.answer_keys("off", offer, {}) == {}
