"""sipgw/rest/openapi.json: served at /rest-api/openapi.json, a valid OpenAPI 3.1 document
whose paths are exactly the daemon's routes, and a check (tests/rest/conftest.py) that catches
an answer or an accepted request the document does not describe."""
from __future__ import annotations

import json

import pytest
from jsonschema import Draft202012Validator
from twisted.internet.address import IPv4Address

from sipgw.config import Config

STRANGER = IPv4Address("TCP", "192.0.2.7", 40313)
CALLS_ONLY = "calls-token-0123456789abcd"


@pytest.fixture
def daemon_root(tmp_path):
    """The REST port's resource tree of the whole daemon (service.make_service)."""
    from fakes import UDPMemoryReactor
    from sipgw.service import make_service
    top = make_service(Config(record_dir=str(tmp_path), rest_auth_tokens=f"{CALLS_ONLY}:calls"),
                       UDPMemoryReactor())
    return top.getServiceNamed("rest").args[1].resource


def test_served_at_rest_api_openapi_json(client_for, daemon_root):
    """GET /rest-api/openapi.json answers the shipped document; any valid token may read it."""
    client = client_for(daemon_root.children[b"rest-api"])
    response = client.send("GET", "/openapi.json", headers={"Content-Type": None}).response
    assert response.code == 200
    document = response.json()
    assert document["openapi"] == "3.1.0"
    from sipgw.rest.openapi import PATH
    with open(PATH, encoding="utf-8") as handle:
        assert document == json.load(handle)
    stranger = client_for(daemon_root.children[b"rest-api"], peer=STRANGER)
    assert stranger.send("GET", "/openapi.json").response.code == 401
    token = {"Authorization": f"Bearer {CALLS_ONLY}"}
    assert stranger.send("GET", "/openapi.json", headers=token).response.code == 200


def test_every_route_is_documented_and_every_documented_path_is_served(daemon_root, openapi):
    """The paths of the document are the router's routes under /rest-api/, plus /metrics,
    /health and WHEP's: nothing missing, nothing extra; POST for every route, GET exactly
    where served."""
    from sipgw.rest.apps import AppApi
    from sipgw.rest.calls import CallApi
    from sipgw.rest.openapi import OpenApi
    from sipgw.rest.push import PushApi
    from sipgw.rest.recorder import RecorderApi
    from sipgw.rest.streams import StreamApi
    rest = daemon_root.children[b"rest-api"]
    served = {"/rest-api" + path for path in rest.paths}
    others = {name.decode() for name in daemon_root.children if name != b"rest-api"}
    paths = openapi.document["paths"]
    assert {p for p in paths if p.startswith("/rest-api/")} == served
    assert {p.split("/")[1] for p in paths if not p.startswith("/rest-api/")} == others
    assert {"/whep/{streamName}", "/whep/{streamName}/{sessionId}", "/metrics", "/health"} \
        == set(paths) - served
    gets = {"/rest-api" + path for api in (CallApi, StreamApi, PushApi, RecorderApi, OpenApi,
                                           AppApi)
            for path in api.router.get_paths(api)}
    for path in rest.paths:
        documented = set(paths["/rest-api" + path]) - {"options"}
        assert documented == ({"get", "post"} if "/rest-api" + path in gets else {"post"}), path


def test_the_document_is_valid(openapi):
    """Every schema in it is valid JSON Schema 2020-12 (OpenAPI 3.1's dialect), every $ref
    resolves, and every operation has an operationId of its own and error answers that are
    the one Error shape."""
    document = openapi.document
    ids = []

    def walk(node):
        if isinstance(node, dict):
            if "schema" in node:
                Draft202012Validator.check_schema(node["schema"])
            ref = node.get("$ref")
            if ref is not None:
                target = document
                for part in ref[2:].split("/"):
                    target = target[part.replace("~1", "/").replace("~0", "~")]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(document)
    for name, schema in document["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete", "patch", "options", "head", "put"):
                continue  # parameters, description
            ids.append(operation["operationId"])
            for code, answer in operation["responses"].items():
                if code.startswith(("4", "5")) and path.startswith("/rest-api/"):
                    assert answer["$ref"].startswith("#/components/responses/"), (path, code)
    assert len(ids) == len(set(ids))


def test_the_check_catches_what_the_document_does_not_say(openapi, http_response):
    """An undocumented field in an answer, an undocumented status code, a wrong error body,
    and an accepted request missing a required field are all reported."""
    call = {"callId": "c1", "status": "ESTABLISHED", "secretSauce": 1}
    answer = http_response(200, {"content-type": "application/json"}, json.dumps([call]).encode())
    found = openapi.check("POST", "/rest-api/call/find", b'{"callId": "c1"}', answer)
    assert found and "secretSauce" in found[0]
    teapot = http_response(418, {"content-type": "application/json"},
                           b'{"error": "x", "field": null}')
    assert openapi.check("POST", "/rest-api/call/find", b"{}", teapot) == [
        "POST /rest-api/call/find -> 418: status code not documented"]
    bad_error = http_response(404, {"content-type": "application/json"}, b'{"message": "x"}')
    assert openapi.check("POST", "/rest-api/call/find", b"{}", bad_error)
    accepted = http_response(200, {}, b"")
    found = openapi.check("POST", "/rest-api/call/startup", b'{"callee": "bob"}', accepted)
    assert found and "sipLogin" in found[0]
    assert openapi.check("POST", "/rest-api/no/such", b"{}", http_response(200, {}, b"")) == [
        "POST /rest-api/no/such -> 200: path not documented"]
