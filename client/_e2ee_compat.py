"""Where the client bridges a gap between ``e2ee/`` and ``control/`` (reported).

**Prekey signatures.** The directory (``control.signatures``) checks signatures over
   ``"hushroom-v1 signed-prekey" NUL ‖ key id ‖ public key`` (and ``pq-prekey``), while
   :mod:`e2ee.identity` signs and verifies ``"hushroom signed prekey v1" NUL ‖ key id ‖
   Encode(PK)``. A bundle the server accepts therefore never passes
   :meth:`e2ee.PreKeyBundle.verify`. The client signs the directory's format on upload and,
   on claim, verifies the directory's format itself (same identity key, same
   domain-separated purpose) before marking the bundle verified.

This reaches into a private attribute of :class:`e2ee.PreKeyBundle`; the fix belongs in
one of the two packages (one signature format for both).
"""

from __future__ import annotations

import struct
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from client.models import Bundle
from e2ee import BadSignature, IdentityKeyPair, PreKeyBundle, PreKeyStore
from e2ee.errors import DecodeError

__all__ = ["directory_prekeys", "prekey_bundle_untrusted"]


def _spk_message(key_id: int, public: bytes) -> bytes:
    return b"hushroom-v1 signed-prekey\x00" + struct.pack(">I", key_id) + public


def _pq_message(key_id: int, public: bytes) -> bytes:
    return b"hushroom-v1 pq-prekey\x00" + struct.pack(">I", key_id) + public


def directory_prekeys(
    identity: IdentityKeyPair, store: PreKeyStore, one_time: list[Any]
) -> dict[str, Any]:
    """The prekey part of a register / add-device / upload body, signed as control checks."""
    spk, pq = store.current_signed_prekey, store.current_pq_prekey
    return {
        "signed_prekey": {
            "key_id": spk.key_id,
            "public_key": spk.key_pair.public,
            "signature": identity.sign(_spk_message(spk.key_id, spk.key_pair.public)),
        },
        "pq_prekey": {
            "key_id": pq.key_id,
            "public_key": pq.public,
            "signature": identity.sign(_pq_message(pq.key_id, pq.public)),
        },
        "one_time_prekeys": [
            {"key_id": o.key_id, "public_key": o.key_pair.public} for o in one_time
        ],
    }


def _verify(identity_key: bytes, message: bytes, signature: bytes) -> None:
    try:
        VerifyKey(identity_key).verify(message, signature)
    except (BadSignatureError, ValueError, TypeError):
        raise BadSignature("a prekey signature does not verify under the identity key") from None


def prekey_bundle_untrusted(bundle: Bundle) -> PreKeyBundle:
    """An :class:`e2ee.PreKeyBundle` from a claimed bundle, its signatures checked here."""
    _verify(
        bundle.identity_key,
        _spk_message(bundle.signed_prekey_id, bundle.signed_prekey),
        bundle.signed_prekey_signature,
    )
    if bundle.pq_prekey is not None:
        if bundle.pq_prekey_id is None or bundle.pq_prekey_signature is None:
            raise DecodeError("PQ prekey without id or signature")
        _verify(
            bundle.identity_key,
            _pq_message(bundle.pq_prekey_id, bundle.pq_prekey),
            bundle.pq_prekey_signature,
        )
    result = PreKeyBundle(
        identity_key=bundle.identity_key,
        signed_prekey_id=bundle.signed_prekey_id,
        signed_prekey=bundle.signed_prekey,
        signed_prekey_signature=bundle.signed_prekey_signature,
        pq_prekey_id=bundle.pq_prekey_id,
        pq_prekey=bundle.pq_prekey,
        pq_prekey_signature=bundle.pq_prekey_signature,
        one_time_prekey_id=bundle.one_time_prekey_id,
        one_time_prekey=bundle.one_time_prekey,
    )
    result.identity_x25519()  # rejects invalid and small-order identity keys
    result.pq_public_key()  # FIPS 203 input check of the encapsulation key
    # The signatures verified above are the directory's; e2ee checks its own format only.
    object.__setattr__(result, "_verified", True)
    return result
