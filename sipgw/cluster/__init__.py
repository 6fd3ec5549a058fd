"""Several sipgw nodes as one service, sharing their state on Redis.

Only imported when ``cluster_redis_url`` is set: a single node never imports redis.

- ``records``: the keys and records in Redis, the placement policies (pure);
- ``store``: Redis through redis-py's asyncio API (on the reactor's asyncio loop);
- ``node``: this node's heartbeat, its calls and streams published, lost nodes swept;
- ``forward``: the REST layer in front of the router: any node answers any request;
- ``edge``: any node plays any stream, pulled from its origin node over WHEP.
"""
from __future__ import annotations


def attach(top, config, reactor, ua, root, health=None):
    """Join the cluster: the node service under ``top`` (the daemon's MultiService), the
    forwarding layer in front of ``root``'s ``rest-api``, the edge pulls as the stream
    registry's fallback for players. Returns the ClusterNode."""
    from sipgw.policy import AccessPolicy

    from .edge import EdgePulls
    from .forward import ClusterRest, NodeClient
    from .node import ClusterNode
    from .store import RedisStore

    node = ClusterNode(config, reactor, ua, RedisStore(config.cluster_redis_url),
                       viewers=lambda: top.signalling.viewer_count())
    node.setServiceParent(top)
    client = NodeClient(reactor, config.cluster_node_id, config.cluster_token,
                        config.cluster_request_timeout)
    rest = root.children[b"rest-api"]
    root.putChild(b"rest-api", ClusterRest(rest, node, client, AccessPolicy.from_config(config),
                                           config))
    edges = EdgePulls(node, ua.streams, top.signalling, config, reactor, client)
    node.edges = edges
    ua.streams.remote = edges.find
    node.ready.addCallback(lambda _: edges.start())
    if health is not None:
        health.parts["cluster"] = lambda: node.joined
    top.cluster = node
    return node
