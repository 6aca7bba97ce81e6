"""The trio shell around :class:`turn.server.TurnServer`: sockets in, sockets out.

UDP listeners and relay endpoints are stdlib non-blocking sockets woken through
``trio.lowlevel.wait_readable``: a listener has its own task; all relay sockets sit in one
epoll set drained by one task, so an allocation costs a socket and no task. Each wake-up
drains the queued datagrams (up to a batch, then yields to the scheduler) with no await, log
call or per-packet object beyond the datagram itself. TCP and TLS connections are trio
streams framed by :class:`turn.framing.StreamFramer`, each with a writer task fed through a
bounded memory channel so the data path never awaits.

Every task lives in the nursery of :func:`serve`; cancelling it closes every socket.
Logs never carry addresses or usernames.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import select
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from turn.config import TurnConfig
from turn.framing import FramingError, StreamFramer
from turn.peer_filter import PeerFilter
from turn.server import Counters, TurnPolicy, TurnServer

__all__ = ["BoundSocket", "Listening", "TurnShell", "bind_listeners", "build_policy", "serve"]

log = logging.getLogger("turn")

Addr = tuple[str, int]
_BATCH = 512
_RECV_SIZE = 65536 + 64
_STREAM_QUEUE = 512
_IDLE_STREAM_TIMEOUT = 30.0
_PORT_ATTEMPTS = 64
_IP_PMTUDISC_DO = 2  # linux/in.h; the socket module does not export it
# Receive buffers absorb bursts while the process is not scheduled (the kernel caps them at
# net.core.rmem_max); relays get less since there can be thousands of them.
_LISTENER_RCVBUF = 2 * 1024 * 1024
_RELAY_RCVBUF = 256 * 1024
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ssl.SSLError)


class _UdpLink:
    """Sends to clients of one UDP listener."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes, addr: Addr) -> None:
        try:  # noqa: SIM105 - a plain try is cheaper than suppress() on the data path
            self.sock.sendto(data, addr)
        except OSError:
            pass


class _StreamLink:
    """Sends to the client of one TCP/TLS connection through its writer task."""

    __slots__ = ("channel", "counters")

    def __init__(self, channel: trio.MemorySendChannel[bytes], counters: Counters) -> None:
        self.channel = channel
        self.counters = counters

    def send(self, data: bytes, addr: Addr) -> None:
        try:
            self.channel.send_nowait(data)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self.counters.packets_dropped += 1  # a slow stream client loses data, not memory


@dataclass(eq=False, slots=True)
class Relay:
    """One relay endpoint: its UDP socket and the client link it answers on."""

    sock: socket.socket
    link: _UdpLink | _StreamLink
    client: Addr
    v6: bool


@dataclass(frozen=True, slots=True)
class Listening:
    """A bound listener, as announced on stdout: ``turn listening <proto> <host>:<port>``."""

    proto: str
    host: str
    port: int

    def line(self) -> str:
        """The announcement line the umbrella CLI parses."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"turn listening {self.proto} {host}:{self.port}"


def _own_addresses(config: TurnConfig) -> set[str]:
    hosts = {h for h, _ in config.listen_addresses() + config.tls_addresses()}
    hosts |= set(config.relay_ip) | set(config.external_ip)
    if any(h in ("0.0.0.0", "::") for h in hosts):
        import psutil

        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family in (socket.AF_INET, socket.AF_INET6):
                    hosts.add(a.address.split("%", 1)[0])
    return hosts


def build_policy(config: TurnConfig) -> TurnPolicy:
    """The core's settings from the process configuration."""
    peer_filter = PeerFilter(
        own_addresses=_own_addresses(config),
        allow=config.allow_peer,
        deny=config.deny_peer,
        allow_loopback=config.allow_loopback_peers,
    )
    return TurnPolicy(
        realm=config.realm,
        secrets=tuple(config.secrets()),
        peer_filter=peer_filter,
        relay_families=frozenset(config.relay_families()),
        max_allocations=config.max_allocations,
        max_allocations_per_user=config.max_allocations_per_user,
        bandwidth_per_allocation=config.bandwidth,
        unauthenticated_rate=config.unauthenticated_rate,
        unauthenticated_burst=config.unauthenticated_burst,
    )


class TurnShell:
    """Owns the sockets of one TURN process and moves bytes between them and the core."""

    def __init__(self, config: TurnConfig, nonce_key: bytes | None = None) -> None:
        self.config = config
        self.server: TurnServer[Relay] = TurnServer(build_policy(config), self, nonce_key=nonce_key)
        self._links: dict[int, _UdpLink | _StreamLink] = {}
        self._link_ids = itertools.count(1)
        self._lo, self._hi = config.port_range()
        self._connections = 0
        self._last_error_log = -math.inf
        self._relays: dict[int, Relay] = {}
        self._relay_poll = select.epoll()

    def _internal_error(self) -> None:
        """A bug met a packet: count it, log it at most once a minute, keep serving."""
        self.server.counters.internal_errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= 60.0:
            self._last_error_log = now
            log.exception("internal error while handling a packet (packet dropped)")

    # --- RelayPorts ---------------------------------------------------------------------------

    def _relay_socket(self, family: int) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RELAY_RCVBUF)
            if hasattr(socket, "IP_MTU_DISCOVER") and family == socket.AF_INET:
                # Always set DF, which is what DONT-FRAGMENT asks for (RFC 8656 §14.8).
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MTU_DISCOVER, _IP_PMTUDISC_DO)
        except OSError:
            sock.close()
            raise
        return sock

    def _register(
        self, sock: socket.socket, sender: _UdpLink | _StreamLink, client: Addr, family: int
    ) -> Relay:
        relay = Relay(sock, sender, client, family == socket.AF_INET6)
        self._relays[sock.fileno()] = relay
        self._relay_poll.register(sock.fileno(), select.EPOLLIN)
        return relay

    def open(
        self, family: int, link: int, client: Addr, even_port: bool
    ) -> tuple[Relay, Addr] | None:
        """Bind a UDP relay socket on a random free port of ``--relay-ports``."""
        sender = self._links.get(link)
        if sender is None:
            return None
        try:
            sock = self._relay_socket(family)
        except OSError:
            return None
        port = self._bind_random_port(sock, self.config.bind_ip(family), even_port)
        if port is None:
            sock.close()
            return None
        relay = self._register(sock, sender, client, family)
        return relay, (self.config.advertised_ip(family), port)

    def open_pair(
        self, family: int, link: int, client: Addr
    ) -> tuple[Relay, Addr, Relay, Addr] | None:
        """Bind an even port and the odd one above it, for EVEN-PORT with reservation."""
        sender = self._links.get(link)
        if sender is None:
            return None
        ip = self.config.bind_ip(family)
        advertised = self.config.advertised_ip(family)
        for _ in range(_PORT_ATTEMPTS):
            port = random.randint(self._lo, self._hi) & ~1
            if port < self._lo or port + 1 > self._hi:
                continue
            try:
                first = self._relay_socket(family)
            except OSError:
                return None
            try:
                second = self._relay_socket(family)
            except OSError:
                first.close()
                return None
            try:
                first.bind((ip, port))
                second.bind((ip, port + 1))
            except OSError:
                first.close()
                second.close()
                continue
            return (
                self._register(first, sender, client, family),
                (advertised, port),
                self._register(second, sender, client, family),
                (advertised, port + 1),
            )
        return None

    def adopt(self, relay: Relay, link: int, client: Addr) -> bool:
        """Hand a reserved relay to the client that presented its token."""
        sender = self._links.get(link)
        if sender is None or relay.sock.fileno() < 0:
            return False
        relay.link = sender
        relay.client = client
        return True

    def _bind_random_port(self, sock: socket.socket, ip: str, even: bool) -> int | None:
        lo, hi = self._lo, self._hi
        for _ in range(_PORT_ATTEMPTS):
            port = random.randint(lo, hi)
            if even and port & 1:
                port = port - 1 if port > lo else port + 1
                if port > hi:
                    continue
            try:
                sock.bind((ip, port))
            except OSError:
                continue
            return port
        return None

    def close(self, relay: Relay) -> None:
        """Release a relay endpoint: forget it in the poller and close its socket."""
        fd = relay.sock.fileno()
        if self._relays.pop(fd, None) is not None:
            self._relay_poll.unregister(fd)
        relay.sock.close()

    # --- relay endpoints ------------------------------------------------------------------------

    async def serve_relays(self) -> None:
        """Drain every relay socket from one task, woken by one epoll set.

        One wake-up serves all relays with queued datagrams, so the cost of a trio wake-up
        is shared by many packets, and an allocation costs a socket but no task.
        """
        poll = self._relay_poll.poll
        relays = self._relays
        receive = self.server.receive_from_peer_untrusted
        try:
            while True:
                await trio.lowlevel.wait_readable(self._relay_poll)
                now = time.time()
                for fd, _ in poll(0):
                    relay = relays.get(fd)
                    if relay is None:
                        continue
                    recvfrom = relay.sock.recvfrom
                    send = relay.link.send
                    client = relay.client
                    for _ in range(_BATCH):
                        try:
                            data, peer = recvfrom(_RECV_SIZE)
                        except BlockingIOError:
                            break
                        except OSError:
                            continue
                        if relay.v6:
                            peer = peer[:2]
                        try:
                            out = receive(relay, peer, data, now)
                        except Exception:
                            self._internal_error()
                            continue
                        if out is not None:
                            send(out, client)
        finally:
            for relay in list(relays.values()):
                relay.sock.close()
            relays.clear()
            trio.lowlevel.notify_closing(self._relay_poll)
            self._relay_poll.close()

    # --- UDP listeners ------------------------------------------------------------------------

    def register_udp(self, sock: socket.socket) -> int:
        """Adopt a bound UDP listener socket; returns its link id for :meth:`serve_udp`."""
        link = next(self._link_ids)
        self._links[link] = _UdpLink(sock)
        return link

    async def serve_udp(self, sock: socket.socket, link: int) -> None:
        """Drain datagrams from a UDP listener into the core until cancelled."""
        receive = self.server.receive_from_client_untrusted
        sendto = sock.sendto
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                now = time.time()
                for _ in range(_BATCH):
                    try:
                        data, addr = sock.recvfrom(_RECV_SIZE)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue
                    try:
                        out = receive(link, addr, data, now)
                    except Exception:
                        self._internal_error()
                        continue
                    if out is None:
                        continue
                    try:
                        if isinstance(out, bytes):
                            sendto(out, addr)
                        else:
                            relay, peer, payload = out
                            relay.sock.sendto(payload, peer)
                    except OSError:
                        pass
        finally:
            self._links.pop(link, None)
            trio.lowlevel.notify_closing(sock)
            sock.close()

    # --- TCP / TLS ----------------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream, client: Addr) -> None:
        """Serve one TCP or TLS connection until it closes; its allocation dies with it."""
        if self._connections >= self.config.max_connections:
            await trio.aclose_forcefully(stream)
            return
        self._connections += 1
        link = next(self._link_ids)
        send_channel, receive_channel = trio.open_memory_channel[bytes](_STREAM_QUEUE)
        self._links[link] = _StreamLink(send_channel, self.server.counters)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_write_stream, stream, receive_channel, nursery.cancel_scope)
                try:
                    await self._read_stream(stream, link, client, send_channel)
                except _STREAM_ERRORS:
                    pass
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            self._connections -= 1
            self._links.pop(link, None)
            self.server.link_closed(link)
            await trio.aclose_forcefully(stream)

    async def _read_stream(
        self,
        stream: trio.abc.Stream,
        link: int,
        client: Addr,
        replies: trio.MemorySendChannel[bytes],
    ) -> None:
        framer = StreamFramer()
        receive = self.server.receive_from_client_untrusted
        has_allocation = self.server.has_allocation
        while True:
            # Connections without an allocation must keep talking or go (slow-loris guard).
            idle = math.inf if has_allocation(link) else _IDLE_STREAM_TIMEOUT
            with trio.move_on_after(idle) as idle_scope:
                data = await stream.receive_some(65536)
            if idle_scope.cancelled_caught or not data:
                return
            try:
                frames = framer.feed_untrusted(data)
            except FramingError:
                return
            now = time.time()
            for frame in frames:
                try:
                    out = receive(link, client, frame, now, True)
                except Exception:
                    self._internal_error()
                    return
                if out is None:
                    continue
                if isinstance(out, bytes):
                    with contextlib.suppress(trio.WouldBlock):
                        replies.send_nowait(out)
                else:
                    relay, peer, payload = out
                    with contextlib.suppress(OSError):
                        relay.sock.sendto(payload, peer)


async def _write_stream(
    stream: trio.abc.Stream,
    frames: trio.MemoryReceiveChannel[bytes],
    connection_scope: trio.CancelScope,
) -> None:
    try:
        async with frames:
            async for frame in frames:
                await stream.send_all(frame)
    except _STREAM_ERRORS:
        connection_scope.cancel()


def _tls_context(config: TurnConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """A listening socket bound before serving (so worker processes can share it)."""

    proto: str
    host: str
    sock: socket.socket

    @property
    def listening(self) -> Listening:
        """What to announce for this socket."""
        return Listening(self.proto, self.host, self.sock.getsockname()[1])


def _bind(kind: int, host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _LISTENER_RCVBUF)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(256)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_copies(kind: int, host: str, port: int, copies: int) -> list[socket.socket]:
    reuse = copies > 1
    first = _bind(kind, host, port, reuse)
    bound = first.getsockname()[1]
    socks = [first]
    try:
        for _ in range(copies - 1):
            socks.append(_bind(kind, host, bound, reuse))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bind_listeners(config: TurnConfig, copies: int = 1) -> list[list[BoundSocket]]:
    """Bind every listener ``copies`` times (SO_REUSEPORT when more than once).

    Each ``--listen`` gets a UDP and a TCP socket on the same port when it is free (port 0
    picks one for UDP and tries it for TCP). Returns one list of sockets per copy.
    """
    sets: list[list[BoundSocket]] = [[] for _ in range(copies)]
    try:
        for host, port in config.listen_addresses():
            udp = _bind_copies(socket.SOCK_DGRAM, host, port, copies)
            udp_port = udp[0].getsockname()[1]
            try:
                tcp = _bind_copies(socket.SOCK_STREAM, host, port or udp_port, copies)
            except OSError:
                if port:
                    raise
                tcp = _bind_copies(socket.SOCK_STREAM, host, 0, copies)
            for i in range(copies):
                sets[i].append(BoundSocket("udp", host, udp[i]))
                sets[i].append(BoundSocket("tcp", host, tcp[i]))
        for host, port in config.tls_addresses():
            tls = _bind_copies(socket.SOCK_STREAM, host, port, copies)
            for i in range(copies):
                sets[i].append(BoundSocket("tls", host, tls[i]))
    except OSError:
        for bound in sets:
            for b in bound:
                b.sock.close()
        raise
    return sets


async def serve(
    config: TurnConfig,
    announce: Callable[[Listening], None],
    *,
    sockets: list[BoundSocket] | None = None,
    nonce_key: bytes | None = None,
    task_status: trio.TaskStatus[TurnShell] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the TURN relay until cancelled; ``announce`` hears of each listener.

    ``sockets`` are listeners bound beforehand (see :func:`bind_listeners`); without them,
    this binds its own. ``nonce_key`` lets worker processes share nonces.
    """
    if sockets is None:
        sockets = bind_listeners(config)[0]
    async with trio.open_nursery() as nursery:
        shell = TurnShell(config, nonce_key)
        try:
            context = _tls_context(config) if config.tls_listen else None
            for bound in sockets:
                if bound.proto == "udp":
                    nursery.start_soon(shell.serve_udp, bound.sock, shell.register_udp(bound.sock))
                else:
                    listener = trio.SocketListener(trio.socket.from_stdlib_socket(bound.sock))
                    handler = _stream_handler(shell, context if bound.proto == "tls" else None)
                    nursery.start_soon(_serve_listener, listener, handler)
                announce(bound.listening)
            nursery.start_soon(shell.serve_relays)
            nursery.start_soon(_housekeeping, shell, config.stats_interval)
            task_status.started(shell)
            await trio.sleep_forever()
        finally:
            shell.server.close()
            _log_counters(shell)


def _stream_handler(
    shell: TurnShell, context: ssl.SSLContext | None
) -> Callable[[trio.SocketStream], Awaitable[None]]:
    async def handler(stream: trio.SocketStream) -> None:
        try:
            client: Addr = stream.socket.getpeername()[:2]
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        if context is None:
            await shell.handle_stream(stream, client)
        else:
            tls = trio.SSLStream(stream, context, server_side=True, https_compatible=False)
            await shell.handle_stream(tls, client)

    return handler


async def _serve_listener(
    listener: trio.SocketListener, handler: Callable[[trio.SocketStream], Awaitable[None]]
) -> None:
    async with listener, trio.open_nursery() as nursery:
        while True:
            try:
                stream = await listener.accept()
            except OSError:
                await trio.sleep(0.1)  # EMFILE and friends: back off instead of spinning
                continue
            nursery.start_soon(handler, stream)


async def _housekeeping(shell: TurnShell, stats_interval: float) -> None:
    last_stats = time.monotonic()
    while True:
        await trio.sleep(1.0)
        shell.server.expire(time.time())
        if stats_interval and time.monotonic() - last_stats >= stats_interval:
            last_stats = time.monotonic()
            _log_counters(shell)


def _log_counters(shell: TurnShell) -> None:
    snapshot = shell.server.counters.snapshot(shell.server.allocation_count)
    log.info("turn counters %s", " ".join(f"{k}={v}" for k, v in snapshot.items()))
