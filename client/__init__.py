"""hushroom's Python client SDK and CLI: end-to-end encrypted text over the control plane.

* :class:`client.Client` — a profile signed in to a server: DMs, channels, devices,
  safety numbers, live events (:mod:`client.client`, a façade over one part per concern:
  :mod:`client.trust`, :mod:`client.sessions`, :mod:`client.dm`, :mod:`client.channels`,
  :mod:`client.devices`, :mod:`client.sync`, … — see docs/client.md);
* :mod:`client.api` — the typed REST API; :mod:`client.gateway` — the gateway session
  (sans-I/O core plus trio shell); :mod:`client.store` — the sealed local store;
* :mod:`client.cli` — the people's commands behind ``hushroom register|send|dm|...``.

Errors are :class:`client.errors.ClientError` subclasses whose messages are one sentence.
"""

from client.client import Client, Message, Notice
from client.errors import (
    ApiError,
    ClientError,
    IdentityChanged,
    NotRegistered,
    ProtocolError,
    SessionRevoked,
    StoreError,
    TokenRefused,
    TransportError,
    UndecryptableMessage,
    UntrustedDevice,
    UsageError,
)

__all__ = [
    "ApiError",
    "Client",
    "ClientError",
    "IdentityChanged",
    "Message",
    "NotRegistered",
    "Notice",
    "ProtocolError",
    "SessionRevoked",
    "StoreError",
    "TokenRefused",
    "TransportError",
    "UndecryptableMessage",
    "UntrustedDevice",
    "UsageError",
]
