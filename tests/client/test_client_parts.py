"""The client's parts used alone, without a ``Client`` and without a server.

Each part is built from a real sealed store in a temporary directory, real keys and the
parts it depends on — exactly what the façade passes it. The API object points at a
loopback port nothing listens on, so any request a part makes fails the test at once:
these parts do their work from the store and pinned keys only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from client._prekeys import directory_prekeys, prekey_bundle_untrusted
from client.account import Account, write_account
from client.api import ControlApi
from client.dm import DirectMessages
from client.envelope import (
    Body,
    decode_body_untrusted,
    dm_conversation,
    encode_body,
    encode_envelope,
)
from client.errors import IdentityChanged
from client.history import History
from client.inbox import Inbox
from client.models import Bundle, Device, Envelope
from client.notices import Notices
from client.prekeys import Prekeys
from client.sender_keys import SenderKeys
from client.sessions import Sessions
from client.store import Store
from client.trust import Trust
from e2ee import IdentityKeyPair, MessageType, PreKeyStore, SenderKeySender, initiate_session

#: Nothing listens here: a part that reaches for the server fails with a TransportError.
NO_SERVER = "http://127.0.0.1:9"


def _profile(path: Path, user_id: str, handle: str, device_id: str) -> tuple[Store, Account]:
    """A registered profile as ``register`` writes it (one one-time prekey in stock)."""
    store = Store.open(path, "pw", create=True)
    identity = IdentityKeyPair.generate()
    prekeys = PreKeyStore.generate(identity, one_time_prekeys=1)
    write_account(
        store,
        NO_SERVER,
        identity,
        prekeys,
        user_id=user_id,
        handle=handle,
        device_id=device_id,
        token="unused",
    )
    return store, Account.load(store)


def _pinned(trust: Trust, user_id: str) -> dict[str, bytes]:
    contact = trust.contact(user_id)
    assert contact is not None
    keys: dict[str, bytes] = contact["devices"]
    return keys


def test_trust_pins_on_first_sight_and_refuses_a_changed_key(tmp_path: Path) -> None:
    store, me = _profile(tmp_path, "u-me", "me", "d-me")
    notices = Notices(store)
    trust = Trust(store, ControlApi(NO_SERVER), me, notices)
    phone = Device("d-phone", IdentityKeyPair.generate().public)
    laptop = Device("d-laptop", IdentityKeyPair.generate().public)

    trust.pin("u-bob", "bob", [phone])
    assert trust.name("u-bob") == "bob" and notices.take() == []

    # An unverified contact's new device: pinned, and the user is told.
    trust.pin("u-bob", "bob", [phone, laptop])
    assert [n.kind for n in notices.take()] == ["new_device"]
    assert set(_pinned(trust, "u-bob")) == {"d-phone", "d-laptop"}

    # A known device under another key: refused, reported, and the old key stays pinned.
    swapped = Device("d-phone", IdentityKeyPair.generate().public)
    with pytest.raises(IdentityChanged):
        trust.pin("u-bob", "bob", [swapped, laptop])
    assert [n.kind for n in notices.take()] == ["identity_changed"]
    assert _pinned(trust, "u-bob")["d-phone"] == phone.identity_key

    # This account's own new device: told, unless this device added it itself.
    own = Device(me.device_id, me.identity.public)
    trust.pin(me.user_id, me.handle, [own])
    trust.pin(me.user_id, me.handle, [own, Device("d-new", IdentityKeyPair.generate().public)])
    assert [n.text for n in notices.take()] == ["your account has 1 new device(s)"]
    trust.pin(
        me.user_id,
        me.handle,
        [own, Device("d-linked", IdentityKeyPair.generate().public)],
        own_change_ok=True,
    )
    assert notices.take() == []
    store.close()


def test_trust_refuses_an_own_device_list_holding_a_device_it_never_pinned(
    tmp_path: Path,
) -> None:
    store, me = _profile(tmp_path, "u-me", "me", "d-me")
    trust = Trust(store, ControlApi(NO_SERVER), me, Notices(store))
    own = Device(me.device_id, me.identity.public)
    trust.pin(me.user_id, me.handle, [own])
    added = Device("d-added", IdentityKeyPair.generate().public)
    trust.check_own_devices([own, added], added)
    ghost = Device("d-ghost", IdentityKeyPair.generate().public)
    with pytest.raises(IdentityChanged, match="d-ghost"):
        trust.check_own_devices([own, added, ghost], added)
    store.close()


class _Device:
    """The receiving parts of one device, wired as the façade wires them."""

    def __init__(self, store: Store, account: Account) -> None:
        api = ControlApi(NO_SERVER)
        self.notices = Notices(store)
        self.history = History(store)
        self.trust = Trust(store, api, account, self.notices)
        self.prekeys = Prekeys(store, api, account.identity)
        self.sessions = Sessions(store, api, account, self.trust, self.prekeys)
        self.sender_keys = SenderKeys(store)
        dms = DirectMessages(account, self.trust, self.sessions, self.history)
        self.inbox = Inbox(
            store,
            api,
            account,
            self.trust,
            self.sessions,
            dms,
            self.sender_keys,
            self.history,
            self.notices,
        )


def _bundle(device_id: str, prekeys: PreKeyStore) -> Bundle:
    """The bundle the directory would hand out for this device (with its one OTK)."""
    body = directory_prekeys(prekeys.identity, prekeys, list(prekeys.one_time_prekeys.values()))
    spk, pq, (otk,) = body["signed_prekey"], body["pq_prekey"], body["one_time_prekeys"]
    return Bundle(
        device_id,
        prekeys.identity.public,
        spk["key_id"],
        spk["public_key"],
        spk["signature"],
        pq["key_id"],
        pq["public_key"],
        pq["signature"],
        otk["key_id"],
        otk["public_key"],
    )


async def test_inbox_sessions_and_sender_keys_open_a_dm_and_a_channel_key_alone(
    tmp_path: Path,
) -> None:
    store, bob = _profile(tmp_path, "u-bob", "bob", "d-bob")
    device = _Device(store, bob)
    alice = IdentityKeyPair.generate()
    device.trust.pin("u-alice", "alice", [Device("d-alice", alice.public)])

    # Alice opens a session from bob's bundle (PQXDH, one-time prekey) and writes twice.
    session = initiate_session(
        alice, prekey_bundle_untrusted(_bundle("d-bob", device.prekeys.current))
    )
    conv = dm_conversation("u-alice", "u-bob")
    envelopes = []
    for n, text in enumerate(["hello bob", "second"]):
        body = encode_body(Body(f"m{n}", text, 100.0 + n, None, "alice"))
        ciphertext = session.encrypt(body, message_type=MessageType.TEXT, conversation_id=conv)
        envelopes.append(
            Envelope(f"e{n}", "u-alice", "d-alice", encode_envelope(conv, ciphertext), 0)
        )
    # ...and hands bob her key for a channel inside the same session.
    channel = SenderKeySender(b"c-general")
    distribution = session.encrypt(
        channel.distribution().encode(),
        message_type=MessageType.SENDER_KEY_DISTRIBUTION,
        conversation_id=b"c-general",
    )
    envelopes.append(
        Envelope("e2", "u-alice", "d-alice", encode_envelope(b"c-general", distribution), 0)
    )

    new = await device.inbox.receive(envelopes, ack=False)
    assert [(m.body, m.sender_handle, m.conversation) for m in new] == [
        ("hello bob", "alice", "dm:u-alice"),
        ("second", "alice", "dm:u-alice"),
    ]
    assert [m.body for m in device.history.conversation("dm:u-alice")] == ["hello bob", "second"]
    # The one-time prekey is spent and the accepted session kept for the device.
    assert device.prekeys.load().one_time_prekeys == {}
    assert len(device.sessions.load("u-alice", "d-alice")) == 1
    # An envelope seen again (READY and REST, or a crash before the ack) is not shown twice.
    assert await device.inbox.receive(envelopes[:1], ack=False) == []
    # The distribution installed alice's chain: her channel messages open.
    sealed = channel.encrypt(encode_body(Body("c1", "in the channel", 1.0, None, "alice")))
    opened = device.sender_keys.receiver("c-general", "d-alice").decrypt(sealed)
    assert decode_body_untrusted(opened) == Body("c1", "in the channel", 1.0, None, "alice")
    assert device.notices.take() == []
    store.close()


async def test_inbox_rejects_an_initial_message_under_a_key_other_than_the_pinned_one(
    tmp_path: Path,
) -> None:
    store, bob = _profile(tmp_path, "u-bob", "bob", "d-bob")
    device = _Device(store, bob)
    # Bob pinned alice's device under one key; the message comes under another.
    device.trust.pin("u-alice", "alice", [Device("d-alice", IdentityKeyPair.generate().public)])
    impostor = IdentityKeyPair.generate()
    session = initiate_session(
        impostor, prekey_bundle_untrusted(_bundle("d-bob", device.prekeys.current))
    )
    conv = dm_conversation("u-alice", "u-bob")
    ciphertext = session.encrypt(
        encode_body(Body("m", "trust me", 1.0, None, "alice")),
        message_type=MessageType.TEXT,
        conversation_id=conv,
    )
    envelope = Envelope("e", "u-alice", "d-alice", encode_envelope(conv, ciphertext), 0)

    assert await device.inbox.receive([envelope], ack=False) == []
    assert [n.kind for n in device.notices.take()] == ["rejected"]
    assert device.history.conversation("dm:u-alice") == []
    # Nothing of the impostor's handshake was kept: no session, the prekey still in stock.
    assert device.sessions.load("u-alice", "d-alice") == []
    assert len(device.prekeys.load().one_time_prekeys) == 1
    store.close()
