"""SRTP and SRTCP (RFC 3711, RFC 7714 for AES-GCM) through libsrtp, keyed by DTLS-SRTP.

One :class:`SrtpContext` per transport: an inbound session that accepts any SSRC the peer
sends and an outbound session for every SSRC the SFU sends, as RFC 5764 §4.2 keys them.
"""

from __future__ import annotations

import pylibsrtp

from sfu.dtls import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80, SrtpKeys
from sfu.errors import SrtpError

__all__ = ["SrtpContext"]

_LIBSRTP_PROFILE = {
    SRTP_AEAD_AES_128_GCM.name: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SRTP_AES128_CM_HMAC_SHA1_80.name: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}
# Replay window (RFC 3711 §3.3.2): wide enough for NACK retransmissions arriving late.
_WINDOW = 1024


def _session(key: bytes, profile: int, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=profile)
    policy.allow_repeat_tx = True  # retransmissions re-protect an index already sent
    policy.window_size = _WINDOW
    return pylibsrtp.Session(policy)


class SrtpContext:
    """Protect what the SFU sends and unprotect what it receives on one transport."""

    __slots__ = ("_rx", "_tx")

    def __init__(self, keys: SrtpKeys) -> None:
        profile = _LIBSRTP_PROFILE[keys.profile.name]
        self._rx = _session(keys.remote, profile, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._tx = _session(keys.local, profile, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)

    def unprotect_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTP packet."""
        try:
            return self._rx.unprotect(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTP packet rejected: {exc}") from None

    def unprotect_rtcp_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTCP packet."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP packet rejected: {exc}") from None

    def protect(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet the SFU sends."""
        return self._tx.protect(packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTCP packet the SFU sends."""
        return self._tx.protect_rtcp(packet)
