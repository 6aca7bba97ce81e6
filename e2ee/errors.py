"""Typed errors of the e2ee package.

Every failure the package reports is an :class:`E2EEError`; callers catch that one base
class at their trust boundary. Decoders never let a library exception (msgpack, OpenSSL,
libsodium) escape: they translate it into one of these types.
"""

from __future__ import annotations


class E2EEError(Exception):
    """Base class of every error raised by :mod:`e2ee`."""


class DecodeError(E2EEError):
    """Bytes from outside did not decode into a well-formed, bounded structure."""


class UnsupportedVersion(DecodeError):
    """A wire structure carried a version or tag this implementation does not speak."""


class BadSignature(E2EEError):
    """A signature did not verify under the claimed public key."""


class InvalidKey(E2EEError):
    """A public key was malformed, or a Diffie–Hellman output was all-zero (low order)."""


class DecryptionFailed(E2EEError):
    """Authenticated decryption failed: wrong key, tampered bytes, or wrong associated data."""


class DuplicateMessage(E2EEError):
    """A message, iteration or frame counter was already accepted once (a replay)."""


class ReplayedMessage(DuplicateMessage):
    """An initial message whose initiator identity key and base key were accepted before."""


class TooManySessions(E2EEError):
    """The replay record of the newest signed prekey is full: rotate the signed prekey."""


class TooManySkipped(E2EEError):
    """A message asks the receiver to skip further ahead than the configured bound."""


class UnknownKey(E2EEError):
    """A message names a key (prekey id, sender-key id, SFrame KID) the receiver lacks."""


class UnknownSender(UnknownKey):
    """A media frame from a sender index the receiver holds no key for at all: in a call,
    usually media that outran its key (keys travel through the control plane, media
    through the SFU), so a client drops it without alarm until the key arrives."""


class CounterExhausted(E2EEError):
    """A sender's counter would wrap; the key must be replaced before sending more."""


class WrongMessageType(E2EEError):
    """A message of one type was presented where another type is required."""


class DowngradeRefused(E2EEError):
    """A peer or the server tried to run the classical handshake where PQXDH is required."""


class StateError(E2EEError):
    """An operation is not valid in the object's current state (e.g. a consumed secret)."""


class SenderIndexClaimed(E2EEError):
    """A media key names a sender index already bound to another participant's device."""


class WeakParameters(E2EEError):
    """Key-derivation settings below the accepted floor (e.g. Argon2id under OWASP's)."""


class UnsupportedSuite(E2EEError):
    """An SFrame cipher suite identifier this implementation does not support."""
