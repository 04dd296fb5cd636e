"""A cluster on the in-memory network in virtual time (issue 3's loss acceptance).

Run: ``python -m bench.memory_cluster [--nodes 50] [--loss 0.2] [--messages 1000]``, or with
``--burst`` (issue 15's burst acceptance: ``--nodes 50 --loss 0.1 --messages 10000 --burst``),
where node 0 pushes every message back to back as fast as its push window lets it. Every node
runs the real trio runtime (``open_gossiper``) over ``MemoryNetwork`` under
``trio.testing.MockClock(autojump_threshold=0)``: latencies are protocol time, not CPU time.
Messages are pushed from random origins every ``--interval`` seconds; after the last one the
cluster runs ``--tail`` seconds more (in a burst: until every node has every message, at most
``--tail`` seconds, then 2 s more so that a late duplicate would be seen). Reports delivery
(every node, exactly once), latency to each node and to the last node (p50/p99), and datagrams
per message per node by type.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time

import trio
import trio.testing

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.node import Gossiper, open_gossiper
from gossip.transport.memory import LinkConditions, MemoryNetwork


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def cluster(args: argparse.Namespace) -> dict[str, object]:
    net = MemoryNetwork(
        seed=args.seed, default=LinkConditions(loss=args.loss, delay=0.0005, jitter=0.001)
    )
    transports = [net.open_transport() for _ in range(args.nodes)]
    disc = StaticDiscovery([t.local_address for t in transports])
    key = generate_key()
    got: list[dict[bytes, float]] = [{} for _ in transports]
    duplicates = 0
    nodes: list[Gossiper[GossipEngine]] = []
    pushed: dict[bytes, tuple[int, float]] = {}

    async with trio.open_nursery() as nursery:

        async def run(i: int, task_status: trio.TaskStatus[None]) -> None:
            nonlocal duplicates
            async with open_gossiper(
                disc,
                transports[i],
                GossipConfig(echo_suppression=args.echo_suppression),
                keyring=Keyring(key),
                rng=random.Random(args.seed * 7919 + i),
            ) as g:
                nodes.append(g)
                task_status.started()
                async for m in g:
                    duplicates += m.key in got[i]
                    got[i][m.key] = trio.current_time()

        for i in range(args.nodes):
            await nursery.start(run, i)
        nodes.sort(key=lambda g: transports.index(g.transport))  # type: ignore[arg-type]
        rng = random.Random(args.seed)
        start = trio.current_time()
        burst_s = 0.0
        for j in range(args.messages):
            origin = 0 if args.burst else rng.randrange(args.nodes)
            k = await nodes[origin].push(b"message %d " % j + bytes(args.size))
            pushed[k] = (origin, trio.current_time())
            if not args.burst:
                await trio.sleep(args.interval)
        pushed_s = trio.current_time() - start
        if args.burst:
            with trio.move_on_after(args.tail):
                while not all(len(got[i]) == args.messages for i in range(1, args.nodes)):
                    await trio.sleep(0.1)
            burst_s = trio.current_time() - start
            await trio.sleep(2.0)
        else:
            await trio.sleep(args.tail)
        nursery.cancel_scope.cancel()

    per_node: list[float] = []
    full: list[float] = []
    complete = 0
    for k, (origin, t0) in pushed.items():
        lat = [got[i][k] - t0 for i in range(args.nodes) if i != origin and k in got[i]]
        per_node.extend(lat)
        if len(lat) == args.nodes - 1:
            complete += 1
            full.append(max(lat))
    engine = [g.engine.statistics() for g in nodes]
    by_type = {
        t: sum(s.sent_by_type[t] for s in engine) / args.messages / args.nodes
        for t in engine[0].sent_by_type
    }
    return {
        "nodes": args.nodes,
        "loss": args.loss,
        "messages": args.messages,
        "fully_delivered": complete,
        "deliveries": len(per_node),
        "expected_deliveries": args.messages * (args.nodes - 1),
        "duplicates_delivered": duplicates,
        "latency_p50_ms": 1000 * statistics.median(per_node),
        "latency_p99_ms": 1000 * pct(per_node, 0.99),
        "full_p50_ms": 1000 * statistics.median(full) if full else None,
        "full_p99_ms": 1000 * pct(full, 0.99) if full else None,
        "packets_per_message_per_node": sum(by_type.values()),
        "by_type": by_type,
        "pulled": sum(s.pulled for s in engine),
        "push_waits": nodes[0].statistics().push_waits,
        "pushed_s": pushed_s,
        "complete_s": burst_s if args.burst and complete == args.messages else None,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--tail", type=float, default=30.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--burst", action="store_true", help="node 0 pushes back to back")
    parser.add_argument("--echo-suppression", type=int, default=GossipConfig().echo_suppression)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    r = trio.run(cluster, args, clock=trio.testing.MockClock(autojump_threshold=0))
    wall = time.perf_counter() - t0
    print(f"# {args.nodes} nodes, {args.loss:.0%} loss on every link, {args.messages} messages,")
    print(f"# in-memory network, virtual time (wall {wall:.0f} s), seed {args.seed}")
    print("| metric | value |\n|---|---|")
    print(f"| delivered / expected | {r['deliveries']} / {r['expected_deliveries']} |")
    print(f"| messages at every node | {r['fully_delivered']} / {args.messages} |")
    print(f"| duplicate deliveries | {r['duplicates_delivered']} |")
    p50, p99 = r["latency_p50_ms"], r["latency_p99_ms"]
    print(f"| latency to a node p50 / p99 | {p50:.1f} / {p99:.1f} ms |")
    if r["full_p50_ms"] is not None:
        p50, p99 = r["full_p50_ms"], r["full_p99_ms"]
        print(f"| latency to every node p50 / p99 | {p50:.1f} / {p99:.1f} ms |")
    by = r["by_type"]
    assert isinstance(by, dict)
    detail = ", ".join(f"{k} {v:.2f}" for k, v in by.items())
    print(
        f"| datagrams per message per node | {r['packets_per_message_per_node']:.2f} ({detail}) |"
    )
    print(f"| messages obtained by pull | {r['pulled']} |")
    if args.burst:
        print(f"| push waits at the source | {r['push_waits']} |")
        print(f"| virtual time to push all / to every node | {r['pushed_s']:.1f} / ", end="")
        print(f"{r['complete_s']:.1f} s |" if r["complete_s"] is not None else "never |")
    return r


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["fully_delivered"] == result["messages"] else 1)
