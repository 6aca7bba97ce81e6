"""The REST API under ``/api/v1``: one router per resource, one OpenAPI document."""

from __future__ import annotations

from typing import Any

from . import (
    accounts,
    channels,
    guilds,
    invites,
    members,
    messages,
    privacy,
    proof_of_work,
    provisioning,
    relay,
    roles,
    voice,
)
from ._routing import Api, Call, Caller, Reply, Router
from .openapi import openapi_document

__all__ = ["ROUTERS", "Api", "Call", "Caller", "Reply", "Router", "build_api"]

#: Every router, in the order the OpenAPI document lists their routes.
ROUTERS: tuple[Router, ...] = (
    proof_of_work.router,
    accounts.router,
    guilds.router,
    channels.router,
    roles.router,
    members.router,
    voice.router,
    invites.router,
    relay.router,
    messages.router,
    privacy.router,
    provisioning.router,
)


def build_api() -> Api:
    """A fresh registry holding every route of the API, and the document describing it."""
    api = Api()
    for router in ROUTERS:
        api.include(router)
    document = openapi_document(api)

    @api.blueprint.get("/openapi.json")
    async def openapi() -> dict[str, Any]:
        return document

    return api
