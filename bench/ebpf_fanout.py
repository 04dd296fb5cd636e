"""Sender CPU per broadcast round: the eBPF cloner against per-datagram sends (issue 5).

Run as root: ``.venv/bin/python -m bench.ebpf_fanout [--reps 7] [--block 0.2] [--sink wire]``.

Topology (``tests/netns.py`` ``build_sink``): a sender namespace whose veth leads to a sink
namespace; the K peers exist only as permanent neighbour entries with made-up MACs, so every
copy leaves the sender and nothing answers. TX checksum offload stays on, as on real NICs.

Where the copies die matters, because veth has no wire: its transmit function hands each frame
to the peer device's receive path, which runs in the sender's context (the NET_RX softirq runs
when the sending system call re-enables bottom halves) and is charged to the sender's CPU time.
A real NIC's transmit ends at the driver. So by default (``--sink wire``) the sink's veth end
has MTU 68 and the sender's veth transmit function drops each frame as too big for the peer:
the sender pays its whole transmit path, the driver call and the buffer free included (what a
TX completion would free), and no receive path. ``--sink stack`` is the earlier topology: the
frames enter the sink's receive path (backlog, softirq, ``ip_rcv``, which drops them at its
first check: addressed to another host's MAC; no netfilter, conntrack, routing or ICMP). That
path costs the UDP loop more per datagram than the cloner (one softirq run per ``sendto()``
against one per fan-out), so it does not favour the cloner; it just is not sender work. An
XDP drop on the sink's veth end is no earlier: veth then copies each frame for XDP. Both modes
of a run always see the same sink, and the run checks that the sender's veth saw exactly the
frames the modes sent (``tx_dropped`` with ``--sink wire``, ``tx_packets`` with ``stack``).

The cloner's program is attached to the sender's first veth. Attached, it costs every other
datagram on that interface about 0.15 us here (the tcx hook and the program's first exit), so
the per-datagram baselines send to the same K peers' twin addresses through an identical second
veth without a program (``build_sink``'s twin): an installation without the cloner has none.

Modes, all with the same 256-byte datagram, interleaved in every repetition (shuffled order)
so that machine noise hits them alike; the tables show medians over repetitions:

* ``trio socket``: ``await sock.sendto()`` per peer on a ``trio.socket`` (the issue's baseline);
* ``UDP loop``: ``UDPTransport.send_many``, one stdlib ``sendto()`` per peer (our fallback);
* ``UDP loop, program attached``: the same through the cloner's interface (what every
  datagram the cloner does not fan out pays: the cloner transport's fallbacks, single sends);
* ``cloner``: ``EBPFTransport.send_many``, one map update (skipped when the group is
  unchanged, as in a steady fan-out to the same peers) and one ``sendto()``;
* ``cloner, new group``: as ``cloner`` but alternating between two groups of K, so every
  round also writes the group map;
* ``floor: K sendto()``: a bare Python loop of K stdlib ``socket.sendto()`` calls, no trio, no
  transport, no program: the kernel's price for K datagrams plus the least Python can add;
* ``floor: cloner``: one bare stdlib ``socket.sendto()`` to the marker per round, with the
  transport's program attached and the group map written once before the measurement (so
  unchanged): the kernel's price for one datagram and K - 1 clones.

"process" is the process's CPU time (``time.process_time``: user + system, all threads, read
from the scheduler's runtime, so softirq work done in the process's context is included) per
round; "machine" is all CPUs' busy time from ``/proc/stat`` (user, system, irq, softirq) per
round (10 ms ticks, so each measurement runs for ``--block`` seconds). The machine figure also
counts every other job on the machine; compare the process column. The transport's background
next-hop refresh is turned off during the run (it would charge netlink work to random blocks);
the warm-up refreshes once.

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
import struct
import sys
import time
from collections.abc import Awaitable, Callable

import attrs
import trio

from gossip.transport import _netns
from gossip.transport.base import Address
from gossip.transport.ebpf import Cloner, EBPFTransport, open_ebpf_transport
from gossip.transport.udp import UDPTransport, open_udp_transport
from tests import netns

KS = (3, 8, 12, 32, 64)
PAYLOAD = 256
PORT = 9
TARGET_K = 8
TARGET_RATIO = 0.25

TRANSPORT_MODES = (
    "trio socket",
    "UDP loop",
    "UDP loop, program attached",
    "cloner",
    "cloner, new group",
)
# Modes that send through the cloner's interface (the others use the twin).
VIA_CLONER_IF = ("UDP loop, program attached", "cloner", "cloner, new group", "floor: cloner")
FLOOR_LOOP = "floor: K sendto()"
FLOOR_CLONER = "floor: cloner"
MODES = (*TRANSPORT_MODES, FLOOR_LOOP, FLOOR_CLONER)
DEVICES = (netns.SENDER_IF, netns.TWIN_IF)


def proc_stat_busy() -> int:
    """Busy jiffies of all CPUs (user nice system irq softirq steal)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return user + nice + system + irq + softirq + steal


SendFn = Callable[[bytes, list[Address]], Awaitable[None]]
#: Runs the given number of rounds with plain blocking calls.
RoundsFn = Callable[[int], None]

Result = tuple[float, float, float, int]


class _Window:
    """Counters around a measured loop (GC off meanwhile): process CPU, machine busy, wall."""

    def __init__(self, seconds: float) -> None:
        gc.disable()
        self.start = proc_stat_busy(), time.process_time(), time.perf_counter()
        self.end = self.start[2] + seconds

    def result(self, rounds: int) -> Result:
        w1, p1, s1 = time.perf_counter(), time.process_time(), proc_stat_busy()
        gc.enable()
        s0, p0, w0 = self.start
        hz = os.sysconf("SC_CLK_TCK")
        return (p1 - p0) / rounds, (s1 - s0) / hz / rounds, (w1 - w0) / rounds, rounds


async def measure(fn: SendFn, groups: list[list[Address]], seconds: float) -> Result:
    """Send for about ``seconds`` of wall time; per round: process CPU seconds, machine busy
    seconds, wall seconds; and the number of rounds."""
    data = os.urandom(PAYLOAD)
    n = len(groups)
    rounds = 0
    window = _Window(seconds)
    try:
        while True:
            for r in range(16):
                await fn(data, groups[r % n])
            rounds += 16
            if time.perf_counter() >= window.end:
                return window.result(rounds)
    finally:
        gc.enable()


def measure_rounds(fn: RoundsFn, seconds: float) -> Result:
    """As :func:`measure`, for the floor: ``fn(16)`` runs 16 rounds of bare system calls."""
    rounds = 0
    window = _Window(seconds)
    try:
        while True:
            fn(16)
            rounds += 16
            if time.perf_counter() >= window.end:
                return window.result(rounds)
    finally:
        gc.enable()


async def loader_start(namespace: str, interface: str, repeats: int) -> tuple[float, float]:
    """Median seconds of ``Cloner.open`` + ``close`` (libbpf), and of ``open_ebpf_transport``."""
    handle = _netns.NetnsHandle.named(namespace)
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
        async with open_ebpf_transport(
            netns.SENDER_IP, 0, interface=interface, namespace=namespace
        ) as t:
            transports.append(time.perf_counter() - t0)
            assert t.cloner is not None, t.unavailable_reason
    return statistics.median(opens), statistics.median(transports)


async def run(args: argparse.Namespace, topo: netns.Topology) -> None:
    t0 = time.perf_counter()
    import pyroute2  # noqa: F401, PLC0415 (timed: the transport imports it on first use)

    pyroute2_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    # No background refresh during the run: the warm-up refreshes once (see the docstring).
    # Every socket is made in the sender's namespace by another thread; this one stays home.
    ns = topo.sender
    async with open_ebpf_transport(
        netns.SENDER_IP,
        0,
        interface=netns.SENDER_IF,
        refresh_interval=24 * 3600,
        namespace=ns,
    ) as ebpf:
        first_open = time.perf_counter() - t0
        if ebpf.cloner is None:
            print(f"bench.ebpf_fanout: skipped: the cloner cannot run: {ebpf.unavailable_reason}")
            return
        udp = await open_udp_transport(netns.TWIN_IP, 0, namespace=ns)
        udp_attached = await open_udp_transport(netns.SENDER_IP, 0, namespace=ns)
        tsock = trio.socket.from_stdlib_socket(netns.call_in(ns, _bound(netns.TWIN_IP)))
        loop_sock = netns.call_in(ns, _bound(netns.TWIN_IP))
        marker_sock = netns.call_in(ns, _bound(netns.SENDER_IP))
        async with udp, udp_attached:
            with tsock, loop_sock, marker_sock:
                await _measure_all(
                    args,
                    topo,
                    ebpf,
                    Senders(udp, udp_attached, tsock, loop_sock, marker_sock),
                )
    start, transport_open = await loader_start(ns, netns.SENDER_IF, 10)
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


def _bound(host: str) -> Callable[[], socket.socket]:
    """A function that makes a non-blocking UDP socket bound to ``(host, 0)``."""

    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        sock.setblocking(False)
        return sock

    return bind


@attrs.frozen
class Senders:
    """What the modes send with (all bound in the sender's namespace)."""

    #: UDP loop (twin interface) and UDP loop through the cloner's interface.
    udp: UDPTransport
    udp_attached: UDPTransport
    #: trio socket mode (twin interface).
    tsock: trio.socket.SocketType
    #: The floor's K sendto() (twin interface) and its marker sendto() (cloner's interface).
    loop_sock: socket.socket
    marker_sock: socket.socket


def _floor_fns(
    loop_sock: socket.socket, marker_sock: socket.socket, marker: Address, addrs: list[Address]
) -> tuple[RoundsFn, RoundsFn]:
    """The floor's rounds: K bare ``sendto()`` calls, and one to the marker."""
    data = os.urandom(PAYLOAD)
    loop_sendto = loop_sock.sendto
    marker_sendto = marker_sock.sendto

    def loop(rounds: int) -> None:
        for _ in range(rounds):
            for addr in addrs:
                loop_sendto(data, addr)

    def cloned(rounds: int) -> None:
        for _ in range(rounds):
            marker_sendto(data, marker)

    return loop, cloned


def _packed_group(ebpf: EBPFTransport, addrs: list[Address]) -> bytes:
    """The cloner's entries for ``addrs`` (IPv4, port, next-hop MAC), as the transport packs
    them."""
    entries = []
    for host, port in addrs:
        mac = ebpf.next_hop(host)
        assert mac is not None, f"no next hop for {host}"
        entries.append(socket.inet_aton(host) + struct.pack("!H", port) + mac)
    return b"".join(entries)


async def _measure_all(
    args: argparse.Namespace,
    topo: netns.Topology,
    ebpf: EBPFTransport,
    senders: Senders,
) -> None:
    tsock = senders.tsock

    async def trio_loop(data: bytes, addrs: list[Address]) -> None:
        for addr in addrs:
            await tsock.sendto(data, addr)

    transport_fns: dict[str, SendFn] = {
        "trio socket": trio_loop,
        "UDP loop": senders.udp.send_many,
        "UDP loop, program attached": senders.udp_attached.send_many,
        "cloner": ebpf.send_many,
        "cloner, new group": ebpf.send_many,
    }
    cloner = ebpf.cloner
    assert cloner is not None
    ks = args.ks
    groups = {k: [[(ip, PORT) for ip in topo.peer_ips[:k]]] for k in ks}
    # The same K peers behind the twin interface (no program there).
    twin_groups = {k: [[(ip, PORT) for ip in topo.twin_ips[:k]]] for k in ks}
    # A second group of K for "new group": the same peers, another port, so it differs.
    alt = {k: [groups[k][0], [(ip, PORT + 1) for ip in topo.peer_ips[:k]]] for k in ks}
    # Warm up: next hops known, caches hot.
    for k in ks:
        for g in alt[k]:
            await ebpf.send_many(b"warm", g)
    await ebpf.refresh_next_hops()
    floor = {
        k: _floor_fns(senders.loop_sock, senders.marker_sock, cloner.marker, twin_groups[k][0])
        for k in ks
    }
    floor_groups = {k: _packed_group(ebpf, groups[k][0]) for k in ks}
    floor_port = senders.marker_sock.getsockname()[1]
    udps = (ebpf, senders.udp, senders.udp_attached)
    before = ebpf.statistics()
    errors_before = sum(t.statistics().send_errors for t in udps)
    cstats0 = ebpf.cloner_statistics()
    counter = "tx_dropped" if args.sink == "wire" else "tx_packets"
    frames0 = {dev: topo.link_counters(topo.sender, dev)[counter] for dev in DEVICES}
    expected_frames = dict.fromkeys(DEVICES, 0)
    results: dict[tuple[int, str], list[Result]] = {}
    rng = random.Random(1)
    expected_copies = 0
    for rep in range(args.reps):
        for k in ks:
            order = list(MODES)
            rng.shuffle(order)
            for mode in order:
                if mode == FLOOR_LOOP:
                    result = measure_rounds(floor[k][0], args.block)
                elif mode == FLOOR_CLONER:
                    # The floor's own socket owns the group for this block; afterwards the
                    # refresh makes the transport write its own group again.
                    cloner.write_group(floor_port, floor_groups[k], k)
                    result = measure_rounds(floor[k][1], args.block)
                    await ebpf.refresh_next_hops()
                elif mode == "cloner, new group":
                    result = await measure(transport_fns[mode], alt[k], args.block)
                elif mode in VIA_CLONER_IF:
                    result = await measure(transport_fns[mode], groups[k], args.block)
                else:
                    result = await measure(transport_fns[mode], twin_groups[k], args.block)
                results.setdefault((k, mode), []).append(result)
                dev = netns.SENDER_IF if mode in VIA_CLONER_IF else netns.TWIN_IF
                expected_frames[dev] += result[3] * k
                if mode.startswith(("cloner", "floor: cloner")):
                    expected_copies += result[3] * k
        print(f"repetition {rep + 1}/{args.reps} done", file=sys.stderr)
    frames = {dev: topo.link_counters(topo.sender, dev)[counter] - frames0[dev] for dev in DEVICES}
    cstats = ebpf.cloner_statistics()
    assert cstats is not None and cstats0 is not None
    after = ebpf.statistics()
    _report(args, results)
    fallbacks = {k: v - before.fallbacks.get(k, 0) for k, v in after.fallbacks.items()}
    fallbacks = {k: v for k, v in fallbacks.items() if v}
    send_errors = sum(t.statistics().send_errors for t in udps) - errors_before
    print()
    print(
        f"cloner copies handed out: {cstats.copies - cstats0.copies} (expected "
        f"{expected_copies}); failed clones: {cstats.clone_failed - cstats0.clone_failed}; "
        f"marker datagrams without their group: {cstats.no_group - cstats0.no_group}; "
        f"fallbacks: {fallbacks}; send errors: {send_errors}"
    )
    print(
        f"frames at the sender's veths ({counter}, sink {args.sink!r}): {frames} "
        f"(expected {expected_frames})"
    )


def _median(results: dict[tuple[int, str], list[Result]], k: int, mode: str, i: int = 0) -> float:
    return statistics.median(r[i] for r in results[(k, mode)])


def _report(args: argparse.Namespace, results: dict[tuple[int, str], list[Result]]) -> None:
    now = datetime.datetime.now(datetime.UTC)
    print()
    print(f"# eBPF cloner fan-out, sender CPU per broadcast round ({PAYLOAD}-byte datagram)")
    print(
        f"# {now:%Y-%m-%d %H:%M} UTC · {platform.node()} · kernel {platform.release()} · "
        f"{os.cpu_count()} CPUs · {_cpu_model()} · Python {platform.python_version()} · "
        f"trio {trio.__version__}"
    )
    print(
        f"# {args.reps} repetitions x {args.block} s per mode and K, interleaved; medians; "
        f"sink: {args.sink}"
    )
    print()
    print(
        "| K | mode | process CPU / round | machine CPU / round | wall / round "
        "| vs UDP loop | vs trio socket |"
    )
    print("|---|---|---|---|---|---|---|")
    for k in args.ks:
        base = _median(results, k, "UDP loop")
        trio_base = _median(results, k, "trio socket")
        for mode in MODES:
            proc = _median(results, k, mode)
            mach = _median(results, k, mode, 1)
            wall = _median(results, k, mode, 2)
            print(
                f"| {k} | {mode} | {proc * 1e6:.1f} us | {mach * 1e6:.1f} us | "
                f"{wall * 1e6:.1f} us | {proc / base:.2f}x | {proc / trio_base:.2f}x |"
            )
    print()
    print("Summary (process CPU per round, medians):")
    print()
    print(
        "| K | trio socket | UDP loop | cloner | cloner, new group | cloner vs UDP loop "
        "| floor: K sendto() | floor: cloner | floor ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for k in args.ks:
        m = {mode: _median(results, k, mode) for mode in MODES}
        print(
            f"| {k} | {m['trio socket'] * 1e6:.1f} us | {m['UDP loop'] * 1e6:.1f} us | "
            f"{m['cloner'] * 1e6:.1f} us | {m['cloner, new group'] * 1e6:.1f} us | "
            f"{m['cloner'] / m['UDP loop']:.2f}x | {m[FLOOR_LOOP] * 1e6:.1f} us | "
            f"{m[FLOOR_CLONER] * 1e6:.1f} us | {m[FLOOR_CLONER] / m[FLOOR_LOOP]:.2f}x |"
        )
    if TARGET_K in args.ks:
        k = TARGET_K
        ratio = _median(results, k, "cloner") / _median(results, k, "UDP loop")
        floor = _median(results, k, FLOOR_CLONER) / _median(results, k, FLOOR_LOOP)
        verdict = "met" if ratio <= TARGET_RATIO else "not met"
        print()
        print(
            f"K = {k}: cloner / UDP loop = {ratio:.2f}x (target <= {TARGET_RATIO}x: {verdict}); "
            f"kernel floor, one sendto() + {k - 1} clones / {k} sendto(): {floor:.2f}x"
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--block", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--ks", type=lambda s: [int(x) for x in s.split(",")], default=list(KS))
    parser.add_argument(
        "--sink",
        choices=netns.SINK_KINDS,
        default="wire",
        help="where the copies die: in the sender's veth transmit (wire; default) or in the "
        "sink's receive path (stack)",
    )
    args = parser.parse_args(argv)
    reason = netns.skip_reason()
    if reason:
        print(f"bench.ebpf_fanout: skipped: {reason}")
        return
    topo = netns.build_sink(max(args.ks), sink=args.sink)
    try:
        trio.run(run, args, topo)
    finally:
        topo.close()
        left = netns.namespaces_with_prefix(topo.prefix)
        if left:
            print(f"namespaces left behind: {left}", file=sys.stderr)


if __name__ == "__main__":
    main()
