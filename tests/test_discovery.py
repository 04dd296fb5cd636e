"""One discovery seam for every engine: ``Discovery`` is a Protocol (any object with
``gossipiers()`` fits) that apps may still subclass, as the design card shows."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
import trio
import trio.testing

from gossip.broadcast import GossipEngine
from gossip.compat import GoGossipEngine, open_go_gossiper
from gossip.discovery import Discovery, StaticDiscovery
from gossip.node import Gossiper, open_gossiper
from gossip.transport.base import Address
from gossip.transport.memory import MemoryNetwork, MemoryTransport


class Plain:
    """No base class: structurally a Discovery."""

    def __init__(self) -> None:
        self.peers: list[Address] = []
        self.calls = 0

    def gossipiers(self) -> Sequence[Address]:
        self.calls += 1
        return self.peers


class Subclassed(Discovery):
    """The design card's way: ``class MyDiscovery(Discovery): def gossipiers(self): ...``."""

    def __init__(self) -> None:
        self.peers: list[Address] = []
        self.calls = 0

    def gossipiers(self) -> Sequence[Address]:
        self.calls += 1
        return self.peers


def test_any_object_with_gossipiers_is_a_discovery() -> None:
    assert isinstance(Plain(), Discovery)
    assert isinstance(Subclassed(), Discovery)
    assert isinstance(StaticDiscovery(), Discovery)
    assert issubclass(StaticDiscovery, Discovery) and issubclass(Subclassed, Discovery)
    assert not isinstance(object(), Discovery)


@pytest.mark.parametrize("kind", [Plain, Subclassed])
async def test_native_nodes_take_either_discovery(
    autojump_clock: trio.testing.MockClock, kind: type[Plain] | type[Subclassed]
) -> None:
    net = MemoryNetwork(seed=1)
    discoveries = [kind() for _ in range(4)]
    transports = [net.open_transport() for _ in discoveries]
    for d in discoveries:
        d.peers = [t.local_address for t in transports]
    async with trio.open_nursery() as nursery:
        nodes: list[Gossiper[GossipEngine]] = []
        for i, (d, t) in enumerate(zip(discoveries, transports, strict=True)):
            nodes.append(await nursery.start(_native_node, d, t, i))
        key = await nodes[0].push(b"hello")
        with trio.fail_after(5):
            for node in nodes[1:]:
                assert (await node.receive()).key == key
        nursery.cancel_scope.cancel()
    assert all(d.calls > 0 for d in discoveries)


async def _native_node(
    discovery: Discovery,
    transport: MemoryTransport,
    i: int,
    task_status: trio.TaskStatus[Gossiper[GossipEngine]],
) -> None:
    async with open_gossiper(discovery, transport, rng=random.Random(i)) as node:
        task_status.started(node)
        await trio.sleep_forever()


@pytest.mark.parametrize("kind", [Plain, Subclassed])
async def test_go_gossip_nodes_take_either_discovery(
    autojump_clock: trio.testing.MockClock, kind: type[Plain] | type[Subclassed]
) -> None:
    net = MemoryNetwork(seed=2)
    a_discovery, b_discovery = kind(), kind()
    a_transport, b_transport = net.open_transport(), net.open_transport()
    a_discovery.peers = b_discovery.peers = [a_transport.local_address, b_transport.local_address]
    async with (
        open_go_gossiper(a_discovery, a_transport, rng=random.Random(1)) as a,
        open_go_gossiper(b_discovery, b_transport, rng=random.Random(2)) as b,
    ):
        key = await a.push(b"hello, go")
        with trio.fail_after(5):
            assert (await b.receive()).key == key
    assert a_discovery.calls > 0 and b_discovery.calls > 0
    assert isinstance(a.engine, GoGossipEngine)
