"""The wire contract has one home, both sides import it, and the server's document agrees."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from control_harness import Harness

from contract.errors import ErrorCode
from contract.gateway import Close, EventName, Op
from contract.permissions import Permission
from control import errors

ROOT = Path(__file__).resolve().parents[2]


def _imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level packages each module of ``package`` imports (absolute imports only)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


def test_client_and_control_never_import_each_other() -> None:
    client = {m: n for m, n in _imported_packages("client").items() if "control" in n}
    control = {m: n for m, n in _imported_packages("control").items() if "client" in n}
    assert client == {} and control == {}


def test_the_contract_imports_only_the_standard_library() -> None:
    ours = {"client", "control", "e2ee", "hushroom", "sfu", "turn", "loadtest"}
    leaks = {m: n & ours for m, n in _imported_packages("contract").items() if n & ours}
    assert leaks == {}
    code = (
        "import sys, contract.errors, contract.gateway, contract.permissions, contract.signing;"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(ours)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _error_classes() -> list[type[errors.ApiError]]:
    seen: list[type[errors.ApiError]] = []
    pending: list[type[errors.ApiError]] = [errors.ApiError]
    while pending:
        cls = pending.pop()
        seen.append(cls)
        pending.extend(cls.__subclasses__())
    return seen


def test_every_error_the_server_raises_has_a_contract_code() -> None:
    raised = {cls.code for cls in _error_classes()}
    raised |= set(errors._HTTP_CODES.values()) | {ErrorCode.HTTP_ERROR, ErrorCode.INTERNAL}
    assert all(isinstance(code, ErrorCode) for code in raised)
    # No dead codes either: a code a client branches on must be one the server can send.
    assert raised == set(ErrorCode)


async def test_openapi_document_states_the_contract(harness: Harness) -> None:
    status, document = await harness.call("GET", "/api/v1/openapi.json")
    assert status == 200
    error = document["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["properties"]["code"]["enum"] == [code.value for code in ErrorCode]
    facts = document["x-hushroom-contract"]
    assert facts["gateway"]["ops"] == {op.name: op.value for op in Op}
    assert facts["gateway"]["close_codes"] == {close.name: close.value for close in Close}
    assert facts["gateway"]["dispatches"] == [name.value for name in EventName]
    assert facts["permissions"] == {p.name: p.value for p in Permission if p.name is not None}
    # Every response the document promises refers to the one Error schema.
    for path in document["paths"].values():
        for operation in path.values():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}
