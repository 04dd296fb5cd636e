"""Before/after of engine rules in the simulator: the same scenarios and seeds, one rule changed.

Run: ``python -m bench.engine_variants [--quick]``.

Variants (``GossipConfig`` fields; everything else default):

* ``random, echo 3``: the engine before the ring (every push target uniformly random, echo
  suppression 3);
* ``random, echo 2``: the same with echo suppression 2 (isolates the ring's share);
* ``ring, echo 2``: the current default (both ring neighbours + ``fanout - 2`` random targets).

Scenarios: single messages on a cold cluster (no round-trip sample yet: the first ACK wait is
300 ms) and "warm" runs (several messages, the first ones unmeasured), at 0 % and under loss,
LAN jitter (0.2-1 ms per hop) and a constant 0.6 ms per hop, where a hop count is exactly a
synchronous round. Prints one markdown table: medians over messages and seeds (worst in
brackets), packets sent per live node per message (digests of the periodic anti-entropy
excluded, as in ``gossip sim``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import attrs

from gossip.broadcast import GossipConfig
from gossip.sim import Scenario, simulate
from gossip.sim.core import LAN, Latency

VARIANTS: dict[str, dict[str, Any]] = {
    "random, echo 3": {"ring_forward": False, "echo_suppression": 3},
    "random, echo 2": {"ring_forward": False, "echo_suppression": 2},
    "ring, echo 2 (default)": {},
}

SYNC = Latency(0.0006, 0.0006)

#: (label, seeds, Scenario keyword arguments)
SCENARIOS: list[tuple[str, Sequence[int], dict[str, Any]]] = [
    ("10k, first message, LAN", (1, 2, 3), {"nodes": 10_000}),
    ("10k, first message, 0.6 ms constant", (1, 2, 3), {"nodes": 10_000, "latency": SYNC}),
    ("10k, warm, LAN", (1,), {"nodes": 10_000, "messages": 5, "warmup": 2, "interval": 2.0}),
    (
        "1k, warm, 10 % loss",
        (1, 2, 3),
        {"nodes": 1000, "messages": 5, "warmup": 2, "interval": 2.0, "loss": 0.1},
    ),
    (
        "1k, 50 % loss, 20 % crashed, first message",
        (1, 2, 3),
        {"nodes": 1000, "loss": 0.5, "crashed": 0.2},
    ),
    ("128, warm, LAN", (1, 2, 3), {"nodes": 128, "messages": 5, "warmup": 2, "interval": 2.0}),
    (
        "50, 20 % loss, 200 messages at 20/s",
        (1,),
        {
            "nodes": 50,
            "loss": 0.2,
            "messages": 205,
            "warmup": 5,
            "interval": 0.05,
            "max_time": 30.0,
        },
    ),
]


def run(kwargs: dict[str, Any], seeds: Sequence[int], config: GossipConfig) -> dict[str, Any]:
    hops: list[int] = []
    t99: list[float] = []
    t100: list[float] = []
    packets: list[float] = []
    ratio: list[float] = []
    for seed in seeds:
        result = simulate(Scenario(seed=seed, config=config, **kwargs))
        for m in result.measured:
            h, t, t_99 = m.hops_to["100"], m.time_to["100"], m.time_to["99"]
            hops.append(h if h is not None else 10**6)
            t100.append(t if t is not None else float("inf"))
            t99.append(t_99 if t_99 is not None else float("inf"))
        packets.append(result.per_node_message(result.sent)["total"])
        ratio.append(result.delivery_ratio())
    return {
        "hops": statistics.median(hops),
        "hops_max": max(hops),
        "t99": statistics.median(t99) * 1000,
        "t100": statistics.median(t100) * 1000,
        "t100_max": max(t100) * 1000,
        "packets": statistics.mean(packets),
        "ratio": min(ratio),
    }


def _ms(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 1 only, skip 10k warm")
    parser.add_argument("--only", default="", help="scenarios whose label contains this")
    args = parser.parse_args(argv)
    print(
        "| scenario | engine | seeds | hop-rounds to 100 % (worst) | 99 % ms | 100 % ms "
        "(worst) | packets / node / msg | delivered |"
    )
    print("|---|---|---|---|---|---|---|---|")
    started = time.perf_counter()
    for label, all_seeds, kwargs in SCENARIOS:
        seeds = all_seeds
        if args.only not in label:
            continue
        if args.quick:
            if kwargs.get("messages", 1) > 100 or (
                kwargs["nodes"] >= 10_000 and "warmup" in kwargs
            ):
                continue
            seeds = all_seeds[:1]
        for name, fields in VARIANTS.items():
            config = attrs.evolve(GossipConfig(), **fields)
            r = run(kwargs, seeds, config)
            print(
                f"| {label} | {name} | {len(seeds)} | {r['hops']:g} ({r['hops_max']}) | "
                f"{_ms(r['t99'])} | {_ms(r['t100'])} ({_ms(r['t100_max'])}) | "
                f"{r['packets']:.2f} | {r['ratio'] * 100:.2f} % |",
                flush=True,
            )
    print(f"\n# {time.perf_counter() - started:.0f} s wall; latency {LAN} unless stated")


if __name__ == "__main__":
    main()
