"""Validation of JSON body fields shared by every REST method: the value or a 400 that names
the field and never echoes the value (bodies carry passwords)."""
from __future__ import annotations

from typing import Any

from sipgw.rest.errors import BadRequest

# Characters that would break a SIP header or URI built from the value (RFC 3261 §25.1).
NOT_IN_TOKEN = frozenset(' <>"')
# Stream names also become file names (recordings) and RTMP paths.
NOT_IN_STREAM_NAME = NOT_IN_TOKEN | frozenset("/\\")


def missing(value: Any) -> bool:
    return value is None or value == ""


def string_field(
    body: dict,
    name: str,
    *,
    max_len: int,
    required: bool = False,
    forbidden: frozenset[str] = NOT_IN_TOKEN,
    spaces: bool = False,
) -> str:
    """A string field, "" when absent; never echoes the value in an error."""
    value = body.get(name)
    if missing(value):
        if required:
            raise BadRequest(f"{name} is required", name)
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string", name)
    if len(value) > max_len:
        raise BadRequest(f"{name} must be at most {max_len} characters", name)
    if not value.isprintable():
        raise BadRequest(f"{name} must not contain control characters (CR, LF, ...)", name)
    # isprintable() let no other white space through than " " (every other one is a
    # separator or a control character): one search, not a generator over the characters
    if not spaces and " " in value:
        raise BadRequest(f"{name} must not contain spaces", name)
    bad = () if forbidden.isdisjoint(value) else sorted(set(value) & forbidden - {" "})
    if bad:
        listed = " ".join(bad)
        raise BadRequest(f"{name} must not contain any of {listed}", name)
    return value


def boolean_field(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if missing(value):
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise BadRequest(f"{name} must be true or false", name)
