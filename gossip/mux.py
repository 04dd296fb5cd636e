"""Several sans-IO engines behind one node: one port, one codec, one timer.

::

    datagram --> type byte --> owner engine --> receive()      (no owner: dropped, "type")
    timer    --> every engine whose get_timer() is due --> handle_timer()
    flush    <-- every engine's datagrams_to_send() and pop_events()

The mux reads one byte of the label to route; the owner opens the seal with the node's shared
codec (one keyring, one replay guard), so a broadcast duplicate is still dropped before any
crypto. It is itself sans-IO and has the shape of an engine, so the runtime drives a node of
one engine and a node of five the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import attrs

from gossip.engine import Engine
from gossip.errors import LocalProtocolError
from gossip.events import Outgoing, PacketDropped
from gossip.transport.base import Address
from gossip.wire import PACKET_RANGES

__all__ = ["Mux", "MuxStatistics"]

_ALL_TYPES: Final = range(256)


@attrs.frozen
class MuxStatistics:
    """Datagrams no engine of the node owns, by reason (``type``, ``truncated``)."""

    dropped: dict[str, int]


class Mux:
    """Route datagrams to ``engines`` by packet type; merge their timers and output.

    Raises:
        LocalProtocolError: no engine, two engines claiming one type, a range outside
            :data:`~gossip.wire.PACKET_RANGES`, or an engine owning every type byte (a
            foreign wire format) next to another engine.
    """

    def __init__(self, engines: Sequence[Engine[Any]]) -> None:
        if not engines:
            raise LocalProtocolError("a node needs at least one engine")
        table: list[Engine[Any] | None] = [None] * 256
        for engine in engines:
            types = engine.packet_types
            if types == _ALL_TYPES:
                if len(engines) > 1:
                    raise LocalProtocolError(
                        f"{type(engine).__name__} owns every packet type: it runs alone"
                    )
            elif not any(
                types.start >= r.start and types.stop <= r.stop for r in PACKET_RANGES.values()
            ):
                raise LocalProtocolError(
                    f"{type(engine).__name__}'s packet types {types} are not inside one "
                    f"reserved range ({dict(PACKET_RANGES)})"
                )
            for t in types:
                if table[t] is not None:
                    raise LocalProtocolError(
                        f"packet type 0x{t:02x} claimed by {type(table[t]).__name__} "
                        f"and {type(engine).__name__}"
                    )
                table[t] = engine
        self.engines: tuple[Engine[Any], ...] = tuple(engines)
        self._table = table
        # One engine (every node today): its own methods, no loop over a tuple per call.
        self._single = engines[0] if len(engines) == 1 else None
        #: The node's only engine, or ``None`` when there are several: a runtime may call its
        #: ``get_timer`` and ``datagrams_to_send`` directly (the mux adds nothing to them).
        self.single = self._single
        self._dropped: dict[str, int] = {}
        self._events: list[object] = []

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """Hand ``datagram`` to the engine owning its type byte (label byte 1)."""
        if len(datagram) < 2:
            self._drop("truncated", addr)
            return
        owner = self._table[datagram[1]]
        if owner is None:
            self._drop("type", addr)
            return
        owner.receive(datagram, addr, now)

    def handle_timer(self, now: float) -> None:
        """Run the timers of every engine that is due."""
        for engine in self.engines:
            due = engine.get_timer()
            if due is not None and due <= now:
                engine.handle_timer(now)

    def get_timer(self) -> float | None:
        """The earliest timer of any engine."""
        single = self._single
        if single is not None:
            return single.get_timer()
        earliest: float | None = None
        for engine in self.engines:
            due = engine.get_timer()
            if due is not None and (earliest is None or due < earliest):
                earliest = due
        return earliest

    def datagrams_to_send(self) -> Sequence[Outgoing]:
        """Every engine's pending datagrams."""
        single = self._single
        if single is not None:
            return single.datagrams_to_send()
        out: list[Outgoing] = []
        for engine in self.engines:
            out.extend(engine.datagrams_to_send())
        return out

    def pop_events(self) -> Sequence[object]:
        """Every engine's events, and the mux's own drops."""
        events = self._events
        single = self._single
        if single is not None and not events:
            return single.pop_events()
        self._events = []
        for engine in self.engines:
            events.extend(engine.pop_events())
        return events

    def statistics(self) -> MuxStatistics:
        """A snapshot of the mux's counters (the engines keep their own)."""
        return MuxStatistics(dropped=dict(self._dropped))

    def _drop(self, reason: str, addr: Address) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        self._events.append(PacketDropped(reason, addr))
