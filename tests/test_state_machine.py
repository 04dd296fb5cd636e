"""A hypothesis state machine over several engines and a hostile network.

Rules deliver any in-flight datagram (so order varies), drop, duplicate and corrupt datagrams,
advance time and push from any node. Invariants: nothing reaches an application twice, nothing
is delivered that nobody pushed. At the end the network heals, time runs forward, and every node
must have every message.
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gossip.broadcast import GossipConfig

from .harness import Harness


class GossipMachine(RuleBasedStateMachine):
    h: Harness

    @initialize(
        n=st.integers(2, 6),
        seed=st.integers(0, 2**16),
        encrypted=st.booleans(),
        fanout=st.integers(1, 4),
    )
    def setup(self, n: int, seed: int, encrypted: bool, fanout: int) -> None:
        config = GossipConfig(fanout=fanout, sync_interval=0.5)
        self.h = Harness(n, seed=seed, config=config, encrypted=encrypted)

    @rule(node=st.integers(0, 5), data=st.binary(max_size=64))
    def push(self, node: int, data: bytes) -> None:
        self.h.push(node % len(self.h.engines), data)

    @precondition(lambda self: self.h.in_flight)
    @rule(pick=st.integers(0, 10**6))
    def deliver(self, pick: int) -> None:
        self.h.deliver(pick % len(self.h.in_flight))

    @precondition(lambda self: self.h.in_flight)
    @rule(pick=st.integers(0, 10**6))
    def drop(self, pick: int) -> None:
        self.h.in_flight.pop(pick % len(self.h.in_flight))

    @precondition(lambda self: self.h.in_flight)
    @rule(pick=st.integers(0, 10**6))
    def duplicate(self, pick: int) -> None:
        self.h.in_flight.append(self.h.in_flight[pick % len(self.h.in_flight)])

    # Only sealed clusters can tell a corrupted datagram from a real one; plain-text clusters
    # rely on the UDP checksum, as any unauthenticated protocol must.
    @precondition(lambda self: self.h.in_flight and self.h.engines[0].codec.encrypted)
    @rule(pick=st.integers(0, 10**6), pos=st.integers(0, 10**6), xor=st.integers(1, 255))
    def corrupt(self, pick: int, pos: int, xor: int) -> None:
        i = pick % len(self.h.in_flight)
        src, dst, data = self.h.in_flight[i]
        buf = bytearray(data)
        buf[pos % len(buf)] ^= xor
        self.h.in_flight[i] = (src, dst, bytes(buf))

    @rule(dt=st.sampled_from([0.001, 0.01, 0.1, 0.5, 2.0]))
    def advance(self, dt: float) -> None:
        self.h.advance(dt)

    @invariant()
    def nothing_delivered_twice(self) -> None:
        assert self.h.duplicate_deliveries == 0

    @invariant()
    def nothing_delivered_that_nobody_pushed(self) -> None:
        for delivered in self.h.delivered:
            for key, data in delivered.items():
                assert self.h.pushed[key] == data

    def teardown(self) -> None:
        if not hasattr(self, "h"):
            return
        self.h.run(30.0, step=0.05)  # heal: every datagram from now on arrives
        assert self.h.everyone_has_everything()
        assert self.h.duplicate_deliveries == 0


TestGossipMachine = GossipMachine.TestCase
# settings(): a copy of the loaded profile (conftest.py).
TestGossipMachine.settings = settings(
    settings(), stateful_step_count=40, max_examples=min(150, settings().max_examples)
)
