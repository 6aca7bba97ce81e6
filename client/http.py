"""A small HTTP/1.1 client on trio streams, driven by h11 (RFC 9112).

h11 is the sans-I/O protocol core; this module only moves its bytes over a trio stream.
One :class:`HttpClient` keeps one keep-alive connection to the control plane and serialises
requests on it (a client makes one request at a time per connection anyway, and a second
connection for the gateway). A connection the server closed while idle is replaced and the
request retried once: nothing was processed, since no byte of an answer had arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

import h11
import trio

from client.errors import TransportError

__all__ = ["HttpClient", "HttpResponse", "split_server_url"]

#: Largest response body accepted. It must hold the largest answer the control plane
#: gives: a page of ``GET /envelopes`` is bounded by bytes (at most
#: :data:`contract.relay.MAX_ENVELOPE_PAGE_ANSWER`, about 1.6 MiB), a page of channel
#: history holds at most 100 ciphertexts of 64 KiB (8.6 MiB in JSON), and an export of a
#: busy account stays well below this.
MAX_RESPONSE = 32 * 1024 * 1024
_READ = 65536
_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class HttpResponse:
    """A complete response: status, lower-cased headers and the body."""

    status: int
    headers: dict[str, str]
    body: bytes


def split_server_url(url: str) -> tuple[str, int, str]:
    """``http://host:port[/prefix]`` → (host, port, path prefix); only plain http on loopback
    or behind a TLS-terminating proxy is supported by this SDK."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise TransportError(f"the server URL {url!r} must look like http://HOST:PORT")
    return parts.hostname, parts.port or 80, parts.path.rstrip("/")


class HttpClient:
    """Requests to one server over a reused HTTP/1.1 connection."""

    def __init__(self, server_url: str) -> None:
        self.host, self.port, self.prefix = split_server_url(server_url)
        self._stream: trio.SocketStream | None = None
        self._conn: h11.Connection | None = None
        self._lock = trio.Lock()

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            await stream.aclose()

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b""
    ) -> HttpResponse:
        """Send one request and read the whole answer."""
        async with self._lock:
            if self._conn is not None and self._conn.our_state is not h11.IDLE:
                # A request on it was cancelled midway: its state is unknown, start afresh.
                self._discard()
            fresh = self._stream is None
            try:
                return await self._exchange(method, path, headers, body)
            except _StaleConnection:
                if fresh:
                    raise TransportError("the server closed the connection") from None
            await self.aclose()
            try:
                return await self._exchange(method, path, headers, body)
            except _StaleConnection:
                raise TransportError("the server closed the connection") from None

    def _discard(self) -> None:
        """Drop the connection at once (no checkpoint, so it also works when cancelled)."""
        stream, self._stream, self._conn = self._stream, None, None
        if stream is not None:
            stream.socket.close()

    async def _connect(self) -> tuple[trio.SocketStream, h11.Connection]:
        if self._stream is None or self._conn is None:
            try:
                self._stream = await trio.open_tcp_stream(self.host, self.port)
            except OSError as exc:
                raise TransportError(
                    f"cannot reach the server at {self.host}:{self.port} ({exc.strerror or exc})"
                ) from None
            self._conn = h11.Connection(h11.CLIENT)
        return self._stream, self._conn

    async def _exchange(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> HttpResponse:
        stream, conn = await self._connect()
        all_headers = [
            ("Host", f"{self.host}:{self.port}"),
            ("Content-Length", str(len(body))),
            *headers,
        ]
        got_bytes = False
        try:
            with trio.fail_after(_TIMEOUT_S):
                request = h11.Request(method=method, target=self.prefix + path, headers=all_headers)
                await stream.send_all(conn.send(request) + conn.send(h11.Data(data=body)))
                await stream.send_all(conn.send(h11.EndOfMessage()))
                status, resp_headers, chunks, size = 0, {}, [], 0
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(_READ)
                        if data:
                            got_bytes = True
                        elif not got_bytes:
                            raise _StaleConnection
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Response):
                        status = event.status_code
                        resp_headers = {
                            k.decode("latin-1").lower(): v.decode("latin-1")
                            for k, v in event.headers
                        }
                    elif isinstance(event, h11.Data):
                        size += len(event.data)
                        if size > MAX_RESPONSE:
                            raise TransportError("the server's answer is too large")
                        chunks.append(bytes(event.data))
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        if not got_bytes:
                            raise _StaleConnection
                        raise TransportError("the server closed the connection mid-answer")
        except trio.TooSlowError:
            await self.aclose()
            raise TransportError("the server did not answer in time") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self.aclose()
            if not got_bytes:
                raise _StaleConnection from exc
            raise TransportError("the connection to the server broke") from None
        except h11.ProtocolError:
            await self.aclose()
            raise TransportError("the server spoke malformed HTTP") from None
        except (_StaleConnection, TransportError):
            await self.aclose()
            raise
        except BaseException:
            # Cancelled (or worse) midway: the connection is in an unknown state.
            self._discard()
            raise
        if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
            await self.aclose()
        else:
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                await self.aclose()
        return HttpResponse(status, resp_headers, b"".join(chunks))


class _StaleConnection(Exception):
    """The server closed the kept-alive connection before answering."""
