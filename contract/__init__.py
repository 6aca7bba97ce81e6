"""The wire contract: the facts the control plane and its clients must agree on.

One home for gateway opcodes, close codes and dispatch names (:mod:`contract.gateway`), the
byte strings devices sign (:mod:`contract.signing`), the API's error codes
(:mod:`contract.errors`) and Discord's permission model (:mod:`contract.permissions`).
Both ``control`` and ``client`` (and ``e2ee``, for the prekey labels) import it; it imports
neither, nor anything but the standard library, so a change to the contract is one change
that both sides see. ``tests/contract`` checks that the server's OpenAPI document agrees.
"""
