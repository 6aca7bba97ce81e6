"""ICE-lite responder on the shared STUN codec: credentials, nomination, consent."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sfu.ice import (
    IceLiteResponder,
    decode_binding_untrusted,
    local_ufrag_untrusted,
    new_credentials,
)
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode_error_code_untrusted,
    decode_xor_address_untrusted,
    new_transaction_id,
    parse_message_untrusted,
    short_term_key,
)

UFRAG, PWD = new_credentials()
PEER = ("127.0.0.1", 50000)


def _request(
    username: str = f"{UFRAG}:them",
    password: str = PWD,
    *,
    use_candidate: bool = False,
    controlled: bool = False,
    fingerprint: bool = True,
) -> bytes:
    message = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    message.add(Attr.USERNAME, username.encode())
    message.add(Attr.PRIORITY, (1 << 24).to_bytes(4, "big"))
    if controlled:
        message.add(Attr.ICE_CONTROLLED, bytes(8))
    else:
        message.add(Attr.ICE_CONTROLLING, bytes(8))
    if use_candidate:
        message.add(Attr.USE_CANDIDATE, b"")
    return message.serialize(integrity_key=short_term_key(password), fingerprint=fingerprint)


def _answer(responder: IceLiteResponder, data: bytes, now: float = 0.0, addr=PEER):
    request = decode_binding_untrusted(data)
    assert request is not None
    reply = responder.receive(request, addr, now)
    assert reply.response is not None
    return parse_message_untrusted(reply.response), reply.selected


def test_credentials_are_long_enough() -> None:
    ufrag, pwd = new_credentials()
    assert len(ufrag) >= 4 and len(pwd) >= 22
    assert ufrag != new_credentials()[0]


def test_valid_check_is_answered_with_signed_mapped_address() -> None:
    responder = IceLiteResponder(UFRAG, PWD, "them")
    response, selected = _answer(responder, _request())
    assert response.message_class == MessageClass.SUCCESS
    assert response.check_integrity(short_term_key(PWD))
    assert response.check_fingerprint()
    mapped = response.get(Attr.XOR_MAPPED_ADDRESS)
    assert mapped is not None
    assert decode_xor_address_untrusted(mapped, response.transaction_id) == PEER
    assert not selected and responder.selected is None


def test_use_candidate_selects_the_address_and_a_new_one_moves_it() -> None:
    responder = IceLiteResponder(UFRAG, PWD, "them")
    assert _answer(responder, _request(use_candidate=True))[1]
    assert responder.selected == PEER
    assert not _answer(responder, _request(use_candidate=True))[1]
    other = ("127.0.0.1", 50001)
    assert _answer(responder, _request(use_candidate=True), addr=other)[1]
    assert responder.selected == other


def test_wrong_password_or_ufrag_is_401_unsigned() -> None:
    responder = IceLiteResponder(UFRAG, PWD, "them")
    for data in (
        _request(password="x" * 22),
        _request(username=f"{UFRAG}:other"),
        _request(username="nope:them"),
    ):
        response, _ = _answer(responder, data)
        assert response.message_class == MessageClass.ERROR
        code = response.get(Attr.ERROR_CODE)
        assert code is not None and decode_error_code_untrusted(code)[0] == 401
        assert not response.has_integrity
    assert responder.selected is None


def test_controlled_peer_gets_role_conflict() -> None:
    responder = IceLiteResponder(UFRAG, PWD)
    response, _ = _answer(responder, _request(controlled=True))
    code = response.get(Attr.ERROR_CODE)
    assert code is not None and decode_error_code_untrusted(code)[0] == 487


def test_consent_expires_30_s_after_the_last_check() -> None:
    responder = IceLiteResponder(UFRAG, PWD, "them")
    assert not responder.consent_expired(1000.0)  # nothing selected, nothing to expire
    _answer(responder, _request(use_candidate=True), now=0.0)
    _answer(responder, _request(), now=25.0)
    assert not responder.consent_expired(54.0)
    # Checks from another address do not refresh consent of the selected one.
    _answer(responder, _request(), now=50.0, addr=("127.0.0.1", 1))
    assert responder.consent_expired(55.1)


def test_ufrag_lookup_and_non_binding_messages() -> None:
    request = decode_binding_untrusted(_request())
    assert request is not None and local_ufrag_untrusted(request) == UFRAG
    indication = Message(Method.BINDING, MessageClass.INDICATION, new_transaction_id())
    assert decode_binding_untrusted(indication.serialize()) is None
    assert decode_binding_untrusted(b"\x00\x01\x00\x00") is None


def test_request_without_integrity_is_400() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    message.add(Attr.USERNAME, f"{UFRAG}:them".encode())
    response, _ = _answer(IceLiteResponder(UFRAG, PWD), message.serialize(fingerprint=True))
    code = response.get(Attr.ERROR_CODE)
    assert code is not None and decode_error_code_untrusted(code)[0] == 400


@given(st.binary(max_size=200))
def test_garbage_never_crashes_the_responder(data: bytes) -> None:
    responder = IceLiteResponder(UFRAG, PWD)
    request = decode_binding_untrusted(b"\x00\x01" + data)
    if request is not None:
        local_ufrag_untrusted(request)
        responder.receive(request, PEER, 0.0)


@given(st.data())
def test_mutated_checks_never_crash_or_select(data: st.DataObject) -> None:
    raw = bytearray(_request(use_candidate=True))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(20, len(raw) - 1))] = data.draw(st.integers(0, 255))
    responder = IceLiteResponder(UFRAG, PWD, "them")
    request = decode_binding_untrusted(bytes(raw))
    if request is not None:
        reply = responder.receive(request, PEER, 0.0)
        if reply.selected:
            # Only a mutation that left USERNAME, integrity and fingerprint intact may select.
            assert request.check_integrity(short_term_key(PWD))
