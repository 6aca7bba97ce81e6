"""The OpenAPI 3.1 document, generated from the same route registry that serves requests."""

from __future__ import annotations

from typing import Any

from contract.errors import ErrorCode
from contract.gateway import Close, EventName, Op
from contract.permissions import Permission
from contract.proof_of_work import HEADER as POW_HEADER
from hushroom import __version__

from ..wire import Field, json_schema
from ._routing import PREFIX, Api

__all__ = ["openapi_document"]

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
                "message": {"type": "string"},
            },
        }
    },
}

_STANDARD_ERRORS = {
    400: "malformed body, unknown field or wrong type",
    401: "no valid session token or signature",
    403: "the permission function refuses",
    404: "no such resource",
    409: "conflicts with the current state",
    413: "body too large",
    415: "body neither JSON nor msgpack",
    428: "proof of work missing, wrong, spent or expired: solve a new puzzle",
    429: "rate limited (per token or device)",
}


def openapi_document(api: Api) -> dict[str, Any]:
    """Describe every route of ``api``: method, path, parameters, body and error shapes."""
    paths: dict[str, dict[str, Any]] = {}
    for route in api.routes:
        operation: dict[str, Any] = {
            "summary": route.summary,
            "tags": [route.tag],
            "operationId": f"{route.method.lower()}_{route.path}",
            "parameters": [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in route.params
            ],
            "responses": {},
        }
        if route.query is not None:
            for name, sub in route.query.fields.items():
                operation["parameters"].append(
                    {
                        "name": name,
                        "in": "query",
                        "required": sub.required,
                        "schema": json_schema(sub),
                    }
                )
        if route.body is not None:
            schema = json_schema(Field("object", schema=route.body))
            operation["requestBody"] = {
                "required": bool(route.body.fields),
                "content": {
                    "application/json": {"schema": schema},
                    "application/msgpack": {"schema": schema},
                },
            }
        ok = "no content" if route.status == 204 else "success"
        operation["responses"][str(route.status)] = {"description": ok}
        codes = {400, 413, 415, *route.errors}
        if route.proof_of_work is not None:
            operation["parameters"].append(
                {
                    "name": POW_HEADER,
                    "in": "header",
                    "required": True,
                    "description": "base64url(seed) '.' nonce solving a puzzle of "
                    f"POST /auth/proof-of-work for {route.proof_of_work.value}",
                    "schema": {"type": "string"},
                }
            )
            codes.add(428)
        else:
            codes.add(429)
        if route.auth:
            codes.add(401)
        for code in sorted(codes):
            operation["responses"][str(code)] = {
                "description": _STANDARD_ERRORS.get(code, "error"),
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }
        if route.auth:
            operation["security"] = [{"session": []}]
        paths.setdefault(PREFIX + route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "hushroom control plane", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"session": {"type": "http", "scheme": "bearer"}},
        },
        "x-hushroom-contract": contract_facts(),
    }


def contract_facts() -> dict[str, Any]:
    """The non-REST half of the wire contract, so a client built from this document alone
    (the browser client) knows the gateway's opcodes, close codes and dispatch names and
    the permission bits without reading Python."""
    return {
        "gateway": {
            "ops": {op.name: op.value for op in Op},
            "close_codes": {close.name: close.value for close in Close},
            "dispatches": [dispatch.value for dispatch in EventName],
        },
        "permissions": {bit.name: bit.value for bit in Permission if bit.name is not None},
    }
