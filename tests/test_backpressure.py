"""Bursts (issue 15): the push window, a cache bounded by bytes and age, deferred delivery,
and the runtime's pacing of a producer that pushes faster than the cluster absorbs."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from gossip.broadcast import CACHE_ENTRY_OVERHEAD, GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.node import Gossiper, open_gossiper
from gossip.transport.base import Address, Transport
from gossip.transport.memory import LinkConditions, MemoryNetwork
from gossip.wire import Codec, PullRequest, PullSync

from .harness import EPOCH, KEY, Harness, addr


def _packet(h: Harness, datagram: bytes) -> object:
    """Read a datagram of the harness cluster (a fresh codec: no replay state)."""
    return Codec(Keyring(KEY), max_datagram=65507).decode_untrusted(datagram, h.now + EPOCH)


# -- the engine ---------------------------------------------------------------------------


def test_window_counts_own_rounds_until_they_end() -> None:
    h = Harness(4, config=GossipConfig(push_window=3))
    origin = h.engines[0]
    for i in range(3):
        assert origin.can_push(10, h.now)
        h.push(0, b"m%d" % i)
    assert origin.in_flight == 3
    assert not origin.can_push(10, h.now)  # the window is full
    h.deliver_all()  # ACKs come back: every round reaches its majority
    assert origin.in_flight == 0
    assert origin.can_push(10, h.now)
    assert h.everyone_has_everything()


def test_a_round_without_acks_leaves_the_window_at_its_deadline() -> None:
    h = Harness(4, config=GossipConfig(push_window=1, ack_timeout=0.3))
    h.push(0, b"lost")
    h.in_flight.clear()  # every push is lost
    assert not h.engines[0].can_push(1, h.now)
    h.advance(0.31)  # the deadline: the round ends (a PullSync fallback goes out)
    assert h.engines[0].in_flight == 0
    assert h.engines[0].can_push(1, h.now)
    assert h.engines[0].statistics().ack_rounds_failed == 1


def test_relayed_messages_do_not_count_against_the_window() -> None:
    h = Harness(5, config=GossipConfig(push_window=1))
    h.push(0, b"x")
    h.deliver(0)  # one target gets it and forwards it: a relay round, not its own
    relay = h.index(h.in_flight[-1][0])
    assert h.engines[relay].in_flight == 0


def test_cache_expires_by_age_not_by_count() -> None:
    config = GossipConfig(message_ttl=10.0, sync_interval=1.0)
    h = Harness(2, config=config)
    for i in range(2000):  # four times the old 512-entry default
        h.push(0, b"%d" % i)
    h.deliver_all()
    assert h.engines[1].statistics().cache_entries == 2000
    assert h.engines[1].statistics().cache_evicted_early == 0
    h.run(11.0, step=0.5)  # past the TTL: anti-entropy expires them
    stats = h.engines[1].statistics()
    assert stats.cache_entries == 0
    assert stats.cache_expired == 2000
    assert stats.cache_evicted_early == 0


def test_full_cache_stops_the_source_and_counts_early_evictions_at_relays() -> None:
    # Room for exactly 10 messages of 100 bytes.
    nbytes = 10 * (100 + CACHE_ENTRY_OVERHEAD)
    origin = GossipEngine(
        StaticDiscovery([addr(0), addr(1)]),
        addr(0),
        GossipConfig(cache_bytes=nbytes, push_window=100),
    )
    for i in range(10):
        assert origin.can_push(100, float(i))
        origin.push(bytes(100), float(i))
    assert not origin.can_push(100, 10.0)  # every cached message may still be pulled
    assert origin.can_push(100, 61.0)  # the first one's TTL (60 s) has passed
    relay = GossipEngine(
        StaticDiscovery([addr(0), addr(1)]), addr(1), GossipConfig(cache_bytes=nbytes)
    )
    for out in origin.datagrams_to_send():
        relay.receive(out.data, addr(0), 10.0)
    relay.receive(origin.codec.encode_message(1, _key(10.0), bytes(100), 10.0), addr(0), 10.0)
    stats = relay.statistics()
    assert stats.delivered == 11
    assert stats.cache_entries == 10
    assert stats.cache_evicted_early == 1


def test_a_full_cache_evicts_the_least_recently_used_message() -> None:
    # Room for 3 messages of 100 bytes. A pull's read counts as a use: the message a peer
    # just asked for stays, the one nobody asked for since it came goes first.
    nbytes = 3 * (100 + CACHE_ENTRY_OVERHEAD)
    peers = StaticDiscovery([addr(0), addr(1)])
    relay = GossipEngine(peers, addr(1), GossipConfig(cache_bytes=nbytes))
    codec = Codec()
    keys = [_key(10.0 + i / 1000) for i in range(4)]
    for key in keys[:3]:
        relay.receive(codec.encode_message(1, key, bytes(100), 10.0), addr(0), 10.0)
    relay.receive(codec.encode(PullRequest((keys[0],)), 10.0), addr(0), 10.0)
    assert relay.statistics().cache_bytes == nbytes
    relay.receive(codec.encode_message(1, keys[3], bytes(100), 10.0), addr(0), 10.0)
    relay.datagrams_to_send()
    stats = relay.statistics()
    assert (stats.cache_entries, stats.cache_bytes, stats.cache_evicted_early) == (3, nbytes, 1)
    served = []
    for key in keys:
        relay.receive(codec.encode(PullRequest((key,)), 10.0), addr(0), 10.0)
        served.append(bool(relay.datagrams_to_send()))
    assert served == [True, False, True, True]  # keys[1] went, not keys[0]


def _key(now: float) -> bytes:
    from gossip.wire import new_message_key  # noqa: PLC0415

    return new_message_key(int(now * 1000))


def test_cache_entries_bound_is_optional_and_validated() -> None:
    assert GossipConfig().cache_entries is None
    with pytest.raises(LocalProtocolError):
        GossipConfig(cache_entries=0)
    with pytest.raises(LocalProtocolError):
        GossipConfig(push_window=0)
    engine = GossipEngine(StaticDiscovery([addr(1)]), addr(0), GossipConfig(cache_entries=3))
    for i in range(3):
        engine.push(b"x", i * 1e-3)
    assert not engine.can_push(1, 0.01)  # three entries, the bound: wait


def test_digest_walks_a_large_cache_at_bounded_cost() -> None:
    # 5,000 cached keys, 83 keys a datagram: successive digests cover all of them in turn
    # (8 datagrams each), each round touching about one digest's worth of keys.
    config = GossipConfig(sync_max_datagrams=8, sync_interval=1.0, sync_jitter=0.0, sync_coverage=1)
    engine = GossipEngine(StaticDiscovery([addr(1)]), addr(0), config)
    keys = {engine.push(b"x", i * 1e-4) for i in range(5000)}
    engine.datagrams_to_send()
    offered: set[bytes] = set()
    per_round = engine.codec.max_keys() * 8
    rounds = 0
    while offered != keys:
        digest = engine._digest(1.0)
        assert len(digest) == per_round or offered | set(digest) == keys
        offered |= set(digest)
        rounds += 1
        assert rounds <= -(-5000 // per_round)
    assert rounds == -(-5000 // per_round)


@pytest.mark.parametrize("coverage", [6, 12, 30])
def test_digests_grow_with_the_cache_to_offer_each_key_coverage_times_a_ttl(
    coverage: int,
) -> None:
    # 5,000 cached keys, TTL 60 s, one round a second: every key is offered at least
    # ``coverage`` times in 60 rounds, i.e. the walk takes at most 60 / coverage rounds.
    config = GossipConfig(sync_interval=1.0, sync_jitter=0.0, sync_coverage=coverage)
    engine = GossipEngine(StaticDiscovery([addr(1)]), addr(0), config)
    keys = [engine.push(b"x", i * 1e-4) for i in range(5000)]
    engine.datagrams_to_send()
    counts = dict.fromkeys(keys, 0)
    for _ in range(60):
        for k in engine._digest(1.0):
            counts[k] += 1
    assert min(counts.values()) >= coverage
    # and not much more: the digest is sized by the coverage, not the whole cache each time
    assert max(counts.values()) <= max(coverage, 60 * 8 * engine.codec.max_keys() // 5000) + 1


def test_engine_defers_new_messages_while_not_accepting() -> None:
    h = Harness(3)
    h.engines[1].accepting = False
    h.push(0, b"later")
    h.deliver_all()
    stats = h.engines[1].statistics()
    assert stats.deferred >= 1
    assert stats.delivered == 0
    assert stats.sent_by_type["ack"] == 0  # not taken, so not acknowledged
    h.engines[1].accepting = True
    h.run(5.0)  # anti-entropy brings it
    assert h.everyone_has_everything()
    assert h.duplicate_deliveries == 0


# -- the runtime --------------------------------------------------------------------------


async def test_push_waits_for_the_window_and_push_nowait_refuses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=3, default=LinkConditions(delay=0.01))
    transports: list[Transport] = [net.open_transport() for _ in range(4)]
    disc = StaticDiscovery([t.local_address for t in transports])
    config = GossipConfig(push_window=2)
    async with trio.open_nursery() as nursery:
        nodes: list[Gossiper[GossipEngine]] = []

        async def run(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with open_gossiper(disc, transports[i], config, rng=random.Random(i)) as g:
                nodes.append(g)
                task_status.started()
                await trio.sleep_forever()

        for i in range(4):
            await nursery.start(run, i)
        origin = next(g for g in nodes if g.transport is transports[0])
        origin.push_nowait(b"a")
        origin.push_nowait(b"b")
        with pytest.raises(trio.WouldBlock):
            origin.push_nowait(b"c")  # two rounds in flight: the window
        start = trio.current_time()
        await origin.push(b"c")  # waits for an ACK round trip (2 x 10 ms)
        assert trio.current_time() - start >= 0.019
        assert origin.statistics().push_waits == 1
        await trio.sleep(1)
        for g in nodes:
            if g is not origin:
                assert sorted(g.receive_nowait().data for _ in range(3)) == [b"a", b"b", b"c"]
        nursery.cancel_scope.cancel()


async def test_push_nowait_starts_the_flusher_then_wakes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A node that never calls push_nowait runs no flusher task; the first call starts it
    # (its datagrams leave after the caller's next checkpoint), later calls wake it.
    net = MemoryNetwork()
    ta, tb = net.open_transport(), net.open_transport()
    disc = StaticDiscovery([ta.local_address, tb.local_address])
    async with open_gossiper(disc, ta) as a, open_gossiper(disc, tb) as b:
        assert a._flush_wanted is None
        for n, data in enumerate((b"one", b"two", b"three"), 1):
            sent = ta.statistics().datagrams_sent
            a.push_nowait(data)
            assert ta.statistics().datagrams_sent == sent  # not before a checkpoint
            with trio.fail_after(1):
                assert (await b.receive()).data == data
            assert ta.statistics().datagrams_sent > sent
            assert a.statistics().engine.pushed == n
        assert a._flush_wanted is not None


@pytest.mark.parametrize("loss", [0.0, 0.1])
async def test_burst_reaches_every_node_exactly_once(
    autojump_clock: trio.testing.MockClock, loss: float
) -> None:
    """A producer pushing as fast as it can: every message reaches every node once."""
    count = 1000
    net = MemoryNetwork(seed=11, default=LinkConditions(loss=loss, delay=0.0005, jitter=0.001))
    transports: list[Transport] = [net.open_transport() for _ in range(12)]
    disc = StaticDiscovery([t.local_address for t in transports])
    key = generate_key()
    got: list[list[bytes]] = [[] for _ in transports]
    pushed: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nodes: list[Gossiper[GossipEngine]] = []

        async def run(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with open_gossiper(
                disc,
                transports[i],
                GossipConfig(push_window=16),
                keyring=Keyring(key),
                rng=random.Random(i),
                delivery_queue=64,
            ) as g:
                nodes.append(g)
                task_status.started()
                async for m in g:
                    got[i].append(m.key)

        for i in range(len(transports)):
            await nursery.start(run, i)
        origin = next(g for g in nodes if g.transport is transports[0])
        for n in range(count):
            pushed.append(await origin.push(b"%05d" % n + bytes(250)))
        assert origin.statistics().push_waits > 0  # it was paced
        with trio.fail_after(60):
            while not all(len(g) == count for g in got[1:]):
                await trio.sleep(0.5)
        await trio.sleep(5)  # and nothing arrives twice later
        nursery.cancel_scope.cancel()
    for received in got[1:]:
        assert sorted(received) == sorted(pushed)


# -- congestion: the ACK wait backs off, the window shrinks, fallbacks are batched ----------


def test_failed_round_halves_the_window_and_acks_grow_it_back() -> None:
    h = Harness(6, config=GossipConfig(push_window=8, sync_interval=100.0))
    origin = h.engines[0]
    assert origin.window == 8
    h.push(0, b"lost")
    h.in_flight.clear()  # every push of it is lost
    h.advance(0.31)  # its round fails at the deadline
    assert origin.window == 4
    h.in_flight.clear()  # the fallback's digests are lost too
    h.push(0, b"lost again")
    h.in_flight.clear()
    h.advance(0.31)
    assert origin.window == 2
    for i in range(2):
        assert origin.can_push(10, h.now)
        h.push(0, b"fine %d" % i)
    assert not origin.can_push(10, h.now)  # two in flight: the shrunk window is full
    h.in_flight = [d for d in h.in_flight if not isinstance(_packet(h, d[2]), PullSync)]
    h.deliver_all()  # these rounds reach their majority: additive increase, 1/window each
    assert origin.window == 2  # 2 + 1/2 + 1/2.5
    h.push(0, b"one more")
    h.deliver_all()
    assert origin.window == 3
    for i in range(40):
        h.push(0, b"more %d" % i)
        h.deliver_all()
    assert origin.window == 8  # back to push_window, never above it


def test_ack_wait_backs_off_after_a_failed_round_and_resets_on_an_ack() -> None:
    h = Harness(6, config=GossipConfig(sync_interval=100.0))
    origin = h.engines[0]
    h.push(0, b"first")
    h.deliver_all()  # an RTT sample of 0: the wait is min_ack_timeout (5 ms)
    assert h.engines[0].statistics().ack_rounds_failed == 0
    h.push(0, b"lost")
    h.in_flight.clear()
    h.advance(0.0051)
    assert origin.statistics().ack_rounds_failed == 1
    h.in_flight.clear()
    h.push(0, b"slow")
    h.advance(0.0051)  # the wait is now doubled: this round is still open
    assert origin.statistics().ack_rounds_failed == 1
    h.deliver_all()  # its ACKs arrive after 5.1 ms, in time: back to the plain wait
    assert origin.in_flight == 0
    h.push(0, b"lost again")
    h.in_flight.clear()
    # The wait follows the new sample (srtt + 4 rttvar = 5.7 ms), no longer doubled (11.4).
    h.advance(0.01)
    assert origin.statistics().ack_rounds_failed == 2


def test_a_back_off_is_forgotten_after_a_backed_off_wait_without_failures() -> None:
    """An idle node's next round waits the plain time: at 0 % loss most failed rounds are
    silent duplicates, and a back-off kept until the next ACK stretched the next message's
    wait and pushed its fallback into the message after."""
    h = Harness(6, config=GossipConfig(sync_interval=100.0))
    origin = h.engines[0]
    h.push(0, b"first")
    h.deliver_all()  # an RTT sample of 0: the wait is min_ack_timeout (5 ms)
    h.push(0, b"lost")
    h.in_flight.clear()
    h.advance(0.0051)  # it fails: the wait doubles (10 ms)
    assert origin.statistics().ack_rounds_failed == 1
    h.in_flight.clear()
    h.advance(0.011)  # no round fails for longer than that
    h.push(0, b"later")
    h.in_flight.clear()
    h.advance(0.0051)  # the plain wait again: it has failed already
    assert origin.statistics().ack_rounds_failed == 2


def test_offers_wait_a_round_trip_only_while_other_rounds_may_join_them() -> None:
    h = Harness(8, config=GossipConfig(sync_interval=100.0))
    origin = h.engines[0]
    h.push(0, b"sample")
    h.advance(0.002)
    h.deliver_all()  # srtt 2 ms, rttvar 1 ms: the wait is 4 srtt = 8 ms

    def offered() -> set[bytes]:
        syncs = [_packet(h, d) for src, _, d in h.in_flight if src == addr(0)]
        return {k for p in syncs if isinstance(p, PullSync) for k in p.keys}

    lone = h.push(0, b"lone")
    h.in_flight.clear()
    h.advance(0.0081)  # nothing else in flight: its offers leave at its deadline
    assert offered() == {lone}
    h.in_flight.clear()
    h.advance(0.02)  # long enough to forget the back-off of that failure
    first = h.push(0, b"lost 1")
    h.advance(0.001)
    second = h.push(0, b"lost 2")
    h.in_flight.clear()
    h.advance(0.0071)  # the first fails with the second in flight: its offers wait
    assert offered() == set()
    assert origin.get_timer() == pytest.approx(h.now + 0.0009)  # the second's deadline
    h.advance(0.001)  # the second fails within the round trip: one batch for both, now
    assert offered() == {first, second}
    peers = [dst for src, dst, _ in h.in_flight if src == addr(0)]
    assert len(peers) == len(set(peers))  # one datagram per peer
    due = origin.get_timer()
    assert due is not None
    assert due > h.now + 1  # nothing left to wake up for but anti-entropy


def test_fallback_offers_of_rounds_failing_together_share_datagrams() -> None:
    h = Harness(8, config=GossipConfig(sync_interval=100.0))
    h.push(0, b"sample")
    h.advance(0.002)  # a round trip of 2 ms
    h.deliver_all()
    for i in range(20):
        h.push(0, b"lost %d" % i)
    h.in_flight.clear()
    h.advance(0.5)  # all twenty rounds fail within the same millisecond
    syncs = [(dst, _packet(h, d)) for src, dst, d in h.in_flight if src == addr(0)]
    offered: dict[Address, set[bytes]] = {}
    for dst, packet in syncs:
        assert isinstance(packet, PullSync)
        offered.setdefault(dst, set()).update(packet.keys)
    # One datagram per peer, not one per failed round and peer (that would be 100).
    assert len(syncs) == len(offered) <= 7
    assert sum(len(k) for k in offered.values()) == 20 * 5  # still fanout + 2 peers per key
    h.run(1.0)
    assert h.everyone_has_everything()
