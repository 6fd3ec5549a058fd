"""The versions of sipgw and of the libraries it is built on, for logs and --version."""
from __future__ import annotations

import platform
from importlib import metadata

LIBRARIES = ("twisted", "aiortc", "av", "autobahn")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> str:
    """'sipgw 0.1.0 (Python 3.11.2, twisted 26.10.0, aiortc 1.16.0, ...)'."""
    parts = [f"Python {platform.python_version()}"]
    parts += [f"{name} {_version(name)}" for name in LIBRARIES]
    return f"sipgw {_version('sipgw')} ({', '.join(parts)})"
