"""The trio runtime: a thin pump between a transport and a :class:`~gossip.protocol.GossipEngine`.

After every input (a batch of datagrams, a push, a timer) it flushes the engine's datagrams to
the transport, hands delivered messages to the application, and re-arms one timer. Three
background tasks (receive loop, timer, flusher for ``push_nowait``) live in the nursery of
:func:`open_gossiper`.

Back-pressure, both ways:

* **Sources are paced.** ``push`` waits while the engine says no (``can_push``): more than
  ``push_window`` of this node's messages still in their push round, or a cache full of
  messages a pull may still ask for. A producer runs as fast as the cluster absorbs;
  ``push_nowait`` raises ``trio.WouldBlock`` instead of waiting.
* **Delivery never blocks the receive loop** (go-gossip's slow consumer made the node deaf).
  With ``delivery="wait"`` (the default) a full delivery queue makes the engine stop *taking*
  new messages: they are not delivered, cached nor acknowledged (``deferred``), the node keeps
  answering ACKs and pulls, and anti-entropy offers them again once the application has caught
  up (within ``message_ttl``). With ``delivery="drop"`` the newest message is not queued for
  the application and ``delivery_overflow`` is counted; it is still cached, acknowledged and
  forwarded.

The receive loop drains up to :data:`RECEIVE_BATCH` datagrams that are already queued before it
flushes once: under a burst, one pass through trio per batch rather than per datagram.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, Literal, TypeVar

import attrs
import trio

from gossip.crypto import Keyring
from gossip.discovery.base import Discovery
from gossip.errors import LocalProtocolError
from gossip.events import Event, MessageDelivered, Outgoing, SansIOEngine
from gossip.protocol import GossipConfig, GossipEngine
from gossip.transport.base import Address, Transport, TransportStatistics

__all__ = [
    "RECEIVE_BATCH",
    "Delivery",
    "Gossiper",
    "GossiperStatistics",
    "Message",
    "open_gossiper",
    "run_engine",
]

#: Datagrams the receive loop takes without waiting before it flushes (when the transport
#: has ``receive_nowait``). The delivery queue may exceed its bound by this much.
RECEIVE_BATCH: Final = 32

#: While ``push`` waits for cache room (messages ageing out), it re-checks this often.
_ROOM_POLL: Final = 0.05

Delivery = Literal["wait", "drop"]
"""What a full delivery queue does (see :func:`open_gossiper`)."""


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
    ``engine`` is a :class:`~gossip.protocol.EngineStatistics` for the native engine.
    ``push_waits`` counts ``push`` calls that had to wait (the source was paced)."""

    engine: Any
    transport: TransportStatistics
    delivery_queued: int
    delivery_overflow: int
    push_waits: int = 0


E = TypeVar("E", bound=SansIOEngine)


class Gossiper(Generic[E]):
    """A running gossip node; made by :func:`open_gossiper` (or :func:`run_engine`)."""

    def __init__(
        self,
        engine: E,
        transport: Transport,
        delivery_queue: int,
        clock_offset: float,
        delivery: Delivery = "wait",
    ) -> None:
        self.engine = engine
        self.transport = transport
        self._clock_offset = clock_offset
        self._queue: deque[Message] = deque()
        self._capacity = delivery_queue
        self._wait = delivery == "wait"
        self._readers = trio.lowlevel.ParkingLot()  # tasks in receive()
        self._pushers = trio.lowlevel.ParkingLot()  # tasks in push() waiting for the window
        self._flush_wanted = trio.lowlevel.ParkingLot()  # the flusher, between push_nowaits
        self._overflow = 0
        self._push_waits = 0
        self._closed = False
        self._timer_scope = trio.CancelScope()
        self._deadline = math.inf
        receive_nowait = getattr(transport, "receive_nowait", None)
        self._receive_nowait = receive_nowait if callable(receive_nowait) else None

    @property
    def local_address(self) -> Address:
        """This node's address."""
        return self.transport.local_address

    async def push(self, data: bytes) -> bytes:
        """Publish ``data`` to the cluster; returns its message key. Waits while the node
        has ``push_window`` messages in their push round, or no cache room for one more
        message that a pull may still ask for: the cluster's pace, not the producer's.

        Raises:
            LocalProtocolError: the payload does not fit one datagram, or the node is closed.
        """
        self._check_open()
        engine = self.engine
        if not engine.can_push(len(data), trio.current_time()):
            self._push_waits += 1
            while not engine.can_push(len(data), trio.current_time()):
                with trio.move_on_after(_ROOM_POLL):
                    await self._pushers.park()
                self._check_open()
        key = engine.push(data, trio.current_time())
        await self._flush()
        return key

    def push_nowait(self, data: bytes) -> bytes:
        """Publish ``data`` now, or raise ``trio.WouldBlock`` where :meth:`push` would wait.
        The datagrams leave from a background task, right after the caller's next checkpoint.

        Raises:
            trio.WouldBlock: the window or the cache is full.
            LocalProtocolError: the payload does not fit one datagram, or the node is closed.
        """
        self._check_open()
        now = trio.current_time()
        if not self.engine.can_push(len(data), now):
            raise trio.WouldBlock
        key = self.engine.push(data, now)
        self._flush_wanted.unpark()
        return key

    async def receive(self) -> Message:
        """Wait for the next delivered message."""
        if self._queue:
            await trio.lowlevel.checkpoint()  # a checkpoint even when nothing needs waiting
        else:
            # park() is the checkpoint: one more after it cost every node a second trip through
            # the scheduler per delivered message (the application task's steps per node and
            # message at N = 128 on loopback: 2.04, against 1.05 before 098fd86 and now).
            while not self._queue:
                await self._readers.park()
        return self._take()

    def receive_nowait(self) -> Message:
        """The next delivered message if one is queued, else raise ``trio.WouldBlock``."""
        if not self._queue:
            raise trio.WouldBlock
        return self._take()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.receive()

    def statistics(self) -> GossiperStatistics:
        """Counters of the engine, the transport and the delivery queue."""
        return GossiperStatistics(
            engine=self.engine.statistics(),
            transport=self.transport.statistics(),
            delivery_queued=len(self._queue),
            delivery_overflow=self._overflow,
            push_waits=self._push_waits,
        )

    # ------------------------------------------------------------ the pump

    def _check_open(self) -> None:
        if self._closed:
            raise LocalProtocolError("this gossiper is closed")

    def _take(self) -> Message:
        message = self._queue.popleft()
        if not self.engine.accepting and len(self._queue) < self._capacity:
            self.engine.accepting = True
        return message

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
        if events:
            self._deliver(events)
        self._update_deadline()

    def _deliver(self, events: list[Event]) -> None:
        queue = self._queue
        offset = self._clock_offset
        for event in events:
            if type(event) is MessageDelivered:
                if self._wait or len(queue) < self._capacity:
                    queue.append(
                        Message(event.key, event.data, event.origin, event.at, event.at + offset)
                    )
                else:
                    self._overflow += 1
        if self._wait and len(queue) >= self._capacity:
            self.engine.accepting = False  # until the application takes some
        if queue:
            self._readers.unpark()

    def _update_deadline(self) -> None:
        deadline = self.engine.get_timer()
        if deadline is None:
            deadline = math.inf
        if deadline != self._deadline:
            # Moving a cancel scope's deadline re-sorts trio's deadline heap: only on change.
            self._deadline = deadline
            self._timer_scope.deadline = deadline
        if self._pushers:
            self._pushers.unpark_all()  # they re-check the window themselves

    async def _receive_loop(self) -> None:
        receive = self.transport.receive
        receive_nowait = self._receive_nowait
        engine = self.engine
        current_time = trio.current_time
        while True:
            try:
                data, addr = await receive()
            except trio.ClosedResourceError:
                return
            now = current_time()
            engine.receive(data, addr, now)
            if receive_nowait is not None:
                # Take what is already queued before flushing once.
                for _ in range(RECEIVE_BATCH - 1):
                    try:
                        data, addr = receive_nowait()
                    except (trio.WouldBlock, trio.ClosedResourceError):
                        break
                    engine.receive(data, addr, now)
            out = engine.datagrams_to_send()
            events = engine.pop_events()
            if out or events:
                try:
                    await self._flush(out, events)
                except (LocalProtocolError, trio.ClosedResourceError):
                    return  # the transport was closed under us: stop quietly
            else:
                # Duplicates or ACKs: nothing to send or deliver, maybe a timer to move.
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

    async def _flush_loop(self) -> None:
        """Send what ``push_nowait`` left in the engine (one flush for a run of them)."""
        while True:
            await self._flush_wanted.park()
            try:
                await self._flush()
            except (LocalProtocolError, trio.ClosedResourceError):
                return


@asynccontextmanager
async def run_engine(
    engine: E,
    transport: Transport,
    *,
    delivery_queue: int = 1024,
    clock_offset: float = 0.0,
    delivery: Delivery = "wait",
) -> AsyncIterator[Gossiper[E]]:
    """Drive any sans-IO ``engine`` over ``transport`` until the block exits (the engine must
    already be started; ``clock_offset`` is what it adds to trio time to get Unix time)."""
    if not isinstance(delivery_queue, int) or delivery_queue < 1:
        raise LocalProtocolError("delivery_queue must be an integer >= 1")
    if delivery not in ("wait", "drop"):
        raise LocalProtocolError(f"delivery must be 'wait' or 'drop', got {delivery!r}")
    gossiper = Gossiper(engine, transport, delivery_queue, clock_offset, delivery)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossiper._receive_loop)
        nursery.start_soon(gossiper._timer_loop)
        nursery.start_soon(gossiper._flush_loop)
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
    delivery: Delivery = "wait",
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
        delivery_queue: messages buffered for the application (plus at most
            :data:`RECEIVE_BATCH`).
        delivery: what a full delivery queue does: ``"wait"`` (the default) stops taking new
            messages until the application catches up (they come again by anti-entropy, none
            is lost while it catches up within ``message_ttl``); ``"drop"`` skips the newest
            for the application and counts ``delivery_overflow`` (the node still relays it).
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
        engine,
        transport,
        delivery_queue=delivery_queue,
        clock_offset=clock_offset,
        delivery=delivery,
    ) as gossiper:
        yield gossiper
