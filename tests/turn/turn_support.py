"""Helpers for the TURN tests: a real ``python -m turn`` process on OS-chosen loopback ports."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from turn.auth import PASSWORD_ALGORITHMS_VALUE, rest_password, rest_username
from turn.peer_filter import PeerFilter
from turn.server import TurnPolicy, TurnServer
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    decode_error_code_untrusted,
    encode_password_algorithm,
    encode_uint32,
    encode_xor_address,
    long_term_key,
    new_transaction_id,
    parse_message_untrusted,
)

SECRET = "test-secret-one"
REALM = "hushroom.test"


@dataclass
class TurnProcess:
    """A running ``python -m turn`` and the ports it announced."""

    process: subprocess.Popen[str]
    udp: dict[str, int] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)
    tls: dict[str, int] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)

    @property
    def udp_port(self) -> int:
        return next(iter(self.udp.values()))

    @property
    def tcp_port(self) -> int:
        return next(iter(self.tcp.values()))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def start_turn(*args: str, env: dict[str, str] | None = None) -> TurnProcess:
    """Start ``python -m turn`` with ``args`` and wait for ``turn ready``."""
    full_env = {**os.environ, "HUSHROOM_TURN_SECRET": SECRET, **(env or {})}
    full_env.pop("HUSHROOM_CONFIG", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "turn", "--realm", REALM, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
        cwd=Path(__file__).resolve().parents[2],
    )
    turn = TurnProcess(process)
    assert process.stdout is not None
    for line in process.stdout:
        line = line.rstrip("\n")
        turn.lines.append(line)
        if line == "turn ready":
            return turn
        parts = line.split()
        if parts[:2] == ["turn", "listening"]:
            host, _, port = parts[3].rpartition(":")
            getattr(turn, parts[2])[host.strip("[]")] = int(port)
    process.wait(5)
    raise RuntimeError(f"turn exited early: {process.stderr.read() if process.stderr else ''}")


def binding_probe(target: tuple[str, int], *, within: float = 30.0, every: float = 1.0) -> Message:
    """Send Binding requests over UDP until one is answered; return the response.

    A server draining a flood may find its receive buffer full and the kernel drop the probe,
    so one unanswered request proves nothing: a new one goes every ``every`` seconds, a late
    answer to an earlier one counts too, and only ``within`` seconds of silence fail.
    """
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    deadline = time.monotonic() + within
    sent: set[bytes] = set()
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        while (remaining := deadline - time.monotonic()) > 0:
            request = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
            sent.add(request.transaction_id)
            sock.sendto(request.serialize(fingerprint=True), target)
            sock.settimeout(min(every, remaining))
            try:
                while True:
                    response = parse_message_untrusted(sock.recv(2048))
                    if response.transaction_id in sent:
                        return response
            except TimeoutError:
                continue
    raise AssertionError(f"{len(sent)} Binding requests in {within} s, none answered")


# --- a scripted client for the sans-I/O core -------------------------------------------------

NOW = 1_800_000_000.0


class FakeRelay:
    """A relay handle as the shell would hand out, without a socket."""

    def __init__(self, number: int) -> None:
        self.number = number


class FakePorts:
    """RelayPorts for the core tests: hands out numbered relays, can run out of ports."""

    def __init__(self, free: int = 1000) -> None:
        self.free = free
        self.opened: list[FakeRelay] = []
        self.closed: list[FakeRelay] = []
        self.even_requests = 0
        self.adopted: list[tuple[FakeRelay, int, tuple[str, int]]] = []

    def open(
        self, family: int, link: int, client: tuple[str, int], even_port: bool
    ) -> tuple[FakeRelay, tuple[str, int]] | None:
        if self.free <= 0:
            return None
        self.free -= 1
        self.even_requests += even_port
        relay = FakeRelay(len(self.opened))
        self.opened.append(relay)
        ip = "2001:db8:ffff::1" if family == socket.AF_INET6 else "203.0.113.1"
        return relay, (ip, 50000 + 2 * relay.number)

    def open_pair(
        self, family: int, link: int, client: tuple[str, int]
    ) -> tuple[FakeRelay, tuple[str, int], FakeRelay, tuple[str, int]] | None:
        if self.free < 2:
            return None
        first = self.open(family, link, client, True)
        second = self.open(family, link, client, False)
        assert first is not None and second is not None
        return first[0], first[1], second[0], (first[1][0], first[1][1] + 1)

    def adopt(self, relay: FakeRelay, link: int, client: tuple[str, int]) -> bool:
        self.adopted.append((relay, link, client))
        return True

    def close(self, relay: FakeRelay) -> None:
        self.closed.append(relay)
        self.free += 1


def make_server(
    *,
    secrets: tuple[bytes, ...] = (SECRET.encode(),),
    allow_loopback: bool = False,
    ports: FakePorts | None = None,
    **policy: Any,
) -> tuple[TurnServer[FakeRelay], FakePorts]:
    """A core with a fixed nonce key and fake relay ports."""
    ports = ports or FakePorts()
    peer_filter = policy.pop(
        "peer_filter", PeerFilter(own_addresses=["203.0.113.1"], allow_loopback=allow_loopback)
    )
    server: TurnServer[FakeRelay] = TurnServer(
        TurnPolicy(realm=REALM, secrets=secrets, peer_filter=peer_filter, **policy),
        ports,
        nonce_key=b"k" * 32,
    )
    return server, ports


class CoreClient:
    """Drives a :class:`TurnServer` like a TURN client on one 5-tuple, without sockets."""

    def __init__(
        self,
        server: TurnServer[FakeRelay],
        *,
        link: int = 1,
        addr: tuple[str, int] = ("192.0.2.50", 40000),
        session: str = "alice",
        expiry: float = NOW + 86400,
        secret: str = SECRET,
        stream: bool = False,
    ) -> None:
        self.server = server
        self.link = link
        self.addr = addr
        self.stream = stream
        self.username = rest_username(int(expiry), session)
        self.password = rest_password(secret.encode(), self.username)
        self.nonce: str | None = None
        self.now = NOW
        self.sha256 = False
        self.retry_stale_nonce = True

    def key(self) -> bytes:
        algorithm = PasswordAlgorithm.SHA256 if self.sha256 else PasswordAlgorithm.MD5
        return long_term_key(self.username, REALM, self.password, algorithm)

    def send_raw(self, data: bytes) -> bytes | tuple[Any, tuple[str, int], bytes] | None:
        return self.server.receive_from_client_untrusted(
            self.link, self.addr, data, self.now, self.stream
        )

    def request(
        self,
        method: int,
        attrs: list[tuple[int, bytes]] | None = None,
        *,
        authenticate: bool = True,
        tid: bytes | None = None,
        fingerprint: bool = False,
    ) -> Message:
        """Send a request (after fetching a nonce if needed) and decode the response."""
        if authenticate and self.nonce is None:
            self.fetch_nonce()
        msg = Message(method, MessageClass.REQUEST, tid or new_transaction_id(), list(attrs or []))
        if authenticate:
            assert self.nonce is not None
            msg.add(Attr.USERNAME, self.username.encode())
            msg.add(Attr.REALM, REALM.encode())
            msg.add(Attr.NONCE, self.nonce.encode())
            if self.sha256:
                msg.add(Attr.PASSWORD_ALGORITHMS, PASSWORD_ALGORITHMS_VALUE)
                msg.add(
                    Attr.PASSWORD_ALGORITHM, encode_password_algorithm(PasswordAlgorithm.SHA256)
                )
                raw = msg.serialize(integrity_sha256_key=self.key(), fingerprint=fingerprint)
            else:
                raw = msg.serialize(integrity_key=self.key(), fingerprint=fingerprint)
        else:
            raw = msg.serialize(fingerprint=fingerprint)
        out = self.send_raw(raw)
        assert isinstance(out, bytes), f"expected a response, got {out!r}"
        response = parse_message_untrusted(out)
        assert response.transaction_id == msg.transaction_id
        if authenticate and self.retry_stale_nonce and error_code(response) == 438:
            self.nonce = (response.get(Attr.NONCE) or b"").decode()
            return self.request(method, attrs, tid=tid, fingerprint=fingerprint)
        return response

    def fetch_nonce(self) -> None:
        response = self.request(
            Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP)], authenticate=False
        )
        assert error_code(response) == 401
        self.nonce = (response.get(Attr.NONCE) or b"").decode()

    def allocate(self, *extra: tuple[int, bytes]) -> Message:
        return self.request(Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, UDP), *extra])

    def create_permission(self, *peers: tuple[str, int]) -> Message:
        tid = new_transaction_id()
        attrs = [(int(Attr.XOR_PEER_ADDRESS), encode_xor_address(h, p, tid)) for h, p in peers]
        return self.request(Method.CREATE_PERMISSION, attrs, tid=tid)

    def channel_bind(self, number: int, peer: tuple[str, int]) -> Message:
        tid = new_transaction_id()
        return self.request(
            Method.CHANNEL_BIND,
            [
                (Attr.CHANNEL_NUMBER, number.to_bytes(2, "big") + b"\x00\x00"),
                (Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)),
            ],
            tid=tid,
        )

    def refresh(self, lifetime: int | None = None) -> Message:
        attrs = [] if lifetime is None else [(int(Attr.LIFETIME), encode_uint32(lifetime))]
        return self.request(Method.REFRESH, attrs)

    def send_indication(self, peer: tuple[str, int], data: bytes) -> Any:
        tid = new_transaction_id()
        msg = Message(
            Method.SEND,
            MessageClass.INDICATION,
            tid,
            [(Attr.XOR_PEER_ADDRESS, encode_xor_address(peer[0], peer[1], tid)), (Attr.DATA, data)],
        )
        return self.send_raw(msg.serialize())

    def channel_data(self, number: int, data: bytes) -> Any:
        frame = number.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data
        if self.stream:
            frame += b"\x00" * (-len(frame) & 3)
        return self.send_raw(frame)


UDP = b"\x11\x00\x00\x00"


def error_code(response: Message) -> int | None:
    """The response's ERROR-CODE number, or ``None`` for a success."""
    value = response.get(Attr.ERROR_CODE)
    return None if value is None else decode_error_code_untrusted(value)[0]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throw-away self-signed certificate and key for the TLS listener."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
