"""What every sans-IO engine of a node looks like to the runtime, and what it is given.

A node hosts one or more engines (today the push-pull broadcast engine; next, membership and
the key-value store). Each owns a range of the wire's packet type byte
(:data:`gossip.wire.PACKET_RANGES`); :class:`gossip.mux.Mux` routes every datagram to the
owner of its type, merges their timers and collects their output. Engines never do I/O and
never read a clock: the runtime passes ``now`` in.

Adding an engine: write a class with the methods of :class:`Engine`, build its packets with
the shared codec (``context.codec.seal(ptype, body, now)``; read them with
``context.codec.open_untrusted(datagram, now)``: one keyring and one replay guard per node),
hand them out as ``Outgoing(datagram, peers, kind)`` (``kind`` names the packet for
simulators and tracers), draw randomness from ``context.rng`` and ids from
``context.key_rng`` (so that a seeded node is reproducible), and give ``open_gossiper`` a
factory for it (``engines=[lambda ctx: MyEngine(ctx)]``). Its events reach the application
through :meth:`gossip.node.Gossiper.subscribe`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar, runtime_checkable

import attrs

from gossip.discovery.base import Discovery
from gossip.events import Outgoing
from gossip.transport.base import Address
from gossip.wire import Codec

__all__ = ["Engine", "EngineContext", "KeyedPublisher", "Publisher", "S_co"]

S_co = TypeVar("S_co", covariant=True)


@attrs.frozen
class EngineContext:
    """What a node gives each of its engines at start.

    Attributes:
        codec: the node's one codec: its keyring and replay guard serve every engine.
        local_address: the node's address on its transport.
        discovery: where peers come from (``gossipiers()``).
        rng: the node's randomness for choices and jitter (seeded in tests and the simulator).
        now: the runtime's clock when the node starts.
        key_rng: where random ids (message keys) come from: the application's seeded
            ``random.Random`` (tests, the simulator), or ``None`` for :mod:`secrets`
            (``gossip.wire.new_message_key(ms, context.key_rng)`` does either). Ids travel in
            the clear: unpredictable ones keep a plain-text cluster from being pre-empted.
    """

    codec: Codec
    local_address: Address
    discovery: Discovery
    rng: random.Random
    now: float
    key_rng: random.Random | None = None


class Engine(Protocol[S_co]):
    """A sans-IO protocol engine as the runtime drives it.

    ``packet_types`` are the type bytes it owns (inside one of
    :data:`gossip.wire.PACKET_RANGES`, or every byte for an engine with a foreign wire
    format that runs alone, as the go-gossip profile does). ``receive`` gets only datagrams of
    those types and never raises for bad bytes: it drops and counts them. After each input the
    runtime takes ``datagrams_to_send`` and ``pop_events`` and re-arms ``get_timer``.
    """

    @property
    def packet_types(self) -> range: ...

    def receive(self, datagram: bytes, addr: Address, now: float) -> None: ...
    def handle_timer(self, now: float) -> None: ...
    def get_timer(self) -> float | None: ...
    def datagrams_to_send(self) -> Sequence[Outgoing]: ...
    def pop_events(self) -> Sequence[object]: ...
    def statistics(self) -> S_co: ...


class Publisher(Engine[S_co], Protocol[S_co]):
    """The engine an application publishes through and receives from (the broadcast engine;
    the go-gossip profile's). :class:`gossip.node.Gossiper` drives it with the others."""

    #: ``False`` while the application's queue is full: take no new message now.
    accepting: bool

    def push(self, data: bytes, now: float) -> bytes: ...
    def can_push(self, size: int, now: float) -> bool: ...


@runtime_checkable
class KeyedPublisher(Publisher[S_co], Protocol[S_co]):
    """A publisher whose message keys the caller may choose: the go-gossip profile, whose
    8-byte keys a bridge derives from native ids so that every bridge relays a message under
    one key. ``Gossiper.push(data, key=...)`` reaches it; ``key=None`` draws a key as any
    publisher does. (The broadcast engine is not one: its keys carry the publisher's clock.)"""

    @property
    def key_size(self) -> int:
        """The length of a key, in bytes."""
        ...

    def push(self, data: bytes, now: float, *, key: bytes | None = None) -> bytes: ...
