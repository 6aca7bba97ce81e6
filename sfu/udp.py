"""Batched UDP sending for the worker's hot path: sendmmsg(2) on Linux, sendto elsewhere.

At SFU fan-out the kernel's per-call cost of ``sendto`` (syscall entry, the socket module
parsing the address tuple, socket lookup) is paid once per packet per consumer. While the
worker drains its socket, :class:`UdpSender` puts each outgoing datagram in a preallocated
slot — forwarded RTP is SRTP-protected in place there — with its destination's prebuilt
``sockaddr``, and hands the whole batch to the kernel in one ``sendmmsg`` call (glibc,
called through cffi's ABI mode: no compiler).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

import _cffi_backend
import cffi

from sfu.srtp import BUFFER_SIZE, SrtpContext

__all__ = ["UdpSender"]

Address = tuple[str, int]

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
"""

# Room for the largest datagram the SFU sends, and for libsrtp to protect in place.
_SLOT = max(2304, BUFFER_SIZE)
# Datagrams per sendmmsg call; a full batch is sent at once, so this also bounds the time
# a forwarded packet waits for the rest of the drain (at 10 µs a datagram, ≈ 1.3 ms).
_CAPACITY = 128
# Distinct destinations whose sockaddr is kept; past this the cache starts over.
_MAX_NAMES = 4096
_SOCKADDR_IN = struct.Struct("=HH4s8x")


def _load() -> tuple[Any, Any] | None:
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        libc = ffi.dlopen(None)
    except OSError:
        return None
    if not hasattr(libc, "sendmmsg"):
        return None  # not Linux: plain sendto
    return ffi, libc


_LIBC = _load()


class UdpSender:
    """Sends datagrams on one non-blocking socket, batched between :meth:`start_batch` and
    :meth:`flush`; a full send buffer drops datagrams, as a congested router would."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sendto = sock.sendto
        self._batching = False
        self._count = 0
        self._names: dict[Address, Any] = {}
        # Only IPv4 sockets are batched: a sockaddr_in is cheap to build and always fits.
        self._batchable = _LIBC is not None and sock.family == socket.AF_INET
        if not self._batchable or _LIBC is None:
            return
        ffi, libc = _LIBC
        self._ffi = ffi
        self._sendmmsg = libc.sendmmsg
        self._memmove = _cffi_backend.FFI().memmove  # cffi.FFI's own is a Python wrapper
        self._vector = ffi.new("struct mmsghdr[]", _CAPACITY)
        self._iov = ffi.new("struct iovec[]", _CAPACITY)
        self._buffers = ffi.new("char[]", _CAPACITY * _SLOT)
        self._headers = []
        self._iovs = []
        self._bases = []
        self._views = []
        for index in range(_CAPACITY):
            header = self._vector[index].msg_hdr
            header.msg_iov = self._iov + index
            header.msg_iovlen = 1
            header.msg_namelen = _SOCKADDR_IN.size
            self._iov[index].iov_base = self._buffers + index * _SLOT
            self._headers.append(header)
            self._iovs.append(self._iov[index])
            self._bases.append(self._buffers + index * _SLOT)
            self._views.append(ffi.buffer(self._bases[-1], _SLOT))

    def send(self, data: bytes, address: Address) -> None:
        """Send one datagram now, or queue it while a batch is open."""
        if self._batching:
            name = self._names.get(address)
            if name is None:
                name = self._name(address)
            size = len(data)
            if name is not None and size <= _SLOT:
                index = self._count
                self._headers[index].msg_name = name
                self._iovs[index].iov_len = size
                self._memmove(self._bases[index], data, size)
                self._count = index + 1
                if index + 1 == _CAPACITY:
                    self.flush()
                return
        try:  # noqa: SIM105 - per packet: cheaper than contextlib.suppress
            self._sendto(data, address)
        except OSError:
            pass

    def send_rtp(
        self,
        srtp: SrtpContext,
        first: int,
        second: int,
        seq: int,
        timestamp: int,
        ssrc: int,
        tail: bytes,
        address: Address,
    ) -> None:
        """Protect the RTP packet of this header and ``tail`` with ``srtp`` and send it; in a
        batch, libsrtp encrypts it in its send slot, so the packet never becomes bytes."""
        if self._batching:
            name = self._names.get(address)
            if name is None:
                name = self._name(address)
            if name is not None:
                index = self._count
                size = srtp.protect_rtp_into(
                    self._bases[index],
                    self._views[index],
                    first,
                    second,
                    seq,
                    timestamp,
                    ssrc,
                    tail,
                )
                self._headers[index].msg_name = name
                self._iovs[index].iov_len = size
                self._count = index + 1
                if index + 1 == _CAPACITY:
                    self.flush()
                return
        self.send(srtp.protect_rtp(first, second, seq, timestamp, ssrc, tail), address)

    def start_batch(self) -> None:
        """Queue what :meth:`send` is given until :meth:`flush` (no-op without sendmmsg)."""
        self._batching = self._batchable

    def flush(self) -> None:
        """Send everything queued; the batch stays open until :meth:`close_batch`."""
        count = self._count
        if not count:
            return
        self._count = 0
        fd = self._sock.fileno()
        start = 0
        while start < count:
            sent = self._sendmmsg(fd, self._vector + start, count - start, 0)
            if sent > 0:
                start += sent
            elif sent < 0 and self._ffi.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return  # the send buffer is full: the rest is dropped
            else:
                start += 1  # this destination failed (e.g. ICMP unreachable): skip it

    def close_batch(self) -> None:
        """Send what is queued and go back to sending each datagram at once."""
        self.flush()
        self._batching = False

    def _name(self, address: Address) -> Any:
        try:
            packed = _SOCKADDR_IN.pack(
                socket.AF_INET,
                socket.htons(address[1]),
                socket.inet_pton(socket.AF_INET, address[0]),
            )
        except (OSError, TypeError, IndexError, OverflowError, struct.error):
            return None  # not a numeric IPv4 address: sendto resolves or rejects it
        if len(self._names) >= _MAX_NAMES:
            self._names.clear()
        name = self._ffi.new("char[]", packed)
        self._names[address] = name
        return name
