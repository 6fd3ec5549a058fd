"""The egress policy (sipgw/egress.py): rules, defaults, and the resolved-address hooks."""
import pytest

from sipgw import config
from sipgw.egress import EgressDenied, EgressPolicy, Rules


@pytest.mark.parametrize("host", ["169.254.169.254", "::ffff:169.254.169.254", "fe80::1",
                                  "[fe80::1]", "224.0.0.251", "ff02::1", "0.0.0.0", "::",
                                  "255.255.255.255"])
def test_default_denies_link_local_multicast_unspecified_broadcast(host):
    """The built-in deny list: cloud metadata (also IPv4-mapped), multicast, unspecified,
    broadcast."""
    assert not EgressPolicy().allows(host)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "10.0.0.1", "172.16.5.5", "192.168.1.1",
                                  "fd00::1", "203.0.113.9", "pbx.example.org"])
def test_default_allows_loopback_private_and_public(host):
    """PBXs, proxies and RTMP servers live on loopback and private ranges: allowed."""
    assert EgressPolicy().allows(host)


def test_a_name_is_checked_again_on_its_resolved_address():
    """An allowed name whose address is denied is refused, naming both."""
    with pytest.raises(EgressDenied) as info:
        EgressPolicy().check("metadata.example.org", "sipDomain", resolved="169.254.169.254")
    assert info.value.message == ("sipDomain destination metadata.example.org (169.254.169.254)"
                                  " is denied by egress_deny")


def test_domains_match_themselves_and_names_below():
    """``.example.org`` and ``*.example.org`` match example.org and a.b.example.org only."""
    for text in (".example.org", "*.example.org"):
        rules = Rules.parse(text, "x")
        assert rules.match_name("example.org") and rules.match_name("A.b.Example.org.")
        assert not rules.match_name("badexample.org")
    assert not Rules.parse("example.org", "x").match_name("a.example.org")


def test_an_allow_list_of_networks_waits_for_the_address():
    """With only networks allowed, a name passes the REST check and its address decides."""
    policy = EgressPolicy(allow=Rules.parse("10.0.0.0/8", "x"))
    assert policy.allows("pbx.example.org")
    assert policy.allows("pbx.example.org", resolved="10.1.1.1")
    assert not policy.allows("pbx.example.org", resolved="192.168.1.1")


@pytest.mark.parametrize("key,value", [("sip_egress_allow", "10.0.0.0/33"),
                                       ("rtmp_egress_deny", "bad host"),
                                       ("sip_egress_deny", "a..b")])
def test_bad_rules_name_the_setting(key, value):
    """An unusable rule is refused at start, naming the setting."""
    with pytest.raises(config.ConfigError) as info:
        config.load(overrides={key: value})
    assert str(info.value).startswith(f"{key}: ")


def test_rtmp_connects_only_to_an_allowed_resolved_address():
    """The RTMP publisher resolves the host itself and refuses when every address is
    denied, before any connection (a name cannot smuggle a denied address)."""
    from sipgw.media.rtmp import RtmpError, RtmpPublisher, target
    policy = EgressPolicy(deny=Rules.parse("127.0.0.0/8,::1", "rtmp_egress_deny"))
    publisher = RtmpPublisher(target("rtmp://localhost:1/live", "s"), 1, policy)
    with pytest.raises(RtmpError) as info:
        publisher.open()
    assert str(info.value) == "the RTMP server's address is denied by rtmp_egress"


def test_verdicts_are_remembered_per_destination_and_field_and_bounded():
    """A destination's verdict is worked out once and given again (the same refusal for the
    same field, its own for another field); the memory of verdicts stays bounded."""
    from sipgw import egress as egress_module

    policy = EgressPolicy()
    for _ in range(2):
        with pytest.raises(EgressDenied) as denied:
            policy.check("169.254.169.254", "sipDomain")
        assert str(denied.value) == "sipDomain destination 169.254.169.254 is denied by egress_deny"
        assert denied.value.field == "sipDomain"
    with pytest.raises(EgressDenied, match="^destination 169.254.169.254 is denied"):
        policy.check("169.254.169.254")
    assert policy.allows("pbx.example.org", resolved="192.0.2.7")
    assert not policy.allows("pbx.example.org", resolved="169.254.1.1")
    for i in range(egress_module._VERDICTS_KEPT + 10):
        policy.allows(f"host{i}.example.org")
    assert len(policy._verdicts) <= egress_module._VERDICTS_KEPT
    assert EgressPolicy() == policy  # the remembered verdicts are not part of the rules
