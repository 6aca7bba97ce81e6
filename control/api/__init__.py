"""The REST API under ``/api/v1``: one route registry per area, one OpenAPI document."""

from __future__ import annotations

from typing import Any

from ._routing import Api, Call, Caller, Reply
from .accounts import register_routes as _accounts
from .guilds import register_routes as _guilds
from .openapi import openapi_document
from .privacy import register_routes as _privacy
from .provisioning import register_routes as _provisioning
from .relay import register_routes as _relay

__all__ = ["Api", "Call", "Caller", "Reply", "build_api"]


def build_api() -> Api:
    """A fresh registry holding every route of the API, and the document describing it."""
    api = Api()
    _accounts(api)
    _guilds(api)
    _relay(api)
    _privacy(api)
    _provisioning(api)
    document = openapi_document(api)

    @api.blueprint.get("/openapi.json")
    async def openapi() -> dict[str, Any]:
        return document

    return api
