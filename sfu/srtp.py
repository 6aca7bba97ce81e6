"""SRTP and SRTCP (RFC 3711, RFC 7714 for AES-GCM) through libsrtp, keyed by DTLS-SRTP.

One :class:`SrtpContext` per transport: an inbound session that accepts any SSRC the peer
sends and an outbound session for every SSRC the SFU sends, as RFC 5764 §4.2 keys them.
"""

from __future__ import annotations

import pylibsrtp
from pylibsrtp._binding import ffi, lib

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


# Room for the largest datagram plus libsrtp's worst-case trailer (tag + MKI).
_BUFFER = 2048 + 16 + 128
_MAX_PACKET = 2048


class _Direct:
    """libsrtp's ``srtp_protect``/``srtp_unprotect`` called straight through cffi.

    pylibsrtp's own wrapper copies every packet through a Python buffer slice and allocates
    a length cell per call, which costs more than the cipher itself at SFU packet rates;
    this reuses one C buffer and one length cell per direction. The session (and with it
    the policy, keys and lifetime) still belongs to pylibsrtp.
    """

    __slots__ = ("_buffer", "_context", "_length", "_session")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # keeps the libsrtp context alive
        self._context = session._srtp[0]
        self._buffer = ffi.new("char[]", _BUFFER)
        self._length = ffi.new("int *")

    def run(self, function: object, packet: bytes) -> bytes | None:
        size = len(packet)
        if size > _MAX_PACKET:
            return None
        ffi.memmove(self._buffer, packet, size)
        self._length[0] = size
        if function(self._context, self._buffer, self._length):  # type: ignore[operator]
            return None
        return ffi.unpack(self._buffer, self._length[0])  # type: ignore[no-any-return]


class SrtpContext:
    """Protect what the SFU sends and unprotect what it receives on one transport."""

    __slots__ = ("_rx", "_rx_direct", "_tx", "_tx_direct")

    def __init__(self, keys: SrtpKeys) -> None:
        profile = _LIBSRTP_PROFILE[keys.profile.name]
        self._rx = _session(keys.remote, profile, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._tx = _session(keys.local, profile, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx_direct = _Direct(self._rx)
        self._tx_direct = _Direct(self._tx)

    def unprotect_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTP packet."""
        clear = self._rx_direct.run(lib.srtp_unprotect, packet)
        if clear is None:
            raise SrtpError("SRTP packet rejected (authentication, replay or size)")
        return clear

    def unprotect_rtcp_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTCP packet."""
        try:
            return self._rx.unprotect_rtcp(packet)
        except pylibsrtp.Error as exc:
            raise SrtpError(f"SRTCP packet rejected: {exc}") from None

    def protect(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTP packet the SFU sends."""
        protected = self._tx_direct.run(lib.srtp_protect, packet)
        if protected is None:
            raise SrtpError("SRTP protection failed (packet too large)")
        return protected

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTCP packet the SFU sends."""
        return self._tx.protect_rtcp(packet)
