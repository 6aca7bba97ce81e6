"""Ed25519 verification of the byte strings devices sign (PyNaCl).

The server checks every signature itself; it never trusts a client library to have done
so. The signed byte strings are built by :mod:`contract.signing`, which clients use too.
"""

from __future__ import annotations

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from contract.signing import IDENTITY_KEY_LEN, SIGNATURE_LEN

__all__ = ["verify_signature"]


def verify_signature(identity_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by the key."""
    if len(identity_key) != IDENTITY_KEY_LEN or len(signature) != SIGNATURE_LEN:
        return False
    try:
        VerifyKey(identity_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True
