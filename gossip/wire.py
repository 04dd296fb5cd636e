"""The bytes on the wire: a 15-byte label, then one of five packets (docs/protocol.md).

::

    0      1      2      3                 7                               15
    +------+------+------+-----------------+-------------------------------+------------
    | 0xA1 | type | enc  | key id (u32 BE) | timestamp, ms since epoch (u64 BE) | body ...
    +------+------+------+-----------------+-------------------------------+------------

``0xA1`` is magic (high nibble 0xA) and version 1 (low nibble). The body is the packet in plain
text (enc 0x00) or sealed by :mod:`gossip.crypto` (enc 0x01: IV | ciphertext | tag, with the
label covered by the MAC). Bodies::

    PushMessage  0x01   key (16) | data
    PushAck      0x02   key (16)
    PullSync     0x03   key (16) * n, n >= 1
    PullRequest  0x04   key (16) * n, n >= 1
    PullResponse 0x05   key (16) | data

A message key is 16 bytes: the publisher's clock in milliseconds (6 bytes) and 80 random bits
(:func:`new_message_key`: from :mod:`secrets`, or from the engine's injected ``random.Random``
in tests and the simulator). The random part makes keys unpredictable (go-gossip's time-seeded
keys were not) and unique (two keys collide only if made in the same millisecond *and* their
80 random bits match). The time part gives every message an age that every node can read, so
nodes refuse, stop advertising and forget a message after a TTL: the set of seen keys is
bounded, and a message can never be delivered twice after its key was forgotten.

Everything that parses bytes from the network is named ``*_untrusted`` and raises only
:class:`~gossip.errors.MalformedPacket` or :class:`~gossip.errors.DecryptError`.
"""

from __future__ import annotations

import math
import random
import secrets
import struct
import time
from collections.abc import Callable, Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Final

import attrs

from gossip.crypto import TAG_SIZE, Keyring, ReplayGuard, sealed_size
from gossip.errors import DecryptError, LocalProtocolError, MalformedPacket, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "LABEL_SIZE",
    "MAGIC_VERSION",
    "MAX_DATAGRAM_LIMIT",
    "MAX_STREAM_PACKET",
    "MESSAGE_KEY_SIZE",
    "MIN_DATAGRAM_LIMIT",
    "PACKET_RANGES",
    "Codec",
    "Encryption",
    "Packet",
    "PacketType",
    "PullRequest",
    "PullResponse",
    "PullSync",
    "PushAck",
    "PushMessage",
    "decode_untrusted",
    "encode",
    "key_timestamp_ms",
    "new_message_key",
    "packet_range",
    "peek_message_key",
]

MAGIC_VERSION: Final = 0xA1
MESSAGE_KEY_SIZE: Final = 16
_LABEL: Final = struct.Struct(">BBBIQ")
LABEL_SIZE: Final = _LABEL.size
_pack_label: Final = _LABEL.pack
# The label and the message key of a PushMessage or PullResponse in one struct: one call
# instead of a (un)pack plus a slice or a concatenation.
_HEADER: Final = struct.Struct(">BBBIQ16s")
_HEADER_SIZE: Final = _HEADER.size
_pack_header: Final = _HEADER.pack
_unpack_header: Final = _HEADER.unpack_from
_trunc: Final = math.trunc  # int() of a float, ~30 ns cheaper
#: 1400 bytes: fits a 1500-byte Ethernet MTU with IPv6 + UDP headers, so no IP fragmentation.
DEFAULT_MAX_DATAGRAM: Final = 1400
#: The largest UDP payload over IPv4.
MAX_DATAGRAM_LIMIT: Final = 65507
MIN_DATAGRAM_LIMIT: Final = 128
#: The largest packet an engine may send on a stream transport (``Codec.seal(..., stream=True)``):
#: a full-state sync, a store's entries. TCP's ``DEFAULT_MAX_FRAME``, 1 MiB.
MAX_STREAM_PACKET: Final = 1 << 20


class PacketType(IntEnum):
    """Packet type byte, numbered as the design card numbers them."""

    PUSH_MESSAGE = 0x01
    PUSH_ACK = 0x02
    PULL_SYNC = 0x03
    PULL_REQUEST = 0x04
    PULL_RESPONSE = 0x05


#: The packet type byte is shared by every engine of a node: each owns one range, and the
#: runtime routes a datagram to the owner of its type (:mod:`gossip.mux`). A type outside
#: every range is refused as ``type`` before any crypto.
PACKET_RANGES: Final[Mapping[str, range]] = MappingProxyType(
    {
        "broadcast": range(0x01, 0x10),  # the five packets below; 0x06-0x0F reserved
        "membership": range(0x10, 0x20),  # SWIM + Lifeguard (issue 11)
        "kv": range(0x20, 0x30),  # the replicated key-value store (issue 12)
    }
)
#: One flag per type byte: does any range hold it.
_RESERVED: Final = bytes(any(t in r for r in PACKET_RANGES.values()) for t in range(256))

#: The five packets :meth:`Codec.decode_untrusted` reads (the broadcast engine's).
_BROADCAST: Final = bytes(1 <= t <= 5 for t in range(256))


def packet_range(name: str) -> range:
    """The type range reserved for the engine family ``name`` (``broadcast``, ``membership``,
    ``kv``).

    Raises:
        LocalProtocolError: no such family.
    """
    try:
        return PACKET_RANGES[name]
    except KeyError:
        known = ", ".join(PACKET_RANGES)
        raise LocalProtocolError(f"no packet range {name!r} (known: {known})") from None


class Encryption(IntEnum):
    """Encryption type byte."""

    NONE = 0x00
    AES_256_CBC_HMAC_SHA256 = 0x01


@attrs.frozen(slots=True)
class PushMessage:
    """A new message pushed to a peer; answered by :class:`PushAck` if it was news."""

    key: bytes
    data: bytes


@attrs.frozen(slots=True)
class PushAck:
    """ "I did not have ``key``, now I do": counted by the pusher towards its majority."""

    key: bytes


@attrs.frozen(slots=True)
class PullSync:
    """A digest: "I have these keys". A peer missing any answers :class:`PullRequest`."""

    keys: tuple[bytes, ...]


@attrs.frozen(slots=True)
class PullRequest:
    """ "Send me these keys", answered by one :class:`PullResponse` per key held."""

    keys: tuple[bytes, ...]


@attrs.frozen(slots=True)
class PullResponse:
    """A message sent because a peer asked for it."""

    key: bytes
    data: bytes


Packet = PushMessage | PushAck | PullSync | PullRequest | PullResponse


def new_message_key(timestamp_ms: int | None = None, rng: random.Random | None = None) -> bytes:
    """A fresh message key: ``timestamp_ms`` in 6 bytes + 80 random bits.

    Engines pass both: ``timestamp_ms`` from the runtime's clock (``now`` plus its offset to
    Unix time; the default, the system clock, is for callers outside an engine), and their
    injected ``rng``, so that a seeded run (tests, the simulator) makes the same keys every
    time. Without an ``rng`` the bits come from :mod:`secrets`, and that is the default on
    purpose: keys travel in the clear (authenticated) part of a packet. Integrity does not
    need them unpredictable (the MAC gives it), but a plain-text cluster does: whoever can
    predict the next key can publish under it first, and the real message is then dropped as
    a duplicate. A seeded ``random.Random`` is for tests and the simulator.
    """
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    bits = secrets.randbits(80) if rng is None else rng.getrandbits(80)
    return ((timestamp_ms & 0xFFFF_FFFF_FFFF) << 80 | bits).to_bytes(MESSAGE_KEY_SIZE, "big")


def key_timestamp_ms(key: bytes) -> int:
    """The publisher's clock, in ms since the epoch, when the message with ``key`` was made."""
    return int.from_bytes(key[:6], "big")


def _bad_key() -> LocalProtocolError:
    return LocalProtocolError(f"a message key is exactly {MESSAGE_KEY_SIZE} bytes")


# The decoder builds packets without __init__: a frozen attrs __init__ sets each field through
# object.__setattr__, while object.__new__ plus the slot descriptors' __set__ cost ~40% less
# (measured). Sound only while the classes have no validators, converters or defaults to run
# (tests/test_wire.py checks that): the decoder has checked every length itself.
_new: Final = object.__new__
_Setter = Callable[[object, object], None]


def _slot_setter(cls: type, name: str) -> _Setter:
    setter: _Setter = vars(cls)[name].__set__
    return setter


_set_ack_key: Final = _slot_setter(PushAck, "key")
_set_sync_keys: Final = _slot_setter(PullSync, "keys")
_set_request_keys: Final = _slot_setter(PullRequest, "keys")

_PUSH_MESSAGE: Final = int(PacketType.PUSH_MESSAGE)
_PUSH_ACK: Final = int(PacketType.PUSH_ACK)
_PULL_SYNC: Final = int(PacketType.PULL_SYNC)
_PULL_REQUEST: Final = int(PacketType.PULL_REQUEST)
_PULL_RESPONSE: Final = int(PacketType.PULL_RESPONSE)

# PushMessage and PullResponse by type byte, with their slot setters (key, data): the decoder
# builds them inline. None: a packet whose body is all keys, read by a _PARSERS entry.
_MESSAGES: Final[tuple[tuple[type[PushMessage | PullResponse], _Setter, _Setter] | None, ...]] = (
    None,
    (PushMessage, _slot_setter(PushMessage, "key"), _slot_setter(PushMessage, "data")),
    None,
    None,
    None,
    (PullResponse, _slot_setter(PullResponse, "key"), _slot_setter(PullResponse, "data")),
)


def _split_keys(buf: bytes, off: int) -> tuple[bytes, ...]:
    n = len(buf) - off
    if n <= 0 or n % MESSAGE_KEY_SIZE:
        raise MalformedPacket("key list length is not a positive multiple of 16", reason="body")
    return tuple([buf[i : i + MESSAGE_KEY_SIZE] for i in range(off, len(buf), MESSAGE_KEY_SIZE)])


# Parsers read the body at ``buf[off:]`` without slicing it out first: one copy fewer per packet.
def _parse_ack(buf: bytes, off: int) -> Packet:
    if len(buf) - off != MESSAGE_KEY_SIZE:
        raise MalformedPacket("PushAck body is not one key", reason="body")
    packet: PushAck = _new(PushAck)
    _set_ack_key(packet, buf[off:])
    return packet


def _parse_sync(buf: bytes, off: int) -> Packet:
    packet: PullSync = _new(PullSync)
    _set_sync_keys(packet, _split_keys(buf, off))
    return packet


def _parse_request(buf: bytes, off: int) -> Packet:
    packet: PullRequest = _new(PullRequest)
    _set_request_keys(packet, _split_keys(buf, off))
    return packet


_PARSERS: Final[dict[int, Callable[[bytes, int], Packet]]] = {
    _PUSH_ACK: _parse_ack,
    _PULL_SYNC: _parse_sync,
    _PULL_REQUEST: _parse_request,
}


def peek_message_key(datagram: bytes) -> bytes | None:
    """The message key of a PushMessage or PullResponse datagram, or ``None``.

    Read *without* authentication: use it only to drop a datagram early (a duplicate), never
    to accept one. Plain or sealed, the key sits right after the label.
    """
    if (
        len(datagram) >= _HEADER_SIZE
        and datagram[0] == MAGIC_VERSION
        and (datagram[1] == _PUSH_MESSAGE or datagram[1] == _PULL_RESPONSE)
    ):
        return datagram[LABEL_SIZE:_HEADER_SIZE]
    return None


class Codec:
    """Encodes packets into datagrams and decodes untrusted datagrams, for one node.

    Args:
        keyring: the cluster keys; ``None`` sends and accepts plain text only. A codec with a
            keyring refuses plain text and unknown key ids: there is no downgrade.
        max_datagram: the largest datagram sent or accepted (128..65507, default 1400).
        max_stream: the largest packet an engine seals for a stream transport
            (``seal(..., stream=True)``) and :meth:`open_untrusted` accepts
            (``max_datagram``..1 MiB, default 1 MiB). Broadcast packets keep ``max_datagram``.
        replay: the replay guard for sealed packets (default: 60 s window). Plain-text packets
            cannot be authenticated, so they get no replay protection.
        clock_offset: added to ``now`` to get Unix time for label timestamps; lets a runtime
            whose clock is monotonic (trio's) keep wall-clock timestamps on the wire.
    """

    __slots__ = (
        "_enc",
        "_keyring",
        "_max_body",
        "_max_data",
        "_max_stream_body",
        "_replay",
        "clock_offset",
        "max_datagram",
        "max_stream",
    )

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        max_stream: int = MAX_STREAM_PACKET,
        replay: ReplayGuard | None = None,
        clock_offset: float = 0.0,
    ) -> None:
        if not isinstance(max_datagram, int) or not (
            MIN_DATAGRAM_LIMIT <= max_datagram <= MAX_DATAGRAM_LIMIT
        ):
            raise LocalProtocolError(
                f"max_datagram must be {MIN_DATAGRAM_LIMIT}..{MAX_DATAGRAM_LIMIT}, "
                f"got {max_datagram!r}"
            )
        if not isinstance(max_stream, int) or not (max_datagram <= max_stream <= MAX_STREAM_PACKET):
            raise LocalProtocolError(
                f"max_stream must be max_datagram..{MAX_STREAM_PACKET}, got {max_stream!r}"
            )
        self._keyring = keyring
        self._enc = int(Encryption.NONE if keyring is None else Encryption.AES_256_CBC_HMAC_SHA256)
        self._replay = replay if replay is not None or keyring is None else ReplayGuard()
        self.max_datagram = max_datagram
        self.max_stream = max_stream
        self.clock_offset = clock_offset
        self._max_body = self._room(max_datagram)
        self._max_data = self._max_body - MESSAGE_KEY_SIZE
        self._max_stream_body = self._room(max_stream)

    def _room(self, packet_size: int) -> int:
        """The largest body of a packet of ``packet_size`` bytes."""
        room = packet_size - LABEL_SIZE
        # Sealed: IV + tag, and ciphertext in whole blocks with at least one byte of padding.
        return room if self._keyring is None else (room - 2 * TAG_SIZE) // 16 * 16 - 1

    @property
    def encrypted(self) -> bool:
        """Whether this codec seals its packets."""
        return self._keyring is not None

    @property
    def keyring(self) -> Keyring | None:
        """The keyring, for rotation (``install`` / ``use`` / ``remove``)."""
        return self._keyring

    def datagram_size(self, body_len: int) -> int:
        """Size of the datagram for a body of ``body_len`` bytes."""
        return LABEL_SIZE + (sealed_size(body_len) if self._keyring is not None else body_len)

    def max_body(self, *, stream: bool = False) -> int:
        """The largest body that fits in ``max_datagram`` (``max_stream`` with ``stream``)."""
        return self._max_stream_body if stream else self._max_body

    def max_payload(self) -> int:
        """The largest application payload a :class:`PushMessage` can carry."""
        return self._max_data

    def max_keys(self) -> int:
        """How many keys fit in one :class:`PullSync` or :class:`PullRequest`."""
        return self._max_body // MESSAGE_KEY_SIZE

    def encode(self, packet: Packet, now: float) -> bytes:
        """Encode (and seal, with a keyring) ``packet`` stamped with time ``now``.

        Raises:
            LocalProtocolError: the packet is malformed or does not fit ``max_datagram``.
        """
        # Type tests, not a dispatch table: for the two message packets (every push and every
        # pull answer) they cost less than a dict lookup, and mypy narrows on them.
        if type(packet) is PushMessage:
            ptype = _PUSH_MESSAGE
        elif type(packet) is PullResponse:
            ptype = _PULL_RESPONSE
        else:
            return self._encode_control(packet, now)
        key, data = packet.key, packet.data
        if type(key) is not bytes or len(key) != MESSAGE_KEY_SIZE:
            raise _bad_key()
        if type(data) is not bytes:
            raise LocalProtocolError("message data must be bytes")
        if len(data) > self._max_data:
            raise self._too_big(packet, MESSAGE_KEY_SIZE + len(data))
        # encode_message() inlined: a call is ~10% of this path.
        ts = _trunc((now + self.clock_offset) * 1000.0)
        keyring = self._keyring
        if keyring is None:
            return _pack_header(MAGIC_VERSION, ptype, 0, 0, ts, key) + data
        primary = keyring.primary
        return primary.seal(
            _pack_header(MAGIC_VERSION, ptype, self._enc, primary.key_id, ts, key), data
        )

    def encode_message(self, ptype: int, key: bytes, data: bytes, now: float) -> bytes:
        """Fast path of :meth:`encode` for a PushMessage (``ptype`` 1) or PullResponse (5)
        whose key and size the caller already guarantees (the engine's own messages: it
        checked the payload at push time, or received it in a datagram of the same limit)."""
        ts = _trunc((now + self.clock_offset) * 1000.0)
        keyring = self._keyring
        if keyring is None:
            return _pack_header(MAGIC_VERSION, ptype, 0, 0, ts, key) + data
        primary = keyring.primary
        # The message key travels in the authenticated clear header (like AEAD associated
        # data) so that a receiver drops a duplicate before any crypto; same size either way.
        return primary.seal(
            _pack_header(MAGIC_VERSION, ptype, self._enc, primary.key_id, ts, key), data
        )

    def seal(self, ptype: int, body: bytes, now: float, *, stream: bool = False) -> bytes:
        """Label ``body`` as packet type ``ptype`` (and seal it, with a keyring): the
        envelope for an engine's own packets (see :data:`PACKET_RANGES`). With ``stream``
        the packet may be up to ``max_stream`` bytes; send it as ``Outgoing(...,
        reliable=True)`` so that the runtime puts it on its stream transport.

        Raises:
            LocalProtocolError: ``ptype`` is in no reserved range, or the packet would
                exceed ``max_datagram`` (``max_stream`` with ``stream``).
        """
        if not (type(ptype) is int and 0 <= ptype < 256 and _RESERVED[ptype]):
            raise LocalProtocolError(f"packet type {ptype!r} is in no reserved range")
        limit = self._max_stream_body if stream else self._max_body
        if len(body) > limit:
            size = self.max_stream if stream else self.max_datagram
            where = "stream packet" if stream else "datagram"
            raise LocalProtocolError(
                f"a {len(body)}-byte body does not fit in a {size}-byte {where} "
                f"(largest body: {limit} bytes)"
            )
        return self._wrap(ptype, body, now)

    def open_untrusted(self, datagram: bytes, now: float) -> tuple[int, bytes]:
        """Check the label of a datagram from the network, authenticate and open it (with a
        keyring; replays are refused), and return its type byte and its body, unparsed: the
        envelope for an engine's own packets. The one replay guard and keyring of the codec
        serve every engine that shares it.

        Packets up to ``max_stream`` bytes pass (what came on a stream transport); an
        engine that expects a packet type only in datagrams checks its length itself.

        Raises:
            MalformedPacket: truncated, oversized, wrong magic/version, type in no range.
            DecryptError: as :meth:`decode_untrusted`.
        """
        n = len(datagram)
        if n < LABEL_SIZE or n > self.max_stream:
            raise self._label_error(datagram, limit=self.max_stream)
        magic, ptype, enc, key_id, ts = _LABEL.unpack_from(datagram)
        if magic != MAGIC_VERSION or not _RESERVED[ptype] or enc != self._enc:
            raise self._label_error(datagram, limit=self.max_stream)
        keyring = self._keyring
        if keyring is None:
            if key_id:
                raise MalformedPacket("plain-text label carries a key id", reason="label")
            return ptype, datagram[LABEL_SIZE:]
        key = keyring.get(key_id)
        if key is None:
            raise DecryptError(f"unknown key id 0x{key_id:08x}", reason="unknown-key")
        if n < _HEADER_SIZE:
            raise DecryptError("sealed body length is not IV + whole blocks", reason="length")
        body = key.open_untrusted(datagram, LABEL_SIZE)
        assert self._replay is not None
        self._replay.check(datagram[-TAG_SIZE:], ts, _trunc((now + self.clock_offset) * 1000.0))
        return ptype, body

    def encode_ack(self, key: bytes, now: float) -> bytes:
        """Fast path of :meth:`encode` for a PushAck of a valid key."""
        return self._wrap(_PUSH_ACK, key, now)

    def _wrap(self, ptype: int, body: bytes, now: float) -> bytes:
        """Label ``body`` (and seal it, with a keyring)."""
        ts = _trunc((now + self.clock_offset) * 1000.0)
        keyring = self._keyring
        if keyring is None:
            return _pack_label(MAGIC_VERSION, ptype, 0, 0, ts) + body
        primary = keyring.primary
        return primary.seal(_pack_label(MAGIC_VERSION, ptype, self._enc, primary.key_id, ts), body)

    def _encode_control(self, packet: Packet, now: float) -> bytes:
        """encode() for PushAck, PullSync and PullRequest (and for what is not a packet)."""
        if type(packet) is PushAck:
            if type(packet.key) is not bytes or len(packet.key) != MESSAGE_KEY_SIZE:
                raise _bad_key()
            return self._wrap(_PUSH_ACK, packet.key, now)
        if type(packet) is PullSync or type(packet) is PullRequest:
            if not packet.keys:
                raise LocalProtocolError(f"{type(packet).__name__} needs at least one key")
            for key in packet.keys:
                if type(key) is not bytes or len(key) != MESSAGE_KEY_SIZE:
                    raise _bad_key()
            body = b"".join(packet.keys)
            if len(body) > self._max_body:
                raise self._too_big(packet, len(body))
            ptype = _PULL_SYNC if type(packet) is PullSync else _PULL_REQUEST
            return self._wrap(ptype, body, now)
        raise LocalProtocolError(f"not a packet: {packet!r}")

    def _too_big(self, packet: Packet, body_len: int) -> LocalProtocolError:
        return LocalProtocolError(
            f"{type(packet).__name__} body of {body_len} bytes does not fit in a "
            f"{self.max_datagram}-byte datagram (largest payload: {self.max_payload()} bytes)"
        )

    def decode_untrusted(self, datagram: bytes, now: float) -> Packet:
        """Check, authenticate and parse a datagram from the network.

        Raises:
            MalformedPacket: truncated, oversized, wrong magic/version, unknown type, bad body.
            DecryptError: encryption type not ours, unknown key id, bad MAC or padding, stale
                or replayed.
        """
        # Combined tests on the per-packet path; _label_error names the reason. Every valid
        # datagram holds a label and 16 bytes more (a key, or at least IV + block + tag).
        n = len(datagram)
        if n < _HEADER_SIZE or n > self.max_datagram:
            raise self._label_error(datagram, _BROADCAST)
        magic, ptype, enc, key_id, ts, msg_key = _unpack_header(datagram)
        if magic != MAGIC_VERSION or not 1 <= ptype <= 5 or enc != self._enc:
            raise self._label_error(datagram, _BROADCAST)
        message = _MESSAGES[ptype]
        keyring = self._keyring
        if keyring is None:
            if key_id:
                raise MalformedPacket("plain-text label carries a key id", reason="label")
            if message is None:
                return _PARSERS[ptype](datagram, LABEL_SIZE)
            data = datagram[_HEADER_SIZE:]
        else:
            key = keyring.get(key_id)
            if key is None:
                raise DecryptError(f"unknown key id 0x{key_id:08x}", reason="unknown-key")
            # A message's key is in the clear header, under the MAC; everything else is sealed.
            data = key.open_untrusted(datagram, LABEL_SIZE if message is None else _HEADER_SIZE)
            assert self._replay is not None
            # After the MAC check only: forgers cannot fill the replay table.
            now_ms = _trunc((now + self.clock_offset) * 1000.0)
            self._replay.check(datagram[-TAG_SIZE:], ts, now_ms)
            if message is None:
                return _PARSERS[ptype](data, 0)
        cls, set_key, set_data = message
        packet: PushMessage | PullResponse = _new(cls)
        set_key(packet, msg_key)
        set_data(packet, data)
        return packet

    def _label_error(
        self, datagram: bytes, known: bytes = _RESERVED, limit: int | None = None
    ) -> RemoteProtocolError:
        n = len(datagram)
        if n < LABEL_SIZE:
            return MalformedPacket(f"{n}-byte datagram is shorter than a label", reason="truncated")
        if n > (self.max_datagram if limit is None else limit):
            return MalformedPacket(f"{n}-byte datagram exceeds the limit", reason="oversize")
        magic, ptype, enc = datagram[0], datagram[1], datagram[2]
        if magic != MAGIC_VERSION:
            return MalformedPacket(f"unknown magic/version 0x{magic:02x}", reason="version")
        if not known[ptype]:
            return MalformedPacket(f"unknown packet type 0x{ptype:02x}", reason="type")
        if enc != self._enc:
            # No downgrade: an encrypted node never reads plain text, and vice versa.
            return DecryptError(f"encryption type 0x{enc:02x} refused", reason="encryption")
        # A good label, but too short for any body: what the full checks would have said.
        key_id = int.from_bytes(datagram[3:7], "big")
        if self._keyring is None:
            if key_id:
                return MalformedPacket("plain-text label carries a key id", reason="label")
            return MalformedPacket(f"{n - LABEL_SIZE}-byte body is too short", reason="body")
        if self._keyring.get(key_id) is None:
            return DecryptError(f"unknown key id 0x{key_id:08x}", reason="unknown-key")
        return DecryptError("sealed body length is not IV + whole blocks", reason="length")


_PLAIN: Final = Codec(max_datagram=MAX_DATAGRAM_LIMIT)


def encode(packet: Packet, now: float = 0.0) -> bytes:
    """Encode ``packet`` as a plain-text datagram (no size limit but UDP's); see :class:`Codec`."""
    return _PLAIN.encode(packet, now)


def decode_untrusted(datagram: bytes) -> Packet:
    """Parse a plain-text datagram; raises only ``MalformedPacket``/``DecryptError``."""
    return _PLAIN.decode_untrusted(datagram, 0.0)
