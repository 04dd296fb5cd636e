"""Membership packets: round trips, and fuzzing of every parser and of the engine's receive
path (only MalformedPacket, never a crash, never a change from unauthenticated bytes)."""

from __future__ import annotations

import contextlib
import random

from hypothesis import given
from hypothesis import strategies as st

from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.errors import MalformedPacket
from gossip.membership import Membership, decode_tags_untrusted, encode_tags
from gossip.membership.wire import (
    TYPES,
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MembershipPacket,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
    Update,
    encode_packet,
    parse_untrusted,
)
from gossip.transport.base import Address
from gossip.wire import Codec

KEY = bytes(range(32))
u32 = st.integers(0, 2**32 - 1)
names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=24)
addresses: st.SearchStrategy[Address] = st.tuples(
    st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str), st.integers(1, 65535)
)
metas = st.binary(max_size=512)
updates: st.SearchStrategy[Update] = st.one_of(
    st.builds(Alive, u32, names, addresses, metas),
    st.builds(Suspect, u32, names, names),
    st.builds(Dead, u32, names, names),
    st.builds(Leave, u32, names),
)
update_lists = st.lists(updates, max_size=6).map(tuple)
member_states = st.builds(MemberState, st.sampled_from(State), u32, names, addresses, metas)
packets: st.SearchStrategy[MembershipPacket] = st.one_of(
    st.builds(Ping, u32, names, names, update_lists),
    st.builds(Ack, u32, update_lists),
    st.builds(PingReq, u32, names, addresses, update_lists),
    st.builds(Nack, u32, update_lists),
    st.builds(Gossip, update_lists),
    st.builds(
        PushPull, st.booleans(), st.booleans(), st.lists(member_states, max_size=5).map(tuple)
    ),
)


def only_malformed(ptype: int, body: bytes) -> MembershipPacket | None:
    try:
        return parse_untrusted(ptype, body)
    except MalformedPacket:
        return None


@given(packets)
def test_every_packet_round_trips(packet: MembershipPacket) -> None:
    assert parse_untrusted(*encode_packet(packet)) == packet


@given(st.sampled_from(TYPES), st.binary(max_size=600))
def test_arbitrary_bodies_raise_only_malformed_packet(ptype: int, body: bytes) -> None:
    only_malformed(ptype, body)


@given(packets, st.data())
def test_mutated_bodies_raise_only_malformed_packet(
    packet: MembershipPacket, data: st.DataObject
) -> None:
    _ptype, body = encode_packet(packet)
    raw = bytearray(body)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "grow"]))
        if op == "flip" and raw:
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del raw[data.draw(st.integers(0, len(raw))) :]
        else:
            raw += data.draw(st.binary(min_size=1, max_size=8))
    only_malformed(data.draw(st.sampled_from(TYPES)), bytes(raw))


def test_forged_counts_are_refused_cheaply() -> None:
    for body in (b"\x00\xff\xff", b"\x00\x00\x10" + bytes(20)):
        assert only_malformed(TYPES[-1], body) is None
    assert only_malformed(TYPES[0], bytes(4) + b"\x00") is None  # empty name
    assert only_malformed(TYPES[2], bytes(4) + b"\x01x" + b"\x05" + bytes(6)) is None  # family
    assert only_malformed(0x1F, b"") is None


@given(st.dictionaries(names, st.text(st.characters(codec="utf-8"), max_size=10), max_size=8))
def test_tags_round_trip(tags: dict[str, str]) -> None:
    try:
        meta = encode_tags(tags)
    except Exception:  # more than 512 bytes in all: refused at the source
        return
    assert decode_tags_untrusted(meta) == tags


@given(st.binary(max_size=600))
def test_tag_parsing_raises_only_malformed_packet(meta: bytes) -> None:
    with contextlib.suppress(MalformedPacket):
        decode_tags_untrusted(meta)


def engine(encrypted: bool) -> Membership:
    codec = Codec(Keyring(KEY), replay=ReplayGuard()) if encrypted else Codec()
    ctx = EngineContext(codec, ("10.5.0.1", 7946), StaticDiscovery(), random.Random(0), 0.0)
    return Membership(ctx, name="me", seeds=[("10.5.0.2", 7946)])


@given(st.lists(packets, min_size=1, max_size=8), st.floats(0, 100))
def test_the_engine_survives_any_authenticated_packets(
    received: list[MembershipPacket], now: float
) -> None:
    e = engine(encrypted=True)
    sender = Codec(Keyring(KEY))
    for i, packet in enumerate(received):
        ptype, body = encode_packet(packet)
        if len(body) > sender.max_body():
            continue
        e.receive(sender.seal(ptype, body, now), ("10.5.0.9", 7946), now + i * 0.01)
        e.handle_timer(now + i)
    e.datagrams_to_send()
    e.pop_events()
    assert e.incarnation >= 0
    assert len(e.members()) <= 1 + 8 * 6 * 2 + 8 * 5


@given(st.binary(max_size=1400))
def test_unauthenticated_bytes_change_nobody(datagram: bytes) -> None:
    e = engine(encrypted=True)
    before = e.members()
    e.receive(b"\xa1" + bytes([TYPES[0]]) + datagram, ("10.5.0.9", 7946), 0.0)
    e.receive(datagram, ("10.5.0.9", 7946), 0.0)
    assert e.members() == before
    stats = e.statistics()
    assert stats.received == {} and sum(stats.dropped.values()) == 2
