"""SRTP and SRTCP (RFC 3711, RFC 7714 for AES-GCM) through libsrtp, keyed by DTLS-SRTP.

One :class:`SrtpContext` per transport: an inbound session that accepts any SSRC the peer
sends and an outbound session for every SSRC the SFU sends, as RFC 5764 §4.2 keys them.
"""

from __future__ import annotations

from typing import Any

import pylibsrtp
from pylibsrtp._binding import ffi, lib

from sfu.dtls import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_HMAC_SHA1_80, SrtpKeys
from sfu.errors import SrtpError
from sfu.rtp import HEADER

__all__ = ["BUFFER_SIZE", "MAX_PACKET", "PROTECT_IN_PLACE", "SrtpContext", "new_length_cell"]

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
BUFFER_SIZE = _BUFFER = 2048 + 16 + 128
# The largest clear RTP packet protected.
MAX_PACKET = _MAX_PACKET = 2048
# Looked up once: each ``lib.<name>`` access is a getattr on the cffi library object.
_PROTECT = lib.srtp_protect
# ``srtp_protect(session, buffer, length)``: encrypts the clear RTP packet of ``length[0]``
# bytes in ``buffer`` (of at least BUFFER_SIZE bytes) in place and sets ``length[0]`` to the
# protected length; non-zero on failure. For senders that protect straight into their own
# send buffers (sfu/udp.py), with an :attr:`SrtpContext.tx_session`.
PROTECT_IN_PLACE = _PROTECT
_UNPROTECT = lib.srtp_unprotect
_MEMMOVE = ffi.memmove
_HEADER_PACK_INTO = HEADER.pack_into


class _Direct:
    """libsrtp's ``srtp_protect``/``srtp_unprotect`` called straight through cffi.

    pylibsrtp's own wrapper copies every packet through a Python buffer slice and allocates
    a length cell per call, which costs more than the cipher itself at SFU packet rates;
    this reuses one C buffer and one length cell per direction. The session (and with it
    the policy, keys and lifetime) still belongs to pylibsrtp.
    """

    __slots__ = ("_buffer", "_session", "_view", "context", "length")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session  # keeps the libsrtp context alive
        self.context = session._srtp[0]
        self._buffer = ffi.new("char[]", _BUFFER)
        self.length = ffi.new("int *")
        # The same C buffer as a writable Python buffer, so an RTP header is packed into it
        # in place rather than built as bytes and concatenated.
        self._view = ffi.buffer(self._buffer)

    def run(self, function: object, packet: bytes) -> bytes | None:
        size = len(packet)
        if size > _MAX_PACKET:
            return None
        ffi.memmove(self._buffer, packet, size)
        self.length[0] = size
        if function(self.context, self._buffer, self.length):  # type: ignore[operator]
            return None
        return ffi.unpack(self._buffer, self.length[0])  # type: ignore[no-any-return]

    def protect_rtp_into(
        self,
        out: Any,
        view: Any,
        first: int,
        second: int,
        seq: int,
        timestamp: int,
        ssrc: int,
        tail: bytes,
    ) -> int:
        """Protect, in ``out`` (a C buffer of at least ``BUFFER_SIZE`` bytes, ``view`` being
        the same memory as a writable Python buffer), the RTP packet whose 12-byte header has
        these fields, followed by ``tail``; the protected length, or -1.

        The header is packed and the tail copied straight into ``out``, where libsrtp
        encrypts in place: building the clear packet as bytes first would add two copies
        and returning bytes one more.
        """
        size = 12 + len(tail)
        if size > _MAX_PACKET:
            return -1
        _HEADER_PACK_INTO(view, 0, first, second, seq, timestamp, ssrc)
        _MEMMOVE(out + 12, tail, size - 12)
        length = self.length
        length[0] = size
        if _PROTECT(self.context, out, length):
            return -1
        return length[0]  # type: ignore[no-any-return]

    def protect_rtp(
        self, first: int, second: int, seq: int, timestamp: int, ssrc: int, tail: bytes
    ) -> bytes | None:
        """As :meth:`protect_rtp_into`, in the own buffer, returned as bytes."""
        size = self.protect_rtp_into(
            self._buffer, self._view, first, second, seq, timestamp, ssrc, tail
        )
        if size < 0:
            return None
        return ffi.unpack(self._buffer, size)  # type: ignore[no-any-return]


def new_length_cell() -> Any:
    """A C ``int`` for :data:`PROTECT_IN_PLACE`'s length argument."""
    return ffi.new("int *")


class SrtpContext:
    """Protect what the SFU sends and unprotect what it receives on one transport."""

    __slots__ = ("_rx", "_rx_direct", "_tx", "_tx_direct", "tx_session")

    def __init__(self, keys: SrtpKeys) -> None:
        profile = _LIBSRTP_PROFILE[keys.profile.name]
        self._rx = _session(keys.remote, profile, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        self._tx = _session(keys.local, profile, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        self._rx_direct = _Direct(self._rx)
        self._tx_direct = _Direct(self._tx)
        # libsrtp's outbound session, for :data:`PROTECT_IN_PLACE`; alive as long as this.
        self.tx_session = self._tx_direct.context

    def unprotect_untrusted(self, packet: bytes) -> bytes:
        """Authenticate and decrypt one SRTP packet."""
        clear = self._rx_direct.run(_UNPROTECT, packet)
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
        protected = self._tx_direct.run(_PROTECT, packet)
        if protected is None:
            raise SrtpError("SRTP protection failed (packet too large)")
        return protected

    def protect_rtp(
        self, first: int, second: int, seq: int, timestamp: int, ssrc: int, tail: bytes
    ) -> bytes:
        """Encrypt and authenticate the RTP packet made of this header and ``tail``."""
        protected = self._tx_direct.protect_rtp(first, second, seq, timestamp, ssrc, tail)
        if protected is None:
            raise SrtpError("SRTP protection failed (packet too large)")
        return protected

    def protect_rtcp(self, packet: bytes) -> bytes:
        """Encrypt and authenticate one RTCP packet the SFU sends."""
        return self._tx.protect_rtcp(packet)
