"""A deterministic in-process network of membership engines under virtual time.

No trio, no sockets, no sleeps: a heap of datagrams in flight ordered by arrival time, and the
engines' own timers. Nodes can crash (their engine is gone; datagrams to them vanish), restart
(a fresh engine under the same name and address, joining again), and pause (as SIGSTOP: they
read nothing and fire nothing until they resume, then take their backlog late). Every random
choice (loss, jitter, the engines' rngs) comes from the seed.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterable

import attrs

from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.events import Outgoing
from gossip.membership import MemberEvent, Membership, MembershipConfig, State
from gossip.transport.base import Address
from gossip.wire import Codec

KEY = bytes(range(32))
#: Unix time of virtual 0 (sealed labels carry wall-clock time for the replay guard).
EPOCH = 1_800_000_000.0


def maddr(i: int) -> Address:
    return (f"10.1.{(i + 1) // 250}.{(i + 1) % 250 + 1}", 7946)


@attrs.define
class SimNode:
    index: int
    name: str
    address: Address
    engine: Membership | None
    paused_until: float | None = None
    backlog: list[tuple[Address, bytes]] = attrs.field(factory=list)
    events: list[tuple[float, object]] = attrs.field(factory=list)
    lives: int = 0


class Cluster:
    """``n`` membership nodes; ``run_for`` moves virtual time."""

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
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or MembershipConfig()
        self.encrypted = encrypted
        self.latency, self.jitter, self.loss = latency, jitter, loss
        self.now = 0.0
        self._order = 0
        self.flight: list[tuple[float, int, Address, Address, bytes]] = []
        #: A hook on every datagram sent: return False to drop it.
        self.filter: Callable[[Address, Address, bytes], bool] | None = None
        self.sent = 0
        #: Addresses of starved nodes, and how late they read (Lifeguard's test case).
        self.starved: set[Address] = set()
        self.starved_delay = (0.5, 2.5)
        self.nodes = [SimNode(i, f"node-{i}", maddr(i), None) for i in range(n)]
        self._by_addr = {node.address: node for node in self.nodes}
        for node in self.nodes:
            self.start(node.index, seeds=[maddr(0)] if join and node.index else ())

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
        return engine

    def crash(self, i: int) -> None:
        self.nodes[i].engine = None
        self.nodes[i].backlog.clear()

    def pause(self, i: int, duration: float) -> None:
        self.nodes[i].paused_until = self.now + duration

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
        return frozenset(
            m.name for m in self.engine(observer).members() if m.state in (State.ALIVE,)
        )

    def changes(self, observer: int, subject: int) -> list[tuple[float, str]]:
        name = self.nodes[subject].name
        return [
            (t, e.change)
            for t, e in self.nodes[observer].events
            if isinstance(e, MemberEvent) and e.member.name == name
        ]

    # -- time -------------------------------------------------------------------------------

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def run_until(self, end: float, stop: Callable[[], bool] | None = None) -> bool:
        """Advance to ``end`` (or until ``stop()`` holds; then ``True``)."""
        while True:
            if stop is not None and stop():
                return True
            t = self._next_time()
            if t is None or t > end:
                self.now = max(self.now, end)
                return False
            self.now = max(self.now, t)
            self._step()

    def _next_time(self) -> float | None:
        times = [self.flight[0][0]] if self.flight else []
        for node in self.nodes:
            if node.engine is None:
                continue
            if node.paused_until is not None:
                times.append(node.paused_until)
                continue
            due = node.engine.get_timer()
            if due is not None:
                times.append(due)
        return min(times) if times else None

    def _step(self) -> None:
        now = self.now
        while self.flight and self.flight[0][0] <= now:
            _t, _o, src, dst, data = heapq.heappop(self.flight)
            self._deliver(src, dst, data)
        for node in self.nodes:
            engine = node.engine
            if engine is None:
                continue
            if node.paused_until is not None:
                if node.paused_until > now:
                    continue
                node.paused_until = None
                for src, data in node.backlog:  # read late, as a resumed process does
                    engine.receive(data, src, now)
                    self._collect(node)
                node.backlog.clear()
            due = engine.get_timer()
            if due is not None and due <= now:
                engine.handle_timer(now)
                self._collect(node)

    def _deliver(self, src: Address, dst: Address, data: bytes) -> None:
        node = self._by_addr.get(dst)
        if node is None or node.engine is None:
            return
        if node.paused_until is not None:
            node.backlog.append((src, data))
            return
        node.engine.receive(data, src, self.now)
        self._collect(node)

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

    def index_of(self, address: Address) -> int:
        return self._by_addr[address].index

    def deliver_all_now(self) -> None:
        """Deliver every datagram in flight at once (a test's hand-driven step)."""
        for i, (_t, o, src, dst, data) in enumerate(self.flight):
            self.flight[i] = (self.now, o, src, dst, data)
        heapq.heapify(self.flight)
        self._step()

    def _collect(self, node: SimNode) -> None:
        engine = node.engine
        assert engine is not None
        out: list[Outgoing] = list(engine.datagrams_to_send())
        for o in out:
            for dst in o.addrs:
                self.send(node.address, dst, o.data)
        for event in engine.pop_events():
            node.events.append((self.now, event))

    def send(self, src: Address, dst: Address, data: bytes) -> None:
        self.sent += 1
        if self.filter is not None and not self.filter(src, dst, data):
            return
        if self.loss and self.rng.random() < self.loss:
            return
        delay = self.latency + self.rng.uniform(0, self.jitter)
        if dst in self.starved:  # an overloaded process: it reads each datagram late
            delay += self.rng.uniform(*self.starved_delay)
        self._order += 1
        heapq.heappush(self.flight, (self.now + delay, self._order, src, dst, data))

    def converged(self, names: Iterable[str] | None = None) -> bool:
        """Every running node holds exactly ``names`` (default: the running nodes) alive."""
        want = frozenset(names if names is not None else (n.name for n in self.running()))
        return all(self.live_set(n.index) == want for n in self.running())
