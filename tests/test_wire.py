"""Encoding and decoding of the label and the five packets."""

from __future__ import annotations

import contextlib
import random
import time

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossip.crypto import Keyring, key_id_of
from gossip.errors import DecryptError, LocalProtocolError, MalformedPacket
from gossip.wire import (
    DEFAULT_MAX_DATAGRAM,
    LABEL_SIZE,
    MAGIC_VERSION,
    MAX_DATAGRAM_LIMIT,
    Codec,
    Packet,
    PacketType,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
    decode_untrusted,
    encode,
    key_timestamp_ms,
    new_message_key,
    peek_message_key,
)

from .strategies import mutations, packets

KEY = bytes(range(16))


def test_label_layout() -> None:
    dg = encode(PushAck(KEY), now=1.5)
    assert dg[0] == MAGIC_VERSION
    assert dg[1] == PacketType.PUSH_ACK
    assert dg[2] == 0x00  # plain text
    assert dg[3:7] == b"\0\0\0\0"  # no key id in plain text
    assert int.from_bytes(dg[7:15], "big") == 1500  # ms
    assert dg[LABEL_SIZE:] == KEY


@pytest.mark.parametrize(
    ("packet", "ptype", "body"),
    [
        (PushMessage(KEY, b"hi"), 1, KEY + b"hi"),
        (PushAck(KEY), 2, KEY),
        (PullSync((KEY, KEY[::-1])), 3, KEY + KEY[::-1]),
        (PullRequest((KEY,)), 4, KEY),
        (PullResponse(KEY, b""), 5, KEY),
    ],
)
def test_exact_bytes(packet: Packet, ptype: int, body: bytes) -> None:
    dg = encode(packet)
    assert dg == bytes([MAGIC_VERSION, ptype, 0, 0, 0, 0, 0]) + bytes(8) + body
    assert decode_untrusted(dg) == packet


@given(packets)
def test_round_trip_plain(packet: Packet) -> None:
    assert decode_untrusted(encode(packet)) == packet


@given(packets, st.floats(0, 2e9))
def test_round_trip_sealed(packet: Packet, now: float) -> None:
    key = bytes(32)
    sender = Codec(Keyring(key), max_datagram=MAX_DATAGRAM_LIMIT)
    receiver = Codec(Keyring(key), max_datagram=MAX_DATAGRAM_LIMIT)
    assert receiver.decode_untrusted(sender.encode(packet, now), now) == packet


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_our_errors(data: bytes) -> None:
    for codec in (Codec(max_datagram=MAX_DATAGRAM_LIMIT), Codec(Keyring(bytes(32)))):
        with contextlib.suppress(MalformedPacket, DecryptError):
            codec.decode_untrusted(data, 0.0)


@given(st.data())
def test_mutated_plain_packets_raise_only_our_errors(data: st.DataObject) -> None:
    dg = encode(data.draw(packets))
    bad = data.draw(mutations(dg))
    try:
        packet = decode_untrusted(bad)
    except (MalformedPacket, DecryptError):
        return
    # A plain-text mutation may parse; then it must re-encode to itself (no silent slack),
    # the timestamp aside (the plain codec does not check it).
    again = encode(packet)
    assert (again[:7], again[15:]) == (bad[:7], bad[15:])


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (b"", "truncated"),
        (b"\xa1\x01", "truncated"),
        (bytes([0xA2, 1, 0]) + bytes(12) + KEY, "version"),
        (bytes([MAGIC_VERSION, 0, 0]) + bytes(12) + KEY, "type"),
        (bytes([MAGIC_VERSION, 6, 0]) + bytes(12) + KEY, "type"),
        (bytes([MAGIC_VERSION, 1, 0]) + bytes(12) + KEY[:15], "body"),
        (bytes([MAGIC_VERSION, 2, 0]) + bytes(12) + KEY + b"x", "body"),
        (bytes([MAGIC_VERSION, 3, 0]) + bytes(12), "body"),
        (bytes([MAGIC_VERSION, 4, 0]) + bytes(12) + KEY + b"x", "body"),
        (bytes([MAGIC_VERSION, 1, 1]) + bytes(12) + KEY, "encryption"),
        (bytes([MAGIC_VERSION, 1, 0, 0, 0, 0, 9]) + bytes(8) + KEY, "label"),
    ],
)
def test_malformed_reasons(datagram: bytes, reason: str) -> None:
    with pytest.raises((MalformedPacket, DecryptError)) as info:
        Codec().decode_untrusted(datagram, 0.0)
    assert info.value.reason == reason


SEALING_KEY = bytes(32)
SEALED_LABEL = bytes([MAGIC_VERSION, 1, 1]) + key_id_of(SEALING_KEY).to_bytes(4, "big") + bytes(8)


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        # Shorter than a label and a key: refused on the slow path, which must still name the
        # check that the full decode would have failed first.
        (bytes([MAGIC_VERSION, 2, 0]) + bytes(12) + KEY[:15], "body"),
        (bytes([MAGIC_VERSION, 2, 0, 0, 0, 0, 9]) + bytes(8) + KEY[:15], "label"),
        (SEALED_LABEL, "encryption"),  # to a plain-text codec
    ],
)
def test_short_plain_datagrams_name_their_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises((MalformedPacket, DecryptError)) as info:
        Codec().decode_untrusted(datagram, 0.0)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("datagram", "reason"),
    [
        (SEALED_LABEL + bytes(15), "length"),
        (SEALED_LABEL[:3] + b"\xff\xff\xff\xff" + SEALED_LABEL[7:] + bytes(15), "unknown-key"),
        (SEALED_LABEL[:2] + b"\x00" + SEALED_LABEL[3:], "encryption"),
        (SEALED_LABEL[:1] + b"\x07" + SEALED_LABEL[2:], "type"),
    ],
)
def test_short_sealed_datagrams_name_their_reason(datagram: bytes, reason: str) -> None:
    with pytest.raises((MalformedPacket, DecryptError)) as info:
        Codec(Keyring(SEALING_KEY)).decode_untrusted(datagram, 0.0)
    assert info.value.reason == reason


@pytest.mark.parametrize("cls", [PushMessage, PushAck, PullSync, PullRequest, PullResponse])
def test_packets_have_nothing_for_init_to_run(cls: type) -> None:
    """The decoder builds packets with object.__new__ and the slot descriptors, skipping
    __init__: sound only while __init__ has nothing to run but plain assignments."""
    assert (
        attrs.has(cls) and "__dict__" not in dir(cls) and cls.__setattr__ is not object.__setattr__
    )
    assert not hasattr(cls, "__attrs_pre_init__") and not hasattr(cls, "__attrs_post_init__")
    for field in attrs.fields(cls):
        assert field.validator is None and field.converter is None
        assert field.default is attrs.NOTHING and field.init


@given(packets)
def test_decoded_packets_are_ordinary_instances(packet: Packet) -> None:
    for codec in (
        Codec(max_datagram=MAX_DATAGRAM_LIMIT),
        Codec(Keyring(SEALING_KEY), max_datagram=MAX_DATAGRAM_LIMIT),
    ):
        decoded = codec.decode_untrusted(codec.encode(packet, 1.0), 1.0)
        assert type(decoded) is type(packet)
        assert decoded == packet and hash(decoded) == hash(packet) and repr(decoded) == repr(packet)
        assert attrs.asdict(decoded) == attrs.asdict(packet)
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            decoded.key = KEY  # type: ignore[misc, union-attr]


def test_oversize_rejected() -> None:
    codec = Codec(max_datagram=200)
    dg = encode(PushMessage(KEY, bytes(300)))
    with pytest.raises(MalformedPacket) as info:
        codec.decode_untrusted(dg, 0.0)
    assert info.value.reason == "oversize"


@pytest.mark.parametrize("encrypted", [False, True])
@pytest.mark.parametrize("limit", [128, 512, DEFAULT_MAX_DATAGRAM, 9000, MAX_DATAGRAM_LIMIT])
def test_max_payload_is_exact(encrypted: bool, limit: int) -> None:
    codec = Codec(Keyring(bytes(32)) if encrypted else None, max_datagram=limit)
    biggest = codec.encode(PushMessage(KEY, bytes(codec.max_payload())), 0.0)
    assert len(biggest) <= limit
    assert len(biggest) > limit - 16  # within a block: the bound is tight
    with pytest.raises(LocalProtocolError, match=f"{limit}-byte datagram"):
        codec.encode(PushMessage(KEY, bytes(codec.max_payload() + 1)), 0.0)
    keys = tuple(bytes([i % 256]) * 16 for i in range(codec.max_keys()))
    assert len(codec.encode(PullSync(keys), 0.0)) <= limit
    with pytest.raises(LocalProtocolError):
        codec.encode(PullSync((*keys, KEY)), 0.0)


def test_default_limits() -> None:
    assert Codec().max_datagram == 1400
    assert Codec(Keyring(bytes(32))).max_payload() == 1327


@pytest.mark.parametrize("limit", [0, 127, 65508, 1400.0, "1400"])
def test_bad_limit_is_local_error(limit: object) -> None:
    with pytest.raises(LocalProtocolError, match="max_datagram"):
        Codec(max_datagram=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "packet",
    [
        PushMessage(b"short", b""),
        PushAck(KEY + b"x"),
        PullSync(()),
        PullRequest((KEY, b"")),
        PullResponse(KEY, "text"),  # type: ignore[arg-type]
        "not a packet",
    ],
)
def test_encoding_misuse_is_local_error(packet: Packet) -> None:
    with pytest.raises(LocalProtocolError):
        encode(packet)


def test_message_keys_carry_time_and_80_random_bits() -> None:
    keys = {new_message_key(1_700_000_000_123) for _ in range(10_000)}
    assert len(keys) == 10_000  # same millisecond, still distinct
    assert all(len(k) == 16 and key_timestamp_ms(k) == 1_700_000_000_123 for k in keys)
    assert abs(key_timestamp_ms(new_message_key()) - time.time() * 1000) < 5000


def test_message_keys_from_an_injected_rng_repeat_with_its_seed() -> None:
    a, b = random.Random(7), random.Random(7)
    keys = [new_message_key(1_700_000_000_123, a) for _ in range(3)]
    assert keys == [new_message_key(1_700_000_000_123, b) for _ in range(3)]
    assert len(set(keys)) == 3
    assert all(key_timestamp_ms(k) == 1_700_000_000_123 for k in keys)
    assert keys[0][6:] == random.Random(7).getrandbits(80).to_bytes(10, "big")


@given(packets)
def test_peek_message_key_only_for_message_packets(packet: Packet) -> None:
    for codec in (
        Codec(max_datagram=MAX_DATAGRAM_LIMIT),
        Codec(Keyring(bytes(32)), max_datagram=MAX_DATAGRAM_LIMIT),
    ):
        dg = codec.encode(packet, 1.0)
        if isinstance(packet, PushMessage | PullResponse):
            assert peek_message_key(dg) == packet.key
        else:
            assert peek_message_key(dg) is None
    assert peek_message_key(b"\xa1\x01") is None
