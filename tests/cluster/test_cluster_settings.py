"""The cluster settings: refused with a message naming the setting, never quoting the token;
the cluster token admits the other nodes only in cluster mode."""
import pytest

from sipgw import config
from sipgw.policy import AccessPolicy

TOKEN = "node-to-node-token-0123456789"
CLUSTER = {"cluster_redis_url": "redis://:s3cretpw@127.0.0.1:6379/0", "cluster_node_id": "a",
           "cluster_node_url": "http://127.0.0.1:8081", "cluster_token": TOKEN}


def _refusal(overrides: dict) -> str:
    with pytest.raises(config.ConfigError) as info:
        config.load(overrides=overrides)
    return str(info.value)


def test_single_node_is_the_default():
    """No Redis URL: nothing else is needed, the token admits nobody."""
    loaded = config.load()
    assert loaded.cluster_redis_url == "" and loaded.cluster_placement == "least-loaded"
    assert config.load(overrides={"cluster_token": TOKEN}).cluster_token == TOKEN
    assert AccessPolicy.from_config(config.load(overrides={"cluster_token": TOKEN})).tokens == {}


def test_a_complete_cluster_configuration_loads():
    loaded = config.load(overrides={**CLUSTER, "cluster_placement": "round-robin"})
    assert loaded.cluster_node_id == "a"


@pytest.mark.parametrize("change,message", [
    ({"cluster_redis_url": "http://127.0.0.1:6379"}, "cluster_redis_url must be a redis://"),
    ({"cluster_node_id": ""}, "cluster_node_id: 1 to 64 of"),
    ({"cluster_node_id": "a b"}, "cluster_node_id: 1 to 64 of"),
    ({"cluster_node_url": "127.0.0.1:8081"}, "cluster_node_url must be this node's REST"),
    ({"cluster_token": ""}, "cluster_token is needed with cluster_redis_url"),
    ({"cluster_token": "short"}, "cluster_token: token #1 must be at least 16"),
    ({"cluster_token": TOKEN + ":calls"}, "cluster_token: one token, without scopes"),
    ({"cluster_placement": "random"}, "cluster_placement must be least-loaded, local or"),
    ({"cluster_node_ttl": "1", "cluster_heartbeat_interval": "1"},
     "cluster_node_ttl must be above cluster_heartbeat_interval"),
    ({"cluster_heartbeat_interval": "0"}, "cluster_heartbeat_interval must be positive"),
])
def test_bad_cluster_settings_name_the_setting_and_quote_no_secret(change, message):
    refusal = _refusal({**CLUSTER, **change})
    assert message in refusal
    assert TOKEN not in refusal and "s3cretpw" not in refusal


def test_the_cluster_token_admits_the_other_nodes_with_every_scope():
    """In cluster mode the token is a bearer token with admin scope; is_token tells a
    node-to-node request by it, in constant time."""
    access = AccessPolicy.from_config(config.load(overrides=CLUSTER))
    access.check("192.0.2.7", f"Bearer {TOKEN}".encode(), "calls")
    access.check("192.0.2.7", f"Bearer {TOKEN}".encode(), "admin")
    assert access.is_token(f"Bearer {TOKEN}".encode(), TOKEN)
    assert not access.is_token(b"Bearer other-token-0123456789", TOKEN)
    assert not access.is_token(None, TOKEN)
    assert not access.is_token(f"Bearer {TOKEN}".encode(), "")
