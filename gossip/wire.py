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

A message key is 16 bytes: the origin's clock in milliseconds (6 bytes) and 80 random bits from
:mod:`secrets`. The random part makes keys unpredictable (go-gossip's time-seeded keys were not)
and unique (two keys collide only if made in the same millisecond *and* their 80 random bits
match). The time part gives every message an age that every node can read, so nodes refuse,
stop advertising and forget a message after a TTL: the set of seen keys is bounded, and a message
can never be delivered twice after its key was forgotten.

Everything that parses bytes from the network is named ``*_untrusted`` and raises only
:class:`~gossip.errors.MalformedPacket` or :class:`~gossip.errors.DecryptError`.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Callable
from enum import IntEnum
from typing import Any, Final

import attrs

from gossip.crypto import TAG_SIZE, Keyring, ReplayGuard, sealed_size
from gossip.errors import DecryptError, LocalProtocolError, MalformedPacket, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_DATAGRAM",
    "LABEL_SIZE",
    "MAGIC_VERSION",
    "MAX_DATAGRAM_LIMIT",
    "MESSAGE_KEY_SIZE",
    "MIN_DATAGRAM_LIMIT",
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
    "peek_message_key",
]

MAGIC_VERSION: Final = 0xA1
MESSAGE_KEY_SIZE: Final = 16
_LABEL: Final = struct.Struct(">BBBIQ")
LABEL_SIZE: Final = _LABEL.size
_pack_label: Final = _LABEL.pack
_unpack_label: Final = _LABEL.unpack_from
#: 1400 bytes: fits a 1500-byte Ethernet MTU with IPv6 + UDP headers, so no IP fragmentation.
DEFAULT_MAX_DATAGRAM: Final = 1400
#: The largest UDP payload over IPv4.
MAX_DATAGRAM_LIMIT: Final = 65507
MIN_DATAGRAM_LIMIT: Final = 128


class PacketType(IntEnum):
    """Packet type byte, numbered as the design card numbers them."""

    PUSH_MESSAGE = 0x01
    PUSH_ACK = 0x02
    PULL_SYNC = 0x03
    PULL_REQUEST = 0x04
    PULL_RESPONSE = 0x05


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


def new_message_key(timestamp_ms: int | None = None) -> bytes:
    """A fresh message key: ``timestamp_ms`` (default: now) in 6 bytes + 10 random bytes."""
    if timestamp_ms is None:
        timestamp_ms = time.time_ns() // 1_000_000
    return (timestamp_ms & 0xFFFF_FFFF_FFFF).to_bytes(6, "big") + secrets.token_bytes(10)


def key_timestamp_ms(key: bytes) -> int:
    """The origin's clock, in ms since the epoch, when the message with ``key`` was made."""
    return int.from_bytes(key[:6], "big")


def _check_key(key: object) -> None:
    if type(key) is not bytes or len(key) != MESSAGE_KEY_SIZE:
        raise LocalProtocolError(f"a message key is exactly {MESSAGE_KEY_SIZE} bytes")


# Encoders and parsers are dispatched through tables (type -> function, type byte -> function):
# one dict lookup instead of a chain of isinstance tests on the per-packet path.
def _encode_message(packet: PushMessage | PullResponse) -> bytes:
    _check_key(packet.key)
    if type(packet.data) is not bytes:
        raise LocalProtocolError("message data must be bytes")
    return packet.key + packet.data


def _encode_ack(packet: PushAck) -> bytes:
    _check_key(packet.key)
    return packet.key


def _encode_keys(packet: PullSync | PullRequest) -> bytes:
    if not packet.keys:
        raise LocalProtocolError(f"{type(packet).__name__} needs at least one key")
    for key in packet.keys:
        _check_key(key)
    return b"".join(packet.keys)


_ENCODERS: Final[dict[type, tuple[int, Callable[[Any], bytes]]]] = {
    PushMessage: (PacketType.PUSH_MESSAGE, _encode_message),
    PushAck: (PacketType.PUSH_ACK, _encode_ack),
    PullSync: (PacketType.PULL_SYNC, _encode_keys),
    PullRequest: (PacketType.PULL_REQUEST, _encode_keys),
    PullResponse: (PacketType.PULL_RESPONSE, _encode_message),
}


def _split_keys(buf: bytes, off: int) -> tuple[bytes, ...]:
    n = len(buf) - off
    if n <= 0 or n % MESSAGE_KEY_SIZE:
        raise MalformedPacket("key list length is not a positive multiple of 16", reason="body")
    return tuple([buf[i : i + MESSAGE_KEY_SIZE] for i in range(off, len(buf), MESSAGE_KEY_SIZE)])


# Parsers read the body at ``buf[off:]`` without slicing it out first: one copy fewer of the
# payload per packet.
def _parse_push(buf: bytes, off: int) -> Packet:
    if len(buf) - off < MESSAGE_KEY_SIZE:
        raise MalformedPacket("message body shorter than its key", reason="body")
    return PushMessage(buf[off : off + MESSAGE_KEY_SIZE], buf[off + MESSAGE_KEY_SIZE :])


def _parse_ack(buf: bytes, off: int) -> Packet:
    if len(buf) - off != MESSAGE_KEY_SIZE:
        raise MalformedPacket("PushAck body is not one key", reason="body")
    return PushAck(buf[off:])


def _parse_sync(buf: bytes, off: int) -> Packet:
    return PullSync(_split_keys(buf, off))


def _parse_request(buf: bytes, off: int) -> Packet:
    return PullRequest(_split_keys(buf, off))


def _parse_response(buf: bytes, off: int) -> Packet:
    if len(buf) - off < MESSAGE_KEY_SIZE:
        raise MalformedPacket("message body shorter than its key", reason="body")
    return PullResponse(buf[off : off + MESSAGE_KEY_SIZE], buf[off + MESSAGE_KEY_SIZE :])


_WITH_DATA: Final = (PacketType.PUSH_MESSAGE, PacketType.PULL_RESPONSE)
_MESSAGE_HEADER: Final = LABEL_SIZE + MESSAGE_KEY_SIZE


def peek_message_key(datagram: bytes) -> bytes | None:
    """The message key of a PushMessage or PullResponse datagram, or ``None``.

    Read *without* authentication: use it only to drop a datagram early (a duplicate), never
    to accept one. Plain or sealed, the key sits right after the label.
    """
    if (
        len(datagram) >= _MESSAGE_HEADER
        and datagram[0] == MAGIC_VERSION
        and datagram[1] in _WITH_DATA
    ):
        return datagram[LABEL_SIZE:_MESSAGE_HEADER]
    return None


# Indexed by the type byte; index 0 is never used (type 0 is refused before the lookup).
_PARSERS: Final[tuple[Callable[[bytes, int], Packet], ...]] = (
    _parse_push,
    _parse_push,
    _parse_ack,
    _parse_sync,
    _parse_request,
    _parse_response,
)


class Codec:
    """Encodes packets into datagrams and decodes untrusted datagrams, for one node.

    Args:
        keyring: the cluster keys; ``None`` sends and accepts plain text only. A codec with a
            keyring refuses plain text and unknown key ids: there is no downgrade.
        max_datagram: the largest datagram sent or accepted (128..65507, default 1400).
        replay: the replay guard for sealed packets (default: 60 s window). Plain-text packets
            cannot be authenticated, so they get no replay protection.
        clock_offset: added to ``now`` to get Unix time for label timestamps; lets a runtime
            whose clock is monotonic (trio's) keep wall-clock timestamps on the wire.
    """

    __slots__ = (
        "_enc",
        "_keyring",
        "_max_body",
        "_replay",
        "clock_offset",
        "max_datagram",
    )

    def __init__(
        self,
        keyring: Keyring | None = None,
        *,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
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
        self._keyring = keyring
        self._enc = int(Encryption.NONE if keyring is None else Encryption.AES_256_CBC_HMAC_SHA256)
        self._replay = replay if replay is not None or keyring is None else ReplayGuard()
        self.max_datagram = max_datagram
        self.clock_offset = clock_offset
        room = max_datagram - LABEL_SIZE
        # Sealed: IV + tag, and ciphertext in whole blocks with at least one byte of padding.
        self._max_body = room if keyring is None else (room - 2 * TAG_SIZE) // 16 * 16 - 1

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

    def max_body(self) -> int:
        """The largest body that fits in ``max_datagram``."""
        return self._max_body

    def max_payload(self) -> int:
        """The largest application payload a :class:`PushMessage` can carry."""
        return self._max_body - MESSAGE_KEY_SIZE

    def max_keys(self) -> int:
        """How many keys fit in one :class:`PullSync` or :class:`PullRequest`."""
        return self._max_body // MESSAGE_KEY_SIZE

    def encode(self, packet: Packet, now: float) -> bytes:
        """Encode (and seal, with a keyring) ``packet`` stamped with time ``now``.

        Raises:
            LocalProtocolError: the packet is malformed or does not fit ``max_datagram``.
        """
        try:
            ptype, encoder = _ENCODERS[type(packet)]
        except KeyError:
            raise LocalProtocolError(f"not a packet: {packet!r}") from None
        body = encoder(packet)
        if len(body) > self._max_body:
            raise LocalProtocolError(
                f"{type(packet).__name__} body of {len(body)} bytes does not fit in a "
                f"{self.max_datagram}-byte datagram (largest payload: {self.max_payload()} bytes)"
            )
        ts = int((now + self.clock_offset) * 1000)
        keyring = self._keyring
        if keyring is None:
            return _pack_label(MAGIC_VERSION, ptype, 0, 0, ts) + body
        primary = keyring.primary
        label = _pack_label(MAGIC_VERSION, ptype, self._enc, primary.key_id, ts)
        if isinstance(packet, PushMessage | PullResponse):
            # The message key travels in the authenticated clear header (like AEAD associated
            # data) so that a receiver drops a duplicate before any crypto; same size either way.
            return primary.seal(label + packet.key, packet.data)
        return primary.seal(label, body)

    def encode_message(self, ptype: int, key: bytes, data: bytes, now: float) -> bytes:
        """Fast path of :meth:`encode` for a PushMessage (``ptype`` 1) or PullResponse (5)
        whose key and size the caller already guarantees (the engine's own messages: it
        checked the payload at push time, or received it in a datagram of the same limit)."""
        ts = int((now + self.clock_offset) * 1000)
        keyring = self._keyring
        if keyring is None:
            return _pack_label(MAGIC_VERSION, ptype, 0, 0, ts) + key + data
        primary = keyring.primary
        return primary.seal(
            _pack_label(MAGIC_VERSION, ptype, self._enc, primary.key_id, ts) + key, data
        )

    def encode_ack(self, key: bytes, now: float) -> bytes:
        """Fast path of :meth:`encode` for a PushAck of a valid key."""
        ts = int((now + self.clock_offset) * 1000)
        keyring = self._keyring
        if keyring is None:
            return _pack_label(MAGIC_VERSION, PacketType.PUSH_ACK, 0, 0, ts) + key
        primary = keyring.primary
        label = _pack_label(MAGIC_VERSION, PacketType.PUSH_ACK, self._enc, primary.key_id, ts)
        return primary.seal(label, key)

    def decode_untrusted(self, datagram: bytes, now: float) -> Packet:
        """Check, authenticate and parse a datagram from the network.

        Raises:
            MalformedPacket: truncated, oversized, wrong magic/version, unknown type, bad body.
            DecryptError: encryption type not ours, unknown key id, bad MAC or padding, stale
                or replayed.
        """
        n = len(datagram)
        if n < LABEL_SIZE or n > self.max_datagram:
            raise self._label_error(datagram)
        magic, ptype, enc, key_id, ts = _unpack_label(datagram)
        # One combined test on the per-packet path; the slow path names the reason.
        if magic != MAGIC_VERSION or not 1 <= ptype <= 5 or enc != self._enc:
            raise self._label_error(datagram)
        parse: Callable[[bytes, int], Packet] = _PARSERS[ptype]
        keyring = self._keyring
        if keyring is None:
            if key_id:
                raise MalformedPacket("plain-text label carries a key id", reason="label")
            return parse(datagram, LABEL_SIZE)
        key = keyring.get(key_id)
        if key is None:
            raise DecryptError(f"unknown key id 0x{key_id:08x}", reason="unknown-key")
        with_key = ptype in _WITH_DATA
        body = key.open_untrusted(datagram, _MESSAGE_HEADER if with_key else LABEL_SIZE)
        assert self._replay is not None
        # After the MAC check only: forgers cannot fill the replay table.
        self._replay.check(datagram[-TAG_SIZE:], ts, int((now + self.clock_offset) * 1000))
        if with_key:
            msg_key = datagram[LABEL_SIZE:_MESSAGE_HEADER]
            if ptype == PacketType.PUSH_MESSAGE:
                return PushMessage(msg_key, body)
            return PullResponse(msg_key, body)
        return parse(body, 0)

    def _label_error(self, datagram: bytes) -> RemoteProtocolError:
        n = len(datagram)
        if n < LABEL_SIZE:
            return MalformedPacket(f"{n}-byte datagram is shorter than a label", reason="truncated")
        if n > self.max_datagram:
            return MalformedPacket(f"{n}-byte datagram exceeds the limit", reason="oversize")
        magic, ptype, enc = datagram[0], datagram[1], datagram[2]
        if magic != MAGIC_VERSION:
            return MalformedPacket(f"unknown magic/version 0x{magic:02x}", reason="version")
        if not 1 <= ptype <= 5:
            return MalformedPacket(f"unknown packet type 0x{ptype:02x}", reason="type")
        # No downgrade: an encrypted node never reads plain text, and vice versa.
        return DecryptError(f"encryption type 0x{enc:02x} refused", reason="encryption")


_PLAIN: Final = Codec(max_datagram=MAX_DATAGRAM_LIMIT)


def encode(packet: Packet, now: float = 0.0) -> bytes:
    """Encode ``packet`` as a plain-text datagram (no size limit but UDP's); see :class:`Codec`."""
    return _PLAIN.encode(packet, now)


def decode_untrusted(datagram: bytes) -> Packet:
    """Parse a plain-text datagram; raises only ``MalformedPacket``/``DecryptError``."""
    return _PLAIN.decode_untrusted(datagram, 0.0)
