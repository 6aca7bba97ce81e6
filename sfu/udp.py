"""Batched UDP for the worker's hot path: recvmmsg(2)/sendmmsg(2) on Linux, one datagram
per call elsewhere.

At SFU fan-out the kernel's per-call cost of ``sendto`` (syscall entry, the socket module
parsing the address tuple, socket lookup) is paid once per packet per consumer. While the
worker drains its socket, :class:`UdpSender` puts each outgoing datagram in a preallocated
slot — forwarded RTP is SRTP-protected in place there — with its destination's prebuilt
``sockaddr``, and hands the whole batch to the kernel in one ``sendmmsg`` call.
:class:`UdpReceiver` does the reverse for what arrives: one ``recvmmsg`` call fills up to
64 slots, and each datagram's source address is decoded once per distinct sender, not
once per datagram. Both call glibc through cffi's ABI mode: no compiler.

The slots' lengths and addresses are written and read through memoryviews of the C
arrays rather than cffi struct attributes: an item of a memoryview is a few times cheaper
to set than a cdata field, and this runs once per forwarded packet.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, cast

import _cffi_backend
import cffi

from sfu.errors import SrtpError
from sfu.rtp import HEADER
from sfu.srtp import BUFFER_SIZE, MAX_PACKET, PROTECT_IN_PLACE, SrtpContext, new_length_cell

__all__ = ["UdpReceiver", "UdpSender"]

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address, float], None]

_CDEF = """
struct iovec { void *iov_base; size_t iov_len; };
struct msghdr {
    void *msg_name; unsigned int msg_namelen; struct iovec *msg_iov; size_t msg_iovlen;
    void *msg_control; size_t msg_controllen; int msg_flags;
};
struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
int sendmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags);
int recvmmsg(int sockfd, struct mmsghdr *msgvec, unsigned int vlen, int flags, void *timeout);
"""

# Room for the largest datagram the SFU sends, and for libsrtp to protect in place.
_SLOT = max(2304, BUFFER_SIZE)
# Datagrams per sendmmsg call; a full batch is sent at once, so this also bounds the time
# a forwarded packet waits for the rest of the drain (at 3 µs a datagram, ≈ 0.4 ms).
_CAPACITY = 128
# Datagrams per recvmmsg call: every one is handled before the next call, so this only
# trades syscalls against memory.
_RECEIVE_CAPACITY = 64
# What the worker reads of a datagram (larger ones are truncated, as by recvfrom(2048)).
_RECEIVE_SIZE = 2048
# Distinct destinations (or sources) whose sockaddr is kept; past this the cache starts over.
_MAX_NAMES = 4096
#: Receive errors worth reading on after: a peer's ICMP port unreachable (reported once on
#: the socket) and a signal. Anything else ends the drain rather than being retried.
_RETRY_RECEIVE = frozenset({errno.ECONNREFUSED, errno.EINTR})
_SOCKADDR_IN = struct.Struct("=HH4s8x")


@functools.cache
def _packer(tail_size: int) -> Callable[..., None]:
    """``pack_into`` of an RTP header and a tail of this size: one call instead of a pack and
    a copy, per forwarded packet and consumer. Sizes are bounded by MAX_PACKET, so is this
    cache."""
    return struct.Struct(f"{HEADER.format}{tail_size}s").pack_into


def _load() -> tuple[Any, Any] | None:
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    try:
        libc = ffi.dlopen(None)
    except OSError:
        return None
    if not hasattr(libc, "sendmmsg") or not hasattr(libc, "recvmmsg"):
        return None  # not Linux: one datagram per call
    return ffi, libc


_LIBC = _load()


class _Slots:
    """``count`` mmsghdr entries, each with one iovec over its own ``size``-byte buffer
    (and, with ``own_names``, its own sockaddr_in for the source), laid out once; plus word
    views of the arrays for the hot path."""

    def __init__(self, ffi: Any, count: int, size: int, *, own_names: bool) -> None:
        self.vector = ffi.new("struct mmsghdr[]", count)
        iov = self.iov = ffi.new("struct iovec[]", count)
        self.buffers = ffi.new("char[]", count * size)
        self.names = ffi.new("char[]", count * _SOCKADDR_IN.size) if own_names else None
        self.bases = [self.buffers + index * size for index in range(count)]
        self.views = [ffi.buffer(base, size) for base in self.bases]
        # One word per pointer/size_t (msg_name, iov_len) and per unsigned int (msg_len,
        # msg_namelen); the strides are the structs' sizes in those words.
        entry = ffi.sizeof("struct mmsghdr")
        self.vector_words = memoryview(ffi.buffer(self.vector)).cast("P")
        self.vector_ints = memoryview(ffi.buffer(self.vector)).cast("I")
        self.iov_words = memoryview(ffi.buffer(iov)).cast("L")  # size_t on Linux ABIs
        self.name_stride = entry // self.vector_words.itemsize
        self.length_stride = entry // self.vector_ints.itemsize
        self.msg_len = ffi.offsetof("struct mmsghdr", "msg_len") // self.vector_ints.itemsize
        self.namelen = ffi.offsetof("struct msghdr", "msg_namelen") // self.vector_ints.itemsize
        self.iov_stride = ffi.sizeof("struct iovec") // self.iov_words.itemsize
        self.iov_len = ffi.offsetof("struct iovec", "iov_len") // self.iov_words.itemsize
        for index in range(count):
            header = self.vector[index].msg_hdr
            header.msg_iov = iov + index
            header.msg_iovlen = 1
            header.msg_namelen = _SOCKADDR_IN.size
            iov[index].iov_base = self.bases[index]
            iov[index].iov_len = size
            if self.names is not None:
                header.msg_name = self.names + index * _SOCKADDR_IN.size


class UdpSender:
    """Sends datagrams on one non-blocking socket, batched between :meth:`start_batch` and
    :meth:`flush`; a full send buffer drops datagrams, as a congested router would."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sendto = sock.sendto
        self._batching = False
        self._count = 0
        # destination -> (its sockaddr as a C buffer, kept alive here; that buffer's address)
        self._names: dict[Address, tuple[Any, int]] = {}
        # Only IPv4 sockets are batched: a sockaddr_in is cheap to build and always fits.
        self._batchable = _LIBC is not None and sock.family == socket.AF_INET
        if not self._batchable or _LIBC is None:
            return
        ffi, libc = _LIBC
        self._ffi = ffi
        self._sendmmsg = libc.sendmmsg
        self._memmove = _cffi_backend.FFI().memmove  # cffi.FFI's own is a Python wrapper
        slots = self._slots = _Slots(ffi, _CAPACITY, _SLOT, own_names=False)
        self._vector_words = slots.vector_words
        self._iov_words = slots.iov_words
        # Per slot: its buffer as a Python buffer and as a C pointer, and the word indices of
        # its msg_name and iov_len, looked up together.
        self._slot_words = [
            (
                slots.views[index],
                slots.bases[index],
                index * slots.name_stride,  # msg_name is the first field
                index * slots.iov_stride + slots.iov_len,
            )
            for index in range(_CAPACITY)
        ]
        self._length = new_length_cell()
        self._length_word = memoryview(ffi.buffer(self._length)).cast("i")
        # The forwarded packet being fanned out: its shared tail, and how to pack a header
        # and that tail into a slot in one call (None when too large to protect).
        self._tail: bytes | None = None
        self._pack_into: Callable[..., None] | None = None
        self._size = 0

    def send(self, data: bytes, address: Address) -> None:
        """Send one datagram now, or queue it while a batch is open."""
        if self._batching:
            name = self._names.get(address) or self._name(address)
            size = len(data)
            if name is not None and size <= _SLOT:
                index = self._count
                _, base, name_word, length_word = self._slot_words[index]
                self._vector_words[name_word] = name[1]
                self._iov_words[length_word] = size
                self._memmove(base, data, size)
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
            if tail is not self._tail:
                self._start_packet(tail)  # the first consumer of this packet
            name = self._names.get(address) or self._name(address)
            if name is not None and self._pack_into is not None:
                # Pack, protect in place and book the slot in this one frame, with no
                # further Python call: this runs once per packet per consumer.
                index = self._count
                view, base, name_word, length_word = self._slot_words[index]
                self._pack_into(view, 0, first, second, seq, timestamp, ssrc, tail)
                length = self._length_word
                length[0] = self._size
                if PROTECT_IN_PLACE(srtp.tx_session, base, self._length):
                    raise SrtpError("SRTP protection failed")
                self._vector_words[name_word] = name[1]
                self._iov_words[length_word] = length[0]
                self._count = index + 1
                if index == _CAPACITY - 1:
                    self.flush()
                return
        self.send(srtp.protect_rtp(first, second, seq, timestamp, ssrc, tail), address)

    def _start_packet(self, tail: bytes) -> None:
        self._tail = tail
        self._size = 12 + len(tail)
        self._pack_into = _packer(len(tail)) if self._size <= MAX_PACKET else None

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
        vector = self._slots.vector
        start = 0
        while start < count:
            sent = self._sendmmsg(fd, vector + start, count - start, 0)
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

    def _name(self, address: Address) -> tuple[Any, int] | None:
        try:
            packed = _SOCKADDR_IN.pack(
                socket.AF_INET,
                socket.htons(address[1]),
                socket.inet_pton(socket.AF_INET, address[0]),
            )
        except (OSError, TypeError, IndexError, OverflowError, struct.error):
            return None  # not a numeric IPv4 address: sendto resolves or rejects it
        if len(self._names) >= _MAX_NAMES:
            # Queued slots point at these buffers by raw address (cffi does not keep them
            # alive): send them before the buffers are freed.
            self.flush()
            self._names.clear()
        buffer = self._ffi.new("char[]", packed)
        name = (buffer, int(self._ffi.cast("uintptr_t", buffer)))
        self._names[address] = name
        return name


class UdpReceiver:
    """Reads every datagram queued on one non-blocking socket (see module docstring)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._recvfrom = sock.recvfrom
        # source sockaddr (family, port and address as one integer) -> (host, port)
        self._sources: dict[int, Address] = {}
        self._batchable = _LIBC is not None and sock.family == socket.AF_INET
        if not self._batchable or _LIBC is None:
            return
        ffi, libc = _LIBC
        self._ffi = ffi
        self._recvmmsg = libc.recvmmsg
        # From a char pointer, so always bytes.
        self._unpack = cast(Callable[[Any, int], bytes], _cffi_backend.FFI().unpack)
        self._null = ffi.NULL
        self._slots = _Slots(ffi, _RECEIVE_CAPACITY, _RECEIVE_SIZE, own_names=True)
        assert self._slots.names is not None
        # The first eight bytes of each sockaddr_in (family, port, address) as one word.
        self._name_words = memoryview(ffi.buffer(self._slots.names)).cast("Q")

    def drain(self, handle: DatagramHandler, clock: Callable[[], float]) -> None:
        """Call ``handle(data, (host, port), now)`` for each datagram until none is queued.

        ``now`` is read from ``clock`` once per ``recvmmsg`` batch (per datagram without
        it): a drain can last milliseconds under load, and the bandwidth estimator reads
        arrival times from it.
        """
        if not self._batchable:
            self._drain_one_by_one(handle, clock)
            return
        slots = self._slots
        vector = slots.vector
        lengths = slots.vector_ints
        stride = slots.length_stride
        msg_len = slots.msg_len
        namelen = slots.namelen
        bases = slots.bases
        name_words = self._name_words
        sources = self._sources
        unpack = self._unpack
        recvmmsg = self._recvmmsg
        fd = self._sock.fileno()
        while True:
            count = recvmmsg(fd, vector, _RECEIVE_CAPACITY, 0, self._null)
            if count < 0:
                if self._ffi.errno in _RETRY_RECEIVE:
                    continue  # ICMP port unreachable from a vanished peer, reported once
                return  # nothing queued, or an error retrying would only spin on
            if count == 0:
                return
            now = clock()
            for index in range(count):
                offset = index * stride
                key = name_words[2 * index]
                address = sources.get(key) or self._source(key)
                lengths[offset + namelen] = _SOCKADDR_IN.size  # the kernel rewrote it
                handle(unpack(bases[index], lengths[offset + msg_len]), address, now)

    def _drain_one_by_one(self, handle: DatagramHandler, clock: Callable[[], float]) -> None:
        recvfrom = self._recvfrom
        while True:
            try:
                data, address = recvfrom(_RECEIVE_SIZE)
            except OSError as exc:
                if exc.errno in _RETRY_RECEIVE:
                    continue  # ICMP port unreachable from a vanished peer, on some platforms
                return  # nothing queued, or an error retrying would only spin on
            handle(data, address[:2], clock())

    def _source(self, key: int) -> Address:
        packed = key.to_bytes(8, sys.byteorder)  # sin_family, sin_port, sin_addr
        host = socket.inet_ntop(socket.AF_INET, packed[4:8])
        address = (host, int.from_bytes(packed[2:4], "big"))
        if len(self._sources) >= _MAX_NAMES:
            self._sources.clear()
        self._sources[key] = address
        return address
