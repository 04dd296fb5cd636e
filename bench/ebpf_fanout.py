"""Sender CPU per broadcast round: the eBPF cloner against per-datagram sends (issue 5).

Run as root: ``.venv/bin/python -m bench.ebpf_fanout [--reps 7] [--block 0.2]``.

Topology (``tests/netns.py`` ``build_sink``): a sender namespace whose veth leads to a sink
namespace that drops every copy in its receive path; the K peers exist only as permanent
neighbour entries with made-up MACs, so every copy leaves the sender and nothing answers.
TX checksum offload stays on, as on real NICs.

Modes, all with trio, the same 256-byte datagram, interleaved in every repetition (shuffled
order) so that machine noise hits them alike; the table shows medians over repetitions:

* ``trio socket``: ``await sock.sendto()`` per peer on a ``trio.socket`` (the issue's baseline);
* ``UDP loop``: ``UDPTransport.send_many``, one stdlib ``sendto()`` per peer;
* ``cloner``: ``EBPFTransport.send_many``, one map update (skipped when the group is
  unchanged, as in a steady fan-out to the same peers) and one ``sendto()``;
* ``cloner, new group``: as ``cloner`` but alternating between two groups of K, so every
  round also writes the group map.

"process" is the process's CPU time (``time.process_time``: user + system, all threads) per
round; "machine" is all CPUs' busy time from ``/proc/stat`` (user, system, irq, softirq) per
round, which also catches softirq work outside the process (10 ms ticks, so each measurement
runs for ``--block`` seconds; the machine figure includes this idle benchmark's own noise).

Also measured: the libbpf loader's start (open + load + attach + config + marker route, in a
worker thread) and a full ``open_ebpf_transport``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import os
import platform
import random
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import trio

from gossip.transport import _netns
from gossip.transport.base import Address
from gossip.transport.ebpf import Cloner, EBPFTransport, open_ebpf_transport
from gossip.transport.udp import UDPTransport, open_udp_transport
from tests import netns

KS = (3, 8, 12, 32, 64)
PAYLOAD = 256
PORT = 9


def proc_stat_busy() -> int:
    """Busy jiffies of all CPUs (user nice system irq softirq steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq + steal


SendFn = Callable[[bytes, list[Address]], Awaitable[None]]


async def measure(fn: SendFn, groups: list[list[Address]], seconds: float) -> tuple[float, ...]:
    """Send for about ``seconds`` of wall time; per round: process CPU seconds, machine busy
    seconds, wall seconds; and the number of rounds."""
    data = os.urandom(PAYLOAD)
    hz = os.sysconf("SC_CLK_TCK")
    n = len(groups)
    rounds = 0
    gc.disable()
    try:
        s0, p0, w0 = proc_stat_busy(), time.process_time(), time.perf_counter()
        end = w0 + seconds
        while True:
            for r in range(16):
                await fn(data, groups[r % n])
            rounds += 16
            if time.perf_counter() >= end:
                break
        w1, p1, s1 = time.perf_counter(), time.process_time(), proc_stat_busy()
    finally:
        gc.enable()
    return (p1 - p0) / rounds, (s1 - s0) / hz / rounds, (w1 - w0) / rounds, rounds


async def loader_start(interface: str, repeats: int) -> tuple[float, float]:
    """Median seconds of ``Cloner.open`` + ``close`` (libbpf), and of ``open_ebpf_transport``."""
    handle = _netns.NetnsHandle.current()
    opens = []
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            cloner = await trio.to_thread.run_sync(
                functools.partial(_netns.run_in, handle, functools.partial(Cloner.open, interface))
            )
            opens.append(time.perf_counter() - t0)
            await trio.to_thread.run_sync(functools.partial(_netns.run_in, handle, cloner.close))
    finally:
        handle.close()
    transports = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        async with open_ebpf_transport(netns.SENDER_IP, 0, interface=interface) as t:
            transports.append(time.perf_counter() - t0)
            assert t.cloner is not None, t.unavailable_reason
    return statistics.median(opens), statistics.median(transports)


async def run(args: argparse.Namespace, topo: netns.Topology) -> None:
    t0 = time.perf_counter()
    import pyroute2  # noqa: F401, PLC0415 (timed: the transport imports it on first use)

    pyroute2_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    async with open_ebpf_transport(netns.SENDER_IP, 0, interface=netns.SENDER_IF) as ebpf:
        first_open = time.perf_counter() - t0
        if ebpf.cloner is None:
            print(f"bench.ebpf_fanout: skipped: the cloner cannot run: {ebpf.unavailable_reason}")
            return
        udp: UDPTransport = await open_udp_transport(netns.SENDER_IP, 0)
        tsock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await tsock.bind((netns.SENDER_IP, 0))
        async with udp:
            with tsock:
                await _measure_all(args, topo, ebpf, udp, tsock)
    start, transport_open = await loader_start(netns.SENDER_IF, 10)
    print()
    print(
        f"libbpf loader start (load + attach + config + marker route), median of 10: "
        f"{start * 1e3:.1f} ms"
    )
    print(
        f"open_ebpf_transport (pyroute2 already imported), median of 10: "
        f"{transport_open * 1e3:.1f} ms"
    )
    print(
        f"first open_ebpf_transport in the process: {first_open * 1e3:.1f} ms "
        f"(after importing pyroute2: {pyroute2_import * 1e3:.0f} ms)"
    )


async def _measure_all(
    args: argparse.Namespace,
    topo: netns.Topology,
    ebpf: EBPFTransport,
    udp: UDPTransport,
    tsock: trio.socket.SocketType,
) -> None:
    async def trio_loop(data: bytes, addrs: list[Address]) -> None:
        for addr in addrs:
            await tsock.sendto(data, addr)

    modes: dict[str, SendFn] = {
        "trio socket": trio_loop,
        "UDP loop": udp.send_many,
        "cloner": ebpf.send_many,
        "cloner, new group": ebpf.send_many,
    }
    ks = args.ks
    groups = {k: [[(ip, PORT) for ip in topo.peer_ips[:k]]] for k in ks}
    # A second group of K for "new group": the same peers, another port, so it differs.
    alt = {k: [groups[k][0], [(ip, PORT + 1) for ip in topo.peer_ips[:k]]] for k in ks}
    # Warm up: next hops known, caches hot.
    for k in ks:
        for g in alt[k]:
            await ebpf.send_many(b"warm", g)
    await ebpf.refresh_next_hops()
    before = ebpf.statistics().fallbacks
    cstats0 = ebpf.cloner_statistics()
    results: dict[tuple[int, str], list[tuple[float, ...]]] = {}
    rng = random.Random(1)
    expected_copies = 0
    for rep in range(args.reps):
        for k in ks:
            order = list(modes)
            rng.shuffle(order)
            for mode in order:
                g = alt[k] if mode == "cloner, new group" else groups[k]
                result = await measure(modes[mode], g, args.block)
                results.setdefault((k, mode), []).append(result)
                if mode.startswith("cloner"):
                    expected_copies += int(result[3]) * k
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr)
    cstats = ebpf.cloner_statistics()
    assert cstats is not None and cstats0 is not None
    copies = cstats.copies - cstats0.copies
    lost = cstats.clone_failed - cstats0.clone_failed
    print()
    print(f"# eBPF cloner fan-out, sender CPU per broadcast round ({PAYLOAD}-byte datagram)")
    print(
        f"# {datetime.date.today()} · {platform.node()} · {platform.platform()} · "
        f"{os.cpu_count()} CPUs · {_cpu_model()} · Python {platform.python_version()}"
    )
    print(f"# {args.reps} repetitions x {args.block} s per mode and K, interleaved; medians")
    print()
    print(
        "| K | mode | process CPU / round | machine CPU / round | wall / round "
        "| vs UDP loop | vs trio socket |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in ks:
        base = statistics.median(r[0] for r in results[(k, "UDP loop")])
        trio_base = statistics.median(r[0] for r in results[(k, "trio socket")])
        for mode in modes:
            rows = results[(k, mode)]
            proc = statistics.median(r[0] for r in rows)
            mach = statistics.median(r[1] for r in rows)
            wall = statistics.median(r[2] for r in rows)
            print(
                f"| {k} | {mode} | {proc * 1e6:.1f} us | {mach * 1e6:.1f} us | "
                f"{wall * 1e6:.1f} us | {proc / base:.2f}x | {proc / trio_base:.2f}x |"
            )
    print()
    print(
        f"cloner copies handed out: {copies} (expected {expected_copies}), failed clones: {lost}; "
        f"fallbacks during the runs: "
        f"{ {k: v - before.get(k, 0) for k, v in ebpf.statistics().fallbacks.items()} }"
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--block", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=list(KS))
    args = parser.parse_args()
    reason = netns.skip_reason()
    if reason:
        print(f"bench.ebpf_fanout: skipped: {reason}")
        return
    topo = netns.build_sink(max(args.ks))
    try:
        with netns.inside(topo.sender):
            trio.run(run, args, topo)
    finally:
        topo.close()
        left = netns.namespaces_with_prefix(topo.prefix)
        if left:
            print(f"namespaces left behind: {left}", file=sys.stderr)


if __name__ == "__main__":
    main()
