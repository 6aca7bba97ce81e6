"""Safety numbers, encrypted backup, padding and device linking."""

from __future__ import annotations

import hashlib

import pytest
from _e2ee_helpers import CONV, session_pair
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl import pwhash

from e2ee import (
    BackupContents,
    DecryptedMessage,
    IdentityKeyPair,
    LinkingSecret,
    MessageType,
    PreKeyStore,
    ProvisioningPayload,
    SenderKeyReceiver,
    SenderKeySender,
    build_provisioning_message,
    export_backup,
    format_safety_number,
    import_backup,
    pad,
    safety_number,
    unpad,
)
from e2ee.backup import MIN_MEMLIMIT, MIN_OPSLIMIT
from e2ee.errors import DecodeError, DecryptionFailed, E2EEError, StateError, WeakParameters
from e2ee.linking import parse_link_code
from e2ee.padding import bucket_size

# The cheapest settings a backup accepts (OWASP's floor for Argon2id).
FAST_KDF = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}


def test_safety_number_is_60_digits_and_symmetric() -> None:
    a, b = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    ab = safety_number(b"alice", [a.public], b"bob", [b.public])
    ba = safety_number(b"bob", [b.public], b"alice", [a.public])
    assert ab == ba
    assert len(ab) == 60 and ab.isdigit()
    assert len(format_safety_number(ab).split()) == 12


def test_safety_number_changes_with_any_key_and_ignores_device_order() -> None:
    a, a2, b = (IdentityKeyPair.generate() for _ in range(3))
    base = safety_number(b"alice", [a.public, a2.public], b"bob", [b.public])
    assert base == safety_number(b"alice", [a2.public, a.public], b"bob", [b.public])
    assert base != safety_number(b"alice", [a.public], b"bob", [b.public])
    mallory = IdentityKeyPair.generate()
    assert base != safety_number(b"alice", [a.public, a2.public], b"bob", [mallory.public])


def test_safety_number_half_follows_libsignal_construction() -> None:
    key = bytes(range(32))
    digest = hashlib.sha512(b"\x00\x00" + key + b"id").digest()
    for _ in range(5200):
        digest = hashlib.sha512(digest + key).digest()
    half = "".join(
        f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5)
    )
    assert half in safety_number(b"id", [key], b"other", [bytes(range(1, 33))])


def test_backup_roundtrips_identity_prekeys_and_sessions() -> None:
    alice, bob, store = session_pair()
    identity = store.identity
    contents = BackupContents(identity, store, {"alice/1": bob})
    blob = export_backup(contents, "correct horse battery staple", **FAST_KDF)
    restored = import_backup(blob, "correct horse battery staple")
    assert restored.identity.public == identity.public
    assert restored.prekeys is not None
    assert restored.prekeys.serialize() == store.serialize()
    session = restored.sessions["alice/1"]
    assert session.serialize() == bob.serialize()
    data = alice.encrypt(b"after restore", conversation_id=CONV)
    assert session.decrypt(data, conversation_id=CONV, now=0).plaintext == b"after restore"


def test_backup_roundtrips_sender_keys() -> None:
    sender = SenderKeySender(b"chan")
    receiver = SenderKeyReceiver(b"chan")
    receiver.process_distribution(
        DecryptedMessage(
            MessageType.SENDER_KEY_DISTRIBUTION, b"chan", sender.distribution().encode()
        )
    )
    skipped = sender.encrypt(b"skipped")
    receiver.decrypt(sender.encrypt(b"seen"))
    contents = BackupContents(
        IdentityKeyPair.generate(),
        sender_keys={"chan": sender},
        sender_key_receivers={"chan/a": receiver},
    )
    restored = import_backup(export_backup(contents, "pw", **FAST_KDF), "pw")
    new_sender = restored.sender_keys["chan"]
    new_receiver = restored.sender_key_receivers["chan/a"]
    assert new_sender.serialize() == sender.serialize()
    assert new_receiver.serialize() == receiver.serialize()
    assert new_receiver.decrypt(skipped) == b"skipped"
    assert new_receiver.decrypt(new_sender.encrypt(b"after restore")) == b"after restore"


def test_backup_with_wrong_passphrase_or_tampering_fails() -> None:
    identity = IdentityKeyPair.generate()
    blob = export_backup(BackupContents(identity), "pass phrase", **FAST_KDF)
    with pytest.raises(DecryptionFailed):
        import_backup(blob, "pass phrasE")
    tampered = bytearray(blob)
    tampered[-3] ^= 1
    with pytest.raises(DecryptionFailed):
        import_backup(bytes(tampered), "pass phrase")


def test_backup_refuses_hostile_argon2_parameters() -> None:
    import msgpack

    identity = IdentityKeyPair.generate()
    fields = msgpack.unpackb(export_backup(BackupContents(identity), "pw", **FAST_KDF))
    fields[4] = 64 * 1024**3  # 64 GiB of memory
    with pytest.raises(DecodeError):
        import_backup(msgpack.packb(fields, use_bin_type=True), "pw")


def test_backup_refuses_argon2_settings_under_the_owasp_floor() -> None:
    import msgpack
    from nacl.secret import SecretBox

    identity = IdentityKeyPair.generate()
    for ops, mem in ((1, MIN_MEMLIMIT), (MIN_OPSLIMIT, MIN_MEMLIMIT - 1024)):
        with pytest.raises(WeakParameters):
            export_backup(BackupContents(identity), "pw", opslimit=ops, memlimit=mem)
    # A backup as the export used to allow: 1 pass over 8 KiB.
    salt, nonce = bytes(16), bytes(24)
    ops, mem = pwhash.argon2id.OPSLIMIT_MIN, pwhash.argon2id.MEMLIMIT_MIN
    key = pwhash.argon2id.kdf(32, b"pw", salt, opslimit=ops, memlimit=mem)
    ct = SecretBox(key).encrypt(BackupContents(identity).encode(), nonce).ciphertext
    weak = msgpack.packb([10, 1, salt, ops, mem, nonce, ct], use_bin_type=True)
    with pytest.raises(WeakParameters):
        import_backup(weak, "pw")
    # The floor itself and the defaults are accepted.
    at_floor = export_backup(BackupContents(identity), "pw", **FAST_KDF)
    assert import_backup(at_floor, "pw").identity.public == identity.public


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=40_000))
def test_padding_roundtrips_to_a_bucket(data: bytes) -> None:
    padded = pad(data)
    assert len(padded) == bucket_size(len(data))
    assert unpad(padded) == data


def test_padding_hides_length_within_a_bucket() -> None:
    assert len(pad(b"a")) == len(pad(b"a" * 63)) == 64
    assert len(pad(b"a" * 64)) == 128
    with pytest.raises(DecodeError):
        unpad(b"abc" + bytes(61))
    with pytest.raises(DecodeError):
        unpad(b"abc\x80" + bytes(100))  # not the bucket of a 3-byte plaintext


def test_device_linking_moves_identity_under_a_one_time_code() -> None:
    old_device = IdentityKeyPair.generate()
    new_device = LinkingSecret()
    assert new_device.qr_string.startswith("hushroom-link:1:")
    assert len(new_device.code.replace("-", "")) == 32
    payload = ProvisioningPayload(b"user-7", old_device.seed, b"extra")
    mailbox, message = build_provisioning_message(new_device.code.lower(), payload)
    assert mailbox == new_device.mailbox_id
    assert old_device.seed not in message
    received = new_device.open(message)
    assert IdentityKeyPair(received.identity_seed).public == old_device.public
    assert received == payload
    with pytest.raises(StateError):
        new_device.open(message)


def test_linking_message_for_another_code_fails_and_qr_parses() -> None:
    a, b = LinkingSecret(), LinkingSecret()
    assert parse_link_code(a.qr_string) == parse_link_code(a.code)
    _, message = build_provisioning_message(b.qr_string, ProvisioningPayload(b"u", bytes(32)))
    with pytest.raises(DecryptionFailed):
        a.open(message)
    assert not a.consumed
    with pytest.raises(DecodeError):
        parse_link_code("not-a-code")


def test_backup_carries_the_account_key_and_its_device_list() -> None:
    identity, account_key = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    store = PreKeyStore.generate(identity, 1)
    contents = BackupContents(
        identity, store, account_key=account_key, device_list=b"the signed list's bytes"
    )
    restored = import_backup(export_backup(contents, "pw", **FAST_KDF), "pw")
    assert restored.account_key is not None
    assert restored.account_key.seed == account_key.seed
    assert restored.device_list == b"the signed list's bytes"
    # A device that does not hold the account key backs up neither.
    plain = import_backup(export_backup(BackupContents(identity, store), "pw", **FAST_KDF), "pw")
    assert plain.account_key is None and plain.device_list is None
    # Neither half of the account key appears in repr().
    assert not _leaks(contents, account_key.seed)
    assert not _leaks(contents, account_key.public)


def test_a_backup_plaintext_from_before_cross_signing_still_decodes() -> None:
    import msgpack

    _, bob, store = session_pair()
    old = msgpack.packb(
        [11, 1, store.identity.seed, store.serialize(), {"alice/1": bob.serialize()}, {}, {}],
        use_bin_type=True,
    )
    restored = BackupContents.decode_untrusted(old)
    assert restored.identity.public == store.identity.public
    assert restored.sessions["alice/1"].serialize() == bob.serialize()
    assert restored.account_key is None and restored.device_list is None


def test_backup_fields_must_match_their_version_and_the_key_travels_with_its_list() -> None:
    import msgpack

    identity, account_key = IdentityKeyPair.generate(), IdentityKeyPair.generate()
    seed = identity.seed
    refused = [
        [11, 1, seed, None, {}, {}, {}, account_key.seed, b"list"],  # v1 with v2's fields
        [11, 2, seed, None, {}, {}, {}],  # v2 without them
        [11, 2, seed, None, {}, {}, {}, account_key.seed, None],  # a key without its list
        [11, 2, seed, None, {}, {}, {}, None, b"list"],  # a list without its key
        [11, 2, seed, None, {}, {}, {}, account_key.seed[:31], b"list"],
        [11, 2, seed, None, {}, {}, {}, account_key.seed, bytes(8 * 1024 + 1)],
        [11, 3, seed, None, {}, {}, {}, None, None, None],
    ]
    for fields in refused:
        with pytest.raises(DecodeError):
            BackupContents.decode_untrusted(msgpack.packb(fields, use_bin_type=True))
    accepted = [11, 2, seed, None, {}, {}, {}, account_key.seed, b"list"]
    decoded = BackupContents.decode_untrusted(msgpack.packb(accepted, use_bin_type=True))
    assert decoded.account_key is not None and decoded.account_key.public == account_key.public
    with pytest.raises(E2EEError):
        BackupContents(identity, account_key=account_key)


def test_prekey_store_of_another_identity_is_refused_in_backup() -> None:
    import msgpack

    identity = IdentityKeyPair.generate()
    other = PreKeyStore.generate(IdentityKeyPair.generate())
    plaintext = msgpack.packb(
        [11, 1, identity.seed, other.serialize(), {}, {}, {}], use_bin_type=True
    )
    with pytest.raises(DecodeError):
        BackupContents.decode_untrusted(plaintext)


def _leaks(obj: object, secret: bytes) -> bool:
    text = repr(obj)
    return repr(secret)[2:-1] in text or secret.hex() in text


def test_no_key_object_prints_its_secret_in_repr() -> None:
    from e2ee._primitives import X25519KeyPair
    from e2ee.media import MediaKey
    from e2ee.sender_keys import SenderKeyDistribution
    from e2ee.x3dh import agree_as_initiator

    identity = IdentityKeyPair.generate()
    store = PreKeyStore.generate(identity, 1)
    pair = X25519KeyPair.generate()
    otk = next(iter(store.one_time_prekeys.values()))
    pq = store.current_pq_prekey
    spk = store.current_signed_prekey
    provisioning = ProvisioningPayload(b"user", identity.seed, b"extra: private prekeys")
    distribution = SenderKeyDistribution(b"channel", 1, 0, b"\x07" * 32, identity.public)
    media = MediaKey(4, 1, 0, b"\x09" * 32)
    secret = agree_as_initiator(IdentityKeyPair.generate(), store.bundle()).secret
    decrypted = DecryptedMessage(MessageType.TEXT, b"c", b"a very private sentence")
    cases: list[tuple[object, bytes]] = [
        (pair, pair.private),
        (otk, otk.key_pair.private),
        (spk, spk.key_pair.private),
        (pq, pq.seed),
        (identity, identity.seed),
        (provisioning, identity.seed),
        (provisioning, b"extra: private prekeys"),
        (distribution, b"\x07" * 32),
        (media, b"\x09" * 32),
        (secret, secret.shared_key),
        (decrypted, b"a very private sentence"),
    ]
    for obj, value in cases:
        assert not _leaks(obj, value), type(obj).__name__
    # The public halves are still there to tell keys apart in a debugger.
    assert pair.public.hex() in repr(pair) or repr(pair.public)[2:-1] in repr(pair)
