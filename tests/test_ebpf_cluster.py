"""A Gossiper cluster over the eBPF cloner in network namespaces (issue 5, item 4).

``N`` gossip nodes, each in its own namespace with a veth into one bridge (the star of
``tests/netns.py``: its "sender" and its peers are all nodes here), on the private /24 that
exists only inside those namespaces, IPv6 off, TX checksum offload off on every node's veth
(a wrong UDP checksum is then dropped and counted, not hidden). Every node runs an encrypted
Gossiper on its own :class:`EBPFTransport` (``require_cloner``: its own program attached to
its own veth), so every fan-out of the real protocol goes through a kernel clone loop.
Messages are published from various nodes; every node must deliver every message of the
others exactly once, the cloner must really have cloned, the fallbacks taken are checked,
no UDP checksum or closed-port error appears at any node, and no namespace, program or
marker route is left behind. Two runs: from a cold start (empty neighbour tables: the first
fan-outs fall back as ``unresolved_next_hop``), and warm (MACs learnt first: every fan-out
the runtime hands down, counted by a thin wrapper, is exactly one kernel fan-out).

Namespaces and trio: ``setns()`` acts on one thread, and threads started from it inherit it.
The trio thread never enters a node's namespace: each transport is opened with
``namespace=``, so a worker thread creates its UDP socket there, and the transport enters the
namespace in the worker threads that load and attach the program, refresh next hops and
detach. Sockets and BPF map fds work from any namespace, so all the nodes run in one trio
thread, in the test's own namespace (checked).

Skips with the reason when not root, when ``ip netns`` does not work, or when the libbpf
loader cannot load the program here.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence

import attrs
import pytest
import trio

from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.node import Gossiper, GossiperStatistics, open_gossiper
from gossip.transport.base import Address, TransportStatistics
from gossip.transport.ebpf import (
    DEFAULT_MARKER,
    ClonerStatistics,
    EBPFTransport,
    _bpfsys,
    _netlink,
    default_object_path,
    default_source_path,
    open_ebpf_transport,
    probe,
)
from gossip.transport.ebpf.cloner import static_reason
from tests import netns

pytestmark = pytest.mark.root

N = 8  # gossip nodes, one namespace each
PORT = 47101
MESSAGES = 20
TIMEOUT = 25  # seconds for the whole cluster run
# Counters of /proc/net/snmp that must not move: bad checksums, copies to a closed port.
UDP_ERRORS = ("InCsumErrors", "NoPorts", "InErrors")


@attrs.frozen
class NodeSite:
    namespace: str
    ip: str
    interface: str


def _home_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return (st.st_dev, st.st_ino)


@pytest.fixture(scope="module")
def topo() -> Iterator[netns.Topology]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    reason = static_reason("libbpf", default_object_path(), default_source_path())
    if reason:
        pytest.skip(f"libbpf loader: {reason}")
    topology = netns.build_star(N - 1, tag="c", peers_tx_offload=False)
    try:
        yield topology
    finally:
        topology.close()
        assert netns.namespaces_with_prefix(topology.prefix) == []
        # Every transport gave its marker route back: a count left here would keep a later
        # namespace (which may get this one's inode number) from removing its route.
        assert _netlink._marker_users == {}


def _sites(topo: netns.Topology) -> list[NodeSite]:
    return [
        NodeSite(topo.sender, netns.SENDER_IP, netns.SENDER_IF),
        *(
            NodeSite(ns, ip, f"gzxp{i}")
            for i, (ns, ip) in enumerate(zip(topo.peers, topo.peer_ips, strict=True))
        ),
    ]


async def _open_in(stack: contextlib.AsyncExitStack, site: NodeSite) -> EBPFTransport:
    """An eBPF transport in the node's namespace (the trio thread stays in its own)."""
    return await stack.enter_async_context(
        open_ebpf_transport(
            site.ip, PORT, interface=site.interface, require_cloner=True, namespace=site.namespace
        )
    )


def _udp_errors(topo: netns.Topology, sites: list[NodeSite]) -> dict[str, dict[str, int]]:
    out = {}
    for site in sites:
        counters = topo.udp_counters(site.namespace)
        out[site.namespace] = {k: counters[k] for k in UDP_ERRORS}
    return out


def _leftovers(site: NodeSite) -> list[str]:
    """What a closed transport could have left in its namespace: programs at the tcx hook,
    classic filters, the marker route or neighbour entry."""
    found = []
    progs = netns.call_in(
        site.namespace, lambda: _bpfsys.prog_query(socket.if_nametoindex(site.interface))
    )
    if progs:
        found.append(f"tcx programs {progs}")
    for args in (
        ["tc", "filter", "show", "dev", site.interface, "egress"],
        ["ip", "-4", "route", "show"],
        ["ip", "-4", "neigh", "show", "dev", site.interface],
    ):
        out = subprocess.run(
            ["ip", "netns", "exec", site.namespace, *args],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        if "gossip_cloner" in out or DEFAULT_MARKER[0] in out:
            found.append(f"{' '.join(args)}: {out.strip()}")
    return found


def _flush_neighbours(site: NodeSite) -> None:
    """Forget the MACs learnt so far (the permanent marker entry, if any, stays)."""
    subprocess.run(
        ["ip", "-n", site.namespace, "neigh", "flush", "dev", site.interface],
        capture_output=True,
        check=True,
    )


class FanOutCounter:
    """A node's transport as its Gossiper sees it: counts the fan-outs (``send_many`` with
    more than one address) the runtime hands down, whatever the protocol sends them for."""

    def __init__(self, inner: EBPFTransport) -> None:
        self.inner = inner
        self.fan_outs = 0
        self.copies = 0

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    async def send(self, data: bytes, addr: Address) -> None:
        await self.inner.send(data, addr)

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        if len(addrs) > 1:
            self.fan_outs += 1
            self.copies += len(addrs)
        await self.inner.send_many(data, addrs)

    async def receive(self) -> tuple[bytes, Address]:
        return await self.inner.receive()

    def statistics(self) -> TransportStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _warm_up(transports: list[EBPFTransport]) -> None:
    """Before the nodes run: every transport fans one datagram out to all the others (the
    loop sends it, the kernel resolves the MACs), every transport reads its N - 1, and
    waits until it knows the next hop of every peer."""
    addresses = [t.local_address for t in transports]
    for t in transports:
        await t.send_many(b"warm-up", [a for a in addresses if a != t.local_address])
    for t in transports:
        sources = set()
        for _ in range(len(transports) - 1):
            data, source = await t.receive()
            assert data == b"warm-up"
            sources.add(source)
        assert sources == set(addresses) - {t.local_address}
    for t in transports:
        while any(t.next_hop(host) is None for host, _ in addresses if host != t.local_address[0]):
            await trio.sleep(0.02)
            await t.refresh_next_hops()


@attrs.frozen
class ClusterRun:
    pushed: dict[bytes, tuple[int, bytes]]
    delivered: list[Counter[bytes]]
    payloads: list[dict[bytes, bytes]]
    node_stats: list[GossiperStatistics[EngineStatistics]]
    #: The cloner's and the transport's counters when the nodes started, and at the end.
    cloner_before: list[ClonerStatistics]
    cloner_after: list[ClonerStatistics]
    fallbacks_before: list[dict[str, int]]
    sent_before: list[int]
    counters: list[FanOutCounter]
    attach_kinds: set[str]
    udp_errors_before: dict[str, dict[str, int]]
    udp_errors_after: dict[str, dict[str, int]]
    leftovers: dict[str, list[str]]


async def _run_cluster(topo: netns.Topology, *, warm: bool) -> ClusterRun:
    sites = _sites(topo)
    for site in sites:
        _flush_neighbours(site)
    home = _home_netns()
    key = generate_key()
    config = GossipConfig(fanout=3)
    udp_errors_before = _udp_errors(topo, sites)
    pushed: dict[bytes, tuple[int, bytes]] = {}
    delivered: list[Counter[bytes]] = [Counter() for _ in sites]
    payloads: list[dict[bytes, bytes]] = [{} for _ in sites]

    async with contextlib.AsyncExitStack() as stack:
        transports = [await _open_in(stack, site) for site in sites]
        assert _home_netns() == home  # the trio thread stayed in the test's namespace
        for t in transports:
            assert t.cloner is not None, t.unavailable_reason
        assert [t.local_address for t in transports] == [(site.ip, PORT) for site in sites]
        if warm:
            await _warm_up(transports)
        counters = [FanOutCounter(t) for t in transports]
        cloner_before = [_cloner_stats(t) for t in transports]
        fallbacks_before = [t.statistics().fallbacks for t in transports]
        sent_before = [t.statistics().datagrams_sent for t in transports]
        discovery = StaticDiscovery([t.local_address for t in transports])
        nodes: list[Gossiper[GossipEngine]] = []

        async def run_node(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with open_gossiper(
                discovery, counters[i], config, keyring=Keyring(key), rng=random.Random(i)
            ) as gossiper:
                nodes.append(gossiper)
                task_status.started()
                async for message in gossiper:
                    delivered[i][message.key] += 1
                    payloads[i][message.key] = message.data

        def complete() -> bool:
            return all(
                k in delivered[i]
                for k, (origin, _) in pushed.items()
                for i in range(len(sites))
                if i != origin
            )

        async with trio.open_nursery() as nursery:
            for i in range(len(sites)):
                await nursery.start(run_node, i)
            rng = random.Random(5)
            for m in range(MESSAGES):
                origin = rng.randrange(len(nodes))
                data = b"message %d from node %d " % (m, origin)
                data += rng.randbytes(rng.randrange(1, 900))
                pushed[await nodes[origin].push(data)] = (origin, data)
                await trio.sleep(0.02)
            while not complete():
                await trio.sleep(0.01)
            # Long enough for late copies (pull fallbacks, an anti-entropy round) to show up
            # as double deliveries if the engine let any through.
            await trio.sleep(1.2)
            node_stats = [g.statistics() for g in nodes]
            cloner_after = [_cloner_stats(t) for t in transports]
            udp_errors_after = _udp_errors(topo, sites)
            nursery.cancel_scope.cancel()
        attach_kinds = {t.cloner.attach_kind for t in transports if t.cloner is not None}
    # Every transport is closed: its program detached, its marker route removed.
    leftovers = {site.namespace: _leftovers(site) for site in sites}
    return ClusterRun(
        pushed=pushed,
        delivered=delivered,
        payloads=payloads,
        node_stats=node_stats,
        cloner_before=cloner_before,
        cloner_after=cloner_after,
        fallbacks_before=fallbacks_before,
        sent_before=sent_before,
        counters=counters,
        attach_kinds=attach_kinds,
        udp_errors_before=udp_errors_before,
        udp_errors_after=udp_errors_after,
        leftovers=leftovers,
    )


def _cloner_stats(t: EBPFTransport) -> ClonerStatistics:
    stats = t.cloner_statistics()
    assert stats is not None
    return stats


_CLONER_FIELDS = (
    "matched",
    "copies",
    "cloned",
    "clone_failed",
    "no_group",
    "bad_packet",
    "rewrite_failed",
)


def _delta(after: ClonerStatistics, before: ClonerStatistics) -> dict[str, int]:
    return {f: getattr(after, f) - getattr(before, f) for f in _CLONER_FIELDS}


def _fallback_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


@pytest.mark.parametrize("warm", [False, True], ids=["cold-start", "warm"])
async def test_encrypted_cluster_over_the_cloner_delivers_everything_once(
    topo: netns.Topology, warm: bool
) -> None:
    """``cold-start``: the nodes start with empty neighbour tables, so their first fan-outs
    meet unknown MACs and go through the loop (``unresolved_next_hop``) until the background
    refresh learns them. ``warm``: the MACs are known first, and then every fan-out of the
    cluster must go through the kernel: exactly one marker datagram per fan-out, one copy
    per address, no fallback."""
    result = await probe()
    if not result:
        pytest.skip(f"libbpf loader cannot load the cloner here: {result.reason}")
    with trio.fail_after(TIMEOUT):
        run = await _run_cluster(topo, warm=warm)

    # -- delivery: every message of the others, exactly once, intact
    assert len(run.pushed) == MESSAGES
    for i, got in enumerate(run.delivered):
        expected = {k for k, (origin, _) in run.pushed.items() if origin != i}
        assert set(got) == expected, f"node {i}"
        assert all(n == 1 for n in got.values()), f"node {i}: {got}"
        assert all(run.payloads[i][k] == run.pushed[k][1] for k in expected), f"node {i}"
    for i, s in enumerate(run.node_stats):
        assert s.engine.delivered == len(run.delivered[i])
        assert s.delivery_overflow == 0
        assert s.engine.dropped == {}, f"node {i}: {s.engine.dropped}"

    # -- the kernel made the copies, the counters agree
    deltas = [_delta(a, b) for a, b in zip(run.cloner_after, run.cloner_before, strict=True)]
    fallbacks = [
        _fallback_delta(s.transport.fallbacks, before)
        for s, before in zip(run.node_stats, run.fallbacks_before, strict=True)
    ]
    total = {f: sum(d[f] for d in deltas) for f in deltas[0]}
    total_fallbacks: Counter[str] = Counter()
    for f in fallbacks:
        total_fallbacks.update(f)
    fan_outs = sum(c.fan_outs for c in run.counters)
    copies = sum(c.copies for c in run.counters)
    print(
        f"\n{N} nodes, {MESSAGES} messages, {'warm' if warm else 'cold start'}, attach "
        f"{sorted(run.attach_kinds)}: {fan_outs} fan-outs of {copies} copies; cloner {total}; "
        f"fallbacks {dict(total_fallbacks)}; warm-up fallbacks "
        f"{sum(f.get('unresolved_next_hop', 0) for f in run.fallbacks_before)}"
    )
    assert total["cloned"] > 0
    assert total["clone_failed"] == total["rewrite_failed"] == 0
    assert total["no_group"] == total["bad_packet"] == 0
    for i, (d, f, c, s) in enumerate(
        zip(deltas, fallbacks, run.counters, run.node_stats, strict=True)
    ):
        assert d["copies"] == d["matched"] + d["cloned"], f"node {i}"  # the original: last
        # The transport counts the kernel's copies: its total is the engine's.
        assert s.transport.send_errors == 0, f"node {i}"
        sent = s.transport.datagrams_sent - run.sent_before[i]
        assert sent == s.engine.datagrams_sent, f"node {i}"
        if warm:
            assert f == {}, f"node {i}: {f}"
            assert (d["matched"], d["copies"]) == (c.fan_outs, c.copies), f"node {i}"
        else:
            # Only unknown MACs send copies through the loop; the first fan-out of every
            # node meets nothing but unknown peers.
            assert set(f) == {"unresolved_next_hop"}, f"node {i}: {f}"
            assert f["unresolved_next_hop"] >= 2, f"node {i}: {f}"
            # A fan-out's copies: the kernel's, the loop's, and a lone known peer's plain send.
            assert d["copies"] + f["unresolved_next_hop"] <= c.copies, f"node {i}"
    if warm:
        assert [f == {"unresolved_next_hop": N - 1} for f in run.fallbacks_before] == [True] * N
    # No copy had a bad checksum (TX offload off) or went to a port nobody listens on.
    assert run.udp_errors_after == run.udp_errors_before

    # -- teardown: nothing of the transports left in the namespaces
    assert run.leftovers == {ns: [] for ns in run.leftovers}
