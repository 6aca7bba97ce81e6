"""hushroom's client-side end-to-end encryption: pure functions and state machines, no I/O.

* :mod:`e2ee.identity` — Ed25519 device identities, signed / PQ signed / one-time prekeys,
  bundles (X3DH §2, PQXDH §2);
* :mod:`e2ee.x3dh` — X3DH and PQXDH key agreement;
* :mod:`e2ee.double_ratchet` — the Double Ratchet; :mod:`e2ee.session` composes the two;
* :mod:`e2ee.sender_keys` — Sender Keys for channels;
* :mod:`e2ee.sframe` — SFrame (RFC 9605); :mod:`e2ee.media` — media keys and frames;
* :mod:`e2ee.safety_number`, :mod:`e2ee.backup`, :mod:`e2ee.padding`, :mod:`e2ee.linking`.

Every error is an :class:`e2ee.errors.E2EEError`. Bytes from the network are decoded only by
functions and methods whose names end in ``_untrusted`` (or by the ``decrypt`` methods that
call them).
"""

from e2ee.backup import BackupContents, export_backup, import_backup
from e2ee.double_ratchet import (
    DecryptedMessage,
    DoubleRatchet,
    MessageType,
    RatchetLimits,
    RatchetMessage,
)
from e2ee.errors import (
    BadSignature,
    CounterExhausted,
    DecodeError,
    DecryptionFailed,
    DowngradeRefused,
    DuplicateMessage,
    E2EEError,
    InvalidKey,
    ReplayedMessage,
    SenderIndexClaimed,
    StateError,
    TooManySessions,
    TooManySkipped,
    UnknownKey,
    UnknownSender,
    UnsupportedSuite,
    UnsupportedVersion,
    WeakParameters,
    WrongMessageType,
)
from e2ee.identity import (
    IdentityKeyPair,
    OneTimePreKey,
    PQOneTimePreKey,
    PQSignedPreKey,
    PreKeyBundle,
    PreKeyStore,
    PreKeyUpload,
    SeenBaseKeys,
    SignedPreKey,
)
from e2ee.linking import LinkingSecret, ProvisioningPayload, build_provisioning_message
from e2ee.media import (
    Codec,
    MediaKey,
    MediaKeyReceiver,
    MediaKeySender,
    protect_frame,
    unprotect_frame,
)
from e2ee.padding import pad, unpad
from e2ee.safety_number import format_safety_number, safety_number
from e2ee.sender_keys import (
    SenderKeyDistribution,
    SenderKeyMessage,
    SenderKeyReceiver,
    SenderKeySender,
    rotate_after_removal,
)
from e2ee.session import Session, accept_session, initiate_session
from e2ee.sframe import SFrameReceiver, SFrameSender, decrypt_frame, encrypt_frame
from e2ee.x3dh import InitialMessage, agree_as_initiator, agree_as_responder

__all__ = [
    "BackupContents",
    "BadSignature",
    "Codec",
    "CounterExhausted",
    "DecodeError",
    "DecryptedMessage",
    "DecryptionFailed",
    "DoubleRatchet",
    "DowngradeRefused",
    "DuplicateMessage",
    "E2EEError",
    "IdentityKeyPair",
    "InitialMessage",
    "InvalidKey",
    "LinkingSecret",
    "MediaKey",
    "MediaKeyReceiver",
    "MediaKeySender",
    "MessageType",
    "OneTimePreKey",
    "PQOneTimePreKey",
    "PQSignedPreKey",
    "PreKeyBundle",
    "PreKeyStore",
    "PreKeyUpload",
    "ProvisioningPayload",
    "RatchetLimits",
    "RatchetMessage",
    "ReplayedMessage",
    "SFrameReceiver",
    "SFrameSender",
    "SeenBaseKeys",
    "SenderIndexClaimed",
    "SenderKeyDistribution",
    "SenderKeyMessage",
    "SenderKeyReceiver",
    "SenderKeySender",
    "Session",
    "SignedPreKey",
    "StateError",
    "TooManySessions",
    "TooManySkipped",
    "UnknownKey",
    "UnknownSender",
    "UnsupportedSuite",
    "UnsupportedVersion",
    "WeakParameters",
    "WrongMessageType",
    "accept_session",
    "agree_as_initiator",
    "agree_as_responder",
    "build_provisioning_message",
    "decrypt_frame",
    "encrypt_frame",
    "export_backup",
    "format_safety_number",
    "import_backup",
    "initiate_session",
    "pad",
    "protect_frame",
    "rotate_after_removal",
    "safety_number",
    "unpad",
    "unprotect_frame",
]
