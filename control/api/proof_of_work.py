"""``POST /auth/proof-of-work``: the puzzle an anonymous request pays with.

The price of each purpose rises with the rate at which solutions are redeemed
(control/proof_of_work.py); a provisioning puzzle also gets dearer as the mailbox table
fills, so a flood cannot take the last free mailboxes cheaply.
"""

from __future__ import annotations

import time
from typing import Any

from contract.proof_of_work import Purpose

from ..wire import Field, Schema
from ._routing import Call, Router
from .provisioning import crowding_bits

__all__ = ["router"]

router = Router(tag="auth")

PUZZLE = Schema(
    "PuzzleRequest",
    {
        "purpose": Field(
            "str",
            "what the solution will pay for",
            enum=tuple(purpose.value for purpose in Purpose),
        )
    },
)


@router.route(
    "POST",
    "/auth/proof-of-work",
    summary="A puzzle to solve before a challenge, a registration or a provisioning "
    "mailbox (difficulty rises under load)",
    body=PUZZLE,
    auth=False,
    # Issuing is one HMAC and no state: cheaper than anything a bucket could protect.
    public_bucket=False,
)
async def issue_puzzle(call: Call) -> dict[str, Any]:
    purpose = Purpose(call.body["purpose"])
    extra = crowding_bits() if purpose is Purpose.PROVISIONING else 0
    puzzle = call.state.proof_of_work.issue(purpose, time.time(), extra)
    return {"seed": puzzle.seed, "difficulty": puzzle.difficulty, "expires_in": puzzle.expires_in}
