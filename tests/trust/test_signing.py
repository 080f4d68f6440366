"""Signed room messages and link statements: any change to a signed field breaks them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p2pchat.trust.signing import Signer, Verifier, link_statement, room_message_bytes

ALICE = Signer(b"a" * 32)
MALLORY = Signer(b"m" * 32)

FIELDS = dict(room="lobby", origin="alice", msg_id="ab" * 16, seq=7, ts=1.8e9, text="hi there")


def test_a_signed_message_verifies_with_the_origins_key_only() -> None:
    data = room_message_bytes(**FIELDS)  # type: ignore[arg-type]
    signature = ALICE.sign(data)
    verifier = Verifier()
    assert verifier.verify(ALICE.public_key, data, signature)
    assert not verifier.verify(MALLORY.public_key, data, signature)
    assert not verifier.verify(ALICE.public_key, data, MALLORY.sign(data))
    assert not verifier.verify(b"short", data, signature)
    assert not verifier.verify(ALICE.public_key, data, b"\0" * 10)
    assert (verifier.checked, verifier.failed) == (5, 4)


@given(
    field=st.sampled_from(sorted(FIELDS)),
    value=st.one_of(st.text(max_size=20), st.integers(0, 2**63), st.floats(allow_nan=False)),
)
def test_changing_any_signed_field_breaks_the_signature(field: str, value: object) -> None:
    data = room_message_bytes(**FIELDS)  # type: ignore[arg-type]
    signature = ALICE.sign(data)
    kind = type(FIELDS[field])
    if not isinstance(value, kind) or value == FIELDS[field]:
        return
    if kind is int and not 0 <= value < 2**64:  # type: ignore[operator]
        return
    changed = room_message_bytes(**{**FIELDS, field: value})  # type: ignore[arg-type]
    assert not Verifier().verify(ALICE.public_key, changed, signature)


def test_fields_cannot_slide_into_each_other() -> None:
    a = room_message_bytes("lobby", "alice", "id", 1, 0.0, "xy")
    b = room_message_bytes("lobby", "alicex", "id", 1, 0.0, "y")
    assert a != b
    assert link_statement("accept", "n", "bob", "alice") != link_statement(
        "accept", "n", "bo", "balice"
    )


def test_a_room_message_signature_is_no_link_statement() -> None:
    statement = link_statement("accept", "nonce", "alice", "bob")
    message = room_message_bytes("lobby", "alice", "id", 1, 0.0, "hi")
    assert statement.split(b"\0")[0] != message.split(b"\0")[0]


def test_the_verifier_keeps_a_bounded_number_of_keys() -> None:
    verifier = Verifier(max_keys=3)
    data = b"x"
    for seed in range(10):
        signer = Signer(bytes([seed]) * 32)
        assert verifier.verify(signer.public_key, data, signer.sign(data))
    assert len(verifier._keys) == 3


def test_a_signer_is_its_seed() -> None:
    assert Signer(ALICE.seed).public_key == ALICE.public_key
