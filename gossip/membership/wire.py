"""Membership packet bodies (types 0x10-0x1F), inside the node's label and seal
(:meth:`gossip.wire.Codec.seal` / :meth:`~gossip.wire.Codec.open_untrusted`). Big-endian.

Building blocks::

    name     | len u8 (1..255) | UTF-8 bytes |
    address  | family u8 (4 or 6) | IPv4 (4) or IPv6 (16) | port u16 |
    meta     | len u16 (0..512) | bytes |
    updates  | count u8 | update * count |          (piggybacked state changes)

Updates (the first byte is the kind)::

    Alive    0x01 | incarnation u32 | name | address | meta |
    Suspect  0x02 | incarnation u32 | name | accuser name |
    Dead     0x03 | incarnation u32 | name | accuser name |      (SWIM's "confirm")
    Leave    0x04 | incarnation u32 | name |

Packets::

    Ping     0x10 | seq u32 | target name | source name | digest u64 | updates |
    Ack      0x11 | seq u32 | updates |
    PingReq  0x12 | seq u32 | target name | target address | updates |
    Nack     0x13 | seq u32 | updates |
    Gossip   0x14 | updates |
    PushPull 0x15 | flags u8 (1 join, 2 reply) | count u16 | member * count |
    member        | state u8 (0 alive, 1 suspect, 2 dead, 3 left) | incarnation u32 | name
                  | address | meta |

Every length and count is bounded by the field width and by the datagram (at most 255
updates, 512 bytes of metadata); a body must be consumed exactly. :func:`parse_untrusted`
raises only :class:`~gossip.errors.MalformedPacket` (``reason="body"``).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Final

import attrs

from gossip.errors import LocalProtocolError, MalformedPacket
from gossip.membership.config import MAX_METADATA, MAX_NAME
from gossip.transport.base import Address
from gossip.wire import packet_range

__all__ = [
    "ACK",
    "GOSSIP",
    "NACK",
    "PING",
    "PING_REQ",
    "PUSH_PULL",
    "Ack",
    "Alive",
    "Dead",
    "Gossip",
    "Leave",
    "MemberState",
    "MembershipPacket",
    "Nack",
    "Ping",
    "PingReq",
    "PushPull",
    "State",
    "Suspect",
    "Update",
    "decode_tags_untrusted",
    "encode_address",
    "encode_head",
    "encode_packet",
    "encode_tags",
    "encode_update",
    "parse_untrusted",
    "updates_section",
]

_BASE: Final = packet_range("membership").start
PING: Final = _BASE
ACK: Final = _BASE + 1
PING_REQ: Final = _BASE + 2
NACK: Final = _BASE + 3
GOSSIP: Final = _BASE + 4
PUSH_PULL: Final = _BASE + 5
#: The types this engine owns (0x16-0x1F are reserved for it).
TYPES: Final = range(PING, PUSH_PULL + 1)

_ALIVE, _SUSPECT, _DEAD, _LEAVE = 1, 2, 3, 4
_JOIN_FLAG, _REPLY_FLAG = 1, 2
#: Updates in one packet: the count is one byte.
MAX_UPDATES: Final = 255
_U32: Final = struct.Struct(">I")
_U64: Final = struct.Struct(">Q")
_U16: Final = struct.Struct(">H")


class State(IntEnum):
    """A member's state, as this node sees it (wire values of PushPull)."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@attrs.frozen(slots=True)
class Alive:
    """``name`` is alive at ``address`` with ``meta``, as of ``incarnation``."""

    incarnation: int
    name: str
    address: Address
    meta: bytes = b""


@attrs.frozen(slots=True)
class Suspect:
    """``accuser`` suspects ``name`` (at ``incarnation``) has failed."""

    incarnation: int
    name: str
    accuser: str


@attrs.frozen(slots=True)
class Dead:
    """``accuser`` declares ``name`` failed (SWIM's confirm)."""

    incarnation: int
    name: str
    accuser: str


@attrs.frozen(slots=True)
class Leave:
    """``name`` left the cluster on purpose."""

    incarnation: int
    name: str


Update = Alive | Suspect | Dead | Leave


@attrs.frozen(slots=True)
class Ping:
    """A probe of ``target`` (its name: an Ack proves the right member answered).
    ``digest``: the prober's table digest (:attr:`gossip.membership.state.MemberTable.
    digest`; 0: not said): a target whose own differs knows their views differ."""

    seq: int
    target: str
    source: str
    updates: tuple[Update, ...] = ()
    digest: int = 0


@attrs.frozen(slots=True)
class Ack:
    """The answer to Ping ``seq`` (relayed by the helper of an indirect probe)."""

    seq: int
    updates: tuple[Update, ...] = ()


@attrs.frozen(slots=True)
class PingReq:
    """ "Probe ``target`` for me": the prober's indirect probe through a helper."""

    seq: int
    target: str
    address: Address
    updates: tuple[Update, ...] = ()


@attrs.frozen(slots=True)
class Nack:
    """A helper could not reach the target of PingReq ``seq`` (so the prober's network
    works: Lifeguard does not count the failure against the prober's health)."""

    seq: int
    updates: tuple[Update, ...] = ()


@attrs.frozen(slots=True)
class Gossip:
    """Updates on their own, sent each gossip interval while some are queued."""

    updates: tuple[Update, ...] = ()


@attrs.frozen(slots=True)
class MemberState:
    """One member of a full-state exchange."""

    state: State
    incarnation: int
    name: str
    address: Address
    meta: bytes = b""


@attrs.frozen(slots=True)
class PushPull:
    """A part of the sender's member table; ``reply=False`` asks for the receiver's."""

    join: bool
    reply: bool
    members: tuple[MemberState, ...]


MembershipPacket = Ping | Ack | PingReq | Nack | Gossip | PushPull


# -- encoding ---------------------------------------------------------------------------


def _name(name: str) -> bytes:
    raw = name.encode()
    if not 1 <= len(raw) <= MAX_NAME:
        raise LocalProtocolError(f"a member name is 1..{MAX_NAME} UTF-8 bytes, got {name!r}")
    return bytes((len(raw),)) + raw


def encode_address(address: Address) -> bytes:
    """``address`` in its wire form.

    Raises:
        LocalProtocolError: the host is not a numeric IP address, or the port is out of range.
    """
    host, port = address
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise LocalProtocolError(f"not a numeric IP address: {host!r}") from None
    if not 0 < port < 65536:
        raise LocalProtocolError(f"port out of range: {port!r}")
    return bytes((ip.version,)) + ip.packed + _U16.pack(port)


def _meta(meta: bytes) -> bytes:
    if len(meta) > MAX_METADATA:
        raise LocalProtocolError(f"metadata is at most {MAX_METADATA} bytes, got {len(meta)}")
    return _U16.pack(len(meta)) + meta


def encode_update(update: Update) -> bytes:
    """One update in its wire form (self-delimiting)."""
    inc = _U32.pack(update.incarnation)
    if type(update) is Alive:
        return (
            bytes((_ALIVE,))
            + inc
            + _name(update.name)
            + encode_address(update.address)
            + _meta(update.meta)
        )
    if type(update) is Suspect:
        return bytes((_SUSPECT,)) + inc + _name(update.name) + _name(update.accuser)
    if type(update) is Dead:
        return bytes((_DEAD,)) + inc + _name(update.name) + _name(update.accuser)
    if type(update) is Leave:
        return bytes((_LEAVE,)) + inc + _name(update.name)
    raise LocalProtocolError(f"not an update: {update!r}")


def encode_member(member: MemberState) -> bytes:
    """One PushPull entry in its wire form."""
    return (
        bytes((int(member.state),))
        + _U32.pack(member.incarnation)
        + _name(member.name)
        + encode_address(member.address)
        + _meta(member.meta)
    )


def updates_section(encoded: Sequence[bytes]) -> bytes:
    """The updates section of a packet, from :func:`encode_update` outputs."""
    if len(encoded) > MAX_UPDATES:
        raise LocalProtocolError(f"at most {MAX_UPDATES} updates per packet")
    return bytes((len(encoded),)) + b"".join(encoded)


def encode_head(packet: MembershipPacket) -> tuple[int, bytes]:
    """The packet type and the body up to (not including) its updates section. A PushPull
    has no updates section: its head is its whole body."""
    if type(packet) is Ping:
        return PING, (
            _U32.pack(packet.seq)
            + _name(packet.target)
            + _name(packet.source)
            + _U64.pack(packet.digest)
        )
    if type(packet) is Ack:
        return ACK, _U32.pack(packet.seq)
    if type(packet) is PingReq:
        return PING_REQ, _U32.pack(packet.seq) + _name(packet.target) + encode_address(
            packet.address
        )
    if type(packet) is Nack:
        return NACK, _U32.pack(packet.seq)
    if type(packet) is Gossip:
        return GOSSIP, b""
    if type(packet) is PushPull:
        if len(packet.members) > 0xFFFF:
            raise LocalProtocolError("at most 65535 members per PushPull")
        flags = (_JOIN_FLAG if packet.join else 0) | (_REPLY_FLAG if packet.reply else 0)
        return PUSH_PULL, bytes((flags,)) + _U16.pack(len(packet.members)) + b"".join(
            encode_member(m) for m in packet.members
        )
    raise LocalProtocolError(f"not a membership packet: {packet!r}")


def encode_packet(packet: MembershipPacket) -> tuple[int, bytes]:
    """The packet type and the whole body."""
    ptype, head = encode_head(packet)
    if type(packet) is PushPull:
        return ptype, head
    updates: tuple[Update, ...] = packet.updates  # type: ignore[union-attr]
    return ptype, head + updates_section([encode_update(u) for u in updates])


# -- parsing ----------------------------------------------------------------------------


def _bad(what: str) -> MalformedPacket:
    return MalformedPacket(f"membership packet: {what}", reason="body")


class _Reader:
    """A cursor over an untrusted body; every read checks its length."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _bad("truncated")
        raw = self.buf[self.pos : end]
        self.pos = end
        return raw

    def u8(self) -> int:
        if self.pos >= len(self.buf):
            raise _bad("truncated")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        value: int = _U16.unpack(self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def u64(self) -> int:
        value: int = _U64.unpack(self.take(8))[0]
        return value

    def name(self) -> str:
        n = self.u8()
        if n == 0:
            raise _bad("empty name")
        try:
            return self.take(n).decode()
        except UnicodeDecodeError:
            raise _bad("name is not UTF-8") from None

    def address(self) -> Address:
        family = self.u8()
        if family == 4:
            host = str(ipaddress.IPv4Address(self.take(4)))
        elif family == 6:
            host = str(ipaddress.IPv6Address(self.take(16)))
        else:
            raise _bad(f"address family {family}")
        port = self.u16()
        if port == 0:
            raise _bad("port 0")
        return host, port

    def meta(self) -> bytes:
        n = self.u16()
        if n > MAX_METADATA:
            raise _bad(f"{n}-byte metadata")
        return self.take(n)

    def update(self) -> Update:
        kind = self.u8()
        inc = self.u32()
        if kind == _ALIVE:
            return Alive(inc, self.name(), self.address(), self.meta())
        if kind == _SUSPECT:
            return Suspect(inc, self.name(), self.name())
        if kind == _DEAD:
            return Dead(inc, self.name(), self.name())
        if kind == _LEAVE:
            return Leave(inc, self.name())
        raise _bad(f"update kind {kind}")

    def updates(self) -> tuple[Update, ...]:
        n = self.u8()
        return tuple([self.update() for _ in range(n)])

    def member(self) -> MemberState:
        raw = self.u8()
        if raw > State.LEFT:
            raise _bad(f"member state {raw}")
        return MemberState(State(raw), self.u32(), self.name(), self.address(), self.meta())

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise _bad(f"{len(self.buf) - self.pos} trailing bytes")


def parse_untrusted(ptype: int, body: bytes) -> MembershipPacket:
    """Parse the body of a membership packet of type ``ptype`` (from ``open_untrusted``).

    Raises:
        MalformedPacket: unknown type, truncated or overlong body, bad field.
    """
    r = _Reader(body)
    packet: MembershipPacket
    if ptype == PING:
        seq, target, source, digest = r.u32(), r.name(), r.name(), r.u64()
        packet = Ping(seq, target, source, r.updates(), digest)
    elif ptype == ACK:
        packet = Ack(r.u32(), r.updates())
    elif ptype == PING_REQ:
        packet = PingReq(r.u32(), r.name(), r.address(), r.updates())
    elif ptype == NACK:
        packet = Nack(r.u32(), r.updates())
    elif ptype == GOSSIP:
        packet = Gossip(r.updates())
    elif ptype == PUSH_PULL:
        flags = r.u8()
        if flags & ~(_JOIN_FLAG | _REPLY_FLAG):
            raise _bad(f"PushPull flags 0x{flags:02x}")
        n = r.u16()
        # Each entry takes at least 14 bytes: a forged count cannot make us loop for long.
        if n * 14 > len(body):
            raise _bad(f"{n} members in {len(body)} bytes")
        members = tuple([r.member() for _ in range(n)])
        packet = PushPull(bool(flags & _JOIN_FLAG), bool(flags & _REPLY_FLAG), members)
    else:
        raise MalformedPacket(f"unknown membership type 0x{ptype:02x}", reason="type")
    r.end()
    return packet


# -- string tags in the metadata ----------------------------------------------------------


def encode_tags(tags: Mapping[str, str]) -> bytes:
    """String tags as metadata: ``(key len u8 | key | value len u8 | value) *``.

    Raises:
        LocalProtocolError: a key or value longer than 255 UTF-8 bytes, an empty key, or
            more than 512 bytes in all.
    """
    out = bytearray()
    for key, value in tags.items():
        k, v = key.encode(), value.encode()
        if not 1 <= len(k) <= 255 or len(v) > 255:
            raise LocalProtocolError(f"tag {key!r}: key 1..255 bytes, value up to 255 bytes")
        out += bytes((len(k),)) + k + bytes((len(v),)) + v
    if len(out) > MAX_METADATA:
        raise LocalProtocolError(f"tags take {len(out)} bytes, more than {MAX_METADATA}")
    return bytes(out)


def decode_tags_untrusted(meta: bytes) -> dict[str, str]:
    """The tags of :func:`encode_tags`.

    Raises:
        MalformedPacket: the metadata is not a tag list.
    """
    r = _Reader(meta)
    tags: dict[str, str] = {}
    while r.pos < len(meta):
        key = r.name()
        n = r.u8()
        try:
            tags[key] = r.take(n).decode()
        except UnicodeDecodeError:
            raise _bad("tag value is not UTF-8") from None
    return tags
