"""Typed errors of the SFU.

Every decoder of network bytes raises a subclass of :class:`MalformedPacket`; every refused
control request raises a subclass of :class:`RpcError`, whose ``code`` is the only place an
error meets its name on the node ↔ control link.
"""

from __future__ import annotations

__all__ = [
    "BadParams",
    "DtlsError",
    "MalformedPacket",
    "MalformedRtcp",
    "MalformedRtp",
    "MalformedSdp",
    "NotFound",
    "RpcError",
    "SfuError",
    "SrtpError",
    "UnsupportedOffer",
]


class SfuError(Exception):
    """Base class of every error the SFU raises on purpose."""


class MalformedPacket(SfuError, ValueError):
    """Bytes from the network that do not decode; the packet is dropped, nothing else."""


class MalformedRtp(MalformedPacket):
    """An RTP packet that violates RFC 3550 §5.1 or RFC 8285 framing."""


class MalformedRtcp(MalformedPacket):
    """An RTCP packet that violates RFC 3550 §6 or RFC 4585 §6 framing."""


class MalformedSdp(SfuError, ValueError):
    """A session description that is not RFC 8866 SDP we can read."""


class UnsupportedOffer(MalformedSdp):
    """A well-formed offer that asks for something the SFU cannot do (no Opus, no BUNDLE...)."""


class DtlsError(SfuError):
    """The DTLS handshake failed or the peer's certificate did not match its fingerprint."""


class SrtpError(MalformedPacket):
    """An SRTP or SRTCP packet failed authentication, replay checks or decryption."""


class RpcError(SfuError):
    """A control-plane request the node refuses; ``code`` is what travels in ``{id, error}``."""

    code = "internal"


class NotFound(RpcError):
    """The request names a router, transport, producer or consumer that does not exist."""

    code = "not_found"


class BadParams(RpcError):
    """The request's parameters are missing, of the wrong type or out of range."""

    code = "bad_params"
