"""The membership simulator: N real :class:`~gossip.membership.Membership` engines in virtual
time (issue 11), and the scenario it runs: joins, loss, crashes and *starved* nodes.

:class:`Cluster` is the network: two heaps, the datagrams in flight ordered by arrival, and the
nodes' engine timers (one live entry per node, stale ones skipped), so each event costs
``O(log n)`` and no event scans the nodes. Nodes can crash (their engine is gone; datagrams to
them vanish), restart (a fresh engine under the same name and address), pause (as SIGSTOP:
they read nothing and fire nothing until they resume, then take their backlog late), and be
*starved* (an overloaded process: each datagram is read 0.5-2.5 s late, timers on time).
Ties break by time, then by node index (timers) or by send order (datagrams).

:func:`simulate` runs a :class:`MembershipScenario` and reports join convergence (every node
sees every node alive), crash detection (first suspicion anywhere; every survivor holds the
victim failed), false suspicions and false deaths of nodes that never crashed (by victim
kind, starved or healthy), and packets and bytes per node per second; it tracks all of it
from the engines' events in ``O(1)`` per event.

Determinism: one seed makes the network's ``random.Random`` (loss, latency, starvation
delays), one per engine, and the choice of crashed and starved nodes; nothing iterates a set
or reads a clock, so a seed reproduces a run: :attr:`MembershipResult.trace` is a SHA-256 over
every event (each delivered datagram's bytes, each timer, each member event).

Encryption is off (``encrypted=False``) unless asked for: sealing changes bytes, not behaviour.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import statistics
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import attrs

from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.errors import LocalProtocolError
from gossip.membership import MemberEvent, Membership, MembershipConfig, State
from gossip.transport.base import Address
from gossip.wire import Codec

__all__ = [
    "ENCRYPTION_NOTE",
    "Cluster",
    "MembershipResult",
    "MembershipScenario",
    "SimNode",
    "format_membership",
    "maddr",
    "membership_to_dict",
    "simulate",
]

KEY: Final = bytes(range(32))
#: Unix time of virtual 0 (sealed labels carry wall-clock time for the replay guard; the
#: shared probe schedule reads it too).
EPOCH: Final = 1_800_000_000.0
ENCRYPTION_NOTE: Final = (
    "encryption off: the simulator measures behaviour, and sealing changes bytes, not behaviour"
)
_RECORD: Final = struct.Struct("<diii")
_ARRIVAL: Final = 0
_TIMER: Final = 1
_RESUME: Final = 2
_EVENT: Final = 3
_CHANGES: Final = {"joined": 0, "updated": 1, "suspect": 2, "alive": 3, "failed": 4, "left": 5}


def maddr(i: int) -> Address:
    """The simulated address of node ``i`` (``i < 63,999``)."""
    return (f"10.1.{(i + 1) // 250}.{(i + 1) % 250 + 1}", 7946)


@attrs.define(eq=False)
class SimNode:
    index: int
    name: str
    address: Address
    engine: Membership | None
    paused_until: float | None = None
    backlog: list[tuple[Address, bytes]] = attrs.field(factory=list)
    #: Every event of the engine with its time (when the cluster records them).
    events: list[tuple[float, object]] = attrs.field(factory=list)
    lives: int = 0
    #: The timer entry that counts (others in the heap are stale).
    token: int = 0


#: ``hook(now, observer, event)``: called for every event an engine reports.
EventHook = Callable[[float, int, object], None]


class Cluster:
    """``n`` membership nodes on a simulated network; ``run_for`` moves virtual time.

    Args:
        n: nodes, named ``node-<i>``.
        seed: every random choice (network and engines) comes from it.
        config: the engines' settings.
        encrypted: seal packets (a fixed key) and guard against replays.
        latency, jitter: each datagram takes ``latency + uniform(0, jitter)`` seconds.
        loss: the probability that a datagram is lost.
        join: start every node at once, each joining through ``seeds``.
        seeds: the seed nodes' indexes (default: node 0).
        record: keep each node's events in :attr:`SimNode.events` (tests; off for big runs).
        hook: called with every event.
        trace: hash every event into :meth:`trace`.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: MembershipConfig | None = None,
        encrypted: bool = False,
        latency: float = 0.002,
        jitter: float = 0.001,
        loss: float = 0.0,
        join: bool = True,
        seeds: Sequence[int] = (0,),
        record: bool = True,
        hook: EventHook | None = None,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or MembershipConfig()
        self.encrypted = encrypted
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.record = record
        self.hook = hook
        self._hash = hashlib.sha256() if trace else None
        self.now = 0.0
        self._order = 0
        #: Datagrams in flight: (arrival, send order, source, destination, bytes).
        self.flight: list[tuple[float, int, Address, Address, bytes]] = []
        #: Node wake-ups: (time, node index, kind, token); a timer entry counts only while
        #: its token is the node's.
        self._wake: list[tuple[float, int, int, int]] = []
        #: A hook on every datagram sent: return False to drop it.
        self.filter: Callable[[Address, Address, bytes], bool] | None = None
        self.sent = 0
        self.sent_bytes = 0
        self.sent_by_kind: dict[str, int] = {}
        self.events_processed = 0
        #: Addresses of starved nodes, and how late they read (Lifeguard's test case).
        self.starved: set[Address] = set()
        self.starved_delay = (0.5, 2.5)
        self.nodes = [SimNode(i, f"node-{i}", maddr(i), None) for i in range(n)]
        self._by_addr = {node.address: node for node in self.nodes}
        seed_addresses = [maddr(i) for i in seeds if i < n]
        for node in self.nodes:
            if join:
                self.start(node.index, seeds=[a for a in seed_addresses if a != node.address])
            else:
                self.start(node.index)

    # -- nodes ------------------------------------------------------------------------------

    def start(self, i: int, seeds: Iterable[Address] = ()) -> Membership:
        """(Re)start node ``i`` with a fresh engine: incarnation 0, its own seeded rng."""
        node = self.nodes[i]
        node.lives += 1
        codec = Codec(
            Keyring(KEY) if self.encrypted else None,
            replay=ReplayGuard() if self.encrypted else None,
            clock_offset=EPOCH,
        )
        ctx = EngineContext(
            codec,
            node.address,
            StaticDiscovery(),
            random.Random(self.seed * 7919 + i * 101 + node.lives),
            self.now,
        )
        engine = Membership(ctx, name=node.name, config=self.config, seeds=seeds)
        node.engine = engine
        node.paused_until = None
        node.backlog.clear()
        self._collect(node)
        self._arm(node)
        return engine

    def crash(self, i: int) -> None:
        node = self.nodes[i]
        node.engine = None
        node.backlog.clear()
        node.paused_until = None
        node.token += 1  # its timer entries are stale

    def pause(self, i: int, duration: float) -> None:
        """Stop node ``i`` for ``duration`` seconds (SIGSTOP, then SIGCONT)."""
        node = self.nodes[i]
        node.paused_until = self.now + duration
        self._push_wake(node.paused_until, i, _RESUME, 0)

    def resume(self, i: int) -> None:
        """Resume a paused node now (it takes its backlog at the next step)."""
        node = self.nodes[i]
        if node.paused_until is not None:
            node.paused_until = self.now
            self._push_wake(self.now, i, _RESUME, 0)

    def engine(self, i: int) -> Membership:
        engine = self.nodes[i].engine
        assert engine is not None
        return engine

    def running(self) -> list[SimNode]:
        return [n for n in self.nodes if n.engine is not None]

    def view(self, observer: int, subject: int) -> State | None:
        info = self.engine(observer).member(self.nodes[subject].name)
        return None if info is None else info.state

    def live_set(self, observer: int) -> frozenset[str]:
        return frozenset(m.name for m in self.engine(observer).members() if m.state == State.ALIVE)

    def changes(self, observer: int, subject: int) -> list[tuple[float, str]]:
        name = self.nodes[subject].name
        return [
            (t, e.change)
            for t, e in self.nodes[observer].events
            if isinstance(e, MemberEvent) and e.member.name == name
        ]

    def index_of(self, address: Address) -> int:
        return self._by_addr[address].index

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every running node holds exactly ``names`` (default: the running nodes) alive.
        ``O(n^2)``: for tests; :func:`simulate` tracks convergence from events."""
        want = frozenset(names if names is not None else (n.name for n in self.running()))
        return all(self.live_set(n.index) == want for n in self.running())

    def trace(self) -> str:
        """The SHA-256 of the event log so far (``trace=True``)."""
        if self._hash is None:
            raise LocalProtocolError("this cluster was made without trace=True")
        return self._hash.hexdigest()

    # -- time -------------------------------------------------------------------------------

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance to ``end`` (or until ``stop()`` holds, checked before every event; then
        ``True``)."""
        flight, wake = self.flight, self._wake
        while True:
            if stop is not None and stop():
                return True
            if flight and (not wake or flight[0][0] <= wake[0][0]):
                t = flight[0][0]
                if t > end:
                    break
                _t, _o, src, dst, data = heapq.heappop(flight)
                self.now = max(self.now, t)
                self._deliver(src, dst, data)
            elif wake:
                t = wake[0][0]
                if t > end:
                    break
                _t, i, kind, token = heapq.heappop(wake)
                self.now = max(self.now, t)
                self._wake_up(self.nodes[i], kind, token)
            else:
                break
        self.now = max(self.now, end)
        return False

    def _push_wake(self, t: float, i: int, kind: int, token: int) -> None:
        heapq.heappush(self._wake, (t, i, kind, token))

    def _arm(self, node: SimNode) -> None:
        engine = node.engine
        if engine is None:
            return
        node.token += 1
        due = engine.get_timer()
        if due is not None and node.paused_until is None:
            self._push_wake(due, node.index, _TIMER, node.token)

    def _wake_up(self, node: SimNode, kind: int, token: int) -> None:
        engine = node.engine
        if engine is None:
            return
        now = self.now
        if kind == _RESUME:
            if node.paused_until is None or node.paused_until > now:
                return  # resumed earlier, or paused again for longer
            node.paused_until = None
            backlog, node.backlog = node.backlog, []
            for src, data in backlog:  # read late, as a resumed process does
                self._log(now, node.index, _ARRIVAL, data)
                engine.receive(data, src, now)
                self._collect(node)
            due = engine.get_timer()
            if due is not None and due <= now:
                self._log(now, node.index, _TIMER, b"")
                engine.handle_timer(now)
                self._collect(node)
            self._arm(node)
            return
        if token != node.token or node.paused_until is not None:
            return
        self.events_processed += 1
        self._log(now, node.index, _TIMER, b"")
        engine.handle_timer(now)
        self._collect(node)
        self._arm(node)

    def _deliver(self, src: Address, dst: Address, data: bytes) -> None:
        node = self._by_addr.get(dst)
        if node is None or node.engine is None:
            return
        if node.paused_until is not None:
            node.backlog.append((src, data))
            return
        self.events_processed += 1
        self._log(self.now, node.index, _ARRIVAL, data)
        node.engine.receive(data, src, self.now)
        self._collect(node)
        self._arm(node)

    def _log(self, now: float, i: int, kind: int, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(_RECORD.pack(now, i, kind, len(data)))
            self._hash.update(data)

    # -- a hand on the wire (the state machine's rules) -----------------------------------

    def take(self, k: int) -> tuple[float, Address, Address, bytes]:
        """Remove the ``k``-th datagram in flight (modulo their number)."""
        self.flight.sort()
        due, _o, src, dst, data = self.flight.pop(k % len(self.flight))
        heapq.heapify(self.flight)
        return due, src, dst, data

    def deliver_early(self, k: int) -> tuple[Address, Address]:
        _due, src, dst, data = self.take(k)
        self._deliver(src, dst, data)
        return src, dst

    def drop(self, k: int) -> tuple[Address, Address]:
        _due, src, dst, _data = self.take(k)
        return src, dst

    def delay(self, k: int, extra: float) -> tuple[Address, Address]:
        due, src, dst, data = self.take(k)
        self._order += 1
        heapq.heappush(self.flight, (max(due, self.now) + extra, self._order, src, dst, data))
        return src, dst

    def deliver_all_now(self) -> None:
        """Deliver every datagram in flight at once (a test's hand-driven step)."""
        for i, (_t, o, src, dst, data) in enumerate(self.flight):
            self.flight[i] = (self.now, o, src, dst, data)
        heapq.heapify(self.flight)
        self.run_until(self.now)

    def _collect(self, node: SimNode) -> None:
        engine = node.engine
        assert engine is not None
        for o in engine.datagrams_to_send():
            data = o.data
            for dst in o.addrs:
                self.sent_by_kind[o.kind] = self.sent_by_kind.get(o.kind, 0) + 1
                self.send(node.address, dst, data)
        events = engine.pop_events()
        if events:
            now, hook = self.now, self.hook
            for event in events:
                if self.record:
                    node.events.append((now, event))
                if hook is not None:
                    hook(now, node.index, event)
                if self._hash is not None and isinstance(event, MemberEvent):
                    m = event.member
                    self._log(
                        now, node.index, _EVENT, f"{event.change} {m.name} {m.incarnation}".encode()
                    )

    def send(self, src: Address, dst: Address, data: bytes) -> None:
        self.sent += 1
        self.sent_bytes += len(data)
        if self.filter is not None and not self.filter(src, dst, data):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        delay = self.latency + self.rng.uniform(0, self.jitter)
        if dst in self.starved:  # an overloaded process: it reads each datagram late
            delay += self.rng.uniform(*self.starved_delay)
        self._order += 1
        heapq.heappush(self.flight, (self.now + delay, self._order, src, dst, data))


# -- the scenario ------------------------------------------------------------------------------


def _fraction(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise LocalProtocolError(f"{attribute.name} must be a fraction in [0, 1]: {value!r}")


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise LocalProtocolError(f"{attribute.name} must be finite and >= 0: {value!r}")


@attrs.frozen
class MembershipScenario:
    """One simulated run.

    Every node starts at 0 and joins through the first ``seeds`` nodes; loss applies from the
    start. At ``settle`` (the warm-up) the starved nodes start reading late; at ``settle +
    crash_at`` the crashed nodes are killed at once; the run ends at ``settle + duration``.

    Attributes:
        nodes: cluster size.
        seed: every random choice of the run.
        config: the engines' settings (Lifeguard by default; ``MembershipConfig.plain_swim()``
            for the baseline).
        latency, jitter: one-way delay ``latency + uniform(0, jitter)``: 1 + 0-2 ms is a LAN's
            2 ms +- 1 ms.
        loss: the probability that a datagram is lost.
        crashed: the fraction of nodes crashed (rounded); ``crashes``, if set, is the count.
        starved: the fraction of nodes (not crashed) that read each datagram
            ``starved_delay`` seconds late.
        seeds: how many seed nodes the others join through.
        settle, crash_at, duration: the timeline above (seconds).
        stop_when_joined: end the run as soon as every node sees every node alive (a join
            measurement: no faults).
        encrypted: seal packets (off by default: it changes bytes, not behaviour).
    """

    nodes: int = attrs.field()
    seed: int = 0
    config: MembershipConfig = attrs.field(factory=MembershipConfig)
    latency: float = attrs.field(default=0.001, validator=_seconds)
    jitter: float = attrs.field(default=0.002, validator=_seconds)
    loss: float = attrs.field(default=0.0, validator=_fraction)
    crashed: float = attrs.field(default=0.0, validator=_fraction)
    crashes: int | None = None
    starved: float = attrs.field(default=0.0, validator=_fraction)
    starved_delay: tuple[float, float] = (0.5, 2.5)
    seeds: int = 3
    settle: float = attrs.field(default=10.0, validator=_seconds)
    crash_at: float = attrs.field(default=0.0, validator=_seconds)
    duration: float = attrs.field(default=60.0, validator=_seconds)
    stop_when_joined: bool = False
    encrypted: bool = False

    @nodes.validator
    def _check_nodes(self, _attribute: object, value: int) -> None:
        if not 2 <= value < 63_999:
            raise LocalProtocolError(f"nodes must be in [2, 63999): {value!r}")

    def crash_count(self) -> int:
        if self.crashes is not None:
            return min(self.crashes, self.nodes - 1)
        return min(round(self.crashed * self.nodes), self.nodes - 1)


def _name_index(name: str) -> int:
    return int(name[5:])  # "node-<i>"


class _Tracker:
    """Everything :func:`simulate` reports, kept up to date from the engines' events in
    ``O(1)`` each: per observer, how many others it holds alive and which it holds suspect
    or down."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.alive = [0] * n
        self.suspects: list[set[int]] = [set() for _ in range(n)]
        self.down: list[set[int]] = [set() for _ in range(n)]
        self.full = 0  # observers that hold all n - 1 others alive
        self.join_time: float | None = None
        self.starved: set[int] = set()
        self.victims: dict[int, float] = {}  # crashed node -> crash time
        self.survivors = n
        self.first_suspicion: dict[int, float] = {}
        self.holders: dict[int, set[int]] = {}  # victim -> survivors that hold it down
        self.all_failed: dict[int, float] = {}
        self.false_suspicions = {"starved": 0, "healthy": 0}
        self.false_deaths = {"starved": 0, "healthy": 0}
        self.false_suspected: set[int] = set()
        self.false_dead: set[int] = set()

    def joined(self) -> bool:
        return self.join_time is not None

    def crash(self, now: float, holders: dict[int, set[int]]) -> None:
        """``holders``: per victim, the survivors that do not hold it alive or suspect
        already (down, or never heard of: a join not converged yet)."""
        for v in holders:
            self.victims[v] = now
        self.survivors = self.n - len(self.victims)
        for v, observers in holders.items():
            self.holders[v] = set(observers)
            if len(observers) == self.survivors:
                self.all_failed[v] = 0.0

    def _alive_changed(self, o: int, delta: int) -> None:
        before = self.alive[o]
        after = self.alive[o] = before + delta
        target = self.n - 1
        if before == target:
            self.full -= 1
        elif after == target:
            self.full += 1

    def __call__(self, now: float, o: int, event: object) -> None:
        if type(event) is not MemberEvent:
            return
        change = event.change
        s = _name_index(event.member.name)
        if s == o or (o in self.victims and now >= self.victims[o]):
            return
        suspects, down = self.suspects[o], self.down[o]
        if change == "joined":
            down.discard(s)
            self._alive_changed(o, 1)
            if self.join_time is None and self.full == self.n:
                self.join_time = now
        elif change == "alive":
            suspects.discard(s)
            self._alive_changed(o, 1)
            if self.join_time is None and self.full == self.n:
                self.join_time = now
        elif change == "suspect":
            self._alive_changed(o, -1)
            suspects.add(s)
        elif change in ("failed", "left"):
            if s in suspects:
                suspects.discard(s)
            elif s not in down:
                self._alive_changed(o, -1)
            down.add(s)
        else:
            return
        crashed_at = self.victims.get(s)
        if crashed_at is not None and now >= crashed_at:
            if change in ("suspect", "failed"):
                self.first_suspicion.setdefault(s, now - crashed_at)
            holders = self.holders[s]
            if change in ("failed", "left"):
                holders.add(o)
                if len(holders) == self.survivors and s not in self.all_failed:
                    self.all_failed[s] = now - crashed_at
            elif change in ("joined", "alive"):
                holders.discard(o)
        elif change in ("suspect", "failed"):
            kind = "starved" if s in self.starved else "healthy"
            if change == "suspect":
                self.false_suspicions[kind] += 1
                self.false_suspected.add(s)
            else:
                self.false_deaths[kind] += 1
                self.false_dead.add(s)


@attrs.frozen
class MembershipResult:
    """What one run measured (times in seconds; detection times from the crash).

    Attributes:
        join_time: when every node first held every other alive (``None``: not within the
            warm-up).
        victims, starved: the crashed and the starved nodes' names.
        first_suspicion: per victim, the first suspicion (or failure) of it anywhere.
        all_failed: per victim, when every survivor held it failed or had never heard of
            it (a join not converged under loss) (``None``: not within the run).
        false_suspicions, false_deaths: ``suspect`` / ``failed`` events (one per observer)
            about nodes that never crashed, by the victim's kind (``starved``, ``healthy``).
        false_suspected, false_dead: how many distinct such nodes, by kind.
        packets_per_node_second, bytes_per_node_second: sent datagrams in the measured
            window (after the warm-up), per running node; ``by_kind``: their kinds.
        join_packets_per_node: datagrams per node during the warm-up.
        events: datagrams read and timers fired; ``trace``: the event log's SHA-256.
    """

    scenario: MembershipScenario
    join_time: float | None
    victims: tuple[str, ...]
    starved: tuple[str, ...]
    first_suspicion: tuple[float | None, ...]
    all_failed: tuple[float | None, ...]
    false_suspicions: dict[str, int]
    false_deaths: dict[str, int]
    false_suspected: dict[str, int]
    false_dead: dict[str, int]
    packets_per_node_second: float
    bytes_per_node_second: float
    by_kind: dict[str, float]
    join_packets_per_node: float
    virtual_seconds: float
    events: int
    trace: str
    wall_seconds: float

    @property
    def any_false_death(self) -> bool:
        return sum(self.false_deaths.values()) > 0


def simulate(scenario: MembershipScenario, *, trace: bool = True) -> MembershipResult:
    """Run ``scenario`` (deterministic: the same scenario gives the same result and trace)."""
    sc = scenario
    started = time.perf_counter()
    n = sc.nodes
    tracker = _Tracker(n)
    pick = random.Random(f"membership-sim-{sc.seed}")
    order = list(range(n))
    pick.shuffle(order)
    k_crash = sc.crash_count()
    victims = sorted(order[:k_crash])
    k_starved = min(round(sc.starved * n), n - k_crash)
    starved = sorted(order[k_crash : k_crash + k_starved])
    tracker.starved = set(starved)
    c = Cluster(
        n,
        seed=sc.seed,
        config=sc.config,
        encrypted=sc.encrypted,
        latency=sc.latency,
        jitter=sc.jitter,
        loss=sc.loss,
        seeds=range(min(max(sc.seeds, 1), n)),
        record=False,
        hook=tracker,
        trace=trace,
    )
    c.starved_delay = sc.starved_delay
    c.run_until(sc.settle, tracker.joined if sc.stop_when_joined else None)
    if not sc.stop_when_joined:
        c.run_until(sc.settle)
    sent, sent_bytes, kinds = c.sent, c.sent_bytes, dict(c.sent_by_kind)
    window_start = c.now
    join_packets = sent / n
    if not sc.stop_when_joined:
        c.starved = {c.nodes[i].address for i in starved}
        c.run_until(sc.settle + sc.crash_at)
        for v in victims:
            c.crash(v)
        down = (State.DEAD, State.LEFT)
        holders: dict[int, set[int]] = {}
        for v in victims:
            name = c.nodes[v].name
            holders[v] = set()
            for node in c.running():
                info = node.engine.member(name) if node.engine is not None else None
                if info is None or info.state in down:
                    holders[v].add(node.index)
        tracker.crash(c.now, holders)
        c.run_until(sc.settle + sc.duration)
    span = c.now - window_start
    running = n - len(victims) if not sc.stop_when_joined else n
    per = running * span if span > 0 else math.inf

    def by_kind(nodes: set[int]) -> dict[str, int]:
        out = {"starved": 0, "healthy": 0}
        for i in nodes:
            out["starved" if i in tracker.starved else "healthy"] += 1
        return out

    return MembershipResult(
        scenario=sc,
        join_time=tracker.join_time,
        victims=tuple(f"node-{v}" for v in victims),
        starved=tuple(f"node-{i}" for i in starved),
        first_suspicion=tuple(tracker.first_suspicion.get(v) for v in victims),
        all_failed=tuple(tracker.all_failed.get(v) for v in victims),
        false_suspicions=dict(tracker.false_suspicions),
        false_deaths=dict(tracker.false_deaths),
        false_suspected=by_kind(tracker.false_suspected),
        false_dead=by_kind(tracker.false_dead),
        packets_per_node_second=(c.sent - sent) / per,
        bytes_per_node_second=(c.sent_bytes - sent_bytes) / per,
        by_kind={k: (v - kinds.get(k, 0)) / per for k, v in sorted(c.sent_by_kind.items())},
        join_packets_per_node=join_packets,
        virtual_seconds=c.now,
        events=c.events_processed,
        trace=c.trace() if trace else "",
        wall_seconds=time.perf_counter() - started,
    )


# -- reports -----------------------------------------------------------------------------------


def _p50(values: Sequence[float | None]) -> float | None:
    """Median with ``None`` (never) counted as +infinity."""
    if not values:
        return None
    mid = statistics.median_low([math.inf if v is None else v for v in values])
    return None if mid == math.inf else mid


def _max(values: Sequence[float | None]) -> float | None:
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def config_label(config: MembershipConfig) -> str:
    parts = [p for p in ("local_health", "dynamic_suspicion", "buddy") if getattr(config, p)]
    if len(parts) == 3:
        return "lifeguard"
    return "plain-swim" if not parts else "lifeguard(" + ",".join(parts) + ")"


def membership_to_dict(result: MembershipResult) -> dict[str, Any]:
    """One JSON-able object: the scenario, the measurements, the machine's cost."""
    sc = result.scenario
    return {
        "simulator": "membership",
        "nodes": sc.nodes,
        "seed": sc.seed,
        "config": config_label(sc.config),
        "loss": sc.loss,
        "crashed": len(result.victims),
        "starved": len(result.starved),
        "starved_delay": list(sc.starved_delay),
        "latency": [sc.latency, sc.latency + sc.jitter],
        "seeds": sc.seeds,
        "settle": sc.settle,
        "crash_at": sc.crash_at,
        "duration": sc.duration,
        "encrypted": sc.encrypted,
        "join_time": result.join_time,
        "detection": {
            "first_suspicion": list(result.first_suspicion),
            "all_failed": list(result.all_failed),
            "first_suspicion_p50": _p50(result.first_suspicion),
            "all_failed_p50": _p50(result.all_failed),
            "all_failed_max": _max(result.all_failed),
        },
        "false_suspicions": result.false_suspicions,
        "false_deaths": result.false_deaths,
        "false_suspected_nodes": result.false_suspected,
        "false_dead_nodes": result.false_dead,
        "any_false_death": result.any_false_death,
        "packets_per_node_second": result.packets_per_node_second,
        "bytes_per_node_second": result.bytes_per_node_second,
        "packets_per_node_second_by_kind": result.by_kind,
        "join_packets_per_node": result.join_packets_per_node,
        "virtual_seconds": result.virtual_seconds,
        "events": result.events,
        "trace": result.trace,
        "wall_seconds": result.wall_seconds,
    }


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def format_membership(result: MembershipResult) -> str:
    """A table for people."""
    d = membership_to_dict(result)
    det = d["detection"]
    lines = [
        f"membership: {d['nodes']} nodes ({d['config']}), seed {d['seed']}, loss "
        f"{d['loss']:.1%}, latency {sc_ms(result.scenario)}, {d['crashed']} crashed, "
        f"{d['starved']} starved (reading {d['starved_delay'][0]}-{d['starved_delay'][1]} s "
        f"late), "
        + (
            f"join only (up to {d['settle']:g} s)"
            if result.scenario.stop_when_joined
            else f"warm-up {d['settle']:g} s, measured {d['duration']:g} s"
        ),
        f"join: every node sees all {d['nodes']} alive at {_s(d['join_time'])}"
        f" ({d['join_packets_per_node']:.1f} packets per node during the warm-up)",
    ]
    if result.scenario.stop_when_joined:
        lines.append(ENCRYPTION_NOTE if not result.scenario.encrypted else "encryption on")
        lines.append(
            f"{d['events']:,} events in {d['virtual_seconds']:.2f} s virtual, "
            f"{d['wall_seconds']:.2f} s wall"
        )
        return "\n".join(lines)
    if result.victims:
        lines.append(
            f"crash detection: first suspicion p50 {_s(det['first_suspicion_p50'])}; "
            f"every survivor holds it failed p50 {_s(det['all_failed_p50'])}, max "
            f"{_s(det['all_failed_max'])}"
        )
    for label, key, nodes in (
        ("false suspicions", "false_suspicions", "false_suspected_nodes"),
        ("false deaths", "false_deaths", "false_dead_nodes"),
    ):
        ev, nd = d[key], d[nodes]
        lines.append(
            f"{label}: {ev['healthy'] + ev['starved']} events about "
            f"{nd['healthy'] + nd['starved']} nodes (starved: {ev['starved']} about "
            f"{nd['starved']}; healthy: {ev['healthy']} about {nd['healthy']})"
        )
    kinds = ", ".join(f"{k} {v:.2f}" for k, v in d["packets_per_node_second_by_kind"].items())
    lines.append(
        f"traffic after the warm-up: {d['packets_per_node_second']:.2f} packets and "
        f"{d['bytes_per_node_second']:.0f} bytes per node per second ({kinds})"
    )
    lines.append("encryption on (fixed test key)" if result.scenario.encrypted else ENCRYPTION_NOTE)
    lines.append(
        f"{d['events']:,} events in {d['virtual_seconds']:.1f} s virtual, "
        f"{d['wall_seconds']:.2f} s wall; trace {d['trace'][:16]}"
    )
    return "\n".join(lines)


def sc_ms(sc: MembershipScenario) -> str:
    lo, hi = sc.latency * 1000, (sc.latency + sc.jitter) * 1000
    return f"{lo:g}-{hi:g} ms"
