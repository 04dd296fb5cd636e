"""The eBPF cloner transport in network namespaces (issue 5).

A sender, a bridge and 64 peers, each in its own namespace (``tests/netns.py``), built once
for the module; each test sends to the first K peers and checks that every one of them got
exactly one intact copy per fan-out, that the others got nothing, that no receiver saw a
bad UDP checksum (TX checksum offload is off on the sender's veth, so a wrong checksum is
dropped and counted), and that the program's counters match.

Everything skips with the reason when not root, when ``ip netns`` does not work, or when a
loader has nothing to load (no object: ``make bpf-object``; no bcc or kernel headers:
``scripts/bootstrap-system.sh``). A loader that has its inputs but fails is a failure.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from gossip.errors import LocalProtocolError
from gossip.transport.base import Address
from gossip.transport.ebpf import (
    MAX_PEERS,
    ClonerStatistics,
    EBPFTransport,
    _bpfsys,
    _netlink,
    default_object_path,
    default_source_path,
    open_ebpf_transport,
    probe,
)
from gossip.transport.ebpf.cloner import Loader, static_reason
from gossip.transport.udp import open_udp_transport
from tests import netns

pytestmark = pytest.mark.root

PORT = 47001
PORT2 = 47002  # a second socket on the first peers, for fan-outs of more than 64 addresses
ROUNDS = 20
TIMEOUT = 30
LOADERS: list[Loader] = ["libbpf", "bcc"]
REPO = Path(__file__).resolve().parents[1]


def _loader_skip_reason(loader: Loader) -> str | None:
    reason = static_reason(loader, default_object_path(), default_source_path())
    if reason is None and loader == "bcc":
        from gossip.transport.ebpf import _bcc_loader  # noqa: PLC0415

        if _bcc_loader.kernel_source() is None and not os.path.isdir(
            f"/lib/modules/{os.uname().release}/build/include"
        ):
            reason = "no kernel headers for bcc (scripts/bootstrap-system.sh prepares them)"
    return reason


@pytest.fixture(scope="module")
def topo() -> Iterator[netns.Topology]:
    reason = netns.skip_reason()
    if reason:
        pytest.skip(reason)
    topology = netns.build_star(MAX_PEERS)
    try:
        yield topology
    finally:
        topology.close()
        assert netns.namespaces_with_prefix(topology.prefix) == []
        # Every transport gave its marker route back: a count left here would keep a later
        # namespace (which may get this one's inode number) from removing its route.
        assert _netlink._marker_users == {}


@pytest.fixture(scope="module")
def receivers(topo: netns.Topology) -> Iterator[list[socket.socket]]:
    socks = topo.open_receivers(PORT)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def receivers2(topo: netns.Topology) -> Iterator[list[socket.socket]]:
    socks = topo.open_receivers(PORT2, count=6)
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


@contextlib.asynccontextmanager
async def sender(
    topo: netns.Topology, loader: Loader = "libbpf", **kw: Any
) -> AsyncIterator[EBPFTransport]:
    """An eBPF transport in the sender's namespace (its socket and worker threads are there;
    the trio thread never is)."""
    reason = _loader_skip_reason(loader)
    if reason and "object_path" not in kw:
        pytest.skip(f"{loader} loader: {reason}")
    async with open_ebpf_transport(
        netns.SENDER_IP, 0, interface=netns.SENDER_IF, loader=loader, namespace=topo.sender, **kw
    ) as transport:
        yield transport


def drain(socks: Sequence[socket.socket]) -> list[list[tuple[bytes, Address]]]:
    got: list[list[tuple[bytes, Address]]] = []
    for s in socks:
        items = []
        while True:
            try:
                data, addr = s.recvfrom(65535)
            except BlockingIOError:
                break
            items.append((data, (addr[0], addr[1])))
        got.append(items)
    return got


async def collect(
    socks: Sequence[socket.socket], expected: Sequence[int], settle: float = 0.05
) -> list[list[tuple[bytes, Address]]]:
    """Drain the sockets until socket i has ``expected[i]`` datagrams (at most 5 s), then a
    little longer to catch extras."""
    got: list[list[tuple[bytes, Address]]] = [[] for _ in socks]
    deadline = trio.current_time() + 5
    while True:
        for items, more in zip(got, drain(socks), strict=True):
            items.extend(more)
        if trio.current_time() > deadline or all(
            len(items) >= want for items, want in zip(got, expected, strict=True)
        ):
            break
        await trio.sleep(0.01)
    await trio.sleep(settle)
    for items, more in zip(got, drain(socks), strict=True):
        items.extend(more)
    return got


async def warm(transport: EBPFTransport, addrs: Sequence[Address]) -> None:
    """One fan-out through the fallback loop makes the kernel resolve the peers; then wait
    until the transport knows every next-hop MAC."""
    await transport.send_many(b"warm-up", addrs)
    with trio.fail_after(5):
        while True:
            await trio.sleep(0.02)
            await transport.refresh_next_hops()
            if all(transport.next_hop(host) is not None for host, _ in addrs if ":" not in host):
                return


def csum_errors(topo: netns.Topology, peers: int) -> list[int]:
    return [topo.udp_counters(ns)["InCsumErrors"] for ns in topo.peers[:peers]]


def delta(after: ClonerStatistics | None, before: ClonerStatistics | None) -> dict[str, int]:
    assert after is not None and before is not None
    return {
        k: getattr(after, k) - getattr(before, k)
        for k in (
            "matched",
            "copies",
            "cloned",
            "clone_failed",
            "no_group",
            "bad_packet",
            "rewrite_failed",
        )
    }


# --------------------------------------------------------------------------------------------
# Exact copies


@pytest.mark.parametrize("k", [3, 8, 12, 32, 64])
@pytest.mark.parametrize("loader", LOADERS)
async def test_exact_copies(
    topo: netns.Topology, receivers: list[socket.socket], loader: Loader, k: int
) -> None:
    addrs = [(ip, PORT) for ip in topo.peer_ips[:k]]
    rng = random.Random(k)
    # Odd and even lengths, up to the largest unfragmented datagram (MTU 1500 - 28).
    payloads = [rng.randbytes(1472 if r == 0 else rng.randrange(1, 1473)) for r in range(ROUNDS)]
    with trio.fail_after(TIMEOUT):
        async with sender(topo, loader) as t:
            assert t.cloner is not None, t.unavailable_reason
            assert t.cloner.loader == loader
            await warm(t, addrs)
            drain(receivers)
            csum_before = csum_errors(topo, k)
            stats_before, cloner_before = t.statistics(), t.cloner_statistics()
            for payload in payloads:
                await t.send_many(payload, addrs)
            got = await collect(receivers, [ROUNDS] * k + [0] * (MAX_PEERS - k))
            stats_after, cloner_after = t.statistics(), t.cloner_statistics()
            source = (netns.SENDER_IP, t.local_address[1])

    for i, items in enumerate(got):
        if i < k:
            assert [d for d, _ in items] == payloads, f"peer {i} of {k}: {len(items)} datagrams"
            assert {a for _, a in items} == {source}
        else:
            assert items == [], f"peer {i} is not in the group of {k} but got {len(items)}"
    assert csum_errors(topo, k) == csum_before
    assert stats_after.fallbacks == stats_before.fallbacks
    assert stats_after.datagrams_sent - stats_before.datagrams_sent == ROUNDS * k
    assert stats_after.send_errors == stats_before.send_errors
    assert delta(cloner_after, cloner_before) == {
        "matched": ROUNDS,
        "copies": ROUNDS * k,
        "cloned": ROUNDS * (k - 1),
        "clone_failed": 0,
        "no_group": 0,
        "bad_packet": 0,
        "rewrite_failed": 0,
    }


async def test_more_than_64_addresses_are_split(
    topo: netns.Topology, receivers: list[socket.socket], receivers2: list[socket.socket]
) -> None:
    addrs = [(ip, PORT) for ip in topo.peer_ips] + [(ip, PORT2) for ip in topo.peer_ips[:6]]
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as t:
            await warm(t, addrs)
            drain(receivers)
            drain(receivers2)
            before = t.cloner_statistics()
            for r in range(5):
                await t.send_many(b"big group %d" % r, addrs)
            got = await collect([*receivers, *receivers2], [5] * (MAX_PEERS + 6))
            # The warm-up met 70 unknown addresses (64 hosts).
            assert t.statistics().fallbacks == {"unresolved_next_hop": 70}
            d = delta(t.cloner_statistics(), before)
    assert all(len(items) == 5 for items in got), [len(items) for items in got]
    assert d["matched"] == 10 and d["copies"] == 5 * 70 and d["clone_failed"] == 0


async def test_concurrent_fan_outs_do_not_mix(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    """Two tasks fanning out to different groups: the group map update and the marker send
    must not interleave, or one task's datagram would reach the other task's peers."""
    group_a = [(ip, PORT) for ip in topo.peer_ips[0:8]]
    group_b = [(ip, PORT) for ip in topo.peer_ips[8:16]]
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as t:
            await warm(t, group_a + group_b)
            drain(receivers)

            async def blast(tag: bytes, group: list[Address]) -> None:
                for r in range(100):
                    await t.send_many(tag + b"%d" % r, group)
                    if r % 7 == 0:
                        await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blast, b"A", group_a)
                nursery.start_soon(blast, b"B", group_b)
            got = await collect(receivers[:16], [100] * 16)
    for i, items in enumerate(got):
        tag = b"A" if i < 8 else b"B"
        assert len(items) == 100, (i, len(items))
        assert all(d.startswith(tag) for d, _ in items), i


async def test_two_transports_on_one_interface(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    """Each transport attaches its own program; each program clones only its owner's marker
    datagrams and passes the other's on down the chain. Closing one leaves the other (and
    the shared marker route) working."""
    group_a = [(ip, PORT) for ip in topo.peer_ips[0:5]]
    group_b = [(ip, PORT) for ip in topo.peer_ips[5:12]]
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as a:
            await warm(a, group_a)
            async with open_ebpf_transport(
                netns.SENDER_IP,
                0,
                interface=netns.SENDER_IF,
                require_cloner=True,
                namespace=topo.sender,
            ) as b:
                await warm(b, group_b)
                drain(receivers)
                a0, b0 = a.cloner_statistics(), b.cloner_statistics()
                for r in range(10):
                    await a.send_many(b"A%d" % r, group_a)
                    await b.send_many(b"B%d" % r, group_b)
                got = await collect(receivers[:12], [10] * 12)
                da, db = delta(a.cloner_statistics(), a0), delta(b.cloner_statistics(), b0)
            # b is closed: a goes on cloning through the marker route they shared.
            drain(receivers)
            await a.send_many(b"after", group_a)
            after = await collect(receivers[:5], [1] * 5)
    for i, items in enumerate(got):
        tag = b"A" if i < 5 else b"B"
        assert len(items) == 10 and all(d.startswith(tag) for d, _ in items), (i, items[:2])
    assert (da["copies"], db["copies"]) == (50, 70)
    assert [[d for d, _ in items] for items in after] == [[b"after"]] * 5


# --------------------------------------------------------------------------------------------
# Fallbacks, counted


async def test_first_fan_out_falls_back_until_next_hops_are_known(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    addrs = [(ip, PORT) for ip in topo.peer_ips[:4]]
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as t:
            drain(receivers)
            await t.send_many(b"first", addrs)
            assert t.statistics().fallbacks == {"unresolved_next_hop": 4}
            got = await collect(receivers[:4], [1] * 4)
            assert [len(x) for x in got] == [1] * 4
            # The background task resolves them soon after the miss, without being asked.
            with trio.fail_after(3):
                while any(t.next_hop(h) is None for h, _ in addrs):
                    await trio.sleep(0.02)
            before = t.cloner_statistics()
            await t.send_many(b"second", addrs)
            assert t.statistics().fallbacks == {"unresolved_next_hop": 4}
            assert delta(t.cloner_statistics(), before)["copies"] == 4


async def test_oversize_ipv6_and_other_interface_fall_back(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    addrs = [(ip, PORT) for ip in topo.peer_ips[:3]]
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as t:
            await warm(t, addrs)
            drain(receivers)
            base = dict(t.statistics().fallbacks)
            before = t.cloner_statistics()
            # Larger than the MTU: the loop sends it (fragmented), the cloner never sees it.
            await t.send_many(b"x" * 1473, addrs)
            # An IPv6 peer and our own address (routed through lo) go through the loop; the
            # three IPv4 peers on the segment are still cloned. Our address is first met as
            # unresolved, and known to leave through another interface after a refresh.
            mixed = [*addrs, ("2001:db8::1", PORT), (netns.SENDER_IP, 9)]
            await t.send_many(b"mixed", mixed)
            await t.refresh_next_hops()
            await t.send_many(b"mixed", mixed)
            got = await collect(receivers[:3], [3] * 3)
            fallbacks = t.statistics().fallbacks
            d = delta(t.cloner_statistics(), before)
    assert [sorted(len(d) for d, _ in items) for items in got] == [[5, 5, 1473]] * 3
    assert fallbacks["oversize"] - base.get("oversize", 0) == 3
    assert fallbacks["ipv6"] - base.get("ipv6", 0) == 2
    assert fallbacks["unresolved_next_hop"] - base.get("unresolved_next_hop", 0) == 1
    assert fallbacks["other_interface"] - base.get("other_interface", 0) == 1
    assert d["matched"] == 2 and d["copies"] == 6


async def test_single_peer_is_a_plain_send(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    with trio.fail_after(TIMEOUT):
        async with sender(topo) as t:
            await warm(t, [(topo.peer_ips[0], PORT), (topo.peer_ips[1], PORT)])
            drain(receivers)
            before = t.cloner_statistics()
            await t.send_many(b"one", [(topo.peer_ips[0], PORT)])
            got = await collect(receivers[:1], [1])
            assert delta(t.cloner_statistics(), before)["matched"] == 0
    assert len(got[0]) == 1


async def test_unavailable_cloner_falls_back_with_a_reason(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    addrs = [(ip, PORT) for ip in topo.peer_ips[:3]]
    missing = "/nonexistent/cloner.o"
    with trio.fail_after(TIMEOUT):
        async with sender(topo, object_path=missing) as t:
            assert t.cloner is None and t.cloner_statistics() is None
            assert t.unavailable_reason is not None and missing in t.unavailable_reason
            drain(receivers)
            await t.send_many(b"plain", addrs)
            await t.send_many(b"plain", addrs)
            assert t.statistics().fallbacks == {"cloner_unavailable": 6}
            got = await collect(receivers[:3], [2] * 3)
        assert [len(x) for x in got] == [2, 2, 2]
        with pytest.raises(LocalProtocolError, match="cannot run"):
            async with sender(topo, object_path=missing, require_cloner=True):
                pass  # pragma: no cover


async def test_probe(topo: netns.Topology) -> None:
    if _loader_skip_reason("libbpf"):
        pytest.skip(_loader_skip_reason("libbpf") or "")
    assert await probe(netns.SENDER_IF, namespace=topo.sender)
    result = await probe("gzx-nonexistent", namespace=topo.sender)
    assert not result and "gzx-nonexistent" in result.reason
    # The sender's interface exists only in its namespace.
    result = await probe(netns.SENDER_IF)
    assert not result and netns.SENDER_IF in result.reason
    result = await probe(object_path="/nonexistent/cloner.o")
    assert not result and "make bpf-object" in result.reason


async def test_udp_transport_in_a_namespace(
    topo: netns.Topology, receivers: list[socket.socket]
) -> None:
    """``namespace=`` makes the socket there (the sender's address exists nowhere else) while
    the trio thread stays in its own namespace."""
    home = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(OSError, match="assign"):
        await open_udp_transport(netns.SENDER_IP, 0)
    with pytest.raises(FileNotFoundError):
        await open_udp_transport(netns.SENDER_IP, 0, namespace="gzx-no-such-namespace")
    async with await open_udp_transport(netns.SENDER_IP, 0, namespace=topo.sender) as t:
        assert os.stat("/proc/thread-self/ns/net").st_ino == home
        drain(receivers)
        await t.send(b"from the sender", (topo.peer_ips[0], PORT))
        got = await collect(receivers[:1], [1])
    assert got == [[(b"from the sender", (netns.SENDER_IP, t.local_address[1]))]]


async def test_closed_transport_refuses_sends(topo: netns.Topology) -> None:
    async with sender(topo) as t:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await t.send_many(b"late", [(topo.peer_ips[0], PORT), (topo.peer_ips[1], PORT)])
    # The program is gone with the transport.
    assert await netns.acall_in(topo.sender, _sender_programs) == []


# --------------------------------------------------------------------------------------------
# Attachments outlive nothing they should not

_OWNER = """
import sys, trio
from gossip.transport.ebpf import open_ebpf_transport

async def main():
    async with open_ebpf_transport(
        sys.argv[1], 0, interface=sys.argv[2], attach=sys.argv[3], require_cloner=True
    ) as t:
        print(t.cloner.prog_id, flush=True)
        await trio.sleep_forever()

trio.run(main)
"""


def _start_owner(topo: netns.Topology, attach: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            topo.sender,
            sys.executable,
            "-c",
            _OWNER,
            netns.SENDER_IP,
            netns.SENDER_IF,
            attach,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"owner process failed: {err}")
    return proc, int(line)


def _sender_programs() -> list[int]:
    """The programs at the tcx egress hook of the sender's veth (call in its namespace)."""
    return _bpfsys.prog_query(socket.if_nametoindex(netns.SENDER_IF))


def _kill(proc: subprocess.Popen[str]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)


def _egress_filters(topo: netns.Topology) -> str:
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            topo.sender,
            "tc",
            "filter",
            "show",
            "dev",
            netns.SENDER_IF,
            "egress",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout


def test_tcx_link_detaches_when_the_owner_is_killed(topo: netns.Topology) -> None:
    if _loader_skip_reason("libbpf"):
        pytest.skip(_loader_skip_reason("libbpf") or "")
    proc, prog = _start_owner(topo, "tcx")
    try:
        assert prog in netns.call_in(topo.sender, _sender_programs)
    finally:
        _kill(proc)
    deadline = time.monotonic() + 5
    while prog in netns.call_in(topo.sender, _sender_programs) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert prog not in netns.call_in(topo.sender, _sender_programs)


async def test_stale_clsact_filter_is_removed_at_start(topo: netns.Topology) -> None:
    if _loader_skip_reason("libbpf"):
        pytest.skip(_loader_skip_reason("libbpf") or "")
    proc, _prog = _start_owner(topo, "clsact")
    _kill(proc)
    stale = f"gossip_cloner-{proc.pid}"
    # A classic filter outlives its process (and would go on cloning with its last groups).
    assert stale in _egress_filters(topo)
    async with sender(topo, attach="clsact") as t:
        assert t.cloner is not None and t.cloner.attach_kind == "clsact"
        shown = _egress_filters(topo)
        assert stale not in shown and f"gossip_cloner-{os.getpid()}" in shown
    assert "gossip_cloner" not in _egress_filters(topo)


class _FakeMsg:
    def __init__(self, **attrs: str) -> None:
        self._attrs = attrs

    def get_attr(self, name: str) -> str | None:
        return self._attrs.get(name)


class _FakeIPR:
    def __init__(self, gateways: list[str], neighbours: dict[str, str]) -> None:
        self.gateways, self.neighbours = gateways, neighbours

    def get_routes(self, family: int) -> list[_FakeMsg]:
        return [_FakeMsg(RTA_GATEWAY=g) for g in self.gateways]

    def get_neighbours(self, family: int, dst: str) -> list[_FakeMsg]:
        mac = self.neighbours.get(dst)
        return [_FakeMsg(NDA_LLADDR=mac)] if mac else []


def test_marker_that_is_a_real_host_is_refused() -> None:
    """Taking over a gateway's or a live neighbour's address would blackhole it."""
    from gossip.errors import LocalProtocolError  # noqa: PLC0415
    from gossip.transport.ebpf._netlink import _refuse_live_marker  # noqa: PLC0415

    ours = bytes.fromhex("020000000001")
    with pytest.raises(LocalProtocolError, match="gateway"):
        _refuse_live_marker(_FakeIPR(["192.0.2.1"], {}), "192.0.2.1", ours)
    with pytest.raises(LocalProtocolError, match="live neighbour"):
        _refuse_live_marker(_FakeIPR([], {"10.9.9.9": "aa:bb:cc:dd:ee:ff"}), "10.9.9.9", ours)
    # Our own permanent entry from an earlier transport is fine.
    _refuse_live_marker(_FakeIPR(["10.0.0.1"], {"10.9.9.9": ours.hex(":")}), "10.9.9.9", ours)
