"""The sans-I/O TURN server core (RFC 8656 over RFC 8489), fed datagrams and time.

:class:`TurnServer` never touches a socket or a clock. The I/O shell (:mod:`turn.serve`)
hands it every datagram or stream frame from a client with the link it arrived on
(:meth:`TurnServer.receive_from_client_untrusted`) and every datagram a relay endpoint
received from a peer (:meth:`TurnServer.receive_from_peer_untrusted`), with the current unix
time; the core answers with the bytes to send, and asks the shell for relay endpoints through
the :class:`RelayPorts` interface it was given. The shell calls :meth:`TurnServer.expire`
about once a second.

Implemented: Binding (RFC 8489 §6.3), Allocate (RFC 8656 §7), Refresh (§8),
CreatePermission (§10), Send and Data indications (§11), ChannelBind and ChannelData (§12),
long-term authentication with REST credentials and stateless nonces (RFC 8489 §9.2,
:mod:`turn.auth`), the 420 rule for unknown comprehension-required attributes (RFC 8489
§6.3.1), the peer filter (:mod:`turn.peer_filter`) and quotas. Errors are the types of
:mod:`turn.errors`; :meth:`TurnServer._error_response` is where they become wire codes.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Hashable
from dataclasses import dataclass, fields
from typing import Generic, Protocol, TypeVar

from turn.allocation import (
    CHANNEL_LIFETIME,
    CHANNEL_MAX,
    CHANNEL_MIN,
    DEFAULT_LIFETIME,
    MAX_LIFETIME,
    PERMISSION_LIFETIME,
    Allocation,
    Channel,
)
from turn.auth import (
    PASSWORD_ALGORITHMS_VALUE,
    Credential,
    NonceBook,
    RestCredentials,
    SourceRateLimiter,
)
from turn.errors import (
    AddressFamilyNotSupported,
    AllocationMismatch,
    AllocationQuotaReached,
    BadRequest,
    Forbidden,
    InsufficientCapacity,
    PeerAddressFamilyMismatch,
    StaleNonce,
    TurnError,
    Unauthenticated,
    UnknownAttribute,
    UnsupportedTransport,
    WrongCredentials,
)
from turn.peer_filter import PeerFilter
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    decode_nonce_features_untrusted,
    decode_password_algorithm_untrusted,
    decode_text_untrusted,
    decode_uint32_untrusted,
    decode_xor_address_untrusted,
    encode_error_code,
    encode_uint32,
    encode_unknown_attributes,
    encode_xor_address,
    parse_message_untrusted,
)

__all__ = ["Counters", "RelayPorts", "TurnPolicy", "TurnServer"]

R = TypeVar("R", bound=Hashable)
Addr = tuple[str, int]

UDP_TRANSPORT = 17
MAX_PERMISSIONS = 64
MAX_CHANNELS = 64
#: How long the odd port of an EVEN-PORT pair stays reserved (RFC 8656 §7.2: about 30 s).
RESERVATION_LIFETIME = 30.0
#: Largest peer datagram that still fits a Data indication (16-bit STUN length, IPv6 peer).
MAX_RELAYED_PAYLOAD = 0xFFFF - 4 - 24 - 3
_SUCCESS = int(MessageClass.SUCCESS)
_ERROR = int(MessageClass.ERROR)

#: Comprehension-required attributes this server understands (RFC 8489 §6.3.1 / §14).
_KNOWN_REQUIRED = frozenset(
    {
        Attr.MAPPED_ADDRESS,
        Attr.USERNAME,
        Attr.ERROR_CODE,
        Attr.UNKNOWN_ATTRIBUTES,
        Attr.CHANNEL_NUMBER,
        Attr.LIFETIME,
        Attr.XOR_PEER_ADDRESS,
        Attr.DATA,
        Attr.REALM,
        Attr.NONCE,
        Attr.XOR_RELAYED_ADDRESS,
        Attr.REQUESTED_ADDRESS_FAMILY,
        Attr.EVEN_PORT,
        Attr.RESERVATION_TOKEN,
        Attr.REQUESTED_TRANSPORT,
        Attr.DONT_FRAGMENT,
        Attr.PASSWORD_ALGORITHM,
        Attr.USERHASH,
        Attr.XOR_MAPPED_ADDRESS,
        Attr.PRIORITY,
        Attr.USE_CANDIDATE,
    }
)
_TURN_REQUESTS = frozenset(
    {Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND}
)


class RelayPorts(Protocol[R]):
    """What the core needs from the shell: UDP relay endpoints, opened and closed on demand."""

    def open(self, family: int, link: int, client: Addr, even_port: bool) -> tuple[R, Addr] | None:
        """Bind a relay endpoint of ``family`` (``socket.AF_INET``/``AF_INET6``) for ``client``.

        Returns the shell's handle and the relayed transport address to advertise, or
        ``None`` when no port is free.
        """
        ...

    def open_pair(self, family: int, link: int, client: Addr) -> tuple[R, Addr, R, Addr] | None:
        """Bind an even port and the next one (EVEN-PORT with reservation, RFC 8656 §7.2).

        The second endpoint is held for a later Allocate carrying its RESERVATION-TOKEN.
        """
        ...

    def adopt(self, relay: R, link: int, client: Addr) -> bool:
        """Point a reserved relay endpoint at the client that claimed it; False if gone."""
        ...

    def close(self, relay: R) -> None:
        """Release a relay endpoint the core no longer uses."""
        ...


@dataclass(frozen=True, slots=True)
class TurnPolicy:
    """Settings of the core; built from :class:`turn.config.TurnConfig` by the shell."""

    realm: str
    secrets: tuple[bytes, ...]
    peer_filter: PeerFilter
    relay_families: frozenset[int] = frozenset({socket.AF_INET})
    max_allocations: int = 10000
    max_allocations_per_user: int = 10
    bandwidth_per_allocation: int = 0
    unauthenticated_rate: float = 5.0
    unauthenticated_burst: float = 20.0
    software: str = ""


@dataclass(slots=True)
class Counters:
    """Running totals for operators; no addresses, no usernames."""

    allocations_created: int = 0
    allocations_deleted: int = 0
    permissions_created: int = 0
    channels_bound: int = 0
    packets_relayed: int = 0
    bytes_relayed: int = 0
    packets_dropped: int = 0
    auth_challenges: int = 0
    auth_failures: int = 0
    peer_refusals: int = 0
    rate_limited: int = 0
    malformed: int = 0
    internal_errors: int = 0

    def snapshot(self, allocations: int) -> dict[str, int]:
        """All counters plus the current number of allocations, as a flat dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["allocations_active"] = allocations
        return out


@dataclass(slots=True)
class _Auth:
    credential: Credential
    key: bytes
    use_sha256: bool


class TurnServer(Generic[R]):
    """The TURN server state machine; one instance serves every listener of a process."""

    def __init__(
        self, policy: TurnPolicy, relay_ports: RelayPorts[R], *, nonce_key: bytes | None = None
    ) -> None:
        self.policy = policy
        self.counters = Counters()
        self._ports = relay_ports
        self._credentials = RestCredentials(list(policy.secrets), policy.realm)
        self._realm_value = policy.realm.encode("utf-8")
        self._nonces = NonceBook(nonce_key)
        self._limiter = SourceRateLimiter(policy.unauthenticated_rate, policy.unauthenticated_burst)
        self._by_link: dict[int, dict[Addr, Allocation[R]]] = {}
        self._by_relay: dict[R, Allocation[R]] = {}
        self._per_user: dict[str, int] = {}
        self._reservations: dict[bytes, tuple[R, Addr, int, float, str]] = {}
        self._rate = float(policy.bandwidth_per_allocation)
        self._burst = max(self._rate, 65536.0)

    # --- public surface ---------------------------------------------------------------------

    @property
    def allocation_count(self) -> int:
        """Allocations alive right now."""
        return len(self._by_relay)

    def has_allocation(self, link: int) -> bool:
        """True when some client on ``link`` holds an allocation."""
        return link in self._by_link

    def allocations(self) -> list[Allocation[R]]:
        """A snapshot list of the live allocations (for tests and introspection)."""
        return list(self._by_relay.values())

    def receive_from_client_untrusted(
        self, link: int, client: Addr, data: bytes, now: float, stream: bool = False
    ) -> bytes | tuple[R, Addr, bytes] | None:
        """Handle one datagram (or one stream frame) from a client.

        Returns bytes to send back to ``client`` on the same link, a ``(relay, peer, payload)``
        triple to send from a relay endpoint, or ``None``.
        """
        if len(data) < 4:
            return None
        first = data[0]
        # First two bits 01: a channel number 0x4000-0x7FFF, the whole range ChannelBind accepts.
        if 0x40 <= first <= 0x7F:
            return self._channel_data_from_client(link, client, data, now)
        if first >= 0x80:
            self.counters.malformed += 1
            return None
        try:
            msg = parse_message_untrusted(data)
        except StunDecodeError:
            self.counters.malformed += 1
            return None
        if msg.fingerprint_offset >= 0 and not msg.check_fingerprint():
            self.counters.malformed += 1
            return None
        if msg.message_class == MessageClass.REQUEST:
            return self._request(link, client, msg, now, stream)
        if msg.message_class == MessageClass.INDICATION and msg.method == Method.SEND:
            return self._send_indication(link, client, msg, now)
        return None

    def receive_from_peer_untrusted(
        self, relay: R, peer: Addr, data: bytes, now: float
    ) -> bytes | None:
        """Handle a datagram a relay endpoint received; return what to send to its client."""
        alloc = self._by_relay.get(relay)
        if alloc is None:
            return None
        expires = alloc.permissions.get(peer[0])
        if expires is None or expires <= now:
            self.counters.packets_dropped += 1
            return None
        n = len(data)
        if n > MAX_RELAYED_PAYLOAD or (self._rate and not self._spend(alloc, n, now)):
            self.counters.packets_dropped += 1
            return None
        counters = self.counters
        counters.packets_relayed += 1
        counters.bytes_relayed += n
        channel = alloc.channel_by_peer.get(peer)
        if channel is not None and channel.expires > now:
            frame = channel.header + n.to_bytes(2, "big") + data
            if alloc.stream and n & 3:
                frame += b"\x00" * (-n & 3)
            return frame
        tid = alloc.transaction_id  # any id works for an indication; reuse avoids randomness
        indication = Message(
            Method.DATA,
            MessageClass.INDICATION,
            tid,
            [(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)), (Attr.DATA, data)],
        )
        return indication.serialize()

    def link_closed(self, link: int) -> None:
        """A stream link (TCP/TLS connection) ended: its allocations end with it (RFC 8656 §3.1)."""
        for alloc in list(self._by_link.get(link, {}).values()):
            self._delete(alloc)
        self._by_link.pop(link, None)

    def expire(self, now: float) -> None:
        """Delete expired allocations and forget expired permissions and channel bindings."""
        for alloc in list(self._by_relay.values()):
            if alloc.expires <= now:
                self._delete(alloc)
            else:
                alloc.expire(now)
        for token, reserved in list(self._reservations.items()):
            if reserved[3] <= now:
                del self._reservations[token]
                self._ports.close(reserved[0])

    def close(self) -> None:
        """Delete every allocation, releasing all relay endpoints."""
        for alloc in list(self._by_relay.values()):
            self._delete(alloc)
        for reserved in self._reservations.values():
            self._ports.close(reserved[0])
        self._reservations.clear()

    # --- data path ----------------------------------------------------------------------------

    def _spend(self, alloc: Allocation[R], n: int, now: float) -> bool:
        tokens = alloc.tokens + (now - alloc.refilled) * self._rate
        if tokens > self._burst:
            tokens = self._burst
        alloc.refilled = now
        if tokens < n:
            alloc.tokens = tokens
            return False
        alloc.tokens = tokens - n
        return True

    def _channel_data_from_client(
        self, link: int, client: Addr, data: bytes, now: float
    ) -> tuple[R, Addr, bytes] | None:
        clients = self._by_link.get(link)
        alloc = clients.get(client) if clients is not None else None
        if alloc is None:
            self.counters.packets_dropped += 1
            return None
        channel = alloc.channels.get((data[0] << 8) | data[1])
        length = (data[2] << 8) | data[3]
        if channel is None or channel.expires <= now or length + 4 > len(data):
            self.counters.packets_dropped += 1
            return None
        peer = channel.peer
        expires = alloc.permissions.get(peer[0])
        if expires is None or expires <= now:
            self.counters.packets_dropped += 1
            return None
        if self._rate and not self._spend(alloc, length, now):
            self.counters.packets_dropped += 1
            return None
        counters = self.counters
        counters.packets_relayed += 1
        counters.bytes_relayed += length
        return alloc.relay, peer, data[4 : 4 + length]

    def _send_indication(
        self, link: int, client: Addr, msg: Message, now: float
    ) -> tuple[R, Addr, bytes] | None:
        clients = self._by_link.get(link)
        alloc = clients.get(client) if clients is not None else None
        peer_value = msg.get(Attr.XOR_PEER_ADDRESS)
        payload = msg.get(Attr.DATA)
        if alloc is None or peer_value is None or payload is None:
            self.counters.packets_dropped += 1
            return None
        try:
            peer = decode_xor_address_untrusted(peer_value, msg.transaction_id)
        except StunDecodeError:
            self.counters.malformed += 1
            return None
        if not alloc.has_permission(peer[0], now):
            if not self.policy.peer_filter.allows(peer[0]):
                self.counters.peer_refusals += 1
            self.counters.packets_dropped += 1
            return None
        if self._rate and not self._spend(alloc, len(payload), now):
            self.counters.packets_dropped += 1
            return None
        self.counters.packets_relayed += 1
        self.counters.bytes_relayed += len(payload)
        return alloc.relay, peer, payload

    # --- requests -----------------------------------------------------------------------------

    def _request(
        self, link: int, client: Addr, msg: Message, now: float, stream: bool
    ) -> bytes | None:
        method = msg.method
        unknown = [t for t, _ in msg.attributes if t < 0x8000 and t not in _KNOWN_REQUIRED]
        auth: _Auth | None = None
        try:
            if unknown:
                raise UnknownAttribute(unknown)
            if method == Method.BINDING:
                return self._binding(client, msg)
            if method not in _TURN_REQUESTS:
                raise BadRequest("unknown method")
            auth = self._authenticate(link, client, msg, now, stream)
            clients = self._by_link.get(link)
            alloc = clients.get(client) if clients is not None else None
            if alloc is not None and alloc.username != auth.credential.username:
                raise WrongCredentials("allocation belongs to another username")
            if method == Method.ALLOCATE:
                return self._allocate(link, client, msg, now, stream, auth, alloc)
            if alloc is None:
                raise AllocationMismatch("no allocation for this 5-tuple")
            if method == Method.REFRESH:
                attrs = self._refresh(msg, now, alloc)
            elif method == Method.CREATE_PERMISSION:
                attrs = self._create_permission(msg, now, alloc)
            else:
                attrs = self._channel_bind(msg, now, alloc)
            return self._success(msg, attrs, auth)
        except TurnError as error:
            return self._error_response(link, client, msg, error, auth, now, stream)

    def _success(self, msg: Message, attrs: list[tuple[int, bytes]], auth: _Auth | None) -> bytes:
        response = Message(msg.method, _SUCCESS, msg.transaction_id, attrs)
        if self.policy.software:
            response.add(Attr.SOFTWARE, self.policy.software.encode())
        fingerprint = msg.fingerprint_offset >= 0
        if auth is None:
            return response.serialize(fingerprint=fingerprint)
        if auth.use_sha256:
            return response.serialize(integrity_sha256_key=auth.key, fingerprint=fingerprint)
        return response.serialize(integrity_key=auth.key, fingerprint=fingerprint)

    def _error_response(
        self,
        link: int,
        client: Addr,
        msg: Message,
        error: TurnError,
        auth: _Auth | None,
        now: float,
        stream: bool,
    ) -> bytes | None:
        """The one place where a :class:`TurnError` becomes a STUN error response."""
        attrs: list[tuple[int, bytes]] = [
            (Attr.ERROR_CODE, encode_error_code(error.code, error.reason))
        ]
        if isinstance(error, UnknownAttribute):
            attrs.append((Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(error.attr_types)))
        if isinstance(error, Unauthenticated | StaleNonce):
            if isinstance(error, Unauthenticated) and msg.has_integrity:
                self.counters.auth_failures += 1
            else:
                self.counters.auth_challenges += 1
            if not self._limiter.allow(client[0], now):
                self.counters.rate_limited += 1
                return None
            nonce = self._nonces.mint(_transport_tag(link, stream), client, now)
            attrs.append((Attr.REALM, self._realm_value))
            attrs.append((Attr.NONCE, nonce.encode()))
            attrs.append((Attr.PASSWORD_ALGORITHMS, PASSWORD_ALGORITHMS_VALUE))
            auth = None
        response = Message(msg.method, _ERROR, msg.transaction_id, attrs)
        fingerprint = msg.fingerprint_offset >= 0
        if auth is None:
            return response.serialize(fingerprint=fingerprint)
        if auth.use_sha256:
            return response.serialize(integrity_sha256_key=auth.key, fingerprint=fingerprint)
        return response.serialize(integrity_key=auth.key, fingerprint=fingerprint)

    def _binding(self, client: Addr, msg: Message) -> bytes:
        value = encode_xor_address(client[0], client[1], msg.transaction_id)
        return self._success(msg, [(Attr.XOR_MAPPED_ADDRESS, value)], None)

    def _authenticate(
        self, link: int, client: Addr, msg: Message, now: float, stream: bool
    ) -> _Auth:
        """Long-term credential check (RFC 8489 §9.2.4) with REST usernames."""
        if not msg.has_integrity:
            raise Unauthenticated("no MESSAGE-INTEGRITY")
        username_value = msg.get(Attr.USERNAME)
        realm_value = msg.get(Attr.REALM)
        nonce_value = msg.get(Attr.NONCE)
        if msg.get(Attr.USERHASH) is not None and username_value is None:
            raise Unauthenticated("USERHASH cannot name a REST credential")
        if username_value is None or realm_value is None or nonce_value is None:
            raise BadRequest("USERNAME, REALM and NONCE are required with MESSAGE-INTEGRITY")
        try:
            username = decode_text_untrusted(username_value, 512)
            nonce = decode_text_untrusted(nonce_value, 763)
            features = decode_nonce_features_untrusted(nonce)
        except StunDecodeError as exc:
            raise BadRequest(str(exc)) from None
        self._nonces.check_untrusted(nonce, _transport_tag(link, stream), client, now)
        if realm_value != self._realm_value:
            raise Unauthenticated("wrong realm")
        algorithm = int(PasswordAlgorithm.MD5)
        chosen = msg.get(Attr.PASSWORD_ALGORITHM)
        offered = msg.get(Attr.PASSWORD_ALGORITHMS)
        if chosen is not None or offered is not None:
            # Bid-down protection (§9.2.4): both must be present and echo what we offered.
            if features is None or chosen is None or offered != PASSWORD_ALGORITHMS_VALUE:
                raise BadRequest("PASSWORD-ALGORITHM(S) do not match the server's offer")
            try:
                algorithm, _params = decode_password_algorithm_untrusted(chosen)
            except StunDecodeError as exc:
                raise BadRequest(str(exc)) from None
            if algorithm not in (PasswordAlgorithm.MD5, PasswordAlgorithm.SHA256):
                raise BadRequest("unsupported password algorithm")
        try:
            credential = self._credentials.credential_untrusted(username, algorithm, now)
        except ValueError as exc:
            if isinstance(exc, Unauthenticated):
                raise
            raise Unauthenticated("bad username") from None
        for key in credential.keys:
            if msg.check_integrity(key):
                return _Auth(credential, key, msg.integrity_sha256_offset >= 0)
        raise Unauthenticated("MESSAGE-INTEGRITY mismatch")

    def _lifetime(self, msg: Message, credential: Credential, now: float, refresh: bool) -> int:
        """The granted lifetime (RFC 8656 §7.2, §8.2).

        0 only for a Refresh asking for 0; otherwise the request (600 s when absent) clamped
        to 600-3600 s, then cut at the credential's expiry.
        """
        value = msg.get(Attr.LIFETIME)
        try:
            requested = DEFAULT_LIFETIME if value is None else decode_uint32_untrusted(value)
        except StunDecodeError as exc:
            raise BadRequest(str(exc)) from None
        if requested == 0 and refresh:
            return 0
        lifetime = max(DEFAULT_LIFETIME, min(requested, MAX_LIFETIME))
        # The credential's expiry binds the allocation, unlike coturn (REFERENCES.md).
        return max(0, min(lifetime, int(credential.expiry - now)))

    def _allocate(
        self,
        link: int,
        client: Addr,
        msg: Message,
        now: float,
        stream: bool,
        auth: _Auth,
        alloc: Allocation[R] | None,
    ) -> bytes:
        """Allocate (RFC 8656 §7.2)."""
        if alloc is not None:
            if alloc.transaction_id == msg.transaction_id:
                return alloc.response  # a retransmission gets the same answer
            raise AllocationMismatch("allocation already exists")
        transport = msg.get(Attr.REQUESTED_TRANSPORT)
        if transport is None or len(transport) != 4:
            raise BadRequest("REQUESTED-TRANSPORT missing")
        if transport[0] != UDP_TRANSPORT:
            raise UnsupportedTransport("only UDP relaying is offered")
        family: int = socket.AF_INET
        requested_family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if requested_family is not None:
            if len(requested_family) != 4:
                raise BadRequest("bad REQUESTED-ADDRESS-FAMILY")
            if msg.get(Attr.RESERVATION_TOKEN) is not None:
                raise BadRequest("REQUESTED-ADDRESS-FAMILY with RESERVATION-TOKEN")
            if requested_family[0] == 0x01:
                family = socket.AF_INET
            elif requested_family[0] == 0x02:
                family = socket.AF_INET6
            else:
                raise AddressFamilyNotSupported("unknown address family")
        if family not in self.policy.relay_families:
            raise AddressFamilyNotSupported("no relay address of that family")
        even_value = msg.get(Attr.EVEN_PORT)
        token = msg.get(Attr.RESERVATION_TOKEN)
        if even_value is not None and len(even_value) != 1:
            raise BadRequest("bad EVEN-PORT")
        if token is not None and (len(token) != 8 or even_value is not None):
            raise BadRequest("bad RESERVATION-TOKEN, or one with EVEN-PORT")
        even_port = even_value is not None
        reserve = even_value is not None and bool(even_value[0] & 0x80)
        credential = auth.credential
        lifetime = self._lifetime(msg, credential, now, refresh=False)
        if lifetime <= 0:
            raise Unauthenticated("credential expires now")
        user_count = self._per_user.get(credential.user_id, 0)
        if user_count >= self.policy.max_allocations_per_user:
            raise AllocationQuotaReached("per-user allocation quota reached")
        if len(self._by_relay) >= self.policy.max_allocations:
            raise InsufficientCapacity("server allocation limit reached")
        new_token = b""
        if token is not None:
            reserved = self._reservations.pop(token, None)
            if reserved is None or reserved[3] <= now:
                if reserved is not None:
                    self._ports.close(reserved[0])
                raise InsufficientCapacity("unknown or expired reservation")
            relay, relayed_address, family, _expires, _owner = reserved
            if not self._ports.adopt(relay, link, client):
                self._ports.close(relay)
                raise InsufficientCapacity("reserved relay is gone")
        elif reserve:
            if len(self._reservations) >= self.policy.max_allocations:
                raise InsufficientCapacity("too many port reservations")
            held = sum(1 for r in self._reservations.values() if r[4] == credential.user_id)
            if held >= self.policy.max_allocations_per_user:
                raise AllocationQuotaReached("per-user reservation quota reached")
            pair = self._ports.open_pair(family, link, client)
            if pair is None:
                raise InsufficientCapacity("no free even/odd port pair")
            relay, relayed_address, spare, spare_address = pair
            new_token = secrets.token_bytes(8)
            self._reservations[new_token] = (
                spare,
                spare_address,
                family,
                now + RESERVATION_LIFETIME,
                credential.user_id,
            )
        else:
            opened = self._ports.open(family, link, client, even_port)
            if opened is None:
                raise InsufficientCapacity("no relay port available")
            relay, relayed_address = opened
        alloc = Allocation(
            link=link,
            client=client,
            stream=stream,
            username=credential.username,
            user_id=credential.user_id,
            key=auth.key,
            use_sha256=auth.use_sha256,
            credential_expiry=credential.expiry,
            relay=relay,
            relayed_address=relayed_address,
            family=family,
            expires=now + lifetime,
            transaction_id=msg.transaction_id,
            tokens=self._burst,
            refilled=now,
        )
        self._by_link.setdefault(link, {})[client] = alloc
        self._by_relay[relay] = alloc
        self._per_user[credential.user_id] = user_count + 1
        self.counters.allocations_created += 1
        attrs: list[tuple[int, bytes]] = [
            (
                Attr.XOR_RELAYED_ADDRESS,
                encode_xor_address(relayed_address[0], relayed_address[1], msg.transaction_id),
            ),
            (Attr.LIFETIME, encode_uint32(lifetime)),
            (Attr.XOR_MAPPED_ADDRESS, encode_xor_address(client[0], client[1], msg.transaction_id)),
        ]
        if new_token:
            attrs.append((Attr.RESERVATION_TOKEN, new_token))
        alloc.response = self._success(msg, attrs, auth)
        return alloc.response

    def _refresh(self, msg: Message, now: float, alloc: Allocation[R]) -> list[tuple[int, bytes]]:
        """Refresh (RFC 8656 §8.2): LIFETIME 0 deletes, else capped by max and credential."""
        requested_family = msg.get(Attr.REQUESTED_ADDRESS_FAMILY)
        if requested_family is not None:
            family = {1: socket.AF_INET, 2: socket.AF_INET6}.get(requested_family[0])
            if family != alloc.family:
                raise PeerAddressFamilyMismatch("allocation has another address family")
        credential = self._credential_of(alloc)
        lifetime = self._lifetime(msg, credential, now, refresh=True)
        if lifetime == 0:
            self._delete(alloc)
        else:
            alloc.expires = now + lifetime
        return [(Attr.LIFETIME, encode_uint32(lifetime))]

    def _credential_of(self, alloc: Allocation[R]) -> Credential:
        return Credential(alloc.username, int(alloc.credential_expiry), alloc.user_id, ())

    def _peer_untrusted(self, value: bytes, msg: Message, alloc: Allocation[R]) -> Addr:
        try:
            peer = decode_xor_address_untrusted(value, msg.transaction_id)
        except StunDecodeError as exc:
            raise BadRequest(str(exc)) from None
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        if family != alloc.family:
            raise PeerAddressFamilyMismatch("peer and relay address families differ")
        if not self.policy.peer_filter.allows(peer[0]):
            self.counters.peer_refusals += 1
            raise Forbidden("peer address refused")
        return peer

    def _create_permission(
        self, msg: Message, now: float, alloc: Allocation[R]
    ) -> list[tuple[int, bytes]]:
        """CreatePermission (RFC 8656 §10.2): all peers are installed or none is."""
        values = msg.get_all(Attr.XOR_PEER_ADDRESS)
        if not values:
            raise BadRequest("XOR-PEER-ADDRESS missing")
        ips = {self._peer_untrusted(v, msg, alloc)[0] for v in values}
        new = [ip for ip in ips if ip not in alloc.permissions]
        if len(alloc.permissions) + len(new) > MAX_PERMISSIONS:
            raise InsufficientCapacity("too many permissions on this allocation")
        expires = now + PERMISSION_LIFETIME
        for ip in ips:
            alloc.permissions[ip] = expires
        self.counters.permissions_created += len(new)
        return []

    def _channel_bind(
        self, msg: Message, now: float, alloc: Allocation[R]
    ) -> list[tuple[int, bytes]]:
        """ChannelBind (RFC 8656 §12.2)."""
        number_value = msg.get(Attr.CHANNEL_NUMBER)
        peer_value = msg.get(Attr.XOR_PEER_ADDRESS)
        if number_value is None or peer_value is None or len(number_value) != 4:
            raise BadRequest("CHANNEL-NUMBER and XOR-PEER-ADDRESS are required")
        number = int.from_bytes(number_value[:2], "big")
        if not CHANNEL_MIN <= number <= CHANNEL_MAX:
            raise BadRequest("channel number outside 0x4000-0x7FFF")
        peer = self._peer_untrusted(peer_value, msg, alloc)
        by_number = alloc.channels.get(number)
        by_peer = alloc.channel_by_peer.get(peer)
        if by_number is not None and by_number.peer != peer:
            raise BadRequest("channel number bound to another peer")
        if by_peer is not None and by_peer.number != number:
            raise BadRequest("peer bound to another channel")
        if by_number is None:
            if len(alloc.channels) >= MAX_CHANNELS:
                raise InsufficientCapacity("too many channels on this allocation")
            if len(alloc.permissions) >= MAX_PERMISSIONS and peer[0] not in alloc.permissions:
                raise InsufficientCapacity("too many permissions on this allocation")
            channel = Channel(number, peer, now + CHANNEL_LIFETIME, number_value[:2])
            alloc.channels[number] = channel
            alloc.channel_by_peer[peer] = channel
            self.counters.channels_bound += 1
        else:
            by_number.expires = now + CHANNEL_LIFETIME
        if peer[0] not in alloc.permissions:
            self.counters.permissions_created += 1
        alloc.permissions[peer[0]] = now + PERMISSION_LIFETIME
        return []

    def _delete(self, alloc: Allocation[R]) -> None:
        if self._by_relay.pop(alloc.relay, None) is None:
            return
        clients = self._by_link.get(alloc.link)
        if clients is not None:
            clients.pop(alloc.client, None)
            if not clients:
                del self._by_link[alloc.link]
        remaining = self._per_user.get(alloc.user_id, 1) - 1
        if remaining > 0:
            self._per_user[alloc.user_id] = remaining
        else:
            self._per_user.pop(alloc.user_id, None)
        self.counters.allocations_deleted += 1
        self._ports.close(alloc.relay)


def _transport_tag(link: int, stream: bool) -> str:
    return f"tcp{link}" if stream else "udp"
