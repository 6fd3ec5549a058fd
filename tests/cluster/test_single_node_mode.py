"""Single-node mode (no cluster_redis_url) is untouched: building the daemon imports neither
redis nor sipgw.cluster."""
import subprocess
import sys

PROBE = """
import sys
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import reactor
from sipgw import config
from sipgw.service import make_service
settings = {"rest_port": "0", "ws_port": "0", "hls_port": "0", "sip_local_port": "0",
            "sip_bind_address": "127.0.0.1"}
top = make_service(config.load(overrides=settings), reactor)
assert not hasattr(top, "cluster"), "a cluster node in single-node mode"
loaded = sorted(m for m in sys.modules if m == "redis" or m.startswith(("redis.", "sipgw.cluster")))
print(loaded)
"""


def test_the_default_daemon_never_imports_redis_or_the_cluster_package():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
