"""TURN/STUN error types and their wire codes (RFC 8489 §14.8, RFC 8656 §18.11).

Every refusal the server core can produce is one of these classes; :data:`code` and
:data:`reason` are the only place where a failure meets its number on the wire.
"""

from __future__ import annotations

__all__ = [
    "AddressFamilyNotSupported",
    "AllocationMismatch",
    "AllocationQuotaReached",
    "BadRequest",
    "Forbidden",
    "InsufficientCapacity",
    "PeerAddressFamilyMismatch",
    "StaleNonce",
    "TurnError",
    "Unauthenticated",
    "UnknownAttribute",
    "UnsupportedTransport",
    "WrongCredentials",
]


class TurnError(Exception):
    """A request the server refuses; the subclass fixes the STUN error code and reason."""

    code = 500
    reason = "Server Error"


class BadRequest(TurnError):
    """400: malformed request, missing attribute, or channel number outside 0x4000-0x7FFF."""

    code = 400
    reason = "Bad Request"


class Unauthenticated(TurnError):
    """401: no credentials, unknown or expired username, or MESSAGE-INTEGRITY mismatch."""

    code = 401
    reason = "Unauthenticated"


class Forbidden(TurnError):
    """403: the peer address is refused by the peer filter."""

    code = 403
    reason = "Forbidden"


class UnknownAttribute(TurnError):
    """420: the request has comprehension-required attributes the server does not know."""

    code = 420
    reason = "Unknown Attribute"

    def __init__(self, attr_types: list[int]) -> None:
        super().__init__(f"unknown attributes {attr_types}")
        self.attr_types = attr_types


class AllocationMismatch(TurnError):
    """437: an allocation exists where none may, or none exists where one is needed."""

    code = 437
    reason = "Allocation Mismatch"


class StaleNonce(TurnError):
    """438: the NONCE is older than its validity window (or was minted for someone else)."""

    code = 438
    reason = "Stale Nonce"


class AddressFamilyNotSupported(TurnError):
    """440: the requested relay address family is not offered by this server."""

    code = 440
    reason = "Address Family not Supported"


class WrongCredentials(TurnError):
    """441: the request's username is not the one that created the allocation."""

    code = 441
    reason = "Wrong Credentials"


class UnsupportedTransport(TurnError):
    """442: REQUESTED-TRANSPORT is not UDP."""

    code = 442
    reason = "Unsupported Transport Protocol"


class PeerAddressFamilyMismatch(TurnError):
    """443: the peer address family differs from the relayed address family."""

    code = 443
    reason = "Peer Address Family Mismatch"


class AllocationQuotaReached(TurnError):
    """486: the user holds as many allocations as the quota allows."""

    code = 486
    reason = "Allocation Quota Reached"


class InsufficientCapacity(TurnError):
    """508: the server is full (allocations, relay ports, permissions or channels)."""

    code = 508
    reason = "Insufficient Capacity"
