"""Every package the code imports is declared in setup.py: the daemon's in install_requires,
the tests' and benches' in install_requires or the ``test`` extra. Nothing works only because
an interpreter happened to carry it."""
from __future__ import annotations

import ast
import os
import re
import sys
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imported_top_levels(folder: str) -> set[str]:
    """Top-level names of every absolute import in the .py files under ``folder``."""
    names = set()
    for directory, _, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return names


def local_modules(folder: str) -> set[str]:
    """Modules and packages of the tree itself (tests' helpers such as ``peers``)."""
    names = set()
    for directory, dirs, files in os.walk(os.path.join(ROOT, folder)):
        names.update(os.path.splitext(f)[0] for f in files if f.endswith(".py"))
        names.update(dirs)
    return names


def declared(extra: str | None) -> set[str]:
    """Normalized distribution names sipgw requires (with ``extra``'s too)."""
    names = set()
    for requirement in metadata.requires("sipgw") or []:
        name, _, marker = requirement.partition(";")
        if "extra ==" in marker and (extra is None or f'"{extra}"' not in marker):
            continue
        names.add(normalize(re.split(r"[<>=!~\[ ]", name.strip(), maxsplit=1)[0]))
    return names


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def undeclared(folders: list[str], allowed: set[str]) -> dict[str, list[str]]:
    distributions = metadata.packages_distributions()
    missing = {}
    local = local_modules("tests") | local_modules("bench")  # the benches use the tests' peers too
    for module in sorted(set().union(*(imported_top_levels(f) for f in folders))):
        if module in sys.stdlib_module_names or module in local or module == "sipgw":
            continue
        owners = {normalize(d) for d in distributions.get(module, [])}
        if not owners & allowed:
            missing[module] = sorted(owners) or ["(not installed)"]
    return missing


def test_the_daemon_imports_only_what_install_requires_declares():
    """sipgw/ and the plugin import only the standard library and install_requires."""
    assert undeclared(["sipgw", "twisted"], declared(None)) == {}


@pytest.mark.parametrize("folder", ["tests", "bench"])
def test_tests_and_benches_import_only_declared_packages(folder):
    """tests/ and bench/ import only install_requires and the test extra."""
    assert undeclared([folder], declared("test")) == {}
