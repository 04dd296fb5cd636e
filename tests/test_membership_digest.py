"""Table digests on Pings: equal views agree without exchanging them, an idle cluster sends
nothing but probes, and a view that missed news is repaired within seconds."""

from __future__ import annotations

import random

import pytest

from gossip.membership import MembershipConfig, State
from gossip.membership.state import Member, MemberTable, member_hash
from gossip.membership.wire import Ack, Ping, parse_untrusted
from gossip.sim.membership import Cluster
from gossip.wire import LABEL_SIZE


def test_the_digest_follows_every_change_of_the_live_members() -> None:
    rng = random.Random(5)
    table = MemberTable(Member("me", ("10.0.0.1", 1), State.ALIVE, 0, b"", 0.0), 1000)
    for step in range(2000):
        name = f"m{rng.randrange(30)}"
        op = rng.randrange(5)
        inc = rng.randrange(6)
        if op == 0:
            table.alive(name, (f"10.0.1.{int(name[1:])}", 1), inc, b"", float(step))
        elif op == 1:
            table.suspect(name, inc, float(step))
        elif op == 2:
            table.dead(name, inc, float(step), left=rng.random() < 0.3)
        elif op == 3:
            table.reap(float(step - 50))
        else:
            table.bump_local(table.local.incarnation + 1)
        expected = 0
        for m in table:
            if m.state in (State.ALIVE, State.SUSPECT):
                expected ^= member_hash(m.name, m.incarnation)
        assert table.digest == expected, step


def push_pulls(c: Cluster) -> int:
    return sum(c.engine(n.index).statistics().push_pulls_sent for n in c.running())


def test_an_idle_cluster_sends_only_probes() -> None:
    c = Cluster(24, seed=3)
    assert c.run_until(5.0, c.converged)
    c.run_for(10.0)
    digests = {c.engine(n.index)._table.digest for n in c.running()}
    assert len(digests) == 1  # one view, one digest
    before, sent = push_pulls(c), c.sent
    c.run_for(120.0)  # four periodic push-pull periods
    assert push_pulls(c) == before
    # Pings and Acks: exactly two datagrams per node per probe interval.
    assert (c.sent - sent) / 24 / 120.0 == pytest.approx(2.0, rel=0.02)
    # memberlist's profile (no digests) exchanges full state every 30 s meanwhile.
    lan = Cluster(24, seed=3, config=MembershipConfig(digest_sync=False))
    assert lan.run_until(5.0, lan.converged)
    lan.run_for(10.0)
    before = push_pulls(lan)
    lan.run_for(120.0)
    assert push_pulls(lan) - before >= 24 * 3


def test_a_view_that_missed_news_is_repaired_through_the_digest() -> None:
    c = Cluster(12, seed=4)
    assert c.run_until(5.0, c.converged)
    c.run_for(5.0)
    # Node 5 hears nothing but Pings and Acks for a while (no Gossip, no piggybacked news,
    # no full state): it misses node 9's new metadata.
    deaf = c.nodes[5].address

    def filter_(src: object, dst: object, data: bytes) -> bool:
        if dst != deaf:
            return True
        packet = parse_untrusted(data[1], data[LABEL_SIZE:])  # the simulation is plain text
        return isinstance(packet, Ping | Ack) and not packet.updates

    c.filter = filter_
    c.engine(9).set_metadata(b"v2", c.now)
    c.run_for(15.0)  # news spread to everyone else and stopped being piggybacked
    assert c.engine(5).member("node-9").incarnation == 0  # type: ignore[union-attr]
    c.filter = None
    t0 = c.now
    # No periodic push-pull is due for 30 s; the digest on the next Pings gives it away.
    assert c.run_until(t0 + 20.0, lambda: c.engine(5).member("node-9").meta == b"v2")  # type: ignore[union-attr]
    assert c.now - t0 < 15.0
    assert (
        c.engine(5).statistics().digest_syncs
        + sum(c.engine(n.index).statistics().digest_syncs for n in c.running())
        >= 1
    )


def test_a_join_sent_before_the_seed_listens_is_retried() -> None:
    c = Cluster(3, seed=6, join=False)
    c.crash(0)  # the seed is not up yet
    c.crash(1)
    c.start(1, seeds=[c.nodes[0].address])
    c.run_for(3.0)
    assert c.engine(1).statistics().push_pulls_sent >= 2  # at start, then after 1 s, 2 s
    c.start(0)
    t0 = c.now
    # Retried after 1, 2, 4 s (doubling up to reconnect_interval): well before the 30 s
    # reconnect that would otherwise be the next try.
    assert c.run_until(
        t0 + 8.0, lambda: c.view(0, 1) == State.ALIVE and c.view(1, 0) == State.ALIVE
    )
