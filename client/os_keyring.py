"""A profile's store key kept in the OS keyring (Secret Service, Keychain, Credential Locker).

The ``keyring`` library picks the platform's backend; on Linux that is the freedesktop
Secret Service (gnome-keyring, KeePassXC, KWallet) reached over the D-Bus session bus via
``secretstorage``/``jeepney``. One entry per profile: service ``hushroom``, username
``store-<32 hex digits>`` — a random id written in the store's clear ``meta`` table, never
a handle or a user id, so the keyring says nothing about the account — and the secret is
the base64 of a random 32-byte store key.

Every call is a short blocking round trip to a local daemon (like the store's SQLite
calls), so none runs in a worker thread.
"""

from __future__ import annotations

import base64
import binascii
import secrets

import keyring
import keyring.errors
from keyring.backends import fail, null
from nacl.secret import SecretBox

from client.errors import StoreError

__all__ = [
    "SERVICE",
    "KeyringUnavailable",
    "delete_store_key",
    "keyring_available",
    "load_store_key",
    "new_store_key",
]

SERVICE = "hushroom"
_ENTRY_PREFIX = "store-"

#: What a backend may raise besides keyring's own errors: secretstorage and jeepney report
#: a vanished bus or daemon with their own exception types (subclasses of Exception that
#: keyring does not wrap), and a dead socket surfaces as OSError.
_BACKEND_ERRORS: tuple[type[Exception], ...] = (keyring.errors.KeyringError, OSError)
try:
    from secretstorage.exceptions import SecretStorageException

    _BACKEND_ERRORS += (SecretStorageException,)
except ImportError:  # not on macOS and Windows, whose backends do not use it
    pass


class KeyringUnavailable(StoreError):
    """No usable OS keyring: none installed, no session bus, or it refused the request."""


def keyring_available() -> bool:
    """True when a real keyring backend is configured (not keyring's fail or null one).

    Whether it is *usable* (unlocked, answering) is only known by using it, which
    :func:`new_store_key` does.
    """
    try:
        backend = keyring.get_keyring()
    except _BACKEND_ERRORS:
        return False
    return not isinstance(backend, (fail.Keyring, null.Keyring))


def new_store_key() -> tuple[str, bytes]:
    """Create a random store key in the keyring and read it back; returns (entry, key).

    Raises :class:`KeyringUnavailable` when the keyring refuses or returns something else,
    so the caller can fall back to a passphrase.
    """
    if not keyring_available():
        raise KeyringUnavailable("no OS keyring is available")
    entry = _ENTRY_PREFIX + secrets.token_hex(16)
    key = secrets.token_bytes(SecretBox.KEY_SIZE)
    try:
        keyring.set_password(SERVICE, entry, base64.b64encode(key).decode("ascii"))
        # A backend that accepts writes but cannot give them back (a locked collection
        # that unlocks only for writes, a write-only shim) would lose the profile later.
        stored = keyring.get_password(SERVICE, entry)
    except _BACKEND_ERRORS as exc:
        raise KeyringUnavailable(f"the OS keyring refused to store a key ({exc})") from None
    if stored is None or _decode(stored) != key:
        delete_store_key(entry)
        raise KeyringUnavailable("the OS keyring did not give the stored key back")
    return entry, key


def load_store_key(entry: str) -> bytes:
    """The store key kept under ``entry``; a clear :class:`StoreError` when it is gone."""
    if not keyring_available():
        raise KeyringUnavailable(
            "this profile's store key is in the OS keyring, which is not available here "
            "(is a Secret Service running on the session bus?)"
        )
    try:
        stored = keyring.get_password(SERVICE, entry)
    except _BACKEND_ERRORS as exc:
        raise KeyringUnavailable(
            f"this profile's store key is in the OS keyring, which cannot be reached ({exc})"
        ) from None
    if stored is None:
        raise StoreError(
            f"the OS keyring no longer holds this profile's store key ({SERVICE}/{entry}), "
            "so the profile cannot be opened; restore it from a backup or link it again"
        )
    key = _decode(stored)
    if key is None:
        raise StoreError(f"the OS keyring entry {SERVICE}/{entry} is not a hushroom store key")
    return key


def delete_store_key(entry: str) -> None:
    """Remove ``entry`` from the keyring; an entry already gone is not an error."""
    try:
        keyring.delete_password(SERVICE, entry)
    except keyring.errors.PasswordDeleteError:
        pass
    except _BACKEND_ERRORS as exc:
        raise KeyringUnavailable(f"the OS keyring refused to delete {entry} ({exc})") from None


def _decode(stored: str) -> bytes | None:
    try:
        key = base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) == SecretBox.KEY_SIZE else None
