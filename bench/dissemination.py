"""Dissemination on loopback UDP: time from push to delivery at every node, and packets per node.

Run: ``python -m bench.dissemination [--nodes 32,128] [--messages 30] [--warmup 3] [--seed 1]``.

N encrypted nodes (``open_gossiper`` over ``open_udp_transport`` on 127.0.0.1, default
``GossipConfig``) run in one process, one ``trio.run`` on the real clock, every node knowing
every other (``StaticDiscovery``). One message (``--size`` bytes) at a time is pushed from a
random node, the next only after the previous reached every other node (or ``--timeout``).
Each node's application task reads its deliveries, so the application's cost is in the figures.

Per message:

* **latency**: the last arrival (``Message.at``, the trio clock when the datagram was handled)
  minus the push time;
* **packets/node**: datagrams sent by all nodes, by packet type (the engines'
  ``sent_by_type`` counters), from the push to full delivery plus ``--settle`` seconds (so
  late ACKs and the pull fallback of rounds that missed their majority are counted), divided
  by N. The window also holds the cluster's background anti-entropy (each node sends one
  ``PullSync`` per ``sync_interval``); its expected share, measured before the first message,
  is printed beside the totals.

Reported: median and p99 over the messages (after ``--warmup`` unreported ones, which let the
adaptive ACK timers learn the round trip), next to hashicorp/memberlist's figures measured on
this kind of machine (``shared/reference/performance.md``). The whole cluster shares one core,
so latency is mostly the CPU time of every packet of the spread done one after another.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import statistics
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack

import attrs
import trio

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key
from gossip.discovery.base import StaticDiscovery
from gossip.node import Gossiper, open_gossiper
from gossip.transport.udp import open_udp_transport

#: Packet types in the engine's ``sent_by_type`` counters, in table order.
TYPES = ("push", "ack", "sync", "request", "response")

#: hashicorp/memberlist 0.2.2, LAN profile, one 256-byte broadcast, median of 5 runs
#: (shared/reference/performance.md): N -> (ms to full delivery, packets until full delivery).
MEMBERLIST: dict[int, tuple[float, int]] = {8: (373, 17), 32: (555, 162), 128: (723, 1074)}

#: Acceptance targets (issue 3) at N = 128.
TARGET_MS = 25.0
TARGET_PACKETS = 6.0


@attrs.frozen
class MessageResult:
    """One message: seconds to full delivery (None: timed out) and packets by type, cluster-wide."""

    latency: float | None
    delivered: int
    sent: dict[str, int]
    window: float
    #: Seconds until half / 90 % of the other nodes had it (None: never).
    half: float | None
    most: float | None
    #: Process CPU seconds from the push to full delivery (the whole cluster's work).
    cpu: float
    #: Pull-fallback rounds (no ACK majority) started in the window, cluster-wide.
    failed_rounds: int


@attrs.frozen
class ClusterResult:
    nodes: int
    messages: list[MessageResult]
    #: Datagrams per node per second with no message in flight (anti-entropy), by type.
    idle_rate: dict[str, float]
    duplicates_delivered: int
    cpu_seconds: float
    wall_seconds: float


def _sent(nodes: Sequence[Gossiper[GossipEngine]]) -> dict[str, int]:
    """Datagrams sent by the whole cluster, by type, and failed ACK rounds (``"failed"``)."""
    total = dict.fromkeys(TYPES, 0)
    failed = 0
    for node in nodes:
        stats = node.engine.statistics()
        failed += stats.ack_rounds_failed
        for name, n in stats.sent_by_type.items():
            total[name] = total.get(name, 0) + n
    total["failed"] = failed
    return total


def _at_fraction(times: Sequence[float], start: float, count: int) -> float | None:
    ordered = sorted(times)
    return ordered[count - 1] - start if len(ordered) >= count else None


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}


class _Tracker:
    """Arrival times of each key at each node, fed by one application task per node."""

    def __init__(self, nodes: int) -> None:
        self.expected = nodes - 1
        self.arrivals: dict[bytes, list[float]] = {}
        self.full: dict[bytes, trio.Event] = {}
        self.duplicates = 0
        self.seen: set[tuple[int, bytes]] = set()

    def watch(self, key: bytes) -> trio.Event:
        self.arrivals.setdefault(key, [])
        return self.full.setdefault(key, trio.Event())

    async def consume(self, index: int, node: Gossiper[GossipEngine]) -> None:
        async for message in node:
            if (index, message.key) in self.seen:
                self.duplicates += 1
                continue
            self.seen.add((index, message.key))
            times = self.arrivals.setdefault(message.key, [])
            times.append(message.at)
            if len(times) == self.expected:
                self.full.setdefault(message.key, trio.Event()).set()


async def run_cluster(
    n: int,
    messages: int,
    *,
    warmup: int = 3,
    size: int = 256,
    settle: float = 0.1,
    timeout: float = 5.0,
    idle: float = 1.0,
    seed: int = 1,
    config: GossipConfig | None = None,
) -> ClusterResult:
    """Start ``n`` nodes on loopback, spread ``warmup + messages`` messages one at a time."""
    rng = random.Random(seed)
    key = generate_key()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    async with AsyncExitStack() as stack:
        transports = [
            await stack.enter_async_context(await open_udp_transport("127.0.0.1", 0))
            for _ in range(n)
        ]
        discovery = StaticDiscovery(t.local_address for t in transports)
        nodes = [
            await stack.enter_async_context(
                open_gossiper(
                    discovery,
                    t,
                    config,
                    keyring=Keyring(key),
                    rng=random.Random(rng.getrandbits(64)),
                )
            )
            for t in transports
        ]
        tracker = _Tracker(n)
        nursery = await stack.enter_async_context(trio.open_nursery())
        for i, node in enumerate(nodes):
            nursery.start_soon(tracker.consume, i, node)
        await trio.sleep(0.1)
        for _ in range(warmup):
            await _spread_one(nodes, tracker, rng=rng, size=size, settle=settle, timeout=timeout)
        # Background traffic with nothing to spread (anti-entropy digests of the cached keys).
        before, t0 = _sent(nodes), trio.current_time()
        await trio.sleep(idle)
        span = trio.current_time() - t0
        idle_rate = {k: v / span / n for k, v in _delta(_sent(nodes), before).items()}
        idle_rate.pop("failed")
        results = [
            await _spread_one(nodes, tracker, rng=rng, size=size, settle=settle, timeout=timeout)
            for _ in range(messages)
        ]
        nursery.cancel_scope.cancel()
    return ClusterResult(
        n,
        results,
        idle_rate,
        tracker.duplicates,
        time.process_time() - cpu0,
        time.perf_counter() - wall0,
    )


async def _spread_one(
    nodes: Sequence[Gossiper[GossipEngine]],
    tracker: _Tracker,
    *,
    rng: random.Random,
    size: int,
    settle: float,
    timeout: float,
) -> MessageResult:
    n = len(nodes)
    origin = nodes[rng.randrange(n)]
    payload = rng.randbytes(size)
    before = _sent(nodes)
    cpu = time.process_time()
    start = trio.current_time()
    msg_key = await origin.push(payload)
    done = tracker.watch(msg_key)
    latency: float | None = None
    with trio.move_on_after(timeout):
        await done.wait()
        latency = max(tracker.arrivals[msg_key]) - start
    cpu = time.process_time() - cpu
    await trio.sleep(settle)
    window = trio.current_time() - start
    sent = _delta(_sent(nodes), before)
    failed = sent.pop("failed")
    arrivals = tracker.arrivals[msg_key]
    return MessageResult(
        latency,
        len(arrivals),
        sent,
        window,
        _at_fraction(arrivals, start, n // 2),
        _at_fraction(arrivals, start, max(1, (n - 1) * 9 // 10)),
        cpu,
        failed,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def _med(values: Sequence[float | None], scale: float = 1.0) -> float:
    present = [v * scale for v in values if v is not None]
    return statistics.median(present) if present else float("nan")


def summarize(result: ClusterResult) -> dict[str, float]:
    """Medians/p99 over messages; packets per message per node, by type and in total."""
    n = result.nodes
    msgs = result.messages
    lat = [m.latency * 1000 for m in msgs if m.latency is not None]
    totals = [sum(m.sent.values()) / n for m in msgs]
    window = statistics.median(m.window for m in msgs)
    row: dict[str, float] = {
        "nodes": n,
        "messages": len(msgs),
        "timeouts": len(msgs) - len(lat),
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": percentile(lat, 99) if lat else float("nan"),
        "max_ms": max(lat) if lat else float("nan"),
        "half_ms": _med([m.half for m in msgs], 1000),
        "most_ms": _med([m.most for m in msgs], 1000),
        "cpu_ms": _med([m.cpu for m in msgs], 1000),
        "failed": statistics.median(m.failed_rounds / n for m in msgs),
        "total": statistics.median(totals),
        "total_p99": percentile(totals, 99),
        "background": sum(result.idle_rate.values()) * window,
        "window_ms": window * 1000,
        "dup_delivered": result.duplicates_delivered,
        "cpu_s": result.cpu_seconds,
        "wall_s": result.wall_seconds,
    }
    for t in TYPES:
        row[t] = statistics.median(m.sent.get(t, 0) / n for m in msgs)
    return row


def print_table(
    rows: Sequence[dict[str, float]], args: argparse.Namespace, config: GossipConfig
) -> None:
    print(
        f"# {platform.node()} Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"trio {trio.__version__}; loopback UDP, encrypted, one process; {args.size}-byte "
        f"payload; {args.messages} messages after {args.warmup} warm-up; seed {args.seed}"
    )
    print(f"# {config}")
    print()
    print(
        "| N | full delivery p50 ms | p99 ms | max ms | timeouts | memberlist ms "
        "| packets/node p50 | p99 | memberlist packets/node |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        n = int(r["nodes"])
        ml = MEMBERLIST.get(n)
        ml_ms = f"{ml[0]:.0f}" if ml else "-"
        ml_pk = f"{ml[1] / n:.1f}" if ml else "-"
        print(
            f"| {n} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} | "
            f"{int(r['timeouts'])} | {ml_ms} | {r['total']:.2f} | {r['total_p99']:.2f} | "
            f"{ml_pk} |"
        )
    print()
    print("Medians over messages: packets sent per message per node by type; time to half and")
    print("90 % of the nodes; process CPU from push to full delivery; failed ACK rounds per node;")
    print("the idle anti-entropy traffic expected in the window (included in the totals).")
    print()
    print(
        "| N | "
        + " | ".join(TYPES)
        + " | total | 50 % ms | 90 % ms | CPU ms/msg | failed rounds/node | idle in window "
        "| window ms | dup deliveries |"
    )
    print("|---|" + "---|" * (len(TYPES) + 8))
    for r in rows:
        print(
            f"| {int(r['nodes'])} | "
            + " | ".join(f"{r[t]:.2f}" for t in TYPES)
            + f" | {r['total']:.2f} | {r['half_ms']:.1f} | {r['most_ms']:.1f} | "
            f"{r['cpu_ms']:.1f} | {r['failed']:.2f} | {r['background']:.2f} | "
            f"{r['window_ms']:.0f} | {int(r['dup_delivered'])} |"
        )
    for r in rows:
        if int(r["nodes"]) == 128:
            print()
            print(
                f"Targets at N=128: median {r['p50_ms']:.1f} ms (<= {TARGET_MS:.0f}: "
                f"{'met' if r['p50_ms'] <= TARGET_MS else 'MISSED'}), "
                f"{r['total']:.2f} packets/node (<= {TARGET_PACKETS:.0f}: "
                f"{'met' if r['total'] <= TARGET_PACKETS else 'MISSED'})"
            )


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nodes", default="32,128", help="comma-separated cluster sizes")
    parser.add_argument("--messages", type=int, default=30, help="reported messages per size")
    parser.add_argument("--warmup", type=int, default=3, help="unreported messages first")
    parser.add_argument("--size", type=int, default=256, help="payload bytes")
    parser.add_argument("--settle", type=float, default=0.1, help="seconds after full delivery")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per message")
    parser.add_argument("--idle", type=float, default=1.0, help="seconds of idle measurement")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fanout", type=int, help="GossipConfig.fanout (default: its default)")
    parser.add_argument("--ack-timeout", type=float, help="GossipConfig.ack_timeout")
    parser.add_argument("--min-ack-timeout", type=float, help="GossipConfig.min_ack_timeout")
    parser.add_argument("--sync-interval", type=float, help="GossipConfig.sync_interval")
    parser.add_argument("--echo-suppression", type=int, help="GossipConfig.echo_suppression")
    parser.add_argument(
        "--ring-forward",
        action=argparse.BooleanOptionalAction,
        help="GossipConfig.ring_forward (default: its default)",
    )
    args = parser.parse_args(argv)
    overrides = {
        name: getattr(args, name)
        for name in (
            "fanout",
            "ack_timeout",
            "min_ack_timeout",
            "sync_interval",
            "echo_suppression",
            "ring_forward",
        )
        if getattr(args, name) is not None
    }
    config = GossipConfig(**overrides)
    rows = []
    for n in (int(x) for x in args.nodes.split(",")):
        result = trio.run(
            functools.partial(
                run_cluster,
                n,
                args.messages,
                warmup=args.warmup,
                size=args.size,
                settle=args.settle,
                timeout=args.timeout,
                idle=args.idle,
                seed=args.seed,
                config=config,
            )
        )
        rows.append(summarize(result))
    print_table(rows, args, config)
    return rows


if __name__ == "__main__":
    main()
