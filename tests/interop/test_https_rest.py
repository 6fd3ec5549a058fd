"""REST over https (WCS https.port) with the wss certificate."""
import json
import ssl
import urllib.error
import urllib.request

from certs import TestCA
from peers import free_port
from sipgw_daemon import Sipgw


def test_https_rest_answers_with_the_wss_certificate(tmp_path):
    """With wss_certificate and wss_private_key set (from a test CA made here), the
    REST API answers on https_port too: GET as the WebSDK sends it and POST."""
    ca = TestCA(tmp_path)
    cert, key = ca.issue(["127.0.0.1"], tmp_path)
    port = free_port("tcp")
    gw = Sipgw(str(tmp_path), https_port=port, wss_port=free_port("tcp"),
               wss_certificate=str(cert), wss_private_key=str(key)).start()
    context = ssl.create_default_context(cafile=str(ca.path))
    answers = []
    try:
        for method, data in (("GET", None), ("POST", b"{}")):
            request = urllib.request.Request(
                f"https://127.0.0.1:{port}/rest-api/stream/find_all", data=data, method=method,
                headers={"Content-Type": "application/json"} if data else {})
            try:
                urllib.request.urlopen(request, timeout=10, context=context)
            except urllib.error.HTTPError as exc:
                answers.append((exc.code, json.loads(exc.read())))
    finally:
        gw.stop()
    assert answers == [(404, {"error": "Stream not found", "field": None})] * 2
