"""Every decoder, fed random and mutated bytes, raises nothing but E2EEError subclasses."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from _e2ee_helpers import CONV, V1_PREKEY_STORE, session_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2ee import (
    BackupContents,
    Codec,
    DoubleRatchet,
    IdentityKeyPair,
    InitialMessage,
    LinkingSecret,
    MediaKey,
    MediaKeyReceiver,
    MediaKeySender,
    PreKeyBundle,
    PreKeyStore,
    PreKeyUpload,
    ProvisioningPayload,
    RatchetMessage,
    SenderKeyDistribution,
    SenderKeyMessage,
    SenderKeyReceiver,
    SenderKeySender,
    Session,
    SFrameReceiver,
    SFrameSender,
    _wire,
    accept_session,
    build_provisioning_message,
    export_backup,
    import_backup,
    initiate_session,
    pad,
    protect_frame,
    sframe,
    unpad,
    unprotect_frame,
)
from e2ee.backup import MIN_MEMLIMIT, MIN_OPSLIMIT
from e2ee.double_ratchet import DecryptedMessage, MessageType
from e2ee.errors import E2EEError
from e2ee.linking import parse_link_code

FUZZ = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _build() -> dict[str, tuple[bytes, Callable[[bytes], object]]]:
    alice_id = IdentityKeyPair.generate()
    store = PreKeyStore.generate(IdentityKeyPair.generate(), 5)
    otk = next(iter(store.one_time_prekeys))
    initiator = initiate_session(alice_id, store.bundle(otk))
    initial = initiator.encrypt(b"hello", conversation_id=CONV)
    alice, bob, _ = session_pair()
    ratchet_msg = alice.encrypt(b"ratchet", conversation_id=CONV)
    # A store with one-time PQ prekeys and a replay record (format version 2).
    pq_store = PreKeyStore.generate(IdentityKeyPair.generate(), 2, pq_one_time_prekeys=3)
    pq_ids = list(pq_store.pq_one_time_prekeys)
    accept_session(
        pq_store,
        initiate_session(alice_id, pq_store.bundle(pq_one_time_prekey_id=pq_ids[0])).encrypt(
            b"first", conversation_id=CONV
        ),
        conversation_id=CONV,
        now=0,
    )
    pq_bundle = pq_store.bundle(pq_one_time_prekey_id=pq_ids[1])
    pq_initial = initiate_session(alice_id, pq_bundle).encrypt(b"hello", conversation_id=CONV)

    sks = SenderKeySender(b"chan")
    skr = SenderKeyReceiver(b"chan")
    skr.process_distribution(
        DecryptedMessage(MessageType.SENDER_KEY_DISTRIBUTION, b"chan", sks.distribution().encode())
    )

    sfr = SFrameReceiver(4)
    sfr.add_key(3, b"k" * 16)
    sfr_ratchet = SFrameReceiver(1, ratchet_bits=4)
    sfr_ratchet.add_key(3 << 4, b"k" * 16)
    media_sender = MediaKeySender(2)
    media_receiver = MediaKeyReceiver()
    media_receiver.install(media_sender.current_key(), user_id="u", device_id="d", now=0)
    link = LinkingSecret()
    payload = ProvisioningPayload(b"user", bytes(32), b"x")
    _, provisioning = build_provisioning_message(link.code, payload)
    fast = {"opslimit": MIN_OPSLIMIT, "memlimit": MIN_MEMLIMIT}
    backup = export_backup(BackupContents(alice_id, None, {"b": bob}), "pw", **fast)

    def fresh_store_accept(data: bytes) -> object:
        return accept_session(store, data, conversation_id=CONV, now=0)

    return {
        "bundle": (store.bundle(otk).encode(), PreKeyBundle.decode_untrusted),
        "upload": (
            store.upload(list(store.one_time_prekeys.values())).encode(),
            PreKeyUpload.decode_untrusted,
        ),
        "prekey_store": (store.serialize(), PreKeyStore.restore_untrusted),
        "prekey_store_v1": (V1_PREKEY_STORE, PreKeyStore.restore_untrusted),
        "prekey_store_pq_one_time": (pq_store.serialize(), PreKeyStore.restore_untrusted),
        "bundle_pq_one_time": (pq_bundle.encode(), PreKeyBundle.decode_untrusted),
        "upload_pq_one_time": (
            pq_store.upload([], list(pq_store.pq_one_time_prekeys.values())).encode(),
            PreKeyUpload.decode_untrusted,
        ),
        "accept_session_pq_one_time": (
            pq_initial,
            lambda d: accept_session(pq_store, d, conversation_id=CONV, now=0),
        ),
        "initial_message": (initial, InitialMessage.decode_untrusted),
        "accept_session": (initial, fresh_store_accept),
        "ratchet_message": (ratchet_msg, RatchetMessage.decode_untrusted),
        "session_decrypt": (
            ratchet_msg,
            lambda d: Session.restore_untrusted(bob.serialize()).decrypt(
                d, conversation_id=CONV, now=0
            ),
        ),
        "ratchet_state": (bob.ratchet.serialize(), DoubleRatchet.restore_untrusted),
        "session_state": (bob.serialize(), Session.restore_untrusted),
        "sender_key_message": (sks.encrypt(b"group"), SenderKeyMessage.decode_untrusted),
        "sender_key_decrypt": (sks.encrypt(b"group"), skr.decrypt),
        "sender_key_sender_state": (sks.serialize(), SenderKeySender.restore_untrusted),
        "sender_key_receiver_state": (skr.serialize(), SenderKeyReceiver.restore_untrusted),
        "sender_key_distribution": (
            sks.distribution().encode(),
            SenderKeyDistribution.decode_untrusted,
        ),
        "sframe_header": (sframe.encode_header(300, 70000), sframe.decode_header_untrusted),
        "sframe_decrypt_frame": (
            sframe.encrypt_frame(1, b"k" * 16, 3, 9, b"m", b"frame"),
            lambda d: sframe.decrypt_frame(1, b"k" * 16, d, b"m"),
        ),
        "sframe_receiver": (SFrameSender(4, b"k" * 16, 3).encrypt(b"frame"), sfr.decrypt),
        "sframe_ratchet_receiver": (
            SFrameSender(1, b"k" * 16, 3 << 4).encrypt(b"frame"),
            sfr_ratchet.decrypt,
        ),
        "media_frame": (
            protect_frame(media_sender.sframe, Codec.VP8, bytes(10) + b"key frame"),
            lambda d: unprotect_frame(media_receiver, Codec.VP8, d, now=1),
        ),
        "media_key": (media_sender.current_key().encode(), MediaKey.decode_untrusted),
        "backup": (backup, lambda d: import_backup(d, "pw")),
        "backup_contents": (
            BackupContents(store.identity, store, {"b": bob}, {"c": sks}, {"c": skr}).encode(),
            BackupContents.decode_untrusted,
        ),
        "backup_contents_account_key": (
            BackupContents(
                alice_id, account_key=IdentityKeyPair.generate(), device_list=b"\x83" + bytes(40)
            ).encode(),
            BackupContents.decode_untrusted,
        ),
        "backup_contents_v1": (
            _wire.pack(
                [_wire.TAG_BACKUP_PAYLOAD, 1, alice_id.seed, None, {"b": bob.serialize()}, {}, {}]
            ),
            BackupContents.decode_untrusted,
        ),
        "provisioning": (provisioning, lambda d: LinkingSecret(parse_link_code(link.code)).open(d)),
        "provisioning_payload": (payload.encode(), ProvisioningPayload.decode_untrusted),
        "padding": (pad(b"some text"), unpad),
        "peek_tag": (ratchet_msg, _wire.peek_tag),
    }


DECODERS = _build()

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.binary(max_size=80)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _expect_typed_errors_only(decode: Callable[[bytes], object], data: bytes) -> None:
    with contextlib.suppress(E2EEError):
        decode(data)


def test_valid_samples_decode() -> None:
    # Fresh receivers: the fuzz tests below may have run first (tests are spread over
    # workers), and a stateful receiver refuses a sample it has seen (an SFrame replay).
    for name, (valid, decode) in _build().items():
        if name in ("accept_session", "accept_session_pq_one_time"):
            continue  # consumes the OTK; covered in test_e2ee_x3dh
        decode(valid)


def _replace_somewhere(tree: Any, draw: st.DataObject) -> Any:
    if isinstance(tree, list) and tree:
        i = draw.draw(st.integers(0, len(tree) - 1))
        copy = list(tree)
        if draw.draw(st.booleans()):
            copy[i] = draw.draw(msgpack_values)
        else:
            copy[i] = _replace_somewhere(copy[i], draw)
        return copy
    return draw.draw(msgpack_values)


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_typed_errors(name: str, data: bytes) -> None:
    _expect_typed_errors_only(DECODERS[name][1], data)


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(draw=st.data())
def test_mutated_bytes_raise_only_typed_errors(name: str, draw: st.DataObject) -> None:
    valid, decode = DECODERS[name]
    data = bytearray(valid)
    for _ in range(draw.draw(st.integers(1, 4))):
        op = draw.draw(st.sampled_from(["flip", "truncate", "insert", "delete", "set"]))
        pos = draw.draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw.draw(st.integers(1, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw.draw(st.integers(1, 8))]
        elif op == "set" and data:
            data[pos] = draw.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC4, 0xDC, 0xFF]))
    _expect_typed_errors_only(decode, bytes(data))


@pytest.mark.parametrize("name", sorted(DECODERS))
@FUZZ
@given(draw=st.data())
def test_structurally_mutated_fields_raise_only_typed_errors(
    name: str, draw: st.DataObject
) -> None:
    valid, decode = DECODERS[name]
    try:
        tree = msgpack.unpackb(valid, raw=False, strict_map_key=False)
    except Exception:
        tree = None
    if not isinstance(tree, list):
        return  # not a msgpack structure (SFrame frames, padding)
    mutated = _replace_somewhere(tree, draw)
    _expect_typed_errors_only(decode, msgpack.packb(mutated, use_bin_type=True))
