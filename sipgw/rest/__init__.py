"""The WCS-compatible REST interface, mounted by the caller at ``/rest-api/``::

    root.putChild(b"rest-api", RestResource(CallApi(call_manager), access=AccessPolicy(...)))
"""
from sipgw.rest.calls import CallApi, parse_call_request
from sipgw.rest.errors import ApiError, BadRequest, Conflict, NotFound
from sipgw.rest.router import RestResource, Router

__all__ = [
    "ApiError",
    "BadRequest",
    "CallApi",
    "Conflict",
    "NotFound",
    "RestResource",
    "Router",
    "parse_call_request",
]
