"""The trio runtime: a thin pump between a transport and a :class:`~gossip.protocol.GossipEngine`.

After every input (a datagram, a push, a timer) it flushes the engine's datagrams to the
transport, hands delivered messages to the application, and re-arms one timer. Two background
tasks (receive loop, timer) live in the nursery of :func:`open_gossiper`.

Delivery never blocks the receive loop (go-gossip's slow consumer made the node deaf): messages
go through a bounded channel, and when it is full the *newest* message is not queued for the
application and ``delivery_overflow`` is counted. The message is still cached, acknowledged and
forwarded, so the rest of the cluster does not suffer for one slow application.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import trio

from gossip.crypto import Keyring
from gossip.discovery.base import Discovery
from gossip.errors import LocalProtocolError
from gossip.events import Event, MessageDelivered, Outgoing, SansIOEngine
from gossip.protocol import GossipConfig, GossipEngine
from gossip.transport.base import Address, Transport, TransportStatistics

__all__ = ["Gossiper", "GossiperStatistics", "Message", "open_gossiper", "run_engine"]


@attrs.frozen(slots=True)
class Message:
    """A message delivered to the application.

    Attributes:
        key: the message's id (16 bytes; its first 6 bytes are the origin's clock in ms).
        data: the payload.
        origin: the peer this node received it from.
        at: arrival time on the trio clock.
        timestamp: arrival time as Unix time.
    """

    key: bytes
    data: bytes
    origin: Address | None
    at: float
    timestamp: float


@attrs.frozen
class GossiperStatistics:
    """A snapshot: the engine's and the transport's counters, and the delivery queue's.
    ``engine`` is a :class:`~gossip.protocol.EngineStatistics` for the native engine."""

    engine: Any
    transport: TransportStatistics
    delivery_queued: int
    delivery_overflow: int


E = TypeVar("E", bound=SansIOEngine)


class Gossiper(Generic[E]):
    """A running gossip node; made by :func:`open_gossiper` (or :func:`run_engine`)."""

    def __init__(
        self, engine: E, transport: Transport, delivery_queue: int, clock_offset: float
    ) -> None:
        self.engine = engine
        self.transport = transport
        self._clock_offset = clock_offset
        self._send_channel, self._receive_channel = trio.open_memory_channel[Message](
            delivery_queue
        )
        self._overflow = 0
        self._closed = False
        self._timer_scope = trio.CancelScope()
        self._deadline = math.inf

    @property
    def local_address(self) -> Address:
        """This node's address."""
        return self.transport.local_address

    async def push(self, data: bytes) -> bytes:
        """Publish ``data`` to the cluster; returns its message key.

        Raises:
            LocalProtocolError: the payload does not fit one datagram, or the node is closed.
        """
        if self._closed:
            raise LocalProtocolError("this gossiper is closed")
        key = self.engine.push(data, trio.current_time())
        await self._flush()
        return key

    async def receive(self) -> Message:
        """Wait for the next delivered message."""
        return await self._receive_channel.receive()

    def receive_nowait(self) -> Message:
        """The next delivered message if one is queued, else raise ``trio.WouldBlock``."""
        return self._receive_channel.receive_nowait()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._receive_channel.__aiter__()

    def statistics(self) -> GossiperStatistics:
        """Counters of the engine, the transport and the delivery queue."""
        return GossiperStatistics(
            engine=self.engine.statistics(),
            transport=self.transport.statistics(),
            delivery_queued=self._receive_channel.statistics().current_buffer_used,
            delivery_overflow=self._overflow,
        )

    # ------------------------------------------------------------ the pump

    async def _flush(
        self, outgoing: list[Outgoing] | None = None, events: list[Event] | None = None
    ) -> None:
        engine = self.engine
        transport = self.transport
        if outgoing is None:
            outgoing = engine.datagrams_to_send()
        if events is None:
            events = engine.pop_events()
        for out in outgoing:
            if len(out.addrs) == 1:
                await transport.send(out.data, out.addrs[0])
            else:
                await transport.send_many(out.data, out.addrs)
        for event in events:
            if type(event) is MessageDelivered:
                message = Message(
                    event.key, event.data, event.origin, event.at, event.at + self._clock_offset
                )
                try:
                    self._send_channel.send_nowait(message)
                except trio.WouldBlock:
                    self._overflow += 1
        self._update_deadline()

    def _update_deadline(self) -> None:
        deadline = self.engine.get_timer()
        if deadline is None:
            deadline = math.inf
        if deadline != self._deadline:
            # Moving a cancel scope's deadline re-sorts trio's deadline heap: only on change.
            self._deadline = deadline
            self._timer_scope.deadline = deadline

    async def _receive_loop(self) -> None:
        receive = self.transport.receive
        engine = self.engine
        current_time = trio.current_time
        while True:
            try:
                data, addr = await receive()
            except trio.ClosedResourceError:
                return
            engine.receive(data, addr, current_time())
            out = engine.datagrams_to_send()
            events = engine.pop_events()
            if out or events:
                try:
                    await self._flush(out, events)
                except (LocalProtocolError, trio.ClosedResourceError):
                    return  # the transport was closed under us: stop quietly
            else:
                # A duplicate or an ACK: nothing to send or deliver, maybe a timer to move.
                # No coroutine for it (this is the commonest datagram).
                self._update_deadline()

    async def _timer_loop(self) -> None:
        engine = self.engine
        while True:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                deadline = engine.get_timer()
                self._deadline = scope.deadline = math.inf if deadline is None else deadline
                await trio.sleep_forever()
            engine.handle_timer(trio.current_time())
            try:
                await self._flush()
            except (LocalProtocolError, trio.ClosedResourceError):
                return  # the transport was closed under us: stop quietly


@asynccontextmanager
async def run_engine(
    engine: E,
    transport: Transport,
    *,
    delivery_queue: int = 1024,
    clock_offset: float = 0.0,
) -> AsyncIterator[Gossiper[E]]:
    """Drive any sans-IO ``engine`` over ``transport`` until the block exits (the engine must
    already be started; ``clock_offset`` is what it adds to trio time to get Unix time)."""
    if delivery_queue < 1:
        raise LocalProtocolError("delivery_queue must be at least 1")
    gossiper = Gossiper(engine, transport, delivery_queue, clock_offset)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossiper._receive_loop)
        nursery.start_soon(gossiper._timer_loop)
        try:
            yield gossiper
        finally:
            gossiper._closed = True
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_gossiper(
    discovery: Discovery,
    transport: Transport,
    config: GossipConfig | None = None,
    *,
    keyring: Keyring | None = None,
    rng: random.Random | None = None,
    delivery_queue: int = 1024,
) -> AsyncIterator[Gossiper[GossipEngine]]:
    """Run a gossip node on ``transport`` until the block exits.

    Example::

        async with await open_udp_transport("127.0.0.1", 7946) as transport:
            async with open_gossiper(StaticDiscovery(peers), transport, keyring=ring) as node:
                await node.push(b"hello")
                async for message in node:
                    print(message.data)

    Args:
        discovery: where peers come from.
        transport: the network; the caller keeps ownership (it is not closed here).
        config: protocol parameters (:class:`~gossip.protocol.GossipConfig`).
        keyring: cluster keys; ``None`` runs a plain-text cluster.
        rng: randomness for peer choice and jitter; seed it for reproducible runs.
        delivery_queue: messages buffered for the application before ``delivery_overflow``.
    """
    # Labels and keys carry wall-clock time; the engine runs on trio's clock (MockClock in tests).
    clock_offset = time.time() - trio.current_time()
    engine = GossipEngine(
        discovery,
        transport.local_address,
        config,
        keyring=keyring,
        rng=rng,
        clock_offset=clock_offset,
    )
    engine.start(trio.current_time())
    async with run_engine(
        engine, transport, delivery_queue=delivery_queue, clock_offset=clock_offset
    ) as gossiper:
        yield gossiper
