"""An in-memory network of transports, for tests and simulation.

No socket is touched: addresses are labels. A :class:`MemoryNetwork` routes datagrams between
its :class:`MemoryTransport` s through per-link :class:`LinkConditions` (loss, duplication,
reordering, latency, jitter), partitions and crashed nodes. It reads time only through
``trio.current_time()``, so under ``trio.testing.MockClock(autojump_threshold=0)`` minutes
of network time pass in milliseconds, and it draws every random number from one
``random.Random(seed)``, so a run whose sends happen in the same order is reproducible.

No task runs per datagram: each transport keeps an inbox heap ordered by delivery time, and
``receive`` sleeps until the earliest datagram is due or an earlier one arrives.

Usage::

    net = MemoryNetwork(seed=1, default=LinkConditions(loss=0.1, delay=0.005))
    async with net.open_transport() as a, net.open_transport() as b:
        await a.send(b"hi", b.local_address)
        data, source = await b.receive()

Every datagram a transport sends ends in exactly one of: delivered by ``receive``, still in
flight (in an inbox), or dropped with one reason of :data:`DROP_REASONS`, so
``sent + duplicated == delivered + in_flight + sum(dropped.values())`` network-wide.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from gossip._trio import Opening
from gossip.errors import LocalProtocolError
from gossip.transport.base import Address, AsyncClosing, TransportStatistics

__all__ = [
    "DEFAULT_INBOX_CAPACITY",
    "DROP_REASONS",
    "MAX_DATAGRAM",
    "PERFECT",
    "LinkConditions",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStatistics",
]

#: Datagrams (in flight to or queued at one transport) before new ones are dropped.
DEFAULT_INBOX_CAPACITY = 4096

#: The largest payload, as for UDP over IPv4; a bigger send is a send error, as EMSGSIZE is.
MAX_DATAGRAM = 65507

#: Why a datagram was dropped: the link lost it, a partition separated the ends, the
#: receiver's inbox was full, an end was crashed, nobody had the address, or the receiver
#: closed with the datagram still queued.
DROP_REASONS = ("loss", "partition", "overflow", "crashed", "unreachable", "closed")

# Port of auto-assigned addresses (memberlist's default, so logs look familiar).
_AUTO_PORT = 7946


def _probability(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.0 <= value <= 1.0  # also rejects NaN
    ):
        raise LocalProtocolError(f"{attribute.name} must be a probability in [0, 1]: {value!r}")


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value < math.inf:
        raise LocalProtocolError(f"{attribute.name} must be finite seconds >= 0: {value!r}")


@attrs.frozen
class LinkConditions:
    """How one direction of a link treats datagrams.

    Attributes:
        loss: probability a datagram is dropped.
        duplicate: probability a datagram that was not lost arrives twice (each copy draws
            its own delay).
        reorder: probability a copy is held back an extra ``uniform(0, reorder_delay)``
            seconds, so later datagrams overtake it.
        delay: base latency in seconds.
        jitter: extra latency, ``uniform(0, jitter)`` seconds, drawn per copy.
        reorder_delay: the largest extra hold-back of a reordered copy, in seconds.

    Raises:
        LocalProtocolError: a probability outside [0, 1], or a negative, infinite or NaN time.
    """

    loss: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=_seconds)
    jitter: float = attrs.field(default=0.0, validator=_seconds)
    reorder_delay: float = attrs.field(default=0.05, validator=_seconds)


#: A link that delivers everything, at once, in order.
PERFECT = LinkConditions()


@attrs.frozen
class NetworkStatistics:
    """Network-wide counters (a snapshot).

    Attributes:
        sent: datagrams handed to the network, one per destination (oversized sends, which
            are send errors, are not counted).
        duplicated: extra copies the links made.
        delivered: datagrams returned by ``receive``.
        in_flight: datagrams in inboxes, due or not.
        dropped: dropped datagrams by reason (every key of :data:`DROP_REASONS` is present).
    """

    sent: int
    duplicated: int
    delivered: int
    in_flight: int
    dropped: dict[str, int]


def _check_address(addr: object) -> Address:
    if not (
        isinstance(addr, tuple)
        and len(addr) == 2
        and isinstance(addr[0], str)
        and isinstance(addr[1], int)
        and 0 <= addr[1] <= 65535
    ):
        raise LocalProtocolError(f"an address is (numeric host, port): {addr!r}")
    try:
        ipaddress.ip_address(addr[0])
    except ValueError:
        raise LocalProtocolError(f"the host must be a numeric IP address: {addr!r}") from None
    return (addr[0], addr[1])


# An inbox entry: (deliver_at, seq, data, source address, sending transport). ``seq`` is
# unique network-wide, so ties in time keep send order and the tuple never compares further.
_Entry = tuple[float, int, bytes, Address, "MemoryTransport"]


class MemoryNetwork:
    """A simulated datagram network shared by the transports it opens.

    Args:
        seed: seed of the network's one ``random.Random``.
        default: conditions of every link without its own (:meth:`set_link`).
        inbox_capacity: default bound of each transport's inbox.

    Raises:
        LocalProtocolError: ``default`` is not a :class:`LinkConditions` or the capacity is
            not a positive int.
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        default: LinkConditions = PERFECT,
        inbox_capacity: int = DEFAULT_INBOX_CAPACITY,
    ) -> None:
        _check_conditions(default)
        _check_capacity(inbox_capacity)
        self._rng = random.Random(seed)
        self._default = default
        self._inbox_capacity = inbox_capacity
        self._links: dict[tuple[Address, Address], LinkConditions] = {}
        self._transports: dict[Address, MemoryTransport] = {}
        # Partition group of each listed address; unlisted addresses share group -1.
        self._groups: dict[Address, int] = {}
        self._crashed: set[Address] = set()
        self._seq = 0
        self._next_auto = 1
        self._sent = 0
        self._duplicated = 0
        self._delivered = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)

    # -- configuration -------------------------------------------------------------------

    def set_default(self, conditions: LinkConditions) -> None:
        """Set the conditions of every link that has none of its own."""
        _check_conditions(conditions)
        self._default = conditions

    def set_link(self, src: Address, dst: Address, conditions: LinkConditions | None) -> None:
        """Set the conditions of the one-way link ``src`` -> ``dst``; ``None`` reverts it to
        the default. Applies to datagrams sent afterwards."""
        key = (_check_address(src), _check_address(dst))
        if conditions is None:
            self._links.pop(key, None)
        else:
            _check_conditions(conditions)
            self._links[key] = conditions

    def partition(self, *groups: Iterable[Address]) -> None:
        """Split the network: datagrams between different groups are dropped.

        Addresses listed in no group form one more group together. Replaces any earlier
        partition; datagrams already in flight still arrive.

        Raises:
            LocalProtocolError: an address is in two groups.
        """
        mapping: dict[Address, int] = {}
        for index, group in enumerate(groups):
            for member in group:
                addr = _check_address(member)
                if mapping.setdefault(addr, index) != index:
                    raise LocalProtocolError(f"{addr!r} is in two partition groups")
        self._groups = mapping

    def heal(self) -> None:
        """End the partition."""
        self._groups = {}

    def crash(self, addr: Address) -> None:
        """Cut ``addr`` off: what it sends and what is sent to it is dropped, and its inbox is
        emptied (counted as ``crashed``). Its transport stays open; see :meth:`revive`."""
        addr = _check_address(addr)
        self._crashed.add(addr)
        transport = self._transports.get(addr)
        if transport is not None:
            transport._discard_inbox("crashed")

    def revive(self, addr: Address) -> None:
        """Undo :meth:`crash`."""
        self._crashed.discard(_check_address(addr))

    # -- transports ----------------------------------------------------------------------

    def open(
        self, addr: Address | None = None, *, inbox_capacity: int | None = None
    ) -> Opening[MemoryTransport]:
        """:meth:`open_transport` as every transport opens: ``async with net.open() as t``."""

        async def make() -> MemoryTransport:
            return self.open_transport(addr, inbox_capacity=inbox_capacity)

        return Opening(make)

    def open_transport(
        self, addr: Address | None = None, *, inbox_capacity: int | None = None
    ) -> MemoryTransport:
        """Attach a new transport; use it as an async context manager, or ``aclose`` it.

        Args:
            addr: its address; ``None`` assigns a fresh ``("10.0.x.y", 7946)``.
            inbox_capacity: its inbox bound; ``None`` takes the network's.

        Raises:
            LocalProtocolError: the address is malformed or held by an open transport.
        """
        if addr is None:
            addr = self._auto_address()
        else:
            addr = _check_address(addr)
            if addr in self._transports:
                raise LocalProtocolError(f"address in use: {addr!r}")
        capacity = self._inbox_capacity if inbox_capacity is None else inbox_capacity
        _check_capacity(capacity)
        transport = MemoryTransport(self, addr, capacity)
        self._transports[addr] = transport
        return transport

    def statistics(self) -> NetworkStatistics:
        """A snapshot of the network-wide counters."""
        return NetworkStatistics(
            sent=self._sent,
            duplicated=self._duplicated,
            delivered=self._delivered,
            in_flight=sum(len(t._inbox) for t in self._transports.values()),
            dropped=dict(self._dropped),
        )

    def _auto_address(self) -> Address:
        while True:
            n = self._next_auto
            self._next_auto += 1
            if n & 0xFF in (0, 255):  # skip network and broadcast-looking labels
                continue
            addr = (str(ipaddress.IPv4Address(0x0A000000 + n)), _AUTO_PORT)
            if addr not in self._transports:
                return addr

    # -- routing -------------------------------------------------------------------------

    def _drop(self, sender: MemoryTransport, reason: str) -> None:
        self._dropped[reason] += 1
        sender._dropped[reason] += 1

    def _route(self, sender: MemoryTransport, data: bytes, dst: Address) -> None:
        """Decide the fate of one datagram; the random draws happen in a fixed order."""
        self._sent += 1
        src = sender._address
        receiver = self._transports.get(dst)
        if src in self._crashed:
            self._drop(sender, "crashed")
            return
        if receiver is None:
            self._drop(sender, "unreachable")
            return
        if dst in self._crashed:
            self._drop(sender, "crashed")
            return
        if self._groups and self._groups.get(src, -1) != self._groups.get(dst, -1):
            self._drop(sender, "partition")
            return
        link = self._links.get((src, dst), self._default)
        rng = self._rng
        # Each draw only when its probability is non-zero: a perfect link costs no draws.
        if link.loss and rng.random() < link.loss:
            self._drop(sender, "loss")
            return
        copies = 1
        if link.duplicate and rng.random() < link.duplicate:
            copies = 2
            self._duplicated += 1
        now = trio.current_time()
        for _ in range(copies):
            deliver_at = now + link.delay
            if link.jitter:
                deliver_at += rng.uniform(0.0, link.jitter)
            if link.reorder and rng.random() < link.reorder:
                deliver_at += rng.uniform(0.0, link.reorder_delay)
            self._seq += 1
            receiver._enqueue((deliver_at, self._seq, data, src, sender))


class MemoryTransport(AsyncClosing):
    """One endpoint of a :class:`MemoryNetwork`; made by :meth:`MemoryNetwork.open_transport`.

    ``send`` and ``send_many`` never block. Every call is a trio checkpoint, with the work
    done in between the cancellation check and the yield (as trio's memory channels do), so a
    cancelled ``receive`` never loses a datagram and a cancelled ``send`` never half-happens.
    """

    def __init__(self, network: MemoryNetwork, address: Address, inbox_capacity: int) -> None:
        """Internal: use :meth:`MemoryNetwork.open_transport`."""
        self._network = network
        self._address = address
        self._capacity = inbox_capacity
        self._inbox: list[_Entry] = []
        # Receivers park here; woken when a datagram becomes the earliest or on close.
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._datagrams_sent = 0
        self._datagrams_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._send_errors = 0
        self._dropped = dict.fromkeys(DROP_REASONS, 0)

    @property
    def local_address(self) -> Address:
        """This transport's address on its network."""
        return self._address

    @property
    def network(self) -> MemoryNetwork:
        """The network this transport is attached to."""
        return self._network

    @property
    def dropped(self) -> Mapping[str, int]:
        """Datagrams this transport sent that were dropped, by reason (a copy)."""
        return dict(self._dropped)

    def send_nowait(self, data: bytes, addr: Address) -> None:
        """Send one datagram without a checkpoint; :meth:`send` minus the trio yield.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("send on a closed transport")
        # bytes() of bytes is the same object; of a bytearray, a copy, as a socket would take.
        data = bytes(data)
        if len(data) > MAX_DATAGRAM:
            self._send_errors += 1
            return
        self._datagrams_sent += 1
        self._bytes_sent += len(data)
        self._network._route(self, data, addr)

    async def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram to ``addr``. Oversized datagrams count as send errors; loss of
        any kind is counted by the network, never raised.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self.send_nowait(data, addr)
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        """Send ``data`` to every address in ``addrs``, with one checkpoint for all.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        for addr in addrs:
            self.send_nowait(data, addr)
        await trio.lowlevel.cancel_shielded_checkpoint()

    def receive_nowait(self) -> tuple[bytes, Address]:
        """Take the earliest datagram that is due now.

        Raises:
            trio.WouldBlock: none is due.
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        inbox = self._inbox
        if inbox and inbox[0][0] <= trio.current_time():
            _at, _seq, data, src, _sender = heapq.heappop(inbox)
            self._datagrams_received += 1
            self._bytes_received += len(data)
            self._network._delivered += 1
            return data, src
        raise trio.WouldBlock

    async def receive(self) -> tuple[bytes, Address]:
        """Wait until a datagram is due and return it with its source address.

        Raises:
            trio.ClosedResourceError: the transport is closed, before or during the wait.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                item = self.receive_nowait()
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            # Sleep until the earliest datagram is due; _enqueue wakes us sooner when an
            # earlier one arrives, aclose when we must raise.
            deadline = self._inbox[0][0] if self._inbox else math.inf
            with trio.move_on_at(deadline):
                await self._lot.park()

    def statistics(self) -> TransportStatistics:
        """A snapshot of this transport's counters (drops: :attr:`dropped`)."""
        return TransportStatistics(
            datagrams_sent=self._datagrams_sent,
            datagrams_received=self._datagrams_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            send_errors=self._send_errors,
        )

    async def aclose(self) -> None:
        """Detach from the network (the address becomes free), drop queued datagrams as
        ``closed`` and wake waiting receivers; idempotent."""
        if not self._closed:
            self._closed = True
            if self._network._transports.get(self._address) is self:
                del self._network._transports[self._address]
            self._discard_inbox("closed")
            self._lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MemoryTransport {self._address[0]!r}:{self._address[1]} {state}>"

    def _enqueue(self, entry: _Entry) -> None:
        if len(self._inbox) >= self._capacity:
            # Like a full socket buffer: the newest datagram is the one lost.
            self._network._drop(entry[4], "overflow")
            return
        heapq.heappush(self._inbox, entry)
        if self._inbox[0] is entry:
            self._lot.unpark_all()

    def _discard_inbox(self, reason: str) -> None:
        for entry in self._inbox:
            self._network._drop(entry[4], reason)
        self._inbox.clear()


def _check_conditions(conditions: Any) -> None:
    if not isinstance(conditions, LinkConditions):
        raise LocalProtocolError(f"expected LinkConditions, got {conditions!r}")


def _check_capacity(capacity: Any) -> None:
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise LocalProtocolError(f"inbox capacity must be a positive int: {capacity!r}")
