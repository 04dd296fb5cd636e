"""The membership engine (issue 11) driven by hand with explicit times: probes, indirect
probes and nacks, suspicion and its Lifeguard timeout, refutation, buddy, leave, reap,
rejoin, conflicts, metadata, the piggyback queue and push-pull."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from gossip.crypto import Keyring, ReplayGuard, generate_key
from gossip.discovery import Discovery, StaticDiscovery
from gossip.engine import EngineContext
from gossip.errors import LocalProtocolError
from gossip.events import PacketDropped
from gossip.membership import (
    MemberConflict,
    MemberEvent,
    MemberInfo,
    Membership,
    MembershipConfig,
    State,
    decode_tags_untrusted,
    encode_tags,
)
from gossip.membership.awareness import Awareness
from gossip.membership.queue import BroadcastQueue
from gossip.membership.suspicion import Suspicion, suspicion_bounds, suspicion_timeout
from gossip.membership.wire import (
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MembershipPacket,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    Suspect,
    Update,
    encode_packet,
    encode_update,
    parse_untrusted,
)
from gossip.mux import Mux
from gossip.transport.base import Address
from gossip.wire import Codec

PLAIN = Codec(max_datagram=65507)


def a(i: int) -> Address:
    return (f"10.2.0.{i + 1}", 7946)


def parse(data: bytes) -> MembershipPacket:
    ptype, body = PLAIN.open_untrusted(data, 0.0)
    return parse_untrusted(ptype, body)


class Hand:
    """Engines whose datagrams wait in ``wire`` until the test delivers them."""

    def __init__(self, n: int, config: MembershipConfig | None = None, *, join: bool = True):
        # memberlist's profile: the unit tests' times are written against its timeouts.
        self.config = config or MembershipConfig.memberlist_lan()
        self.now = 0.0
        self.engines: dict[Address, Membership] = {}
        self.wire: list[tuple[Address, Address, bytes]] = []
        self.events: dict[Address, list[object]] = {}
        self.log: list[tuple[float, Address, Address, MembershipPacket]] = []
        for i in range(n):
            self.add(i)
        if join:
            for i in range(1, n):
                self.engines[a(i)].join([a(j) for j in range(i)], self.now)
                self.collect(a(i))
            self.pump()
            assert all(len(e.gossipiers()) == n - 1 for e in self.engines.values())

    def add(self, i: int, name: str | None = None, address: Address | None = None) -> Membership:
        address = address or a(i)
        ctx = EngineContext(Codec(), address, StaticDiscovery(), random.Random(i), self.now)
        engine = Membership(ctx, name=name or f"n{i}", config=self.config)
        self.engines[address] = engine
        self.events.setdefault(address, [])
        self.collect(address)
        return engine

    def e(self, i: int) -> Membership:
        return self.engines[a(i)]

    def collect(self, src: Address) -> None:
        engine = self.engines[src]
        for out in engine.datagrams_to_send():
            for dst in out.addrs:
                self.wire.append((src, dst, out.data))
                self.log.append((self.now, src, dst, parse(out.data)))
        self.events[src].extend(engine.pop_events())

    def pump(self, keep: Callable[[Address, Address, bytes], bool] = lambda s, d, x: True) -> int:
        """Deliver everything (and what that causes) now; ``keep`` False drops a datagram."""
        delivered = 0
        while self.wire:
            src, dst, data = self.wire.pop(0)
            if dst not in self.engines or not keep(src, dst, data):
                continue
            self.engines[dst].receive(data, src, self.now)
            self.collect(dst)
            delivered += 1
        return delivered

    def run_until(
        self, until: float, keep: Callable[[Address, Address, bytes], bool] = lambda s, d, x: True
    ) -> None:
        """Fire every engine's timers in time order up to ``until``; delivery is instant."""
        while True:
            due = {addr: e.get_timer() for addr, e in self.engines.items()}
            when = min((t for t in due.values() if t is not None), default=None)
            if when is None or when > until:
                break
            self.now = max(self.now, when)
            for addr, t in due.items():
                if t is not None and t <= self.now:
                    self.engines[addr].handle_timer(self.now)
                    self.collect(addr)
            self.pump(keep)
        self.now = max(self.now, until)

    def hold_probes(self, *nodes: int) -> None:
        """Keep these engines from starting probes of their own (they still answer)."""
        for i in nodes:
            self.e(i)._next_probe = 1e9
            self.e(i)._rearm()

    def probe_next(self, i: int, target: str) -> float:
        """Make ``target`` engine ``i``'s next probe; returns when it starts."""
        e = self.e(i)
        e._order, e._order_index = [target], 0
        return e._next_probe

    def changes(self, observer: int, name: str) -> list[str]:
        return [
            ev.change
            for ev in self.events[a(observer)]
            if isinstance(ev, MemberEvent) and ev.member.name == name
        ]

    def sent(
        self, kind: type, src: int | None = None
    ) -> list[tuple[float, Address, MembershipPacket]]:
        """Packets of ``kind`` sent so far (by ``src``): (time, destination, packet)."""
        return [
            (t, d, p)
            for t, s, d, p in self.log
            if isinstance(p, kind) and (src is None or s == a(src))
        ]


def to_not(*dead: int) -> Callable[[Address, Address, bytes], bool]:
    down = {a(i) for i in dead}
    return lambda s, d, x: d not in down and s not in down


# -- the formulas -------------------------------------------------------------------------


def test_config_defaults_are_memberlists_lan_profile_but_for_suspicion_and_schedule() -> None:
    c = MembershipConfig()
    assert (c.probe_interval, c.probe_timeout, c.indirect_checks) == (1.0, 0.5, 3)
    assert (c.suspicion_mult, c.suspicion_max_timeout_mult, c.awareness_max) == (1.5, 6, 8)
    assert (c.suspicion_min, c.confirmations_wanted(), c.probe_schedule) == (3.0, 2, "shared")
    lan = MembershipConfig.memberlist_lan()
    assert (lan.suspicion_mult, lan.suspicion_min, lan.probe_schedule) == (4, 0.0, "random")
    assert lan.confirmations_wanted() == 2  # memberlist's k = suspicion_mult - 2
    assert (c.gossip_interval, c.gossip_nodes, c.retransmit_mult) == (0.2, 3, 4)
    assert c.local_health and c.dynamic_suspicion and c.buddy
    assert [c.retransmit_limit(n) for n in (1, 9, 10, 99, 100, 1000)] == [4, 4, 8, 8, 12, 16]
    assert c.push_pull_period(32) == 30.0
    assert c.push_pull_period(100) == 90.0  # about 90 s at 100 nodes, as memberlist
    plain = MembershipConfig.plain_swim()
    assert not (plain.local_health or plain.dynamic_suspicion or plain.buddy)
    with pytest.raises(LocalProtocolError):
        MembershipConfig(probe_timeout=1.0)
    with pytest.raises(LocalProtocolError):
        MembershipConfig(indirect_checks=-1)


def test_suspicion_timeout_values() -> None:
    low, high = suspicion_bounds(100, 4, 6, 1.0)
    assert (low, high) == (8.0, 48.0)
    low32, _ = suspicion_bounds(32, 4, 6, 1.0)
    assert low32 == pytest.approx(6.02, abs=0.01)  # kinship's measured suspicion-to-dead
    assert suspicion_bounds(5, 4, 6, 1.0) == (4.0, 24.0)  # log10 n below 1 counts as 1
    k = 4 - 2
    assert suspicion_timeout(0, k, low, high) == 48.0
    assert suspicion_timeout(1, k, low, high) == pytest.approx(48 - math.log(2) / math.log(3) * 40)
    assert suspicion_timeout(2, k, low, high) == 8.0
    assert suspicion_timeout(5, k, low, high) == 8.0
    assert suspicion_timeout(0, 0, low, high) == 8.0  # no confirmations expected: fixed
    # The defaults: a 3 s floor up to 100 members, then 1.5 x log10 n.
    assert suspicion_bounds(32, 1.5, 6, 1.0, 3.0) == (3.0, 18.0)
    assert suspicion_bounds(1000, 1.5, 6, 1.0, 3.0) == pytest.approx((4.5, 27.0))

    s = Suspicion("x", 3, "accuser", k, low, high, start=100.0)
    assert s.deadline == 148.0
    assert not s.confirm("accuser")  # the accuser is not a confirmation
    assert s.confirm("b")
    assert s.deadline == pytest.approx(100 + 48 - math.log(2) / math.log(3) * 40)
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.deadline == 108.0
    assert not s.confirm("d")  # k reached: no more names stored
    assert s.confirmations == 2


def test_awareness_clamps_and_scales() -> None:
    h = Awareness(8)
    h.apply(-1)
    assert h.score == 0
    h.apply(20)
    assert h.score == 7
    assert h.scale(0.5) == 4.0
    off = Awareness(8, enabled=False)
    off.apply(5)
    assert off.score == 0 and off.scale(1.0) == 1.0


def test_queue_retransmits_least_sent_newest_first_within_budget() -> None:
    q = BroadcastQueue(cap=3)
    q.push("a", b"A" * 10)
    q.push("b", b"B" * 10)
    assert q.take(15, limit=2, count=10) == [b"B" * 10]  # newest first; A does not fit
    assert q.take(100, limit=2, count=10) == [b"A" * 10, b"B" * 10]  # least-sent first
    assert q.take(100, limit=2, count=10) == [b"A" * 10]  # B reached its limit
    assert len(q) == 0
    q.push("a", b"1")
    q.push("a", b"2")  # newer news about a replaces the older
    assert len(q) == 1
    q.push("b", b"3")
    q.push("c", b"4")
    q.take(100, limit=5, count=1)  # c sent once
    q.push("d", b"5")  # full: the most-sent goes
    assert "c" not in q and len(q) == 3 and q.evicted == 1


def test_every_update_is_piggybacked_retransmit_limit_times() -> None:
    h = Hand(4)
    h.run_until(10.0)  # what the join queued is out
    start = len(h.log)
    h.e(3).set_metadata(b"v2", h.now)
    h.collect(a(3))
    h.run_until(40.0)
    carried = sum(
        isinstance(u, Alive) and u.name == "n3" and u.meta == b"v2"
        for _t, src, _d, p in h.log[start:]
        if src == a(3)
        for u in getattr(p, "updates", ())
    )
    assert carried == MembershipConfig().retransmit_limit(4) == 4


# -- probing ------------------------------------------------------------------------------


def test_probes_go_round_robin_in_shuffled_rounds() -> None:
    h = Hand(5)
    h.hold_probes(1, 2, 3, 4)
    h.run_until(12.5)
    targets = [p.target for _t, _d, p in h.sent(Ping, 0) if isinstance(p, Ping)][:12]
    rounds = [targets[i : i + 4] for i in range(0, 12, 4)]
    assert all(sorted(r) == ["n1", "n2", "n3", "n4"] for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # reshuffled
    times = [t for t, _d, _p in h.sent(Ping, 0)]
    assert all(b - a == pytest.approx(1.0) for a, b in itertools.pairwise(times))
    stats = h.e(0).statistics()
    assert stats.probes == stats.acks == len(times)
    assert stats.health_score == 0


def test_indirect_probe_through_a_helper_succeeds() -> None:
    h = Hand(3)
    h.hold_probes(1, 2)
    # n0 cannot reach n2 directly; n1 can.
    h.run_until(8.0, lambda s, d, x: {s, d} != {a(0), a(2)})
    stats = h.e(0).statistics()
    assert stats.indirect_probes >= 3
    assert stats.acks == stats.probes  # every probe answered, n2's through n1
    assert h.e(1).statistics().relayed == stats.indirect_probes
    assert h.changes(0, "n2") == ["joined"]  # never suspected
    assert stats.health_score == 0


@pytest.mark.parametrize("helpers_up", [True, False])
def test_helpers_nack_and_lifeguard_spares_the_prober(helpers_up: bool) -> None:
    h = Hand(3)
    h.hold_probes(1, 2)
    t0 = h.probe_next(0, "n2")
    h.run_until(t0 + 1.0, to_not(2) if helpers_up else to_not(1, 2))
    [(t_req, helper, _p)] = h.sent(PingReq, 0)
    assert helper == a(1)
    assert t_req == pytest.approx(t0 + 0.5)  # at the direct timeout
    stats = h.e(0).statistics()
    assert stats.suspicions == 1
    assert h.changes(0, "n2")[-1] == "suspect"
    if helpers_up:
        [(t_nack, _d, _p)] = h.sent(Nack, 1)
        assert t_nack == pytest.approx(t0 + 0.5 + 0.4)  # before the probe ends
    # One helper expected, one nack: not this node's fault (score 0). Silence: +1.
    assert stats.nacks_received == (1 if helpers_up else 0)
    assert stats.health_score == (0 if helpers_up else 1)
    without = Hand(3, MembershipConfig(local_health=False))
    without.hold_probes(1, 2)
    t1 = without.probe_next(0, "n2")
    without.run_until(t1 + 1.0, to_not(1, 2))
    assert without.e(0).statistics().health_score == 0


def test_suspect_is_declared_failed_after_the_timeout() -> None:
    h = Hand(3)
    h.hold_probes(1, 2)
    t0 = h.probe_next(0, "n2")
    h.run_until(t0 + 1.0, to_not(2))
    assert h.changes(0, "n2")[-1] == "suspect"
    # n = 3: min = 4 x 1 x 1 s; too few members for confirmations (n - 2 < k): fixed 4 s.
    h.run_until(t0 + 1.0 + 3.99, to_not(2))
    assert h.changes(0, "n2")[-1] == "suspect"
    h.run_until(t0 + 1.0 + 4.0, to_not(2))
    assert h.changes(0, "n2")[-1] == "failed"
    assert h.changes(1, "n2")[-1] == "failed"  # gossiped
    assert a(2) not in h.e(0).gossipiers()
    assert h.e(0).statistics().failures == 1


def inject(
    engine: Membership, *updates: Update, src: Address = ("10.9.9.9", 1), now: float = 0.0
) -> None:
    engine.receive(Codec().seal(*encode_packet(Gossip(updates)), now), src, now)


def test_confirmations_shorten_the_suspicion() -> None:
    h = Hand(6)
    e0 = h.e(0)
    inject(e0, Suspect(0, "n5", "n1"))
    s = e0._suspicions["n5"]
    assert s.deadline == pytest.approx(24.0)  # n = 6: min 4 s, max 24 s
    inject(e0, Suspect(0, "n5", "n2"))
    assert s.deadline == pytest.approx(24 - math.log(2) / math.log(3) * 20)
    inject(e0, Suspect(0, "n5", "n3"))
    assert s.deadline == pytest.approx(4.0)


def test_without_dynamic_suspicion_the_timeout_is_fixed() -> None:
    h = Hand(6, MembershipConfig.memberlist_lan(dynamic_suspicion=False))
    inject(h.e(0), Suspect(0, "n5", "n1"))
    assert h.e(0)._suspicions["n5"].deadline == pytest.approx(4.0)


def test_the_suspect_refutes_with_a_higher_incarnation() -> None:
    h = Hand(3)
    h.hold_probes(1, 2)
    e0, e2 = h.e(0), h.e(2)
    t0 = h.probe_next(0, "n2")
    h.run_until(t0 + 1.0, to_not(2))
    assert h.changes(0, "n2")[-1] == "suspect"
    h.run_until(t0 + 2.0)  # n2 reachable again: the Suspect reaches it in gossip
    assert e2.incarnation == 1
    assert e2.statistics().refutations == 1
    assert e2.health_score == 1  # Lifeguard: being suspected hints at a slow self
    assert h.changes(0, "n2")[-2:] == ["suspect", "alive"]
    member = e0.member("n2")
    assert member is not None and (member.state, member.incarnation) == (State.ALIVE, 1)
    h.run_until(t0 + 10.0)
    assert "failed" not in h.changes(0, "n2")


@pytest.mark.parametrize("buddy", [True, False])
def test_a_ping_to_a_suspect_carries_the_suspicion(buddy: bool) -> None:
    h = Hand(2, MembershipConfig(buddy=buddy))
    h.hold_probes(1)
    t0 = h.probe_next(0, "n1")
    h.run_until(t0 + 2.0, to_not(1))  # suspected; the queued Suspect is sent out (and lost)
    assert h.changes(0, "n1")[-1] == "suspect"
    assert "n1" not in h.e(0)._queue
    h.run_until(t0 + 3.5)
    # Health 1 after the failed probe: the next Ping is at t0 + 1 + 2 x 1 s.
    [(t, _d, ping)] = [x for x in h.sent(Ping, 0) if x[0] > t0 + 2.0]
    assert isinstance(ping, Ping) and t == pytest.approx(t0 + 3.0)
    assert [type(u) for u in ping.updates] == ([Suspect] if buddy else [])
    if buddy:  # refuted in the Ack
        assert h.e(1).incarnation == 1
        assert h.changes(0, "n1")[-1] == "alive"
    else:
        assert h.e(1).incarnation == 0


def test_a_node_held_dead_is_told_so_in_the_ack_and_refutes() -> None:
    h = Hand(2)
    h.hold_probes(0)
    e0, e1 = h.e(0), h.e(1)
    inject(e0, Dead(0, "n1", "n0"))
    h.collect(a(0))
    assert h.changes(0, "n1")[-1] == "failed"
    # n0's gossip is lost: only the Ack to n1's Ping tells n1.
    no_gossip = lambda s, d, x: s != a(0) or not isinstance(parse(x), Gossip)  # noqa: E731
    h.run_until(2.0, no_gossip)
    told = [
        p
        for _t, _d, p in h.sent(Ack, 0)
        if isinstance(p, Ack) and any(isinstance(u, Dead) for u in p.updates)
    ]
    assert told
    assert e1.incarnation == 1
    assert h.changes(0, "n1")[-1] == "joined"  # back, with a higher incarnation


def test_graceful_leave_is_left_not_failed_and_reaped_later() -> None:
    h = Hand(3, MembershipConfig(reap_time=10.0))
    e2 = h.e(2)
    e2.leave(h.now)
    h.collect(a(2))
    h.pump()
    assert h.changes(0, "n2")[-1] == "left"
    assert h.changes(2, "n2")[-1] == "left"  # it reports itself
    assert a(2) not in h.e(0).gossipiers()
    h.run_until(5.0)
    assert e2.leave_complete
    assert e2.statistics().probes == 0
    assert all(h.changes(i, "n2") == ["joined", "left"] for i in (0, 1))
    assert h.e(0).member("n2") is not None
    h.run_until(12.0)
    assert h.e(0).member("n2") is None  # reaped after reap_time
    with pytest.raises(LocalProtocolError):
        e2.set_metadata(b"", h.now)


def test_a_restarted_node_rejoins_with_a_higher_incarnation() -> None:
    h = Hand(3)
    h.hold_probes(1, 2)
    e0 = h.e(0)
    h.e(2).set_metadata(b"v1", h.now)  # incarnation 1
    h.collect(a(2))
    h.run_until(h.now + 1.0)
    assert e0.member("n2") == MemberInfo("n2", a(2), State.ALIVE, 1, b"v1")
    t0 = h.probe_next(0, "n2")
    h.run_until(t0 + 6.0, to_not(2))
    assert h.changes(0, "n2")[-1] == "failed"
    fresh = h.add(2)  # the same name and address, incarnation 0
    fresh.join([a(0)], h.now)
    h.collect(a(2))
    h.run_until(h.now + 1.0)
    assert fresh.incarnation == 2  # refuted its old life's death (at incarnation 1)
    member = e0.member("n2")
    assert member is not None and member.state == State.ALIVE and member.incarnation == 2
    assert h.changes(0, "n2")[-1] == "joined"


def test_name_and_address_conflicts_are_reported_not_merged() -> None:
    h = Hand(3)
    impostor = h.add(5, name="n1")  # n1's name at another address
    impostor.join([a(0)], h.now)
    h.collect(a(5))
    h.pump()
    conflicts = [ev for ev in h.events[a(0)] if isinstance(ev, MemberConflict)]
    assert conflicts and conflicts[0].kind == "name" and conflicts[0].name == "n1"
    assert conflicts[0].known.address == a(1)
    n1 = h.e(0).member("n1")
    assert n1 is not None and n1.address == a(1)  # kept
    # Another name at a live member's address.
    squatter = Alive(0, "other", a(2))
    h.e(0).receive(Codec().seal(*encode_packet(Gossip((squatter,))), 0.0), a(2), 0.0)
    h.collect(a(0))
    kinds = [ev.kind for ev in h.events[a(0)] if isinstance(ev, MemberConflict)]
    assert "address" in kinds
    assert h.e(0).member("other") is None
    assert h.e(0).statistics().conflicts == len(kinds)


def test_metadata_updates_spread_with_a_new_incarnation() -> None:
    h = Hand(5)
    tags = encode_tags({"role": "db", "zone": "b"})
    h.e(4).set_metadata(tags, h.now)
    h.collect(a(4))
    h.run_until(h.now + 1.0)
    for i in range(4):
        member = h.e(i).member("n4")
        assert member is not None and member.meta == tags and member.incarnation == 1
        assert decode_tags_untrusted(member.meta) == {"role": "db", "zone": "b"}
    assert h.changes(0, "n4")[-1] == "updated"
    assert h.changes(4, "n4")[-1] == "updated"
    with pytest.raises(LocalProtocolError):
        h.e(4).set_metadata(bytes(513), h.now)


def test_push_pull_merges_and_answers() -> None:
    h = Hand(4, join=False)
    h.e(1).join([a(0)], 0.0)
    h.e(3).join([a(2)], 0.0)
    h.collect(a(1))
    h.collect(a(3))
    h.pump()
    assert {m.name for m in h.e(0).members()} == {"n0", "n1"}
    # Two islands meet through one push-pull: each learns the other's members.
    h.e(0).join([a(2)], 0.0)
    h.collect(a(0))
    h.pump(lambda s, d, x: not isinstance(parse(x), Gossip))
    assert {m.name for m in h.e(0).members()} == {"n0", "n1", "n2", "n3"}
    assert {m.name for m in h.e(2).members()} == {"n0", "n1", "n2", "n3"}
    stats = h.e(0).statistics()
    assert stats.push_pulls_sent == 2 and stats.push_pulls_received == 2


def test_a_large_table_goes_in_several_parts_marked_reliable() -> None:
    h = Hand(1)
    e0 = h.e(0)
    big = bytes(500)
    entries = tuple(
        Alive(0, f"m{i}", (f"10.3.{i // 250}.{i % 250 + 1}", 7946), big) for i in range(6)
    )
    e0.receive(Codec().seal(*encode_packet(Gossip(entries[:2])), 0.0), a(9), 0.0)
    e0.receive(Codec().seal(*encode_packet(Gossip(entries[2:4])), 0.0), a(9), 0.0)
    e0.receive(Codec().seal(*encode_packet(Gossip(entries[4:])), 0.0), a(9), 0.0)
    e0.datagrams_to_send()
    e0.join([a(1)], 0.0)
    outs = e0.datagrams_to_send()
    parts = [parse(o.data) for o in outs]
    assert len(outs) >= 3 and all(o.reliable for o in outs)
    assert all(isinstance(p, PushPull) for p in parts)
    assert [p.reply for p in parts if isinstance(p, PushPull)] == [False] + [True] * (len(outs) - 1)
    names = {m.name for p in parts if isinstance(p, PushPull) for m in p.members}
    assert names == {"n0"} | {f"m{i}" for i in range(6)}


# -- hostile input and bounds -------------------------------------------------------------


def test_bad_unauthenticated_and_replayed_datagrams_are_dropped_and_counted() -> None:
    key = generate_key()
    ctx = EngineContext(
        Codec(Keyring(key), replay=ReplayGuard()), a(0), StaticDiscovery(), random.Random(1), 0.0
    )
    e0 = Membership(ctx, name="n0")
    e0.pop_events()
    sender = Codec(Keyring(key), replay=ReplayGuard())
    forger = Codec(Keyring(generate_key()))
    join = sender.seal(*encode_packet(Gossip((Alive(0, "x", a(1)),))), 0.0)
    for datagram in (
        b"",
        b"\xa1\x10",
        forger.seal(*encode_packet(Gossip((Alive(0, "y", a(2)),))), 0.0),
        Codec().seal(*encode_packet(Gossip((Alive(0, "z", a(3)),))), 0.0),
        sender.seal(0x14, b"\x01\xff", 0.0),  # a truncated update
        sender.seal(0x1F, b"", 0.0),  # a reserved type
        join,
        join,  # replayed
    ):
        e0.receive(datagram, a(9), 0.0)
    assert [m.name for m in e0.members()] == ["n0", "x"]
    dropped = e0.statistics().dropped
    assert dropped["replay"] == 1 and dropped["body"] == 1 and dropped["type"] == 1
    assert sum(dropped.values()) == 7
    assert len([ev for ev in e0.pop_events() if isinstance(ev, PacketDropped)]) == 7


def test_the_largest_names_and_metadata_fit_the_smallest_datagram_allowed() -> None:
    codec = Codec(Keyring(generate_key()), max_datagram=900)
    long = "é" * 127  # 254 bytes
    ctx = EngineContext(codec, ("fd00::1", 7946), StaticDiscovery(), random.Random(1), 0.0)
    e = Membership(ctx, name=long, metadata=bytes(512), seeds=[("fd00::2", 7946)])
    sender = Codec(codec.keyring)
    big = Alive(0, "ü" * 127, ("fd00::3", 7946), bytes(512))
    e.receive(sender.seal(*encode_packet(Gossip((big,))), 0.0), ("fd00::3", 7946), 0.0)
    e.receive(
        sender.seal(*encode_packet(Gossip((Suspect(0, big.name, "x" * 200),))), 0.1),
        ("fd00::3", 7946),
        0.1,
    )
    t = 0.0
    while t < 20.0:  # probes of the suspect with the buddy suspicion: no room, still sent
        due = e.get_timer()
        assert due is not None
        t = due
        e.handle_timer(t)
    assert all(len(o.data) <= 900 for o in e.datagrams_to_send())


def test_tables_are_bounded() -> None:
    config = MembershipConfig(max_members=4, max_pending=2)
    h = Hand(1, config)
    e0 = h.e(0)
    news = tuple(Alive(0, f"m{i}", (f"10.4.0.{i + 1}", 7946)) for i in range(10))
    e0.receive(Codec().seal(*encode_packet(Gossip(news)), 0.0), a(9), 0.0)
    assert len(e0.members()) == 4
    assert e0.statistics().dropped["full"] == 7
    for seq in range(5):
        e0.receive(
            Codec().seal(*encode_packet(PingReq(seq, "m0", news[0].address)), 0.0), a(9), 0.0
        )
    assert e0.statistics().relayed == 2
    assert e0.statistics().dropped["busy"] == 3


def test_gossipiers_is_a_cached_discovery_of_live_members() -> None:
    h = Hand(4)
    e0 = h.e(0)
    assert isinstance(e0, Discovery)
    first = e0.gossipiers()
    assert first is e0.gossipiers()  # no work per call
    assert sorted(first) == [a(1), a(2), a(3)]
    h.e(3).leave(h.now)
    h.collect(a(3))
    h.pump()
    assert sorted(e0.gossipiers()) == [a(1), a(2)]
    assert Mux([e0]).engines == (e0,)  # owns part of the membership range only


def test_constructor_checks() -> None:
    ctx = EngineContext(Codec(), ("localhost", 1), StaticDiscovery(), random.Random(1), 0.0)
    with pytest.raises(LocalProtocolError, match="numeric"):
        Membership(ctx, name="x")
    ctx = EngineContext(Codec(), a(0), StaticDiscovery(), random.Random(1), 0.0)
    with pytest.raises(LocalProtocolError):
        Membership(ctx, name="")
    with pytest.raises(LocalProtocolError):
        Membership(ctx, name="x" * 256)
    with pytest.raises(LocalProtocolError):
        Membership(ctx, name="x", metadata=bytes(513))
    small = EngineContext(Codec(max_datagram=512), a(0), StaticDiscovery(), random.Random(1), 0)
    with pytest.raises(LocalProtocolError, match="max_datagram"):
        Membership(small, name="x")
    e = Membership(ctx, name="x", seeds=[a(0), a(1)])  # its own address is skipped
    assert [o.addrs for o in e.datagrams_to_send()] == [(a(1),)]
    assert [type(ev) for ev in e.pop_events()] == [MemberEvent]
    with pytest.raises(LocalProtocolError):
        encode_tags({"k": "v" * 256})
    assert encode_update(Alive(1, "x", ("::1", 5), b"m")) == encode_update(
        Alive(1, "x", ("0:0::1", 5), b"m")
    )


def test_a_suspicion_timer_that_ran_late_waits_one_more_interval() -> None:
    h = Hand(6)
    e0 = h.e(0)
    inject(e0, Suspect(0, "n5", "n1"))
    assert e0._suspicions["n5"].deadline == pytest.approx(24.0)
    e0.handle_timer(40.0)  # this node was stopped for 16 s past the verdict
    assert e0.member("n5") is not None and e0.member("n5").state == State.SUSPECT  # type: ignore[union-attr]
    inject(e0, Alive(1, "n5", a(5)))  # the refutation it had not read yet
    e0.handle_timer(40.5)
    assert e0.statistics().failures == 0
    inject(e0, Suspect(1, "n5", "n1"), now=40.5)
    e0.handle_timer(64.5)  # on time: no grace
    assert e0.statistics().failures == 1


def test_push_pull_entries_merge_as_news_not_verdicts() -> None:
    h = Hand(3)
    e0 = h.e(0)
    table = PushPull(
        join=False,
        reply=True,
        members=(
            MemberState(State.DEAD, 0, "n1", a(1)),  # another node's verdict: a suspicion here
            MemberState(State.SUSPECT, 0, "n2", a(2)),
            MemberState(State.DEAD, 0, "ghost", a(7)),  # unknown and dead: ignored
            MemberState(State.LEFT, 0, "gone", a(8)),  # unknown and left: ignored
            MemberState(State.SUSPECT, 3, "new", a(9)),  # unknown suspect: joined, suspect
        ),
    )
    replies = len(h.sent(PushPull, 0))
    e0.receive(Codec().seal(*encode_packet(table), 0.0), a(1), 0.0)
    h.collect(a(0))
    states = {m.name: m.state for m in e0.members()}
    assert states == {
        "n0": State.ALIVE,
        "n1": State.SUSPECT,
        "n2": State.SUSPECT,
        "new": State.SUSPECT,
    }
    assert h.changes(0, "new") == ["joined", "suspect"]
    assert not any(isinstance(ev, MemberEvent) and ev.change == "failed" for ev in h.events[a(0)])
    assert len(h.sent(PushPull, 0)) == replies  # it was a reply: none is sent back
    inject(e0, Leave(0, "n1"))  # a Leave of a suspect: left
    h.collect(a(0))
    assert h.changes(0, "n1")[-1] == "left"


def test_a_node_in_poor_local_health_waits_longer_before_a_verdict() -> None:
    # A node that misses acks is likely the slow one: it stretches its suspicion timeouts by
    # its health multiplier, as it stretches its probes (plain SWIM: no stretch).
    for config, stretch in [
        (MembershipConfig.memberlist_lan(dynamic_suspicion=False), 4.0),
        (MembershipConfig.memberlist_lan(dynamic_suspicion=False, local_health=False), 1.0),
    ]:
        h = Hand(6, config)
        h.e(0)._awareness.apply(3)
        inject(h.e(0), Suspect(0, "n5", "n1"))
        assert h.e(0)._suspicions["n5"].deadline == pytest.approx(4.0 * stretch)
