"""What a sans-IO engine hands back to its runtime: datagrams to send and events.

Engines (the native push-pull engine, the go-gossip compatibility engine) share these shapes,
so one thin runtime can drive either.
"""

from __future__ import annotations

import attrs

from gossip.transport.base import Address

__all__ = ["Event", "MessageDelivered", "Outgoing", "PacketDropped"]


@attrs.frozen(slots=True)
class Outgoing:
    """One encoded datagram and the peers it goes to (a fan-out shares one encryption).

    Attributes:
        data: the datagram.
        addrs: its destinations.
        kind: what it is, in the engine's words, for counters and traces (a simulator, a
            tracer), so that nobody peeks at wire bytes the engine already understood. The
            broadcast engine: ``push``, ``ack``, ``sync`` (a PullSync: a push round's pull
            fallback or a reverse sync), ``digest`` (the PullSync of a periodic anti-entropy
            round), ``request``, ``response``; the go-gossip engine: ``request``,
            ``response``. ``""``: not said. The runtime does not read it.
        reliable: it must not be lost (a full-state transfer, a membership verdict): the
            runtime sends it on the node's stream transport when it has one, as it does any
            datagram larger than the datagram transport's limit.
    """

    data: bytes
    addrs: tuple[Address, ...]
    kind: str = ""
    reliable: bool = False


@attrs.frozen(slots=True)
class MessageDelivered:
    """A message reached this node for the first time.

    Attributes:
        key: the message's random id.
        data: the application payload.
        sender: the peer this node received it from, the previous hop (``None`` for a local
            push). Not the publisher: a message carries no origin address on the wire.
        at: protocol time (the engine's ``now``) of arrival.
    """

    key: bytes
    data: bytes
    sender: Address | None
    at: float


@attrs.frozen(slots=True)
class PacketDropped:
    """A datagram was refused; ``reason`` is a short stable tag (``malformed``, ``decrypt``,
    ``replay``, ``oversize`` ...) that keys the dropped-packet counters."""

    reason: str
    addr: Address


#: The broadcast engine's events. The set is open: every engine may define its own (a
#: membership change, a store update); the runtime hands them out by type.
Event = MessageDelivered | PacketDropped
