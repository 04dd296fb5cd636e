"""What a sans-IO engine hands back to its runtime: datagrams to send and events.

Engines (the native push-pull engine, the go-gossip compatibility engine) share these shapes,
so one thin runtime can drive either.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs

from gossip.transport.base import Address

__all__ = ["Event", "MessageDelivered", "Outgoing", "PacketDropped", "SansIOEngine"]


@attrs.frozen(slots=True)
class Outgoing:
    """One encoded datagram and the peers it goes to (a fan-out shares one encryption)."""

    data: bytes
    addrs: tuple[Address, ...]


@attrs.frozen(slots=True)
class MessageDelivered:
    """A message reached this node for the first time.

    Attributes:
        key: the message's random id.
        data: the application payload.
        origin: the peer this node received it from (``None`` for a local push).
        at: protocol time (the engine's ``now``) of arrival.
    """

    key: bytes
    data: bytes
    origin: Address | None
    at: float


@attrs.frozen(slots=True)
class PacketDropped:
    """A datagram was refused; ``reason`` is a short stable tag (``malformed``, ``decrypt``,
    ``replay``, ``oversize`` ...) that keys the dropped-packet counters."""

    reason: str
    addr: Address


Event = MessageDelivered | PacketDropped


class SansIOEngine(Protocol):
    """What the trio runtime drives: any engine with these methods (the native
    :class:`~gossip.protocol.GossipEngine`, the go-gossip compatibility engine)."""

    #: ``False`` while the application's queue is full: take no new message now.
    accepting: bool

    def push(self, data: bytes, now: float) -> bytes: ...
    def can_push(self, size: int, now: float) -> bool: ...
    def receive(self, datagram: bytes, addr: Address, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def datagrams_to_send(self) -> list[Outgoing]: ...
    def pop_events(self) -> list[Event]: ...
    def get_timer(self) -> float | None: ...
    def statistics(self) -> Any: ...
