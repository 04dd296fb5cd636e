"""A hypothesis state machine over four membership engines on a simulated network.

Rules deliver a datagram early (reordering), drop one, delay one, crash, restart and pause a
node, and advance time. Invariants: incarnations only grow (as every node sees every
member); the cached live set and counts match the table; a running node the network has
treated fairly for a while is never declared dead by a majority; and, once the network
heals, every running node holds the same live set, exactly the running nodes.
"""

from __future__ import annotations

import os

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from gossip.membership import State
from gossip.sim.membership import Cluster

N = 4
#: A node fair this long (running, not paused, none of its datagrams dropped) has had time
#: to hear of any accusation and refute it, even with a poor health score.
FAIR = 20.0


class MembershipMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.c = Cluster(N, seed=0)
        self.unfair_until = [0.0] * N
        self.seen: dict[tuple[int, int, str], int] = {}  # (observer, its life, subject)

    @initialize(seed=st.integers(0, 2**16))
    def start(self, seed: int) -> None:
        self.c = Cluster(N, seed=seed, latency=0.005, jitter=0.01)
        assert self.c.run_until(5.0, self.c.converged)

    def _unfair(self, *addresses: tuple[str, int]) -> None:
        for address in addresses:
            i = self.c.index_of(address)
            self.unfair_until[i] = max(self.unfair_until[i], self.c.now)

    # -- the network --------------------------------------------------------------------

    @precondition(lambda self: bool(self.c.flight))
    @rule(k=st.integers(0, 1000))
    def deliver(self, k: int) -> None:
        self.c.deliver_early(k)

    @precondition(lambda self: bool(self.c.flight))
    @rule(k=st.integers(0, 1000))
    def drop(self, k: int) -> None:
        self._unfair(*self.c.drop(k))

    @precondition(lambda self: bool(self.c.flight))
    @rule(k=st.integers(0, 1000), extra=st.floats(0.0, 0.3))
    def delay(self, k: int, extra: float) -> None:
        self.c.delay(k, extra)

    @rule(dt=st.floats(0.01, 3.0))
    def advance(self, dt: float) -> None:
        self.c.run_for(dt)

    # -- the nodes ----------------------------------------------------------------------

    @precondition(lambda self: len(self.c.running()) > 2)
    @rule(i=st.integers(0, N - 1))
    def crash(self, i: int) -> None:
        if self.c.nodes[i].engine is not None:
            self.c.crash(i)
            self.unfair_until[i] = float("inf")

    @rule(i=st.integers(0, N - 1))
    def restart(self, i: int) -> None:
        if self.c.nodes[i].engine is None:
            self.c.start(i, seeds=[n.address for n in self.c.nodes if n.index != i])
            self.unfair_until[i] = self.c.now

    @rule(i=st.integers(0, N - 1), duration=st.floats(0.1, 4.0))
    def pause(self, i: int, duration: float) -> None:
        node = self.c.nodes[i]
        if node.engine is not None and node.paused_until is None:
            self.c.pause(i, duration)
            self.unfair_until[i] = max(self.unfair_until[i], self.c.now + duration)

    # -- invariants ---------------------------------------------------------------------

    @invariant()
    def incarnations_only_grow(self) -> None:
        seen: dict[tuple[int, int, str], int] = {}
        for node in self.c.running():
            for m in self.c.engine(node.index).members():
                key = (node.index, node.lives, m.name)
                old = self.seen.get(key)
                assert old is None or m.incarnation >= old, (key, old, m)
                seen[key] = m.incarnation
        self.seen = seen  # a reaped member may come back anew

    @invariant()
    def the_cached_views_match_the_table(self) -> None:
        for node in self.c.running():
            engine = self.c.engine(node.index)
            members = engine.members()
            live = [m for m in members if m.state in (State.ALIVE, State.SUSPECT)]
            assert engine._table.live_count() == len(live)
            assert sorted(engine.gossipiers()) == sorted(
                m.address for m in live if m.name != node.name
            )
            down = engine._table.down
            assert {m.name for m in members if m.state in (State.DEAD, State.LEFT)} - {
                node.name
            } == set(down)
            assert [m.since for m in down.values()] == sorted(m.since for m in down.values())

    @invariant()
    def a_fair_node_is_not_dead_to_a_majority(self) -> None:
        running = self.c.running()
        for node in running:
            if node.paused_until is not None or self.c.now - self.unfair_until[node.index] < FAIR:
                continue
            observers = [o for o in running if o is not node]
            dead = [o.index for o in observers if self.c.view(o.index, node.index) == State.DEAD]
            assert len(dead) * 2 <= len(observers), (node.name, dead, self.c.now)

    def teardown(self) -> None:
        c = self.c
        for node in c.running():  # heal: resume everyone, no more faults
            c.resume(node.index)
        c.run_for(90.0)
        want = frozenset(n.name for n in c.running())
        views = {n.name: sorted(c.live_set(n.index)) for n in c.running()}
        assert c.converged(want), (sorted(want), views)


MembershipMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MEMBERSHIP_EXAMPLES", min(settings().max_examples, 100))),
    stateful_step_count=40,
    deadline=None,
)
TestMembershipMachine = MembershipMachine.TestCase
