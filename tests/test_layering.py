"""Imports flow downward only (STYLE.md): rest/ws -> gateway -> sip/rtp."""
import ast
import pathlib

import pytest

import sipgw

PACKAGE = pathlib.Path(sipgw.__file__).parent
# What each layer must not import: the layers above it, and for sip/ media of any kind.
FORBIDDEN = {
    "sip": {"rtp", "streams", "media", "webrtc", "rest", "ws", "gateway", "calls", "hooks",
            "metrics", "service", "tap"},
    "gateway": {"rest", "ws", "hooks", "metrics", "service", "tap"},
}


def _imported(path: pathlib.Path) -> set[str]:
    """The sipgw modules ``path`` imports, as dotted names below sipgw (relative ones too)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[:len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)  # from . import sdp
    return {n[len("sipgw."):] for n in names if n.startswith("sipgw.")}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_imports_nothing_above_it(layer):
    """No module of sipgw/sip/ imports media, streams, calls or anything of the gateway and
    the edges; no module of sipgw/gateway/ imports the REST, websocket or service layers."""
    wrong = {}
    for path in sorted((PACKAGE / layer).glob("*.py")):
        bad = {n for n in _imported(path) if n.split(".")[0] in FORBIDDEN[layer]}
        if bad:
            wrong[path.name] = sorted(bad)
    assert wrong == {}


def test_the_import_reader_sees_relative_imports():
    """The check above would catch sipgw/gateway/call.py's imports if it were in sip/."""
    names = _imported(PACKAGE / "gateway" / "call.py")
    assert {"rtp.session", "calls", "sip.invite"} <= names
