"""open_cluster: membership and the broadcast on one node, in memory under virtual time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from gossip.cluster import Cluster, ClusterEvent, open_cluster
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.membership import MemberEvent, State, decode_tags_untrusted
from gossip.transport.memory import MemoryNetwork

ADDRS = [(f"10.0.0.{i + 1}", 7946) for i in range(5)]


class Running:
    """Clusters started in a nursery; each can be crashed (cancelled: no leave) or stopped."""

    def __init__(self, nursery: trio.Nursery, net: MemoryNetwork, key: bytes) -> None:
        self.nursery = nursery
        self.net = net
        self.key = key
        self.clusters: dict[str, Cluster] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.stops: dict[str, trio.Event] = {}
        self.events: dict[str, list[ClusterEvent]] = {}

    async def start(self, i: int, seeds: Sequence[tuple[str, int]] = ()) -> Cluster:
        name = f"n{i}"
        self.stops[name] = trio.Event()
        self.events[name] = []

        async def run(task_status: trio.TaskStatus[Cluster]) -> None:
            with trio.CancelScope() as scope:
                self.scopes[name] = scope
                async with (
                    self.net.open_transport(ADDRS[i]) as transport,
                    open_cluster(
                        transport,
                        name=name,
                        seeds=seeds,
                        metadata={"i": str(i)},
                        keyring=Keyring(self.key),
                        rng=random.Random(i),
                    ) as cluster,
                ):
                    task_status.started(cluster)
                    async with trio.open_nursery() as inner:
                        inner.start_soon(self._collect, name, cluster)
                        await self.stops[name].wait()
                        inner.cancel_scope.cancel()

        cluster: Cluster = await self.nursery.start(run)
        self.clusters[name] = cluster
        return cluster

    async def _collect(self, name: str, cluster: Cluster) -> None:
        async for event in cluster.events():
            self.events[name].append(event)

    def changes(self, observer: str, about: str) -> list[str]:
        return [
            e.change
            for e in self.events[observer]
            if isinstance(e, MemberEvent) and e.member.name == about
        ]


@asynccontextmanager
async def running(seed: int = 1) -> AsyncIterator[Running]:
    net = MemoryNetwork(seed=seed)
    async with trio.open_nursery() as nursery:
        yield Running(nursery, net, generate_key())
        nursery.cancel_scope.cancel()


def live_names(cluster: Cluster) -> set[str]:
    return {m.name for m in cluster.live_members()}


async def test_nodes_join_through_one_seed_and_see_each_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as r:
        first = await r.start(0)
        others = [await r.start(i, seeds=[ADDRS[0]]) for i in range(1, 5)]
        await trio.sleep(10)
        everyone = {f"n{i}" for i in range(5)}
        for cluster in [first, *others]:
            assert live_names(cluster) == everyone
            # The broadcast engine's peers are the live members, itself excluded.
            peers = cluster.node.engine.discovery.gossipiers()
            assert set(peers) == set(ADDRS) - {cluster.local_address}
        member = {m.name: m for m in first.members()}["n3"]
        assert member.address == ADDRS[3]
        assert decode_tags_untrusted(member.meta) == {"i": "3"}
        # Each node reported its own join first.
        for i in range(5):
            assert r.changes(f"n{i}", f"n{i}")[:1] == ["joined"]


async def test_a_crashed_node_is_failed_and_dropped_from_the_broadcast(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as r:
        clusters = [await r.start(0)] + [await r.start(i, seeds=[ADDRS[0]]) for i in range(1, 4)]
        await trio.sleep(5)
        r.scopes["n3"].cancel()  # a crash: no leave
        await trio.sleep(60)
        for i in range(3):
            assert "failed" in r.changes(f"n{i}", "n3")
            assert "left" not in r.changes(f"n{i}", "n3")
            assert ADDRS[3] not in clusters[i].node.engine.discovery.gossipiers()
        # The broadcast still reaches every live member.
        await clusters[0].push(b"after the crash")
        for cluster in clusters[1:3]:
            with trio.fail_after(5):
                assert (await cluster.receive()).data == b"after the crash"


async def test_a_graceful_leave_is_seen_as_left(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.start(0)
        for i in range(1, 4):
            await r.start(i, seeds=[ADDRS[0]])
        await trio.sleep(5)
        assert await r.clusters["n2"].leave()
        r.stops["n2"].set()
        await trio.sleep(30)
        for name in ("n0", "n1", "n3"):
            assert r.changes(name, "n2")[-1] == "left"
            assert "failed" not in r.changes(name, "n2")
            assert "n2" not in live_names(r.clusters[name])


async def test_metadata_updates_spread(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as r:
        await r.start(0)
        await r.start(1, seeds=[ADDRS[0]])
        await r.start(2, seeds=[ADDRS[0]])
        await trio.sleep(5)
        await r.clusters["n1"].set_metadata({"role": "db"})
        await trio.sleep(5)
        for name in ("n0", "n2"):
            member = {m.name: m for m in r.clusters[name].members()}["n1"]
            assert decode_tags_untrusted(member.meta) == {"role": "db"}
            assert member.incarnation >= 1
            assert "updated" in r.changes(name, "n1")


async def test_seeds_from_a_discovery_and_a_late_join(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as r:
        await r.start(0)
        await r.start(1, seeds=[ADDRS[0]])
        late = await r.start(2)  # alone at first
        await trio.sleep(3)
        assert live_names(late) == {"n2"}
        assert await late.join(StaticDiscovery([ADDRS[1], ADDRS[2]])) == 1  # itself skipped
        await trio.sleep(3)
        for cluster in r.clusters.values():
            assert live_names(cluster) == {"n0", "n1", "n2"}
            assert all(m.state == State.ALIVE for m in cluster.live_members())


async def test_misuse_is_a_clear_error(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with net.open_transport(ADDRS[0]) as transport:
        with pytest.raises(LocalProtocolError, match="512"):
            async with open_cluster(transport, name="n", metadata=bytes(513)):
                pass
        with pytest.raises(LocalProtocolError, match="events_capacity"):
            async with open_cluster(transport, name="n", events_capacity=0):
                pass
        async with open_cluster(transport, name="n", leave_timeout=0) as cluster:
            await cluster.leave(timeout=1)
            with pytest.raises(LocalProtocolError, match="left"):
                await cluster.set_metadata({"a": "b"})
