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
from client.device_list import DeviceDirectory, SignedDeviceList
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
from client.models import Bundle, Channel, Device, Envelope, Guild, Member, Overwrite, Role
from client.notices import Notices
from client.permissions import VIEW_CHANNEL, can_view
from client.prekeys import Prekeys
from client.sender_keys import SenderKeys
from client.sessions import Sessions
from client.store import Store, fingerprint
from client.trust import Trust
from e2ee import (
    DecryptedMessage,
    IdentityKeyPair,
    MessageType,
    PreKeyStore,
    SenderKeyReceiver,
    SenderKeySender,
    UnknownKey,
    initiate_session,
)

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


def _directory(
    user_id: str,
    devices: list[Device],
    account: IdentityKeyPair,
    version: int = 1,
    *,
    listed: list[Device] | None = None,
) -> DeviceDirectory:
    """What the server serves for ``user_id``: ``devices``, with the list ``account``
    signed (naming ``listed``, by default the same devices)."""
    keys = [d.identity_key for d in (devices if listed is None else listed)]
    signed = SignedDeviceList.sign(account, user_id, version, keys)
    return DeviceDirectory(devices, account.public, signed)


def test_trust_pins_the_account_key_and_trusts_only_the_devices_it_signed(
    tmp_path: Path,
) -> None:
    store, me = _profile(tmp_path, "u-me", "me", "d-me")
    notices = Notices(store)
    trust = Trust(store, ControlApi(NO_SERVER), me, notices)
    bobs = IdentityKeyPair.generate()
    phone = Device("d-phone", IdentityKeyPair.generate().public)
    laptop = Device("d-laptop", IdentityKeyPair.generate().public)
    ghost = Device("d-ghost", IdentityKeyPair.generate().public)

    # First sight: the account key is pinned with its list.
    assert trust.accept("u-bob", "bob", _directory("u-bob", [phone], bobs)) == [phone]
    assert trust.name("u-bob") == "bob" and notices.take() == []

    # A device bob's account key added: trusted, and the user is told.
    both = _directory("u-bob", [phone, laptop], bobs, 2)
    assert trust.accept("u-bob", "bob", both) == [phone, laptop]
    assert [n.kind for n in notices.take()] == ["new_device"]

    # A device the server lists beside the signed ones: never trusted, reported.
    planted = _directory("u-bob", [phone, laptop, ghost], bobs, 2, listed=[phone, laptop])
    assert trust.accept("u-bob", "bob", planted) == [phone, laptop]
    (notice,) = notices.take()
    assert notice.kind == "untrusted_device" and "d-ghost" in notice.text

    # bob removes the laptop (version 3); the server serves version 2 again with the
    # laptop back: the older list is set aside, the laptop stays out.
    assert trust.accept("u-bob", "bob", _directory("u-bob", [phone], bobs, 3)) == [phone]
    assert trust.accept("u-bob", "bob", both) == [phone]
    assert [n.kind for n in notices.take()] == ["untrusted_device", "untrusted_device"]

    # A list under a signature the account key did not make: ignored, version 3 kept.
    forged = DeviceDirectory(
        [phone, laptop],
        bobs.public,
        SignedDeviceList(9, tuple(sorted([phone.identity_key, laptop.identity_key])), bytes(64)),
    )
    assert trust.accept("u-bob", "bob", forged) == [phone]
    # (The laptop was reported a moment ago: one process says a thing once.)
    (notice,) = notices.take()
    assert "did not sign; it was ignored" in notice.text

    # Another account key: an identity change, refused until the user decides.
    other = IdentityKeyPair.generate()
    with pytest.raises(IdentityChanged):
        trust.accept("u-bob", "bob", _directory("u-bob", [phone, ghost], other, 99))
    assert [n.kind for n in notices.take()] == ["identity_changed"]
    contact = trust.contact("u-bob")
    assert contact is not None and contact["account_key"] == bobs.public
    store.close()


def test_trust_keeps_a_verified_contact_verified_through_the_move_to_cross_signing(
    tmp_path: Path,
) -> None:
    store, me = _profile(tmp_path, "u-me", "me", "d-me")
    notices = Notices(store)
    trust = Trust(store, ControlApi(NO_SERVER), me, notices)
    phone = Device("d-phone", IdentityKeyPair.generate().public)
    ghost = Device("d-ghost", IdentityKeyPair.generate().public)
    # Pinned and verified before cross-signing: device keys only.
    legacy = {"handle": "bob", "devices": {phone.id: phone.identity_key}, "verified": None}
    legacy["verified"] = fingerprint([phone.identity_key])
    store.put("contact", "u-bob", legacy)
    # The account key first seen signs a device the user never verified: refused.
    bobs = IdentityKeyPair.generate()
    with pytest.raises(IdentityChanged):
        trust.accept("u-bob", "bob", _directory("u-bob", [phone, ghost], bobs))
    assert [n.kind for n in notices.take()] == ["identity_changed"]
    # Signing exactly the verified devices, it is pinned as verified.
    assert trust.accept("u-bob", "bob", _directory("u-bob", [phone], bobs)) == [phone]
    contact = trust.contact("u-bob")
    assert contact is not None and contact["verified"] == fingerprint([bobs.public])
    store.close()


def test_trust_takes_this_accounts_devices_only_under_the_key_it_holds(tmp_path: Path) -> None:
    store, me = _profile(tmp_path, "u-me", "me", "d-me")
    notices = Notices(store)
    trust = Trust(store, ControlApi(NO_SERVER), me, notices)
    own = Device(me.device_id, me.identity.public)
    ghost = Device("d-ghost", IdentityKeyPair.generate().public)
    account = IdentityKeyPair.generate()
    first = SignedDeviceList.sign(account, me.user_id, 1, [own.identity_key])
    trust.keep_account_key(account, first)
    served = _directory(me.user_id, [own, ghost], account, 1, listed=[own])
    assert trust.accept(me.user_id, me.handle, served) == [own]
    assert [n.kind for n in notices.take()] == ["untrusted_device"]
    # What this device signs next follows the newest version it knows.
    assert trust.sign_own_list([own.identity_key]).version == 2
    # A key the server serves for this account that is not the one held: refused.
    with pytest.raises(IdentityChanged):
        trust.accept(
            me.user_id, me.handle, _directory(me.user_id, [own, ghost], IdentityKeyPair.generate())
        )
    store.close()


#: The guild as this client knows it: #general is open to all, #secret only to u-bob.
_GUILD = Guild("g", "G", "u-owner", (Role("g", "@everyone", VIEW_CHANNEL, 0),), ())
_MEMBERS = {u: Member(u, None, ()) for u in ("u-owner", "u-alice", "u-bob")}
_CHANNELS = {
    "c-general": Channel("c-general", "g", "text", "general", 90, ()),
    "c-secret": Channel(
        "c-secret",
        "g",
        "text",
        "secret",
        90,
        (Overwrite("g", "role", 0, VIEW_CHANNEL), Overwrite("u-bob", "member", VIEW_CHANNEL, 0)),
    ),
}


async def _can_read(channel_id: str, user_id: str) -> bool | None:
    """VIEW_CHANNEL from the guild state above, as :class:`client.audience.Audience`
    decides it from the state the server offers (None: a channel bob cannot see)."""
    channel = _CHANNELS.get(channel_id)
    if channel is None:
        return None
    member = _MEMBERS.get(user_id)
    return member is not None and can_view(_GUILD, member, channel)


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
            _can_read,
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
    device.trust.accept(
        "u-alice",
        "alice",
        _directory("u-alice", [Device("d-alice", alice.public)], IdentityKeyPair.generate()),
    )

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
    opened = device.sender_keys.receiver("c-general", "u-alice", "d-alice").decrypt(sealed)
    assert decode_body_untrusted(opened) == Body("c1", "in the channel", 1.0, None, "alice")
    assert device.notices.take() == []

    # Her key for #secret, which she cannot read by bob's reckoning, is held, not followed.
    hidden = SenderKeySender(b"c-secret")
    planted = session.encrypt(
        hidden.distribution().encode(),
        message_type=MessageType.SENDER_KEY_DISTRIBUTION,
        conversation_id=b"c-secret",
    )
    envelope = Envelope("e3", "u-alice", "d-alice", encode_envelope(b"c-secret", planted), 0)
    assert await device.inbox.receive([envelope], ack=False) == []
    assert [n.kind for n in device.notices.take()] == ["sender_key_refused"]
    assert device.sender_keys.has_held("c-secret", "u-alice", "d-alice")
    with pytest.raises(UnknownKey):
        device.sender_keys.receiver("c-secret", "u-alice", "d-alice").decrypt(
            hidden.encrypt(encode_body(Body("s1", "planted", 2.0, None, "alice")))
        )
    # A key for a channel bob cannot see at all is dropped without a word.
    nowhere = session.encrypt(
        SenderKeySender(b"c-elsewhere").distribution().encode(),
        message_type=MessageType.SENDER_KEY_DISTRIBUTION,
        conversation_id=b"c-elsewhere",
    )
    envelope = Envelope("e4", "u-alice", "d-alice", encode_envelope(b"c-elsewhere", nowhere), 0)
    assert await device.inbox.receive([envelope], ack=False) == []
    assert device.notices.take() == []
    assert not device.sender_keys.has_held("c-elsewhere", "u-alice", "d-alice")
    # A chain is followed only as its owner's: alice's opens nothing labelled another's...
    with pytest.raises(UnknownKey):
        device.sender_keys.receiver("c-general", "u-owner", "d-alice").decrypt(
            channel.encrypt(encode_body(Body("c2", "relabelled", 3.0, None, "alice")))
        )
    # ...and the chain that does open a message is found by its owner.
    sealed = channel.encrypt(encode_body(Body("c3", "whose?", 4.0, None, "alice")))
    assert device.sender_keys.author_of("c-general", sealed) == ("u-alice", "d-alice")
    assert device.sender_keys.author_of("c-secret", sealed) is None

    # A chain kept before chains were bound to users (``channel/device``) is bound to the
    # user whose session with that device delivered it — and to nobody else.
    old = SenderKeySender(b"c-old")
    legacy = SenderKeyReceiver(b"c-old")
    legacy.process_distribution(
        DecryptedMessage(MessageType.SENDER_KEY_DISTRIBUTION, b"c-old", old.distribution().encode())
    )
    store.put("sender_in", "c-old/d-alice", legacy.serialize())
    sealed = old.encrypt(encode_body(Body("o1", "from before", 5.0, None, "alice")))
    with pytest.raises(UnknownKey):
        device.sender_keys.receiver("c-old", "u-owner", "d-alice").decrypt(sealed)
    device.sender_keys.receiver("c-old", "u-alice", "d-alice").decrypt(sealed)
    assert store.get("sender_in", "c-old/d-alice") is None
    store.close()


async def test_inbox_rejects_an_initial_message_under_a_key_other_than_the_pinned_one(
    tmp_path: Path,
) -> None:
    store, bob = _profile(tmp_path, "u-bob", "bob", "d-bob")
    device = _Device(store, bob)
    # Bob pinned alice's device under one key; the message comes under another.
    pinned = Device("d-alice", IdentityKeyPair.generate().public)
    device.trust.accept(
        "u-alice", "alice", _directory("u-alice", [pinned], IdentityKeyPair.generate())
    )
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
