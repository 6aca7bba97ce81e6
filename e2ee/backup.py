"""Encrypted key backup: identity, prekeys and sessions under a passphrase.

The passphrase is stretched with Argon2id (RFC 9106, libsodium's ``crypto_pwhash``, via
pynacl) with a random 16-byte salt; the 32-byte result keys XSalsa20-Poly1305
(libsodium's ``secretbox``) with a random 24-byte nonce. The Argon2id parameters travel in
the backup, so they can be raised later, and are bounded on import so a crafted backup
cannot make a client allocate unbounded memory. Changing any parameter changes the key,
so tampering fails authentication. Settings under OWASP's floor for Argon2id (Password
Storage Cheat Sheet: 19 MiB, 2 passes, 1 lane — libsodium always uses one lane) are refused
on export and on import with :class:`~e2ee.errors.WeakParameters`: a backup is a copy of
every key the device has, and its passphrase is all that guards it.

The plaintext (:class:`BackupContents`, tag 11) is at version 2: version 1 lacked the
account signing key and the account's device list (cross-signing), and still imports,
with neither.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from nacl import pwhash
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from e2ee import _wire
from e2ee._primitives import random_bytes
from e2ee.errors import DecodeError, DecryptionFailed, E2EEError, WeakParameters
from e2ee.identity import IdentityKeyPair, PreKeyStore
from e2ee.sender_keys import SenderKeyReceiver, SenderKeySender
from e2ee.session import Session

__all__ = [
    "MAX_DEVICE_LIST_BYTES",
    "MIN_MEMLIMIT",
    "MIN_OPSLIMIT",
    "BackupContents",
    "export_backup",
    "import_backup",
]

MAX_SESSIONS = 10_000
MAX_LABEL = 255
MAX_BACKUP_BYTES = 16 * 1024 * 1024
#: OWASP's minimum Argon2id passes and memory (bytes); the defaults stay well above.
MIN_OPSLIMIT = 2
MIN_MEMLIMIT = 19 * 1024 * 1024
_MAX_OPSLIMIT = pwhash.argon2id.OPSLIMIT_SENSITIVE
_MAX_MEMLIMIT = pwhash.argon2id.MEMLIMIT_MODERATE
#: The application's encoding of a signed device list (64 keys of 32 bytes and a
#: signature fit in well under this).
MAX_DEVICE_LIST_BYTES = 8 * 1024
# Plaintext versions: 2 adds the account key and the device list it signed.
_CONTENTS_V1 = 1
_CONTENTS_V2 = 2


@dataclass(slots=True)
class BackupContents:
    """What a backup restores: identity, prekey store, pairwise sessions, sender keys, and
    the account signing key with the account's device list it signed.

    Each map is keyed by an application label (e.g. "<user id>/<device id>" for sessions,
    "<channel id>" or "<channel id>/<sender device>" for sender keys). ``device_list`` is
    opaque here (the application encodes it, up to :data:`MAX_DEVICE_LIST_BYTES`); it
    travels with ``account_key`` or not at all. A backup of a device that did not hold
    the account key, or one made before the field existed, has neither.
    """

    identity: IdentityKeyPair
    prekeys: PreKeyStore | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    sender_keys: dict[str, SenderKeySender] = field(default_factory=dict)
    sender_key_receivers: dict[str, SenderKeyReceiver] = field(default_factory=dict)
    # The key that vouches for every device of the account: never in repr().
    account_key: IdentityKeyPair | None = field(default=None, repr=False)
    device_list: bytes | None = None

    def __post_init__(self) -> None:
        if (self.account_key is None) != (self.device_list is None):
            raise E2EEError("a backup carries the account key and its device list together")
        if self.device_list is not None and len(self.device_list) > MAX_DEVICE_LIST_BYTES:
            raise E2EEError(f"a device list longer than {MAX_DEVICE_LIST_BYTES} bytes")

    def encode(self) -> bytes:
        """Encode the plaintext of a backup (version 2)."""
        return _wire.pack(
            [
                _wire.TAG_BACKUP_PAYLOAD,
                _CONTENTS_V2,
                self.identity.seed,
                None if self.prekeys is None else self.prekeys.serialize(),
                {label: s.serialize() for label, s in self.sessions.items()},
                {label: s.serialize() for label, s in self.sender_keys.items()},
                {label: r.serialize() for label, r in self.sender_key_receivers.items()},
                None if self.account_key is None else self.account_key.seed,
                self.device_list,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> BackupContents:
        """Decode and validate a backup plaintext (every session is fully checked).

        Version 1 (seven fields, before cross-signing) decodes without account key and
        device list.
        """
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_BACKUP_PAYLOAD,
            max_bytes=MAX_BACKUP_BYTES,
            max_items=MAX_SESSIONS,
            min_fields=7,
            max_fields=9,
            versions=(_CONTENTS_V1, _CONTENTS_V2),
        )
        if len(f) != (9 if f[1] == _CONTENTS_V2 else 7):
            raise DecodeError("wrong number of backup fields for its version")
        identity = IdentityKeyPair(_wire.get_bytes(f[2], "identity_seed", size=32))
        prekeys = None
        if f[3] is not None:
            prekeys = PreKeyStore.restore_untrusted(_wire.get_bytes(f[3], "prekeys"))
            if prekeys.identity.public != identity.public:
                raise DecodeError("prekey store belongs to another identity")
        sessions = {
            label: Session.restore_untrusted(blob)
            for label, blob in _labelled_blobs(f[4], "sessions").items()
        }
        senders = {
            label: SenderKeySender.restore_untrusted(blob)
            for label, blob in _labelled_blobs(f[5], "sender_keys").items()
        }
        receivers = {
            label: SenderKeyReceiver.restore_untrusted(blob)
            for label, blob in _labelled_blobs(f[6], "sender_key_receivers").items()
        }
        account_key, device_list = None, None
        if f[1] == _CONTENTS_V2:
            seed = _wire.get_opt_bytes(f[7], "account_key", size=32)
            account_key = None if seed is None else IdentityKeyPair(seed)
            if f[8] is not None:
                device_list = _wire.get_bytes(f[8], "device_list", max_len=MAX_DEVICE_LIST_BYTES)
            if (account_key is None) != (device_list is None):
                raise DecodeError("a backup carries the account key and its device list together")
        return cls(identity, prekeys, sessions, senders, receivers, account_key, device_list)


def _labelled_blobs(value: object, name: str) -> dict[str, bytes]:
    if not isinstance(value, dict):
        raise DecodeError(f"{name} must be a map")
    return {
        _wire.get_str(label, f"{name} label", max_len=MAX_LABEL): _wire.get_bytes(blob, name)
        for label, blob in value.items()
    }


def _check_limits(opslimit: int, memlimit: int) -> None:
    if opslimit < MIN_OPSLIMIT or memlimit < MIN_MEMLIMIT:
        raise WeakParameters(
            f"Argon2id with {opslimit} passes and {memlimit} bytes is under the floor of "
            f"{MIN_OPSLIMIT} passes and {MIN_MEMLIMIT} bytes"
        )
    if opslimit > _MAX_OPSLIMIT or memlimit > _MAX_MEMLIMIT:
        raise E2EEError("Argon2id limits above what a client will spend")


def _key(passphrase: str, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    if not isinstance(passphrase, str) or not 1 <= len(passphrase) <= 1024:
        raise E2EEError("passphrase must be a string of 1..1024 characters")
    # NFKC so the same passphrase typed on different keyboards derives the same key.
    secret = unicodedata.normalize("NFKC", passphrase).encode("utf-8")
    return pwhash.argon2id.kdf(
        SecretBox.KEY_SIZE, secret, salt, opslimit=opslimit, memlimit=memlimit
    )


def export_backup(
    contents: BackupContents,
    passphrase: str,
    *,
    opslimit: int = pwhash.argon2id.OPSLIMIT_MODERATE,
    memlimit: int = pwhash.argon2id.MEMLIMIT_MODERATE,
) -> bytes:
    """Encrypt ``contents`` under ``passphrase``: ``[10, 1, salt, ops, mem, nonce, ct]``.

    Limits under :data:`MIN_OPSLIMIT` / :data:`MIN_MEMLIMIT` raise
    :class:`~e2ee.errors.WeakParameters`.
    """
    _check_limits(opslimit, memlimit)
    salt = random_bytes(pwhash.argon2id.SALTBYTES)
    nonce = random_bytes(SecretBox.NONCE_SIZE)
    box = SecretBox(_key(passphrase, salt, opslimit, memlimit))
    ct = box.encrypt(contents.encode(), nonce).ciphertext
    return _wire.pack([_wire.TAG_BACKUP, _wire.VERSION, salt, opslimit, memlimit, nonce, ct])


def import_backup(data: bytes, passphrase: str) -> BackupContents:
    """Decrypt and validate a backup; a wrong passphrase raises DecryptionFailed.

    A backup made with Argon2id limits under the floor raises
    :class:`~e2ee.errors.WeakParameters` before any key is derived.
    """
    f = _wire.unpack_untrusted(
        data, _wire.TAG_BACKUP, max_bytes=MAX_BACKUP_BYTES + 1024, min_fields=7, max_fields=7
    )
    salt = _wire.get_bytes(f[2], "salt", size=pwhash.argon2id.SALTBYTES)
    opslimit = _wire.get_int(f[3], "opslimit", 0, _MAX_OPSLIMIT)
    memlimit = _wire.get_int(f[4], "memlimit", 0, _MAX_MEMLIMIT)
    _check_limits(opslimit, memlimit)
    nonce = _wire.get_bytes(f[5], "nonce", size=SecretBox.NONCE_SIZE)
    ct = _wire.get_bytes(f[6], "ciphertext", max_len=MAX_BACKUP_BYTES)
    box = SecretBox(_key(passphrase, salt, opslimit, memlimit))
    try:
        plaintext = box.decrypt(ct, nonce)
    except (CryptoError, ValueError, TypeError):
        raise DecryptionFailed("wrong passphrase or corrupted backup") from None
    return BackupContents.decode_untrusted(plaintext)
