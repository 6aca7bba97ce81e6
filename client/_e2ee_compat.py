"""Where the client bridges gaps between ``e2ee/`` and ``control/``; each is reported.

1. **Prekey signatures.** The directory (``control.signatures``) checks signatures over
   ``"hushroom-v1 signed-prekey" NUL ‖ key id ‖ public key`` (and ``pq-prekey``), while
   :mod:`e2ee.identity` signs and verifies ``"hushroom signed prekey v1" NUL ‖ key id ‖
   Encode(PK)``. A bundle the server accepts therefore never passes
   :meth:`e2ee.PreKeyBundle.verify`. The client signs the directory's format on upload and,
   on claim, verifies the directory's format itself (same identity key, same
   domain-separated purpose) before marking the bundle verified.
2. **Sender-key persistence.** :class:`e2ee.SenderKeySender` and
   :class:`e2ee.SenderKeyReceiver` have no serialize/restore, but a CLI process ends after
   every command. Their state is saved and rebuilt here, field by field.

Both reach into private attributes of ``e2ee`` objects; both belong in ``e2ee`` itself.
"""

from __future__ import annotations

import struct
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from client.models import Bundle
from e2ee import (
    BadSignature,
    IdentityKeyPair,
    PreKeyBundle,
    PreKeyStore,
    SenderKeyDistribution,
    SenderKeyReceiver,
    SenderKeySender,
)
from e2ee import sender_keys as _sender_keys
from e2ee.errors import DecodeError

__all__ = [
    "directory_prekeys",
    "prekey_bundle_untrusted",
    "restore_receiver",
    "restore_sender",
    "save_receiver",
    "save_sender",
]


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


def save_sender(sender: SenderKeySender) -> list[Any]:
    """The state of a sending sender key, as a msgpack-able list."""
    return [
        sender.channel_id,
        sender.key_id,
        sender.iteration,
        sender._chain_key,
        sender.signing_public,
        sender._signing_secret,
    ]


def restore_sender(data: list[Any]) -> SenderKeySender:
    """Rebuild a :class:`SenderKeySender` saved by :func:`save_sender`."""
    channel_id, key_id, iteration, chain_key, signing_public, signing_secret = data
    sender = SenderKeySender(channel_id)
    sender.key_id = key_id
    sender.iteration = iteration
    sender._chain_key = chain_key
    sender.signing_public = signing_public
    sender._signing_secret = signing_secret
    return sender


def save_receiver(receiver: SenderKeyReceiver) -> list[Any]:
    """The state of a receiving sender key (every key id it follows)."""
    return [
        receiver.channel_id,
        [
            [key_id, s.chain_key, s.iteration, s.signing_key, list(s.skipped.items())]
            for key_id, s in receiver._states.items()
        ],
    ]


def restore_receiver(data: list[Any]) -> SenderKeyReceiver:
    """Rebuild a :class:`SenderKeyReceiver` saved by :func:`save_receiver`."""
    channel_id, states = data
    receiver = SenderKeyReceiver(channel_id)
    for key_id, chain_key, iteration, signing_key, skipped in states:
        state = _sender_keys._ReceiverState(
            SenderKeyDistribution(channel_id, key_id, iteration, chain_key, signing_key)
        )
        state.skipped = {int(i): bytes(k) for i, k in skipped}
        receiver._states[key_id] = state
    return receiver
