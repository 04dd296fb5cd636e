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
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, cast, overload

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
#: has ``receive_batch`` or ``receive_nowait``). The delivery queue may exceed its bound by
#: this much.
RECEIVE_BATCH: Final = 32

#: While ``push`` waits for cache room (messages ageing out), it re-checks this often.
_ROOM_POLL: Final = 0.05

Delivery = Literal["wait", "drop"]
"""What a full delivery queue does (see :func:`open_gossiper`)."""

EngineFactory = Callable[[EngineContext], Engine[Any]]
"""Makes one more engine for a node from what the node shares (see :mod:`gossip.engine`)."""

S = TypeVar("S")


class _ReceivesBatches(Protocol):
    """A transport that drains what is queued in one call (UDP)."""

    def receive_batch(self, limit: int) -> Sequence[tuple[bytes, Address]]: ...


class _SendsNowait(Protocol):
    """A transport that sends without waiting while it can (UDP)."""

    def send_many_nowait(self, data: bytes, addrs: Sequence[Address]) -> int: ...


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
        #: What the pump asks for timers and datagrams: the only engine when the node has one
        #: (the mux adds nothing then), else the mux. Methods are looked up at each call: a
        #: bound method kept per node is one more object for the garbage collector to scan.
        self._direct: Engine[Any] | Mux = self.mux if self.mux.single is None else self.mux.single
        self._subscribers: dict[type, list[Callable[[Any], None]]] = {}
        self.transport = transport
        # Optional in the protocol (UDP has it): send what needs no wait without a coroutine.
        self._nowait_sender = (
            cast("_SendsNowait", transport)
            if callable(getattr(transport, "send_many_nowait", None))
            else None
        )
        self._clock_offset = clock_offset
        self._queue: deque[Message] = deque()
        self._capacity = delivery_queue
        self._wait = delivery == "wait"
        # Tasks waiting in receive(), oldest first: a ParkingLot's park/unpark without its
        # generator, list and checks (one wake-up per delivered message at every node).
        self._readers: OrderedDict[trio.lowlevel.Task, None] = OrderedDict()
        # Made when first needed (most nodes never pace a source nor use push_nowait).
        self._pushers: trio.lowlevel.ParkingLot | None = None  # push() waiting for the window
        self._pushers_waiting = 0  # len(self._pushers), without a Python call per datagram
        self._flush_wanted: trio.lowlevel.ParkingLot | None = None  # the flusher's wake-up
        #: Set by run_engine: where the first push_nowait starts the flusher.
        self._nursery: trio.Nursery | None = None
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
            if self._pushers is None:
                self._pushers = trio.lowlevel.ParkingLot()
            pushers = self._pushers
            while not engine.can_push(len(data), trio.current_time()):
                self._pushers_waiting += 1
                try:
                    with trio.move_on_after(_ROOM_POLL):
                        await pushers.park()
                finally:
                    self._pushers_waiting -= 1
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
        if self._flush_wanted is not None:
            self._flush_wanted.unpark()
        else:
            # The first push_nowait starts the flusher (it flushes first, then waits).
            assert self._nursery is not None, "made by run_engine"
            self._flush_wanted = trio.lowlevel.ParkingLot()
            self._nursery.start_soon(self._flush_loop, self._flush_wanted)
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
            # The wait is the checkpoint: one more after it cost every node a second trip
            # through the scheduler per delivered message (N = 128 on loopback: 2.04
            # application-task steps per node and message, against 1.05 without).
            while not self._queue:
                if self._closed:
                    raise trio.EndOfChannel
                await self._wait_for_delivery()
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

    async def _wait_for_delivery(self) -> None:
        """Sleep until ``_deliver`` (or ``_close``) wakes this task; a cancellation leaves."""
        task = trio.lowlevel.current_task()
        readers = self._readers
        readers[task] = None

        def abort(_: object) -> trio.lowlevel.Abort:
            del readers[task]
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def receive_nowait(self) -> Message:
        """The next delivered message if one is queued, else raise ``trio.WouldBlock``
        (``trio.EndOfChannel`` once the node is closed and drained)."""
        if not self._queue:
            raise trio.EndOfChannel if self._closed else trio.WouldBlock
        return self._take()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        # receive() without its EndOfChannel: the commonest loop (``async for``) then costs
        # one coroutine per message, not two.
        queue = self._queue
        if not queue:
            while not queue:
                if self._closed:
                    raise StopAsyncIteration
                await self._wait_for_delivery()
            self._unyielded = 1
        else:
            if self._unyielded == 0:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            self._unyielded = (self._unyielded + 1) % RECEIVE_BATCH
        return self._take()

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
        self._wake_readers(len(self._readers))
        if self._pushers is not None:
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
        if outgoing is None:
            outgoing = mux.datagrams_to_send()
        if events is None:
            events = mux.pop_events()
        i, done = self._send_now(outgoing)
        if i < len(outgoing):
            await self._send_rest(outgoing, i, done)
        if events:
            self._deliver(events)
        self._update_deadline()

    def _send_now(self, outgoing: Sequence[Outgoing]) -> tuple[int, int]:
        """Send what goes out without waiting, without a coroutine (the transport's
        ``send_many_nowait``): stops at a datagram for the stream transport, a full buffer or
        a checkpoint due. Returns where it stopped: the index in ``outgoing`` and how many of
        that datagram's addresses were done (``len(outgoing)``: everything was sent)."""
        sender = self._nowait_sender
        if sender is None:
            return 0, 0
        stream = self.stream
        limit = self._datagram_limit
        for i, out in enumerate(outgoing):
            if stream is not None and (out.reliable or len(out.data) > limit):
                return i, 0
            done = sender.send_many_nowait(out.data, out.addrs)
            if done < len(out.addrs):
                return i, done
        return len(outgoing), 0

    async def _send_rest(self, outgoing: Sequence[Outgoing], start: int, done: int) -> None:
        """Send ``outgoing[start:]`` (the first without its ``done`` first addresses) through
        the transports' awaitable sends, which wait for room and checkpoint."""
        transport = self.transport
        stream = self.stream
        for out in outgoing[start:]:
            via = transport
            addrs = out.addrs[done:]
            done = 0
            if stream is not None and (out.reliable or len(out.data) > self._datagram_limit):
                # Peers listen for streams on their datagram port: the same address.
                via = stream
            if len(addrs) == 1:
                await via.send(out.data, addrs[0])
            else:
                await via.send_many(out.data, addrs)

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
        if queue and self._readers:
            self._wake_readers(1)

    def _wake_readers(self, count: int) -> None:
        """Wake the ``count`` longest-waiting tasks in ``receive``."""
        readers = self._readers
        for _ in range(min(count, len(readers))):
            task, _ = readers.popitem(last=False)
            trio.lowlevel.reschedule(task)

    def _update_deadline(self) -> None:
        deadline = self._direct.get_timer()
        if deadline is None:
            deadline = math.inf
        if deadline != self._deadline:
            # Moving a cancel scope's deadline re-sorts trio's deadline heap: only on change.
            self._deadline = deadline
            self._timer_scope.deadline = deadline
        if self._pushers_waiting and self._pushers is not None:
            self._pushers.unpark_all()  # they re-check the window themselves

    async def _receive_loop(self, transport: Transport | None = None) -> None:
        """Feed what ``transport`` (default: the datagram transport) receives to the mux."""
        if transport is None:
            transport = self.transport
        # Optional in the protocol: receive_batch (UDP: a burst in one call, no exception when
        # the queue runs dry), else receive_nowait (one call per datagram).
        batcher = (
            cast("_ReceivesBatches", transport)
            if callable(getattr(transport, "receive_batch", None))
            else None
        )
        nowait = getattr(transport, "receive_nowait", None)
        receive_nowait = nowait if callable(nowait) and batcher is None else None
        receive = transport.receive
        engine = self.mux
        # A node of one engine: datagrams of its types go straight to it (the mux's routing,
        # without a call per datagram); anything else through the mux, which drops it.
        direct = self._direct
        owned = range(0) if engine.single is None else engine.single.packet_types
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
            if len(data) > 1 and data[1] in owned:
                direct.receive(data, addr, now)
            else:
                engine.receive(data, addr, now)
            # Take what is already queued before flushing once.
            if batcher is not None:
                try:
                    queued = batcher.receive_batch(RECEIVE_BATCH - 1)
                except trio.ClosedResourceError:
                    queued = []  # the next receive() says so
                for data, addr in queued:
                    if len(data) > 1 and data[1] in owned:
                        direct.receive(data, addr, now)
                    else:
                        engine.receive(data, addr, now)
            elif receive_nowait is not None:
                for _ in range(RECEIVE_BATCH - 1):
                    try:
                        data, addr = receive_nowait()
                    except (trio.WouldBlock, trio.ClosedResourceError):
                        break
                    engine.receive(data, addr, now)
            out = direct.datagrams_to_send()
            events = engine.pop_events()
            if out or events:
                # _flush, inline: no coroutine when everything goes out without waiting.
                try:
                    i, done = self._send_now(out)
                    if i < len(out):
                        await self._send_rest(out, i, done)
                except trio.ClosedResourceError:
                    self._close()
                    return  # the transport was closed under us: stop quietly
                except trio.BrokenResourceError as err:
                    self._close(err)
                    return
                if events:
                    self._deliver(events)
                self._update_deadline()
            else:
                # Duplicates or ACKs: nothing to send or deliver, maybe a timer to move.
                # No coroutine for it (this is the commonest datagram).
                self._update_deadline()
            # Let go of this pass's lists before the next wait (an idle node waits for most of
            # its life): freed now they die young, held they outlive a collection each.
            queued = out = events = ()

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

    async def _flush_loop(self, wanted: trio.lowlevel.ParkingLot) -> None:
        """Send what ``push_nowait`` left in the engine (one flush for a run of them).
        Started by the first ``push_nowait``: it flushes at once, then waits for the next."""
        while True:
            try:
                await self._flush()
            except trio.ClosedResourceError:
                self._close()
                return
            except trio.BrokenResourceError as err:
                self._close(err)
                return
            await wanted.park()


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
            gossiper._nursery = nursery  # the flusher starts with the first push_nowait
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
    others: Sequence[Engine[Any]] = ()
    if engines:
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
