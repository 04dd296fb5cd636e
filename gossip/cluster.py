"""A node with membership: the broadcast engine and SWIM + Lifeguard sharing one port.

::

    async with open_udp_transport("10.0.0.5", 7946) as transport:
        async with open_cluster(
            transport, name="web-5", seeds=[("10.0.0.1", 7946)], metadata={"role": "web"},
            keyring=ring,
        ) as cluster:
            print(cluster.members())              # name, address, state, incarnation, meta
            await cluster.push(b"hello")          # the broadcast, to the live members
            async for event in cluster.events():  # joined, updated, suspect, alive, failed, left
                ...

The membership engine (:class:`gossip.membership.Membership`, packet types 0x10-0x1F) is the
broadcast engine's :class:`~gossip.discovery.Discovery`: its live members are the peers the
broadcast pushes to, so a failed node drops out of the ring and the random targets. Leaving
the block after a clean exit leaves the cluster gracefully (the others see ``left``, not
``failed``); an exception or a cancellation does not wait for that.
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio

from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.crypto import Keyring
from gossip.discovery.base import Discovery
from gossip.engine import EngineContext
from gossip.errors import LocalProtocolError
from gossip.membership import (
    MemberConflict,
    MemberEvent,
    MemberInfo,
    Membership,
    MembershipConfig,
    MembershipStatistics,
    State,
    encode_tags,
)
from gossip.node import Delivery, Gossiper, GossiperStatistics, Message, open_gossiper
from gossip.transport.base import Address, Transport
from gossip.wire import DEFAULT_MAX_DATAGRAM

__all__ = ["Cluster", "ClusterEvent", "ClusterStatistics", "open_cluster"]

#: What :meth:`Cluster.events` yields.
ClusterEvent = MemberEvent | MemberConflict
#: How long a graceful leave waits for its Leave to be sent as often as any update.
LEAVE_TIMEOUT: Final = 5.0
#: How often a leave looks whether its Leave went out.
_LEAVE_POLL: Final = 0.05


@attrs.frozen
class ClusterStatistics:
    """The node's counters (broadcast engine, transports, delivery queue) and the membership
    engine's, and the membership events not kept for :meth:`Cluster.events` (its queue was
    full)."""

    node: GossiperStatistics[EngineStatistics]
    membership: MembershipStatistics
    events_overflow: int


class _Members(Discovery):
    """The broadcast engine's discovery before the membership engine exists (they are made
    together); afterwards, the membership engine's live members."""

    def __init__(self) -> None:
        self.membership: Membership | None = None

    def gossipiers(self) -> Sequence[Address]:
        membership = self.membership
        return () if membership is None else membership.gossipiers()


class Cluster:
    """A running node with membership; made by :func:`open_cluster`."""

    def __init__(
        self,
        node: Gossiper[GossipEngine],
        membership: Membership,
        events_capacity: int,
    ) -> None:
        #: The node: the broadcast engine's runtime (``push``, ``receive``, ``statistics``).
        self.node = node
        #: The membership engine (read it; act on it through the methods below).
        self.membership = membership
        self._send, self._receive = trio.open_memory_channel[ClusterEvent](events_capacity)
        self._overflow = 0
        node.subscribe(MemberEvent, self._event)
        node.subscribe(MemberConflict, self._event)

    # -- membership ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """This member's name."""
        return self.membership.name

    @property
    def local_address(self) -> Address:
        """This node's address (datagrams and, with a stream transport, streams)."""
        return self.node.local_address

    def members(self) -> tuple[MemberInfo, ...]:
        """Every member this node knows, itself included (dead and departed ones until they
        are reaped): name, address, state, incarnation, metadata."""
        return self.membership.members()

    def live_members(self) -> tuple[MemberInfo, ...]:
        """The members that are alive or suspected, this node included."""
        return tuple(m for m in self.membership.members() if m.state in _LIVE)

    def events(self) -> AsyncIterator[ClusterEvent]:
        """Membership changes as they happen, this node's own included (``joined`` first),
        and refused conflicts. One reader; the iteration ends when the node closes. Events
        the reader does not take in time (more than ``events_capacity`` waiting) are
        counted in :attr:`ClusterStatistics.events_overflow`, not kept."""
        return self._receive

    @property
    def events_waiting(self) -> int:
        """Events kept for :meth:`events` and not taken yet."""
        return self._receive.statistics().current_buffer_used

    async def join(self, seeds: Iterable[Address] | Discovery) -> int:
        """Exchange full state with each seed (a numeric ``(host, port)``, or every peer of a
        :class:`~gossip.discovery.Discovery`): how a node joins, or rejoins after a
        partition. Returns how many seeds were contacted (this node is skipped)."""
        addrs = _addresses(seeds)
        membership = self.membership
        return await self.node.apply(lambda now: membership.join(addrs, now))

    async def set_metadata(self, metadata: bytes | Mapping[str, str]) -> None:
        """Replace this node's metadata (at most 512 bytes; string tags are encoded with
        :func:`gossip.membership.encode_tags`); spread like any change.

        Raises:
            LocalProtocolError: too large, or after :meth:`leave`.
        """
        meta = _metadata(metadata)
        membership = self.membership
        await self.node.apply(lambda now: membership.set_metadata(meta, now))

    async def leave(self, timeout: float = LEAVE_TIMEOUT) -> bool:
        """Leave gracefully: tell the cluster, and wait (at most ``timeout`` seconds) until
        the Leave was sent as often as any update is. Others then report ``left`` rather
        than ``failed``. The node keeps running (and relaying) until it is closed. Returns
        whether the Leave went out in time."""
        membership = self.membership
        await self.node.apply(membership.leave)
        with trio.move_on_after(timeout):
            while not membership.leave_complete:
                await trio.sleep(_LEAVE_POLL)
        return membership.leave_complete

    # -- the broadcast ------------------------------------------------------------------

    async def push(self, data: bytes) -> bytes:
        """Publish ``data`` to the live members (see :meth:`gossip.node.Gossiper.push`)."""
        return await self.node.push(data)

    async def receive(self) -> Message:
        """The next message (see :meth:`gossip.node.Gossiper.receive`)."""
        return await self.node.receive()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self.node.__aiter__()

    def statistics(self) -> ClusterStatistics:
        """A snapshot of every counter of the node."""
        return ClusterStatistics(
            self.node.statistics(), self.membership.statistics(), self._overflow
        )

    def _event(self, event: ClusterEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self._overflow += 1
        except trio.ClosedResourceError:
            pass

    def _close(self) -> None:
        self._send.close()


_LIVE: Final = (State.ALIVE, State.SUSPECT)


def _addresses(seeds: Iterable[Address] | Discovery) -> tuple[Address, ...]:
    """Seed addresses, from a list or asked once of a Discovery."""
    return tuple(seeds.gossipiers() if isinstance(seeds, Discovery) else seeds)


def _metadata(metadata: bytes | Mapping[str, str]) -> bytes:
    if isinstance(metadata, bytes | bytearray):
        return bytes(metadata)
    if isinstance(metadata, Mapping):
        return encode_tags(metadata)
    raise LocalProtocolError("metadata is bytes or a mapping of string tags")


@asynccontextmanager
async def open_cluster(
    transport: Transport,
    *,
    name: str,
    seeds: Iterable[Address] | Discovery = (),
    metadata: bytes | Mapping[str, str] = b"",
    keyring: Keyring | None = None,
    config: GossipConfig | None = None,
    membership_config: MembershipConfig | None = None,
    stream: Transport | None = None,
    datagram_limit: int = DEFAULT_MAX_DATAGRAM,
    rng: random.Random | None = None,
    delivery_queue: int = 1024,
    delivery: Delivery = "wait",
    events_capacity: int = 1024,
    leave_timeout: float = LEAVE_TIMEOUT,
) -> AsyncIterator[Cluster]:
    """Run a node with membership on ``transport`` until the block exits.

    Args:
        transport: the datagram transport (the caller keeps ownership).
        name: this member's name, unique in the cluster (1..255 UTF-8 bytes).
        seeds: members to join at start (numeric ``(host, port)`` pairs, or a
            :class:`~gossip.discovery.Discovery` asked once); none for the first node.
        metadata: up to 512 bytes, or string tags (``{"role": "web"}``), spread with this
            member's state; change it with :meth:`Cluster.set_metadata`.
        keyring: cluster keys; ``None`` runs a plain-text cluster.
        config: the broadcast engine's parameters.
        membership_config: SWIM and Lifeguard settings (memberlist's LAN profile by default).
        stream: a stream transport on the same port (``open_tcp_transport``): full-state
            exchanges that do not fit a datagram go there.
        datagram_limit: the largest datagram sent on ``transport`` when there is a stream.
        rng: a seeded ``random.Random`` for reproducible runs (tests); ``None`` otherwise.
        delivery_queue, delivery: the broadcast's delivery queue (see ``open_gossiper``).
        events_capacity: membership events kept for :meth:`Cluster.events`.
        leave_timeout: how long a clean exit waits for the graceful leave to go out.

    Raises:
        LocalProtocolError: a bad name, metadata or setting.
    """
    if not isinstance(events_capacity, int) or events_capacity < 1:
        raise LocalProtocolError("events_capacity must be an integer >= 1")
    if not leave_timeout >= 0 or math.isinf(leave_timeout):
        raise LocalProtocolError("leave_timeout must be a finite number >= 0")
    meta = _metadata(metadata)
    addrs = _addresses(seeds)
    members = _Members()
    made: list[Membership] = []

    def membership_engine(context: EngineContext) -> Membership:
        engine = Membership(
            context, name=name, config=membership_config, metadata=meta, seeds=addrs
        )
        members.membership = engine
        made.append(engine)
        return engine

    async with open_gossiper(
        members,
        transport,
        config,
        keyring=keyring,
        rng=rng,
        delivery_queue=delivery_queue,
        delivery=delivery,
        engines=[membership_engine],
        stream=stream,
        datagram_limit=datagram_limit,
    ) as node:
        # Subscribed before the pump first runs: the engine's own ``joined`` is seen too.
        cluster = Cluster(node, made[0], events_capacity)
        try:
            await node.apply(lambda now: None)  # the join's push-pulls leave now
            yield cluster
            if leave_timeout > 0 and not made[0].leave_complete:
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    await cluster.leave(leave_timeout)
        finally:
            cluster._close()
