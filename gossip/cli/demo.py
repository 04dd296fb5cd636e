"""``gossip demo`` (``make demo``): a live gossip cluster in one process, then its numbers.

It starts ``--nodes`` nodes (default 32) on 127.0.0.1 UDP with ephemeral ports, all sealed
with one fresh cluster key. Each runs membership (SWIM + Lifeguard, :func:`gossip.cluster.
open_cluster`) beside the broadcast: every node joins through the first one and the broadcast
pushes to the live members. (``--static``: every node knows every other from a fixed list,
as before membership.) Then:

1. It waits until every node sees every member alive, publishes ``--messages`` messages from
   random nodes at ``--rate`` per second and shows each message spreading (a bar per message
   on a terminal, periodic lines otherwise).
2. It stops a quarter of the nodes abruptly (their sockets close; nobody is told), shows when
   the survivors report them ``failed``, and from 10 s after the stop (or once all did)
   publishes another batch from the survivors.

After each batch: the share of (node, message) pairs delivered, how many messages reached
every live node, latency from push to the last live node (p50/p99) and to each delivery, and
the packets and bytes the broadcast sent per message, in total and per node (background
anti-entropy included; membership's own packets are shown apart). ``--seed`` fixes origins,
peer choices, the random part of message keys and the victims; timings are real. The command
exits 0 when every message reached every live node within ``settle`` (30 s) of its batch's
last push, else 1.
"""

from __future__ import annotations

import math
import random
import shutil
import sys
from collections.abc import Callable, Sequence
from typing import Final, TextIO

import attrs
import trio

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.cluster import Cluster, ClusterEvent, open_cluster
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.membership import MemberEvent
from gossip.node import Gossiper, Message, open_gossiper
from gossip.transport.base import Address
from gossip.transport.udp import open_udp_transport

__all__ = ["DemoOptions", "DemoReport", "PhaseReport", "run_demo"]

#: Most message rows the terminal display shows at once.
DISPLAY_ROWS: Final = 8
#: Seconds between redraws on a terminal, and between progress lines otherwise.
TTY_REFRESH: Final = 0.05
LINE_REFRESH: Final = 0.5
#: The payload starts with the message's number: that is how deliveries are matched to pushes.
_NUMBER_BYTES: Final = 4
#: The second batch starts this long after the stop at the earliest (the acceptance of issue
#: 11: latency within 3x of before, from 10 s after a quarter of the nodes stopped).
AFTER_STOP: Final = 10.0
#: Longest wait for membership to converge, and for the survivors to report the stopped.
CONVERGE_TIMEOUT: Final = 30.0


@attrs.frozen
class DemoOptions:
    """What the demo runs.

    Attributes:
        nodes: cluster size (at least 4: a quarter of them is stopped).
        messages: messages per batch (two batches: before and after the stop).
        rate: messages published per second.
        size: payload bytes per message.
        seed: seeds origins, peer choices and victims; ``None`` draws one (and prints it).
        settle: seconds to wait after a batch's last push for it to reach every live node.
        static: a fixed peer list instead of membership (dead nodes stay in it).
    """

    nodes: int = 32
    messages: int = 200
    rate: float = 25.0
    size: int = 256
    seed: int | None = None
    settle: float = 30.0
    static: bool = False

    def __attrs_post_init__(self) -> None:
        if self.nodes < 4:
            raise LocalProtocolError("the demo needs at least 4 nodes")
        if self.messages < 1:
            raise LocalProtocolError("the demo needs at least 1 message")
        if not 0 < self.rate < math.inf:
            raise LocalProtocolError("the rate must be a positive number")
        if not _NUMBER_BYTES <= self.size <= 1024:
            raise LocalProtocolError(f"the payload size must be {_NUMBER_BYTES}..1024 bytes")
        if not self.settle > 0:
            raise LocalProtocolError("settle must be positive")


@attrs.frozen
class PhaseReport:
    """The numbers of one batch.

    Attributes:
        name: what the batch was.
        live_nodes: nodes running during the batch.
        messages: messages published.
        complete: messages that reached every live node.
        deliveries: (node, message) deliveries to live nodes other than the origin.
        expected_deliveries: ``messages x (live_nodes - 1)``.
        duplicates: messages handed to an application twice (must be 0).
        latency_all: seconds from push to the last live node, per complete message.
        latency_each: seconds from push to each delivery.
        packets: datagrams sent by all nodes during the batch (every packet type).
        bytes: UDP payload bytes of those datagrams.
        packets_by_type: ``packets`` by packet type (push, ack, sync, request, response).
        duration: seconds from the first push to the end of the batch.
    """

    name: str
    live_nodes: int
    messages: int
    complete: int
    deliveries: int
    expected_deliveries: int
    duplicates: int
    latency_all: tuple[float, ...]
    latency_each: tuple[float, ...]
    packets: int
    bytes: int
    packets_by_type: dict[str, int]
    duration: float

    @property
    def delivery_ratio(self) -> float:
        """Deliveries over expected deliveries (1.0 is everything, exactly once)."""
        return self.deliveries / self.expected_deliveries if self.expected_deliveries else 1.0


@attrs.frozen
class DemoReport:
    """What :func:`run_demo` measured."""

    seed: int
    nodes: int
    stopped: tuple[int, ...]
    phases: tuple[PhaseReport, ...]
    #: Seconds until every node saw every member alive (membership only).
    converged_in: float | None = None
    #: Seconds from the stop to each (survivor, stopped node) ``failed`` report.
    detection: tuple[float, ...] = ()
    #: Live nodes' membership packets per node per second during the batches.
    membership_packets: float | None = None

    @property
    def ok(self) -> bool:
        """Every batch reached every live node exactly once."""
        return all(p.complete == p.messages and p.duplicates == 0 for p in self.phases)


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class _Node:
    __slots__ = (
        "address",
        "alive",
        "cluster",
        "dead",
        "failed",
        "gossiper",
        "index",
        "scope",
        "seed",
    )

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.seed = seed
        self.scope = trio.CancelScope()
        self.dead = trio.Event()
        self.alive = False
        self.gossiper: Gossiper[GossipEngine] | None = None
        self.cluster: Cluster | None = None
        self.address: Address = ("", 0)
        #: When this node reported each member failed (trio time), by name.
        self.failed: dict[str, float] = {}


class _Record:
    """One published message and where it got to."""

    __slots__ = (
        "complete_at",
        "duplicates",
        "expected",
        "have",
        "latencies",
        "number",
        "pushed_at",
    )

    def __init__(
        self, number: int, origin: int, expected: frozenset[int], pushed_at: float
    ) -> None:
        self.number = number
        self.expected = expected
        self.have = {origin}
        self.pushed_at = pushed_at
        self.latencies: list[float] = []
        self.complete_at: float | None = None
        self.duplicates = 0


class _Cluster:
    def __init__(self, options: DemoOptions, seed: int, out: TextIO) -> None:
        self.options = options
        self.rng = random.Random(seed)
        self.out = out
        self.tty = out.isatty()
        self.fancy = self.tty and "utf" in (getattr(out, "encoding", "") or "").lower()
        self.key = generate_key()
        self.config = GossipConfig()
        self.discovery = StaticDiscovery()
        self.nodes = [_Node(i, self.rng.getrandbits(64)) for i in range(options.nodes)]
        self.records: list[_Record] = []
        self.incomplete = 0
        self.all_complete = trio.Event()
        self.pushed = 0
        self.phase_started = 0.0
        self.phase_records: list[_Record] = []
        self.drawn_lines = 0

    # ------------------------------------------------------------ nodes

    async def run_node(
        self, node: _Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            with node.scope:
                async with await open_udp_transport("127.0.0.1", 0) as transport:
                    if self.options.static:
                        async with open_gossiper(
                            self.discovery,
                            transport,
                            self.config,
                            keyring=Keyring(self.key),
                            rng=random.Random(node.seed),
                        ) as gossiper:
                            await self._serve(node, gossiper, task_status)
                        return
                    first = self.nodes[0]
                    async with open_cluster(
                        transport,
                        name=f"node-{node.index}",
                        seeds=[] if node is first else [first.address],
                        keyring=Keyring(self.key),
                        config=self.config,
                        rng=random.Random(node.seed),
                    ) as cluster:
                        node.cluster = cluster
                        async with trio.open_nursery() as nursery:
                            nursery.start_soon(self._watch, node, cluster)
                            await self._serve(node, cluster.node, task_status)
        finally:
            node.alive = False
            node.dead.set()

    async def _serve(
        self, node: _Node, gossiper: Gossiper[GossipEngine], task_status: trio.TaskStatus[None]
    ) -> None:
        node.gossiper = gossiper
        node.address = gossiper.local_address
        node.alive = True
        task_status.started()
        async for message in gossiper:
            self.delivered(node.index, message)

    async def _watch(self, node: _Node, cluster: Cluster) -> None:
        event: ClusterEvent
        async for event in cluster.events():
            if isinstance(event, MemberEvent) and event.change == "failed":
                node.failed.setdefault(event.member.name, trio.current_time())

    def converged(self) -> bool:
        """Every live node holds every live node alive (itself included)."""
        live = [n for n in self.nodes if n.alive]
        want = {f"node-{n.index}" for n in live}
        return all(
            n.cluster is not None and {m.name for m in n.cluster.live_members()} == want
            for n in live
        )

    def membership_packets(self) -> int:
        total = 0
        for node in self.nodes:
            if node.cluster is not None:
                sent = node.cluster.node.statistics().transport.datagrams_sent
                total += sent - node.cluster.node.engine.statistics().datagrams_sent
        return total

    def delivered(self, index: int, message: Message) -> None:
        number = int.from_bytes(message.data[:_NUMBER_BYTES], "big")
        if number >= len(self.records):
            return  # not ours (cannot happen: the key is fresh)
        rec = self.records[number]
        if index in rec.have:
            rec.duplicates += 1
            return
        rec.have.add(index)
        rec.latencies.append(message.at - rec.pushed_at)
        if rec.complete_at is None and rec.have >= rec.expected:
            rec.complete_at = message.at
            self.incomplete -= 1
            if self.incomplete == 0:
                self.all_complete.set()

    async def stop(self, victims: Sequence[_Node]) -> None:
        """Stop nodes abruptly: cancel their tasks, which closes their sockets."""
        for node in victims:
            node.scope.cancel()
        for node in victims:
            await node.dead.wait()

    def traffic(self) -> tuple[int, int, dict[str, int]]:
        packets = nbytes = 0
        by_type: dict[str, int] = {}
        for node in self.nodes:
            if node.gossiper is None:
                continue
            stats = node.gossiper.engine.statistics()
            packets += stats.datagrams_sent
            nbytes += stats.bytes_sent
            for kind, n in stats.sent_by_type.items():
                by_type[kind] = by_type.get(kind, 0) + n
        return packets, nbytes, by_type

    # ------------------------------------------------------------ a batch

    async def phase(self, name: str) -> PhaseReport:
        opts = self.options
        live = [n for n in self.nodes if n.alive]
        expected = frozenset(n.index for n in live)
        self.phase_records = []
        self.pushed = 0
        packets0, bytes0, types0 = self.traffic()
        self.print(f"\n{name}: {opts.messages} messages from random nodes, {len(live)} live nodes")
        padding = bytes(opts.size - _NUMBER_BYTES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.display, name)
            start = self.phase_started = trio.current_time()
            for i in range(opts.messages):
                origin = self.rng.choice(live)
                assert origin.gossiper is not None
                number = len(self.records)
                rec = _Record(number, origin.index, expected, trio.current_time())
                self.records.append(rec)
                self.phase_records.append(rec)
                self.incomplete += 1
                await origin.gossiper.push(number.to_bytes(_NUMBER_BYTES, "big") + padding)
                self.pushed += 1
                await trio.sleep_until(start + (i + 1) / opts.rate)
            with trio.move_on_after(opts.settle):
                while self.incomplete > 0:
                    # A fresh event each time: the last one may have fired mid-batch.
                    self.all_complete = trio.Event()
                    await self.all_complete.wait()
            end = trio.current_time()
            nursery.cancel_scope.cancel()
        self.draw(name, final=True)
        packets1, bytes1, types1 = self.traffic()
        done = [r for r in self.phase_records if r.complete_at is not None]
        # A timed-out batch must not count in the next one.
        self.incomplete -= len(self.phase_records) - len(done)
        return PhaseReport(
            name=name,
            live_nodes=len(live),
            messages=opts.messages,
            complete=len(done),
            deliveries=sum(len(r.have) - 1 for r in self.phase_records),
            expected_deliveries=opts.messages * (len(live) - 1),
            duplicates=sum(r.duplicates for r in self.phase_records),
            latency_all=tuple(
                r.complete_at - r.pushed_at for r in done if r.complete_at is not None
            ),
            latency_each=tuple(t for r in self.phase_records for t in r.latencies),
            packets=packets1 - packets0,
            bytes=bytes1 - bytes0,
            packets_by_type={k: n - types0.get(k, 0) for k, n in types1.items()},
            duration=end - start,
        )

    # ------------------------------------------------------------ display

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()
        self.drawn_lines = 0

    async def display(self, name: str) -> None:
        self.drawn_lines = 0
        while True:
            await trio.sleep(TTY_REFRESH if self.tty else LINE_REFRESH)
            self.draw(name)

    def draw(self, name: str, *, final: bool = False) -> None:
        records = self.phase_records
        now = trio.current_time()
        waiting = [r for r in records if r.complete_at is None]
        head = (
            f"  {now - self.phase_started:5.2f} s  published {self.pushed:>4}/"
            f"{self.options.messages}  at every live node {len(records) - len(waiting):>4}  "
            f"in flight {len(waiting)}"
        )
        if not self.tty:
            if waiting and now - waiting[0].pushed_at > 1:
                oldest = waiting[0]
                head += (
                    f"  (oldest: msg {oldest.number} at {len(oldest.have)}/"
                    f"{len(oldest.expected)} for {now - oldest.pushed_at:.1f} s)"
                )
            self.print(head)
            return
        # The newest messages, and above them the older ones still spreading (the tail).
        recent = records[-DISPLAY_ROWS:]
        stragglers = [r for r in waiting if r not in recent][: DISPLAY_ROWS // 2]
        shown = stragglers + recent[len(stragglers) :]
        width = max(20, shutil.get_terminal_size().columns - 1)
        lines = [head[:width]] + [self.bar(rec, now)[:width] for rec in shown]
        out = self.out
        if self.drawn_lines:
            out.write(f"\x1b[{self.drawn_lines}F")  # back to the first line drawn last time
        for line in lines:
            out.write(f"\x1b[2K{line}\n")
        out.flush()
        self.drawn_lines = 0 if final else len(lines)

    def bar(self, rec: _Record, now: float) -> str:
        total = len(rec.expected)
        have = len(rec.have)
        cells = min(total, 32)
        filled = cells * have // total
        full, empty = ("█", "·") if self.fancy else ("#", ".")
        if rec.complete_at is not None:
            tail = f"{(rec.complete_at - rec.pushed_at) * 1e3:7.1f} ms"
        else:
            tail = f"{now - rec.pushed_at:7.1f} s ..."
        return (
            f"  msg {rec.number:>5} {full * filled}{empty * (cells - filled)} "
            f"{have:>4}/{total} {tail}"
        )


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def _kib(n: float) -> str:
    return f"{n / 1024:.1f} KiB" if n >= 1024 else f"{n:.0f} B"


def format_summary(report: DemoReport) -> str:
    """The summary table of a demo run (also what the README shows)."""
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Callable[[PhaseReport], object]) -> None:
        rows.append((label, [str(fn(p)) for p in report.phases]))

    row("live nodes", lambda p: p.live_nodes)
    row("messages published", lambda p: p.messages)
    row("delivery ratio", lambda p: f"{p.delivery_ratio * 100:.2f} %")
    row("  deliveries / expected", lambda p: f"{p.deliveries}/{p.expected_deliveries}")
    row("  at every live node", lambda p: f"{p.complete}/{p.messages}")
    row("  delivered twice", lambda p: p.duplicates)
    row("latency to all nodes p50", lambda p: _ms(percentile(p.latency_all, 50)))
    row("                     p99", lambda p: _ms(percentile(p.latency_all, 99)))
    row("                     max", lambda p: _ms(percentile(p.latency_all, 100)))
    row("latency per delivery p50", lambda p: _ms(percentile(p.latency_each, 50)))
    row("packets per message", lambda p: f"{p.packets / p.messages:.1f}")
    row("  per node", lambda p: f"{p.packets / p.messages / p.live_nodes:.2f}")
    for kind in ("push", "ack", "sync", "request", "response"):
        rows.append(
            (
                f"    {kind}",
                [
                    f"{p.packets_by_type.get(kind, 0) / p.messages / p.live_nodes:.2f}"
                    for p in report.phases
                ],
            )
        )
    row("bytes per message", lambda p: _kib(p.bytes / p.messages))
    row("  per node", lambda p: _kib(p.bytes / p.messages / p.live_nodes))
    row("batch duration", lambda p: f"{p.duration:.2f} s")

    if report.detection:
        rows.append(
            (
                "failure reports p50 / max",
                [
                    "",
                    f"{percentile(report.detection, 50):.2f} / "
                    f"{percentile(report.detection, 100):.2f} s",
                ],
            )
        )
    if report.membership_packets is not None:
        rows.append(("membership packets/node/s", ["", f"{report.membership_packets:.2f}"]))
    p99 = [percentile(p.latency_all, 99) for p in report.phases]
    if len(p99) == 2 and p99[0] > 0:
        rows.append(("p99 after / before", ["", f"{p99[1] / p99[0]:.2f}x"]))
    names = ["before the stop", f"after stopping {len(report.stopped)}"][: len(report.phases)]
    label_width = max(len(label) for label, _ in rows)
    col = max(16, *(len(n) + 2 for n in names))
    lines = [" " * label_width + "".join(f"{n:>{col}}" for n in names)]
    for label, cells in rows:
        lines.append(f"{label:<{label_width}}" + "".join(f"{c:>{col}}" for c in cells))
    return "\n".join(lines)


async def run_demo(options: DemoOptions, out: TextIO | None = None) -> DemoReport:
    """Run the demo cluster, print its progress and summary to ``out``, return the numbers.

    Args:
        options: cluster size, messages, rate, seed.
        out: where to print (default: stdout); a terminal gets the live bars.

    Returns:
        What was measured; ``report.ok`` says whether every message reached every live node.
    """
    out = out if out is not None else sys.stdout
    seed = options.seed if options.seed is not None else random.SystemRandom().getrandbits(32)
    cluster = _Cluster(options, seed, out)
    converged_in: float | None = None
    detection: list[float] = []
    membership_packets: float | None = None
    async with trio.open_nursery() as nursery:
        started = trio.current_time()
        for node in cluster.nodes:
            await nursery.start(cluster.run_node, node)
        ports = sorted(node.address[1] for node in cluster.nodes)
        key_id = Keyring(cluster.key).primary.key_id
        mode = "a static peer list" if options.static else "membership (SWIM + Lifeguard)"
        cluster.print(
            f"{options.nodes} nodes on 127.0.0.1 UDP (ports {ports[0]}..{ports[-1]}), "
            f"AES-256-CBC + HMAC-SHA256 with a fresh key (id 0x{key_id:08x}), "
            f"fanout {cluster.config.fanout}, {mode}, seed {seed}"
        )
        if options.static:
            # Every node knows every node (the engine skips its own address).
            cluster.discovery.set_peers(node.address for node in cluster.nodes)
        else:
            with trio.move_on_after(CONVERGE_TIMEOUT):
                while not cluster.converged():
                    await trio.sleep(0.05)
            converged_in = trio.current_time() - started
            cluster.print(
                f"membership: every node sees all {options.nodes} alive after "
                f"{converged_in:.2f} s (all joined through node-0)"
                if cluster.converged()
                else f"membership: NOT CONVERGED after {converged_in:.1f} s"
            )
        packets0 = cluster.membership_packets()
        t0 = trio.current_time()
        before = await cluster.phase("batch 1")

        victims = cluster.rng.sample(cluster.nodes[1:], options.nodes // 4)
        stopped = tuple(sorted(n.index for n in victims))
        stop_at = trio.current_time()
        await cluster.stop(victims)
        if options.static:
            cluster.print(
                f"\nstopped {len(victims)} nodes abruptly ({', '.join(map(str, stopped))}): "
                "sockets closed, still in every survivor's peer list"
            )
        else:
            cluster.print(
                f"\nstopped {len(victims)} nodes abruptly ({', '.join(map(str, stopped))}): "
                "sockets closed, nobody told"
            )
            survivors = [n for n in cluster.nodes if n.alive]
            names = [f"node-{v.index}" for v in victims]
            with trio.move_on_after(CONVERGE_TIMEOUT):
                while not all(name in s.failed for s in survivors for name in names):
                    await trio.sleep(0.05)
            detection = [s.failed[n] - stop_at for s in survivors for n in names if n in s.failed]
            cluster.print(
                f"membership: {len(detection)}/{len(survivors) * len(names)} failure reports, "
                f"p50 {percentile(detection, 50):.2f} s, max {percentile(detection, 100):.2f} s "
                "after the stop"
            )
        await trio.sleep_until(stop_at + AFTER_STOP)
        after = await cluster.phase(f"batch 2 (after stopping {len(victims)})")
        if not options.static:
            live = sum(1 for n in cluster.nodes if n.alive)
            elapsed = trio.current_time() - t0
            membership_packets = (cluster.membership_packets() - packets0) / elapsed / live
        nursery.cancel_scope.cancel()

    report = DemoReport(
        seed=seed,
        nodes=options.nodes,
        stopped=stopped,
        phases=(before, after),
        converged_in=converged_in,
        detection=tuple(detection),
        membership_packets=membership_packets,
    )
    cluster.print()
    cluster.print(format_summary(report))
    cluster.print(
        f"(all {options.nodes} nodes share one Python process: latencies include waiting for "
        "the others' turn on the CPU)"
    )
    cluster.print()
    cluster.print(
        "every message reached every live node exactly once"
        if report.ok
        else "SOME MESSAGES DID NOT REACH EVERY LIVE NODE"
    )
    return report
