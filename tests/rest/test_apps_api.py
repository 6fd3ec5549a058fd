"""/app/add, /app/find_all, /app/remove over the in-memory REST round trip."""
from twisted.internet.task import Clock

from sipgw.hooks import Hooks, parse_apps
from sipgw.policy import route_scope
from sipgw.rest.apps import AppApi
from sipgw.rest.router import RestResource

from fakes import HeldHttpClient


def _hooks():
    return Hooks(Clock(), HeldHttpClient(), apps=parse_apps("defaultApp=http://127.0.0.1:9/d"))


def test_add_find_all_remove(client_for):
    """An app added is listed with its methods and receives its hooks; removed, it is gone."""
    hooks = _hooks()
    post = client_for(RestResource(AppApi(hooks))).post
    added = post("/app/add", {"appKey": "shop", "name": "Shop",
                                        "url": "http://127.0.0.1:9091/shop",
                                        "restMethods": ["connect", "CallStatusEvent"]})
    assert added.code == 200
    assert added.json() == {"name": "Shop", "appKey": "shop", "url": "http://127.0.0.1:9091/shop",
                            "restMethods": ["CallStatusEvent", "connect"]}
    listed = post("/app/find_all", {}).json()
    assert [a["appKey"] for a in listed] == ["defaultApp", "shop"]
    assert listed[1]["dropped"] == listed[1]["failed"] == listed[1]["queued"] == 0
    assert hooks.app_for("shop", "connect") and not hooks.app_for("shop", "playStream")
    assert post("/app/remove", {"appKey": "shop"}).code == 200
    assert post("/app/remove", {"appKey": "shop"}).code == 404
    assert "shop" not in hooks.apps


def test_apps_are_limited_by_max_apps(client_for):
    """A new appKey beyond max_apps is a 429 naming the setting; replacing one still works."""
    hooks = Hooks(Clock(), HeldHttpClient(), max_apps=2,
                  apps=parse_apps("defaultApp=http://127.0.0.1:9/d"))
    post = client_for(RestResource(AppApi(hooks))).post
    assert post("/app/add", {"appKey": "a", "url": "http://127.0.0.1:9/a"}).code == 200
    refused = post("/app/add", {"appKey": "b", "url": "http://127.0.0.1:9/b"})
    assert refused.code == 429 and "max_apps=2" in refused.json()["error"]
    assert refused.json()["field"] == "appKey" and "b" not in hooks.apps
    assert post("/app/add", {"appKey": "a", "url": "http://127.0.0.1:9/a2"}).code == 200


def test_bad_and_denied_urls(client_for):
    """A non-http URL is a 400 naming url; a link-local one (cloud metadata) is a 403."""
    post = client_for(RestResource(AppApi(_hooks()))).post
    bad = post("/app/add", {"appKey": "a", "url": "file:///etc/passwd"})
    assert bad.code == 400 and bad.json()["field"] == "url"
    denied = post("/app/add", {"appKey": "a", "url": "http://169.254.169.254/x"})
    assert denied.code == 403 and denied.json()["field"] == "url"
    methods = post("/app/add", {"appKey": "a", "url": "http://127.0.0.1/x",
                                          "restMethods": ["nope"]})
    assert methods.code == 400 and methods.json()["field"] == "restMethods"


def test_apps_need_the_admin_scope():
    """/app/* is an admin route."""
    assert route_scope("/app/add") == "admin"
