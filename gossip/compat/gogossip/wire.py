"""The go-gossip (HEAD, pull-only) wire format: packets, encoding and untrusted decoding.

One datagram carries one packet::

    +---------+---------+------------------------------------------+
    | type u8 | enc u8  | body: Go encoding/json of the packet     |
    +---------+---------+------------------------------------------+
    type 0x01 PullRequest   body {}
    type 0x02 PullResponse  body {"Keys":[[k0,...,k7],...],"Values":["<base64>",...]}
    enc  0x00 none          body as is
    enc  0x01 AES-256-CBC   body encrypted by LegacyGoGossipCipher (fixed IV, PKCS#7)

There is no length, version, magic, checksum, sender id or nonce, and the label is not
encrypted. ``Keys[i]`` pairs with ``Values[i]``; a key is 8 bytes written as a JSON array of
numbers, a value is padded standard base64. Go writes no whitespace; :func:`encode` produces
the same bytes as Go's ``json.Marshal``. :func:`decode_untrusted` accepts what Go's
``json.Unmarshal`` accepts (see :mod:`gossip.compat.gogossip._json`) and nothing else, and raises
only :class:`~gossip.errors.MalformedPacket` or :class:`~gossip.errors.DecryptError`.

Where we are stricter than Go (none of it is reachable by a conforming go-gossip sender):

- a datagram whose ``enc`` byte is not the configured one is refused (Go decodes with the
  peer's ``enc`` byte, so an encrypted Go node answers plaintext, flaw 3);
- a PullResponse whose ``Keys`` and ``Values`` differ in length is refused (Go panics, flaw 2);
- a PullRequest body must be what ``json.Unmarshal`` into an empty struct accepts (an
  object or ``null``); Go never reads it;
- PKCS#7 padding is checked in full (flaw 7), and an empty or unaligned ciphertext is an
  error rather than a panic (flaw 1);
- a datagram longer than :data:`MAX_DATAGRAM_SIZE` is refused before any parsing.
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Final

import attrs

from gossip.compat.gogossip._json import decode_pull_request_body, decode_pull_response_body
from gossip.compat.gogossip.cipher import LegacyGoGossipCipher
from gossip.errors import DecryptError, LocalProtocolError, MalformedPacket

__all__ = [
    "CACHE_SIZE",
    "CHUNK_BUDGET",
    "ENC_AES256_CBC",
    "ENC_NONE",
    "GOSSIP_NUMBER",
    "GoGossipPacket",
    "ITEM_OVERHEAD",
    "KEY_SIZE",
    "MAX_DATAGRAM_SIZE",
    "MAX_VALUE_SIZE",
    "PULL_INTERVAL",
    "PULL_REQUEST_TYPE",
    "PULL_RESPONSE_TYPE",
    "PullRequest",
    "PullResponse",
    "chunk_items",
    "decode_untrusted",
    "encode",
    "encode_body",
]

PULL_REQUEST_TYPE: Final = 0x01
PULL_RESPONSE_TYPE: Final = 0x02
ENC_NONE: Final = 0x00
ENC_AES256_CBC: Final = 0x01

#: A message key: 8 bytes (Go's ``[8]byte``).
KEY_SIZE: Final = 8
#: Go packs a PullResponse while the running total of item costs stays below this.
CHUNK_BUDGET: Final = 4095
#: What Go counts for one item besides its value: the 8-byte key.
ITEM_OVERHEAD: Final = KEY_SIZE
#: The largest value a go-gossip responder can send: ``8 + 4086 < 4095``. A larger value
#: never fits a chunk; Go then loops forever (flaw 11). We refuse to push one and drop a
#: datagram that carries one (no conforming Go node can have sent it).
MAX_VALUE_SIZE: Final = CHUNK_BUDGET - ITEM_OVERHEAD - 1
#: The longest datagram a conforming sender produces is a chunk of 511 empty values under
#: keys of three-digit bytes: 511 * 39 + 21 = 19,950 bytes of JSON, 19,952 once padded for
#: AES, plus the 2-byte label. Anything longer is refused before it is parsed, which bounds
#: the parser's work per datagram.
MAX_DATAGRAM_SIZE: Final = 20 * 1024
#: Go's pull ticker: one PullRequest round every 200 ms.
PULL_INTERVAL: Final = 0.2
#: Go's default number of peers per PullRequest round (its configured minimum, too).
GOSSIP_NUMBER: Final = 2
#: Go's LRU cache of messages to serve.
CACHE_SIZE: Final = 512

_LABEL_SIZE: Final = 2


@attrs.frozen(slots=True)
class PullRequest:
    """ "Send me everything you have" (type 0x01, body ``{}``)."""


_Items = tuple[tuple[bytes, bytes], ...]


def _check_items(instance: PullResponse, attribute: attrs.Attribute[_Items], items: _Items) -> None:
    for key, _value in items:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"a go-gossip key is {KEY_SIZE} bytes, not {len(key)}")


@attrs.frozen(slots=True)
class PullResponse:
    """Some cached messages (type 0x02), as ``(key, value)`` pairs in Go's order.

    Attributes:
        items: ``(key, value)`` pairs; each key is 8 bytes.

    Raises:
        LocalProtocolError: a key that is not 8 bytes.
    """

    items: _Items = attrs.field(default=(), validator=_check_items)


GoGossipPacket = PullRequest | PullResponse


def encode_body(packet: GoGossipPacket) -> bytes:
    """The JSON body exactly as Go's ``json.Marshal`` writes it.

    Keys are arrays of eight decimal numbers, values padded standard base64 (an empty value
    is ``""``, as Go writes an empty non-nil slice). An empty PullResponse is written with
    empty lists; the engine never sends one.
    """
    if isinstance(packet, PullRequest):
        return b"{}"
    keys = b",".join(b"[%d,%d,%d,%d,%d,%d,%d,%d]" % tuple(key) for key, _ in packet.items)
    values = b",".join(
        b'"' + binascii.b2a_base64(value, newline=False) + b'"' for _, value in packet.items
    )
    return b'{"Keys":[' + keys + b'],"Values":[' + values + b"]}"


def encode(packet: GoGossipPacket, cipher: LegacyGoGossipCipher | None = None) -> bytes:
    """Encode one datagram: ``[type][enc][body]``, the body encrypted when a cipher is given.

    Args:
        packet: what to send.
        cipher: the legacy cipher of an encrypted cluster, or ``None`` for plaintext.

    Returns:
        The datagram.
    """
    body = encode_body(packet)
    kind = PULL_REQUEST_TYPE if isinstance(packet, PullRequest) else PULL_RESPONSE_TYPE
    if cipher is None:
        return bytes((kind, ENC_NONE)) + body
    return bytes((kind, cipher.enc_type)) + cipher.encrypt(body)


def decode_untrusted(datagram: bytes, cipher: LegacyGoGossipCipher | None = None) -> GoGossipPacket:
    """Decode one datagram from the network.

    Args:
        datagram: untrusted bytes, as received.
        cipher: the configured cipher, or ``None`` for a plaintext cluster. The datagram's
            ``enc`` byte must match it.

    Returns:
        The packet.

    Raises:
        MalformedPacket: too long (reason ``oversize``), too short, unknown packet type
            (reason ``unknown_type``), unknown ``enc`` byte, a body Go's JSON decoder would
            reject, or ``Keys``/``Values`` of different lengths.
        DecryptError: the ``enc`` byte is not the configured one (reason ``enc_mismatch``),
            or the ciphertext does not decrypt (length, padding).
    """
    if len(datagram) > MAX_DATAGRAM_SIZE:
        raise MalformedPacket(
            f"go-gossip datagram of {len(datagram)} bytes exceeds {MAX_DATAGRAM_SIZE}",
            reason="oversize",
        )
    if len(datagram) < _LABEL_SIZE:
        raise MalformedPacket("go-gossip datagram shorter than its 2-byte label")
    kind, enc = datagram[0], datagram[1]
    if kind not in (PULL_REQUEST_TYPE, PULL_RESPONSE_TYPE):
        raise MalformedPacket(f"unknown go-gossip packet type {kind:#04x}", reason="unknown_type")
    if enc not in (ENC_NONE, ENC_AES256_CBC):
        raise MalformedPacket(f"unknown go-gossip encryption type {enc:#04x}")
    expected = ENC_NONE if cipher is None else cipher.enc_type
    if enc != expected:
        # Go trusts the peer's enc byte (flaw 3); we refuse anything but our own setting,
        # so a plaintext packet can neither read nor write an encrypted node's cache.
        raise DecryptError(
            f"go-gossip encryption type {enc:#04x} is not the configured {expected:#04x}",
            reason="enc_mismatch",
        )
    body = datagram[_LABEL_SIZE:]
    if cipher is not None:
        body = cipher.decrypt_untrusted(body)
    if kind == PULL_REQUEST_TYPE:
        decode_pull_request_body(body)
        return PullRequest()
    keys, values = decode_pull_response_body(body)
    if len(keys) != len(values):
        # Go indexes Values by the Keys index and panics on a mismatch (flaw 2).
        raise MalformedPacket(
            f"go-gossip PullResponse has {len(keys)} keys but {len(values)} values"
        )
    return PullResponse(tuple(zip(keys, values, strict=True)))


def chunk_items(items: Iterable[tuple[bytes, bytes]]) -> list[PullResponse]:
    """Split cached items into PullResponses as a go-gossip responder does.

    Items are taken in the given order (the cache's, oldest first). An item costs
    ``8 + len(value)``; it joins the current chunk while the running total stays below
    :data:`CHUNK_BUDGET` (4095), otherwise it starts the next chunk.

    An item whose cost alone reaches the budget (a value of 4087 bytes or more) is skipped:
    Go loops forever on it (flaw 11), and sending it alone would make every go-gossip node
    that stores it loop the same way when it next answers.

    Returns:
        The chunks, none of them empty; an empty list for no (sendable) items.
    """
    chunks: list[PullResponse] = []
    current: list[tuple[bytes, bytes]] = []
    total = 0
    for key, value in items:
        cost = ITEM_OVERHEAD + len(value)
        if cost >= CHUNK_BUDGET:
            continue
        if total + cost >= CHUNK_BUDGET:
            chunks.append(PullResponse(tuple(current)))
            current, total = [], 0
        current.append((key, value))
        total += cost
    if current:
        chunks.append(PullResponse(tuple(current)))
    return chunks
