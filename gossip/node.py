"""The trio runtime: a thin pump between a transport and a node's sans-IO engines.

A node is one transport and a :class:`~gossip.mux.Mux` of engines (the broadcast engine, and
whatever else shares the port). After every input (a batch of datagrams, a push, a timer) the
pump flushes every engine's datagrams to the transport, hands events out by type (delivered
messages to the application's queue, anything else to :meth:`Gossiper.subscribe` callbacks),
and re-arms one timer. Three background tasks (receive loop, timer, flusher for
``push_nowait``) live in the nursery of :func:`open_gossiper`.

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
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, Literal, TypeVar, overload

import attrs
import trio

from gossip._trio import single_exception
from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery.base import Discovery
from gossip.engine import Engine, EngineContext, KeyedPublisher, Publisher
from gossip.errors import LocalProtocolError
from gossip.events import MessageDelivered, Outgoing
from gossip.mux import Mux
from gossip.transport.base import Address, Transport, TransportStatistics
from gossip.wire import DEFAULT_MAX_DATAGRAM, Codec

__all__ = [
    "RECEIVE_BATCH",
    "Delivery",
    "EngineFactory",
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

EngineFactory = Callable[[EngineContext], Engine[Any]]
"""Makes one more engine for a node from what the node shares (see :mod:`gossip.engine`)."""

S = TypeVar("S")


@attrs.frozen(slots=True)
class Message:
    """A message delivered to the application.

    Attributes:
        key: the message's id (16 bytes; its first 6 bytes are the publisher's clock in ms).
        data: the payload.
        sender: the peer this node received it from: the previous hop, not the publisher.
            The publisher's address is not on the wire (a message carries no origin), so no
            node can tell who published a message it relayed.
        at: arrival time on the trio clock.
        timestamp: arrival time as Unix time.
    """

    key: bytes
    data: bytes
    sender: Address | None
    at: float
    timestamp: float


@attrs.frozen
class GossiperStatistics(Generic[S]):
    """A snapshot: the engine's and the transport's counters, and the delivery queue's.
    ``engine`` is the publishing engine's own (:class:`~gossip.broadcast.EngineStatistics`
    for the native engine). ``push_waits`` counts ``push`` calls that had to wait (the
    source was paced); ``dropped`` counts datagrams of a type no engine of the node owns;
    ``stream`` is the stream transport's counters when the node has one."""

    engine: S
    transport: TransportStatistics
    delivery_queued: int
    delivery_overflow: int
    push_waits: int = 0
    dropped: dict[str, int] = attrs.field(factory=dict)
    stream: TransportStatistics | None = None


E_co = TypeVar("E_co", bound=Publisher[Any], covariant=True)
T = TypeVar("T")
P = TypeVar("P", bound=Publisher[Any])


class Gossiper(Generic[E_co]):
    """A running gossip node; made by :func:`open_gossiper` (or :func:`run_engine`)."""

    def __init__(
        self,
        engine: E_co,
        transport: Transport,
        delivery_queue: int,
        clock_offset: float,
        *,
        delivery: Delivery = "wait",
        mux: Mux | None = None,
        stream: Transport | None = None,
        datagram_limit: int = DEFAULT_MAX_DATAGRAM,
    ) -> None:
        #: A stream transport beside ``transport`` (TCP), listening on the same port: what
        #: must not be lost or does not fit ``datagram_limit`` goes there.
        self.stream = stream
        self._datagram_limit = datagram_limit
        #: The engine ``push`` and delivery go through (the broadcast engine).
        self.engine = engine
        #: Every engine of the node, ``engine`` included, behind one router.
        self.mux = Mux([engine]) if mux is None else mux
        if engine not in self.mux.engines:
            raise LocalProtocolError("the publishing engine must be one of the mux's engines")
        self._subscribers: dict[type, list[Callable[[Any], None]]] = {}
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
        self._broken: BaseException | None = None  # why the transport failed, if it did
        self._unyielded = 0  # messages receive() returned since it last yielded
        self._timer_scope = trio.CancelScope()
        self._deadline = math.inf

    @property
    def local_address(self) -> Address:
        """This node's address."""
        return self.transport.local_address

    # ``key=`` only type-checks on a node whose engine takes it (a KeyedPublisher).
    @overload
    async def push(self, data: bytes) -> bytes: ...
    @overload
    async def push(
        self: Gossiper[KeyedPublisher[Any]], data: bytes, *, key: bytes | None = None
    ) -> bytes: ...
    async def push(self, data: bytes, *, key: bytes | None = None) -> bytes:
        """Publish ``data`` to the cluster; returns its message key. Waits while the node
        has ``push_window`` messages in their push round, or no cache room for one more
        message that a pull may still ask for: the cluster's pace, not the producer's.

        ``key``: publish under this key, on a node whose engine lets the caller choose
        (:class:`~gossip.engine.KeyedPublisher`: the go-gossip profile, where a bridge derives
        keys); ``None`` draws one.

        Raises:
            LocalProtocolError: the payload does not fit one datagram, or a ``key`` the
                engine refuses (or an engine that draws its own keys).
            trio.ClosedResourceError: the node is closed (nothing was published).
            trio.BrokenResourceError: the node's transport failed.
        """
        self._check_open()
        engine = self.engine
        if key is not None:
            self._keyed()  # refuse before waiting
        if not engine.can_push(len(data), trio.current_time()):
            self._push_waits += 1
            while not engine.can_push(len(data), trio.current_time()):
                with trio.move_on_after(_ROOM_POLL):
                    await self._pushers.park()
                self._check_open()
        if key is None:
            key = engine.push(data, trio.current_time())
        else:
            key = self._keyed().push(data, trio.current_time(), key=key)
        await self._flush()
        return key

    @overload
    def push_nowait(self, data: bytes) -> bytes: ...
    @overload
    def push_nowait(
        self: Gossiper[KeyedPublisher[Any]], data: bytes, *, key: bytes | None = None
    ) -> bytes: ...
    def push_nowait(self, data: bytes, *, key: bytes | None = None) -> bytes:
        """Publish ``data`` now, or raise ``trio.WouldBlock`` where :meth:`push` would wait.
        The datagrams leave from a background task, right after the caller's next checkpoint.
        ``key`` as for :meth:`push`.

        Raises:
            trio.WouldBlock: the window or the cache is full.
            LocalProtocolError: as for :meth:`push`.
            trio.ClosedResourceError: the node is closed (nothing was published).
            trio.BrokenResourceError: the node's transport failed.
        """
        self._check_open()
        now = trio.current_time()
        keyed = None if key is None else self._keyed()
        if not self.engine.can_push(len(data), now):
            raise trio.WouldBlock
        key = self.engine.push(data, now) if keyed is None else keyed.push(data, now, key=key)
        self._flush_wanted.unpark()
        return key

    async def apply(self, fn: Callable[[float], T]) -> T:
        """Call ``fn(now)`` on an engine of this node from the application (a membership
        engine's ``join`` or ``leave``, say), then send what it queued and re-arm the node's
        timer: the one way to act on an engine past the pump. Returns what ``fn`` returns.

        Raises:
            trio.ClosedResourceError: the node is closed (``fn`` was not called).
            trio.BrokenResourceError: the node's transport failed.
        """
        self._check_open()
        result = fn(trio.current_time())
        await self._flush()
        return result

    async def receive(self) -> Message:
        """Wait for the next delivered message.

        Raises:
            trio.EndOfChannel: the node closed (or its transport did) and every message
                delivered before was read; ``async for message in node`` then ends.
        """
        if not self._queue:
            # park() is the checkpoint: one more after it cost every node a second trip through
            # the scheduler per delivered message (N = 128 on loopback: 2.04 application-task
            # steps per node and message, against 1.05 without).
            while not self._queue:
                if self._closed:
                    raise trio.EndOfChannel
                await self._readers.park()
            self._unyielded = 1
        else:
            # The receive loop queues up to RECEIVE_BATCH messages per pass through trio's
            # scheduler; a reader that yielded after every message would take one per pass,
            # fall behind, fill the queue and make the node defer. So it yields at the first
            # of each RECEIVE_BATCH messages taken without waiting (cancellation is seen at
            # every one).
            if self._unyielded == 0:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            self._unyielded = (self._unyielded + 1) % RECEIVE_BATCH
        return self._take()

    def receive_nowait(self) -> Message:
        """The next delivered message if one is queued, else raise ``trio.WouldBlock``
        (``trio.EndOfChannel`` once the node is closed and drained)."""
        if not self._queue:
            raise trio.EndOfChannel if self._closed else trio.WouldBlock
        return self._take()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    def statistics(self: Gossiper[Publisher[S]]) -> GossiperStatistics[S]:
        """Counters of the engine, the transport and the delivery queue."""
        return GossiperStatistics(
            engine=self.engine.statistics(),
            transport=self.transport.statistics(),
            delivery_queued=len(self._queue),
            delivery_overflow=self._overflow,
            push_waits=self._push_waits,
            dropped=self.mux.statistics().dropped,
            stream=None if self.stream is None else self.stream.statistics(),
        )

    def subscribe(self, event_type: type[S], callback: Callable[[S], None]) -> None:
        """Call ``callback(event)`` for every event of exactly ``event_type`` that an engine
        of this node emits (drops, and the events of engines added with ``engines=``),
        from the pump, right after the input that caused it. Delivered messages go to
        :meth:`receive`, not here. Keep callbacks short; they must not raise."""
        if event_type is MessageDelivered:
            raise LocalProtocolError("delivered messages are read with receive(), not subscribed")
        self._subscribers.setdefault(event_type, []).append(callback)

    # ------------------------------------------------------------ the pump

    def _keyed(self) -> KeyedPublisher[Any]:
        engine = self.engine
        if not isinstance(engine, KeyedPublisher):
            raise LocalProtocolError(
                f"{type(engine).__name__} draws its own message keys: push() takes no key="
            )
        return engine

    def _check_open(self) -> None:
        if self._broken is not None:
            raise trio.BrokenResourceError("the node's transport failed") from self._broken
        if self._closed:
            raise trio.ClosedResourceError("this gossiper is closed")

    def _close(self, broken: BaseException | None = None) -> None:
        """Stop taking pushes and end the application's iteration once it has read what was
        delivered. Idempotent; called when the block exits or the transport closes or fails."""
        if broken is not None and self._broken is None:
            self._broken = broken
        self._closed = True
        self._readers.unpark_all()
        self._pushers.unpark_all()

    def _take(self) -> Message:
        message = self._queue.popleft()
        if not self.engine.accepting and len(self._queue) < self._capacity:
            self.engine.accepting = True
        return message

    async def _flush(
        self,
        outgoing: Sequence[Outgoing] | None = None,
        events: Sequence[object] | None = None,
    ) -> None:
        mux = self.mux
        transport = self.transport
        if outgoing is None:
            outgoing = mux.datagrams_to_send()
        if events is None:
            events = mux.pop_events()
        stream = self.stream
        for out in outgoing:
            via = transport
            if stream is not None and (out.reliable or len(out.data) > self._datagram_limit):
                # Peers listen for streams on their datagram port: the same address.
                via = stream
            if len(out.addrs) == 1:
                await via.send(out.data, out.addrs[0])
            else:
                await via.send_many(out.data, out.addrs)
        if events:
            self._deliver(events)
        self._update_deadline()

    def _deliver(self, events: Sequence[object]) -> None:
        queue = self._queue
        offset = self._clock_offset
        subscribers = self._subscribers
        for event in events:
            if type(event) is MessageDelivered:
                if self._wait or len(queue) < self._capacity:
                    queue.append(
                        Message(event.key, event.data, event.sender, event.at, event.at + offset)
                    )
                else:
                    self._overflow += 1
            elif subscribers:
                for callback in subscribers.get(type(event), ()):
                    callback(event)
        if self._wait and len(queue) >= self._capacity:
            self.engine.accepting = False  # until the application takes some
        if queue:
            self._readers.unpark()

    def _update_deadline(self) -> None:
        deadline = self.mux.get_timer()
        if deadline is None:
            deadline = math.inf
        if deadline != self._deadline:
            # Moving a cancel scope's deadline re-sorts trio's deadline heap: only on change.
            self._deadline = deadline
            self._timer_scope.deadline = deadline
        if self._pushers:
            self._pushers.unpark_all()  # they re-check the window themselves

    async def _receive_loop(self, transport: Transport | None = None) -> None:
        """Feed what ``transport`` (default: the datagram transport) receives to the mux."""
        if transport is None:
            transport = self.transport
        nowait = getattr(transport, "receive_nowait", None)  # optional in the protocol
        receive_nowait = nowait if callable(nowait) else None
        receive = transport.receive
        engine = self.mux
        current_time = trio.current_time
        while True:
            try:
                data, addr = await receive()
            except trio.ClosedResourceError:
                self._close()
                return
            except trio.BrokenResourceError as err:
                self._close(err)
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
                except trio.ClosedResourceError:
                    self._close()
                    return  # the transport was closed under us: stop quietly
                except trio.BrokenResourceError as err:
                    self._close(err)
                    return
            else:
                # Duplicates or ACKs: nothing to send or deliver, maybe a timer to move.
                # No coroutine for it (this is the commonest datagram).
                self._update_deadline()

    async def _timer_loop(self) -> None:
        engine = self.mux
        while True:
            with trio.CancelScope() as scope:
                self._timer_scope = scope
                deadline = engine.get_timer()
                self._deadline = scope.deadline = math.inf if deadline is None else deadline
                await trio.sleep_forever()
            engine.handle_timer(trio.current_time())
            try:
                await self._flush()
            except trio.ClosedResourceError:
                self._close()
                return  # the transport was closed under us: stop quietly
            except trio.BrokenResourceError as err:
                self._close(err)
                return

    async def _flush_loop(self) -> None:
        """Send what ``push_nowait`` left in the engine (one flush for a run of them)."""
        while True:
            await self._flush_wanted.park()
            try:
                await self._flush()
            except trio.ClosedResourceError:
                self._close()
                return
            except trio.BrokenResourceError as err:
                self._close(err)
                return


@asynccontextmanager
async def run_engine(
    engine: P,
    transport: Transport,
    *,
    delivery_queue: int = 1024,
    clock_offset: float = 0.0,
    delivery: Delivery = "wait",
    others: Sequence[Engine[Any]] = (),
    stream: Transport | None = None,
    datagram_limit: int = DEFAULT_MAX_DATAGRAM,
) -> AsyncIterator[Gossiper[P]]:
    """Drive any sans-IO ``engine`` (and ``others`` sharing its node, each owning its own
    packet types) over ``transport`` until the block exits. The engines must already be
    started; ``clock_offset`` is what ``engine`` adds to trio time to get Unix time.

    ``stream``: a second, stream transport (``open_tcp_transport``) on the same port as
    ``transport``; outputs marked ``reliable`` and datagrams longer than ``datagram_limit``
    go there, and what it receives is handled like any datagram.

    Raises:
        LocalProtocolError: a setting out of range, engines whose packet types collide, or a
            stream transport on another port than the datagram transport.
    """
    if stream is not None and stream.local_address[1] != transport.local_address[1]:
        raise LocalProtocolError(
            f"the stream transport listens on port {stream.local_address[1]}, the datagram "
            f"transport on {transport.local_address[1]}: peers reach both at one address"
        )
    if not isinstance(delivery_queue, int) or delivery_queue < 1:
        raise LocalProtocolError("delivery_queue must be an integer >= 1")
    if delivery not in ("wait", "drop"):
        raise LocalProtocolError(f"delivery must be 'wait' or 'drop', got {delivery!r}")
    mux = Mux([engine, *others])
    gossiper = Gossiper(
        engine,
        transport,
        delivery_queue,
        clock_offset,
        delivery=delivery,
        mux=mux,
        stream=stream,
        datagram_limit=datagram_limit,
    )
    with single_exception():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(gossiper._receive_loop)
            if stream is not None:
                nursery.start_soon(gossiper._receive_loop, stream)
            nursery.start_soon(gossiper._timer_loop)
            nursery.start_soon(gossiper._flush_loop)
            try:
                yield gossiper
            finally:
                gossiper._close()
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
    engines: Sequence[EngineFactory] = (),
    stream: Transport | None = None,
    datagram_limit: int = DEFAULT_MAX_DATAGRAM,
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
        config: protocol parameters (:class:`~gossip.broadcast.GossipConfig`).
        keyring: cluster keys; ``None`` runs a plain-text cluster.
        rng: randomness for peer choice, jitter and message keys; seed it for reproducible
            runs (tests, simulations). ``None`` (for production): keys from :mod:`secrets`,
            which keeps them unpredictable (see :func:`gossip.wire.new_message_key`).
        delivery_queue: messages buffered for the application (plus at most
            :data:`RECEIVE_BATCH`).
        delivery: what a full delivery queue does: ``"wait"`` (the default) stops taking new
            messages until the application catches up (they come again by anti-entropy, none
            is lost while it catches up within ``message_ttl``); ``"drop"`` skips the newest
            for the application and counts ``delivery_overflow`` (the node still relays it).
        engines: factories of more engines that share this node (its port, codec, keyring,
            replay guard and timer): see :mod:`gossip.engine`. Their events reach
            :meth:`Gossiper.subscribe`.
        stream: a stream transport (``open_tcp_transport``) on the same port as
            ``transport``: outputs an engine marks ``reliable``, and datagrams longer than
            ``datagram_limit``, are sent on it (raise ``config.max_datagram`` to publish
            messages larger than a datagram). ``None``: everything goes on ``transport``.
        datagram_limit: the largest datagram sent on ``transport`` when a ``stream`` exists.
    """
    # Labels and keys carry wall-clock time; the engine runs on trio's clock (MockClock in tests).
    clock_offset = time.time() - trio.current_time()
    config = config or GossipConfig()
    # One codec for the node: every engine shares its keyring and its replay guard.
    codec = Codec(
        keyring,
        max_datagram=config.max_datagram,
        replay=None
        if keyring is None
        else ReplayGuard(config.replay_window, config.replay_capacity),
        clock_offset=clock_offset,
    )
    engine = GossipEngine(
        discovery, transport.local_address, config, codec=codec, rng=rng, clock_offset=clock_offset
    )
    now = trio.current_time()
    engine.start(now)
    context = EngineContext(
        codec, transport.local_address, discovery, rng or random.Random(), now, key_rng=rng
    )
    others = [make(context) for make in engines]
    async with run_engine(
        engine,
        transport,
        delivery_queue=delivery_queue,
        clock_offset=clock_offset,
        delivery=delivery,
        others=others,
        stream=stream,
        datagram_limit=datagram_limit,
    ) as gossiper:
        yield gossiper
