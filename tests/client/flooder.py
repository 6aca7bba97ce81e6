"""An anonymous flooder of the control plane, run as its own process by the flood tests.

``python flooder.py URL SECONDS`` asks for challenges, registers accounts and opens
provisioning mailboxes as fast as it can for SECONDS, paying every proof of work the server
asks (a flooder that does not pay gets nothing but 428s), and prints as JSON what it got
and when (seconds since it started) each account was made.
It stands for an attacker with one core; the tests run several.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from nacl.signing import SigningKey

from contract import proof_of_work as pow_
from contract import signing as sig


def _call(url: str, path: str, body: Any, purpose: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(
        url + "/api/v1" + path, data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    if purpose is not None:
        status, puzzle = _call(url, "/auth/proof-of-work", {"purpose": purpose}, None)
        if status != 200:
            return status, puzzle
        seed = base64.b64decode(puzzle["seed"])
        nonce = pow_.solve(seed, puzzle["difficulty"])
        request.add_header(pow_.HEADER, pow_.encode_proof(seed, nonce))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, None


def _register(url: str) -> int:
    status, body = _call(url, "/auth/challenge", {}, "challenge")
    if status != 200:
        return status
    key = SigningKey.generate()
    identity = bytes(key.verify_key)
    challenge = base64.b64decode(body["challenge"])
    handle = "flood" + os.urandom(6).hex()
    spk, pq = os.urandom(32), os.urandom(sig.PQ_PUBLIC_KEY_LEN)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    status, _ = _call(
        url,
        "/users",
        {
            "handle": handle,
            "identity_key": b64(identity),
            "challenge": b64(challenge),
            "signature": b64(key.sign(sig.register_message(challenge, identity, handle)).signature),
            "signed_prekey": {
                "key_id": 1,
                "public_key": b64(spk),
                "signature": b64(key.sign(sig.signed_prekey_message(1, spk)).signature),
            },
            "pq_prekey": {
                "key_id": 1,
                "public_key": b64(pq),
                "signature": b64(key.sign(sig.pq_prekey_message(1, pq)).signature),
            },
        },
        "register",
    )
    return status


def main() -> None:
    url, seconds = sys.argv[1], float(sys.argv[2])
    counts: dict[str, int] = {}
    accounts_at: list[float] = []
    start = time.monotonic()
    while time.monotonic() < start + seconds:
        status = _register(url)
        counts[f"register {status}"] = counts.get(f"register {status}", 0) + 1
        if status == 201:
            accounts_at.append(round(time.monotonic() - start, 3))
        status, _ = _call(
            url, "/provisioning", {"mailbox_id": os.urandom(16).hex()}, "provisioning"
        )
        counts[f"mailbox {status}"] = counts.get(f"mailbox {status}", 0) + 1
    print(json.dumps({"counts": counts, "accounts_at": accounts_at}), flush=True)


if __name__ == "__main__":
    main()
