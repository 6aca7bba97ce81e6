"""Prekeys between the local :class:`e2ee.PreKeyStore` and the server's prekey directory.

The directory and :mod:`e2ee.identity` sign and verify the bytes :mod:`contract.signing`
builds (``"hushroom-v1 signed-prekey" NUL ‖ id ‖ key`` and the ``pq-prekey`` and
``pq-one-time-prekey`` equivalents), so uploads carry e2ee's own signatures and a claimed
bundle is checked by
:meth:`e2ee.PreKeyBundle.verify` — the client never trusts the server's word that a
signature is good.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from client.models import Bundle
from e2ee import IdentityKeyPair, OneTimePreKey, PQOneTimePreKey, PreKeyBundle, PreKeyStore

__all__ = ["directory_prekeys", "prekey_bundle_untrusted"]


def directory_prekeys(
    identity: IdentityKeyPair,
    store: PreKeyStore,
    one_time: Sequence[OneTimePreKey],
    pq_one_time: Sequence[PQOneTimePreKey] = (),
) -> dict[str, Any]:
    """The prekey part of a register / add-device / upload body: the current signed and
    PQ last-resort prekeys and the given batches of one-time prekeys of both kinds.

    ``identity`` is the key the store signs with; it is taken so callers state which
    device the body belongs to, and checked against the store.
    """
    if store.identity.public != identity.public:
        raise ValueError("the prekey store belongs to another identity")
    spk, pq = store.current_signed_prekey, store.current_pq_prekey
    return {
        "signed_prekey": {
            "key_id": spk.key_id,
            "public_key": spk.key_pair.public,
            "signature": spk.signature,
        },
        "pq_prekey": {"key_id": pq.key_id, "public_key": pq.public, "signature": pq.signature},
        "one_time_prekeys": [
            {"key_id": o.key_id, "public_key": o.key_pair.public} for o in one_time
        ],
        "pq_one_time_prekeys": [
            {"key_id": k.key_id, "public_key": k.public, "signature": k.signature}
            for k in pq_one_time
        ],
    }


def prekey_bundle_untrusted(bundle: Bundle) -> PreKeyBundle:
    """An :class:`e2ee.PreKeyBundle` from a claimed bundle, with every signature verified."""
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
        pq_prekey_one_time=bundle.pq_prekey_one_time,
    )
    result.verify()
    result.identity_x25519()  # rejects invalid and small-order identity keys
    result.pq_public_key()  # FIPS 203 input check of the encapsulation key
    return result
