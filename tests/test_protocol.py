"""The engine's rules, driven by hand (sans-IO): push, ACK, pull fallback, anti-entropy,
bounds, and go-gossip's protocol flaws as regression tests."""

from __future__ import annotations

import collections
import random

import pytest

from gossip.broadcast import GossipConfig, GossipEngine, ring_neighbours
from gossip.crypto import Keyring
from gossip.discovery import Discovery, StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.events import MessageDelivered, PacketDropped
from gossip.wire import (
    Codec,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
    key_timestamp_ms,
    new_message_key,
)

from .harness import EPOCH, KEY, Harness, addr


def decode(h: Harness, datagram: bytes) -> object:
    """Read a datagram of the harness cluster (a fresh codec: no replay state)."""
    return Codec(Keyring(KEY), max_datagram=65507).decode_untrusted(datagram, h.now + EPOCH)


def sealed(packet: object, now: float = 0.0) -> bytes:
    return Codec(Keyring(KEY)).encode(packet, now + EPOCH)  # type: ignore[arg-type]


def test_push_goes_to_fanout_distinct_peers_never_self() -> None:
    h = Harness(10)
    key = h.push(0, b"hello")
    dsts = [dst for _, dst, _ in h.in_flight]
    assert len(dsts) == 3 == len(set(dsts))
    assert addr(0) not in dsts
    assert all(decode(h, d) == PushMessage(key, b"hello") for _, _, d in h.in_flight)
    # One encryption shared by the fan-out: the three datagrams are the same bytes.
    assert len({d for _, _, d in h.in_flight}) == 1
    assert h.engines[0].statistics().cache_entries == 1  # the origin keeps its copy
    assert h.engines[0].pop_events() == []  # and is not told of its own message


def test_first_receipt_delivers_acks_and_forwards_once() -> None:
    h = Harness(10)
    key = h.push(0, b"x")
    src, dst, _data = h.deliver()
    j = h.index(dst)
    assert h.delivered[j][key] == b"x"
    out = [(s, d, decode(h, dg)) for s, d, dg in h.in_flight if s == dst]
    acks = [d for s, d, p in out if isinstance(p, PushAck)]
    fwd = [d for s, d, p in out if isinstance(p, PushMessage)]
    assert acks == [src]
    assert len(fwd) == 3 and src not in fwd and dst not in fwd
    # The same message again (say, from another pusher) is a duplicate: no ACK, no forward.
    before = len(h.in_flight)
    h.engines[j].receive(sealed(PushMessage(key, b"x")), addr(5), h.now)
    h.collect(j)
    assert len(h.in_flight) == before
    assert h.engines[j].statistics().duplicates == 1
    assert h.duplicate_deliveries == 0


def test_ack_majority_means_no_pull_round() -> None:
    h = Harness(10)
    h.push(0, b"x")
    for _ in range(3):  # the three pushes, each answered by an ACK
        h.deliver(0)
    h.in_flight = [f for f in h.in_flight if isinstance(decode(h, f[2]), PushAck)]
    h.deliver_all()
    h.advance(0.5)
    stats = h.engines[0].statistics()
    assert stats.ack_rounds_failed == 0
    assert stats.acks_received == 2  # the round ends at a majority ...
    assert stats.late_acks == 1  # ... and the third ACK is counted, not treated as an attack


def test_no_majority_triggers_pull_sync_and_pull_completes() -> None:
    h = Harness(10, config=GossipConfig(sync_interval=100.0))
    key = h.push(0, b"payload")
    h.in_flight.clear()  # all three pushes lost
    h.advance(0.31)  # past ack_timeout (no RTT sample yet: the full 300 ms)
    syncs = [(dst, decode(h, d)) for _, dst, d in h.in_flight]
    assert len(syncs) == 5  # fanout + 2
    assert all(p == PullSync((key,)) for _, p in syncs)
    assert h.engines[0].statistics().ack_rounds_failed == 1
    h.deliver()  # one PullSync reaches a peer lacking the message ...
    request = decode(h, h.in_flight[-1][2])
    assert request == PullRequest((key,))
    h.deliver(len(h.in_flight) - 1)  # ... its PullRequest reaches the origin ...
    response = decode(h, h.in_flight[-1][2])
    assert response == PullResponse(key, b"payload")
    _, puller, _ = h.deliver(len(h.in_flight) - 1)  # ... which answers; the puller delivers
    j = h.index(puller)
    assert h.delivered[j][key] == b"payload"
    assert h.engines[j].statistics().pulled == 1
    # and forwards as for a push
    assert (
        sum(1 for s, _, d in h.in_flight if s == puller and isinstance(decode(h, d), PushMessage))
        == 3
    )


def test_anti_entropy_brings_everything_to_a_late_joiner() -> None:
    h = Harness(6, config=GossipConfig(sync_interval=0.5))
    h.engines[5].discovery = StaticDiscovery(h.addrs)
    h.discovery.set_peers(h.addrs[:5])  # nobody knows node 5 yet
    keys = [h.push(0, bytes([i])) for i in range(5)]
    h.run(3.0)
    assert not set(keys) & set(h.delivered[5])
    h.discovery.set_peers(h.addrs)  # it joins: no push will ever reach it again
    h.run(20.0)
    assert set(keys) <= set(h.delivered[5])
    assert h.engines[5].statistics().pulled == 5


def test_everyone_gets_everything_exactly_once_under_loss() -> None:
    h = Harness(20, seed=3)
    rng = random.Random(3)
    for m in range(20):
        h.push(rng.randrange(20), b"m%d" % m)
        # 30 % loss on everything in flight, repeatedly
        for _ in range(50):
            h.in_flight = [f for f in h.in_flight if rng.random() > 0.3]
            if not h.in_flight:
                break
            h.deliver()
        h.advance(0.05)
    for _ in range(400):
        h.in_flight = [f for f in h.in_flight if rng.random() > 0.3]
        h.deliver_all()
        h.advance(0.1)
    assert h.everyone_has_everything()
    assert h.duplicate_deliveries == 0


def test_sync_answers_only_missing_keys_and_never_more_than_asked() -> None:
    h = Harness(3, encrypted=False)
    have = h.push(0, b"a")
    h.in_flight.clear()
    h.engines[1].receive(Codec().encode(PushMessage(have, b"a"), h.now + EPOCH), addr(0), h.now)
    h.collect(1)
    h.in_flight.clear()
    other = new_message_key(int((h.now + EPOCH) * 1000))
    digest = Codec().encode(PullSync((have, other)), h.now + EPOCH)
    h.engines[1].receive(digest, addr(0), h.now)
    h.collect(1)
    ((_, _, reply),) = h.in_flight
    assert Codec().decode_untrusted(reply, 0) == PullRequest((other,))
    assert len(reply) <= len(digest)


def test_go_flaw_9_no_reflection_amplification() -> None:
    """A spoofed plain-text PullRequest from outside the cluster gets at most
    amplification_limit times its size back; go-gossip answered 2 bytes with ~19 KB."""
    h = Harness(3, encrypted=False)
    keys = [h.push(0, bytes(100)) for _ in range(20)]
    h.in_flight.clear()
    request = Codec().encode(PullRequest(tuple(keys)), h.now + EPOCH)
    victim = ("192.0.2.1", 53)
    h.engines[0].receive(request, victim, h.now)
    h.collect(0)
    answered = sum(len(d) for _, dst, d in h.in_flight if dst == victim)
    assert 0 < answered <= 3 * len(request)
    assert h.engines[0].statistics().dropped["amplification"] == 1
    # A member of the cluster is answered in full.
    h.in_flight.clear()
    h.engines[0].receive(Codec().encode(PullRequest(tuple(keys)), h.now + EPOCH), addr(1), h.now)
    h.collect(0)
    assert len(h.in_flight) == 20


def test_go_flaw_11_largest_values_are_bounded_work() -> None:
    """go-gossip looped forever on values >= 4087 bytes. Here the largest payload a datagram
    holds is accepted and pulled in one packet; one byte more is refused up front."""
    config = GossipConfig(max_datagram=9000, sync_interval=100.0)
    h = Harness(4, config=config)
    biggest = h.engines[0].codec.max_payload()
    key = h.push(0, bytes(biggest))
    h.in_flight.clear()
    h.advance(0.31)
    h.run(1.0)
    assert all(key in d for d in h.delivered)
    with pytest.raises(LocalProtocolError, match=f"{biggest} bytes"):
        h.engines[0].push(bytes(biggest + 1), h.now)


@pytest.mark.parametrize("ring", [False, True])
def test_go_flaw_13_peer_choice_is_uniform_over_the_whole_list(ring: bool) -> None:
    """go-gossip only ever drew among the first N peers. Here the random targets are uniform
    over the whole list; with ``ring_forward`` the two ring neighbours get every push and the
    other ``fanout - 2`` targets are uniform over the rest."""
    peers = [addr(i) for i in range(40)]
    config = GossipConfig(ring_forward=ring)
    engine = GossipEngine(StaticDiscovery(peers), addr(0), config, rng=random.Random(1))
    counts: collections.Counter[tuple[str, int]] = collections.Counter()
    pushes = 12000 if ring else 4000  # the ring leaves one random target per push
    for i in range(pushes):
        engine.push(b"%d" % i, float(i))
        for out in engine.datagrams_to_send():
            assert len(set(out.addrs)) == 3
            counts.update(out.addrs)
    assert addr(0) not in counts
    assert set(counts) == set(peers[1:])
    if ring:
        ordered = sorted(peers)
        at = ordered.index(addr(0))
        assert counts.pop(ordered[at + 1]) == counts.pop(ordered[at - 1]) == pushes
    expected = pushes * (1 if ring else 3) / len(counts)
    assert max(counts.values()) < 1.3 * expected
    assert min(counts.values()) > 0.7 * expected


def test_every_datagram_says_what_it_is() -> None:
    """``Outgoing.kind`` names the packet the engine built (a simulator or a tracer reads it,
    not the wire); ``digest`` is the anti-entropy round's PullSync."""
    h = Harness(6, encrypted=False)
    h.push(0, b"a")
    h.in_flight.clear()  # the push round is lost: its deadline brings the pull fallback
    h.run(2.5)  # fallback, requests, responses and forwards; digests about every 1 s
    h.push(1, b"b")
    h.run(0.1)  # pushes and ACKs
    type_byte = {"push": 1, "ack": 2, "sync": 3, "digest": 3, "request": 4, "response": 5}
    assert {kind for kind, _ in h.sent_kinds} == set(type_byte)
    assert all(type_byte[kind] == byte for kind, byte in h.sent_kinds)
    sent = h.engines[0].statistics().sent_by_type
    assert set(sent) == {"push", "ack", "sync", "request", "response"}  # digests are syncs


def test_message_keys_come_from_the_injected_rng_and_the_runtime_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seeded engine makes the same keys at the same protocol time (tests, the simulator);
    their time part is ``now + clock_offset``. Without an rng the bits come from secrets."""

    def keys(rng: random.Random | None) -> list[bytes]:
        engine = GossipEngine(StaticDiscovery([addr(1)]), addr(0), rng=rng, clock_offset=EPOCH)
        return [engine.push(b"%d" % i, 2.5) for i in range(3)]

    seeded = keys(random.Random(3))
    assert seeded == keys(random.Random(3))
    assert seeded != keys(random.Random(4))
    assert len(set(seeded)) == 3
    assert {key_timestamp_ms(k) for k in seeded} == {int((2.5 + EPOCH) * 1000)}
    drawn: list[int] = []

    def randbits(k: int) -> int:
        drawn.append(k)
        return 0xABCDEF

    monkeypatch.setattr("gossip.wire.secrets.randbits", randbits)
    unseeded = keys(None)
    assert drawn == [80, 80, 80]
    assert unseeded[0][6:] == (0xABCDEF).to_bytes(10, "big")


def test_ring_neighbours_follow_sorted_addresses_and_discovery_changes() -> None:
    """The ring neighbours are the previous and next addresses in sorted order (wrapping
    around), whatever order discovery lists peers in; they are recomputed when discovery
    returns a new list; the sender is never pushed back to."""
    discovery = StaticDiscovery([addr(i) for i in (5, 3, 8, 1)])
    engine = GossipEngine(
        discovery, addr(8), keyring=Keyring(KEY), rng=random.Random(2), clock_offset=EPOCH
    )
    engine.push(b"a", 0.0)
    assert {addr(1), addr(5)} <= set(engine.datagrams_to_send()[0].addrs)  # 8 wraps to 1
    discovery.set_peers([addr(i) for i in (7, 1, 9, 8, 3, 5)])
    for i in range(20):
        engine.push(b"b%d" % i, 0.0)
        assert {addr(7), addr(9)} <= set(engine.datagrams_to_send()[0].addrs)
    key = new_message_key(int(EPOCH * 1000))
    engine.receive(sealed(PushMessage(key, b"c")), addr(9), 0.0)
    ack, forward = engine.datagrams_to_send()
    assert ack.addrs == (addr(9),)
    assert len(forward.addrs) == 3 and addr(9) not in forward.addrs and addr(7) in forward.addrs


@pytest.mark.parametrize(
    ("peers", "me", "expected"),
    [
        ([], ("a", 1), ()),
        ([("a", 1)], ("a", 1), ()),
        ([("a", 1), ("b", 1)], ("a", 1), (("b", 1),)),  # successor == predecessor: once
        ([("b", 1), ("c", 1), ("a", 1)], ("b", 1), (("c", 1), ("a", 1))),
        ([("b", 1), ("c", 1)], ("a", 9), (("b", 1), ("c", 1))),  # we need not be listed
        # Mixed types do not compare: repr order "('a', 2)" < "('b', 1)" < "7".
        ([("b", 1), 7, ("a", 2)], ("a", 1), (("a", 2), 7)),
    ],
)
def test_ring_neighbours_edge_cases(
    peers: list[object], me: object, expected: tuple[object, ...]
) -> None:
    assert ring_neighbours(peers, me) == expected  # type: ignore[arg-type]


def test_fanout_keeps_a_random_target() -> None:
    """With fanout 2 the ring gives one target (the successor), never both: a fan-out of
    ring neighbours alone would walk the ring in linear time."""
    peers = [addr(i) for i in range(1, 30)]
    engine = GossipEngine(
        StaticDiscovery(peers), addr(5), GossipConfig(fanout=2), rng=random.Random(4)
    )
    others = collections.Counter[tuple[str, int]]()
    for i in range(200):
        engine.push(b"%d" % i, 0.0)
        (out,) = engine.datagrams_to_send()
        assert out.addrs[0] == addr(6) and len(out.addrs) == 2
        others[out.addrs[1]] += 1
    assert len(others) > 20


def test_expired_and_future_messages_are_refused() -> None:
    h = Harness(2, config=GossipConfig(message_ttl=10.0, max_clock_skew=1.0))
    now_ms = int((h.now + EPOCH) * 1000)
    for key_ms, reason in ((now_ms - 11_000, "expired"), (now_ms + 2_000, "future")):
        h.engines[1].receive(sealed(PushMessage(new_message_key(key_ms), b"x")), addr(0), h.now)
        (event,) = h.engines[1].pop_events()
        assert event == PacketDropped(reason, addr(0))


def test_seen_set_is_bounded_and_never_redelivers() -> None:
    config = GossipConfig(seen_capacity=16, sync_interval=1000.0)
    engine = GossipEngine(
        StaticDiscovery([addr(1)]), addr(0), config, keyring=Keyring(KEY), clock_offset=EPOCH
    )
    keys = [new_message_key(int(EPOCH * 1000) + i) for i in range(100)]
    for i, k in enumerate(keys):
        engine.receive(sealed(PushMessage(k, b"v"), i * 1e-3), addr(1), i * 1e-3)
    assert engine.statistics().seen_entries <= 16
    engine.pop_events()
    engine.receive(sealed(PushMessage(keys[0], b"v"), 0.2), addr(1), 0.2)  # forgotten long ago
    assert not any(isinstance(e, MessageDelivered) for e in engine.pop_events())


@pytest.mark.parametrize(("entries", "nbytes"), [(5, 1 << 20), (512, 4096)])
def test_cache_bounded_by_entries_and_bytes(entries: int, nbytes: int) -> None:
    config = GossipConfig(cache_entries=entries, cache_bytes=nbytes)
    engine = GossipEngine(StaticDiscovery([addr(1)]), addr(0), config)
    for i in range(50):
        engine.push(bytes(1000), float(i) * 1e-3)
    stats = engine.statistics()
    assert stats.cache_entries <= entries
    assert stats.cache_bytes <= nbytes


def test_bad_datagrams_are_counted_never_raised() -> None:
    h = Harness(2)
    for bad in (b"", b"\x01\x02", bytes(100), sealed(PushAck(bytes(16)))[:-1]):
        h.engines[1].receive(bad, addr(0), h.now)
    stats = h.engines[1].statistics()
    assert sum(stats.dropped.values()) == 4
    events = h.engines[1].pop_events()
    drops = [e for e in events if isinstance(e, PacketDropped)]
    assert drops == events  # nothing else happened
    assert collections.Counter(e.reason for e in drops) == stats.dropped


def test_custom_discovery_subclass_is_consulted_every_time() -> None:
    class Rotating(Discovery):
        def __init__(self) -> None:
            self.calls = 0

        def gossipiers(self) -> list[tuple[str, int]]:
            self.calls += 1
            return [addr(100 + self.calls)]  # membership changes at every call

    disc = Rotating()
    engine = GossipEngine(disc, addr(0), GossipConfig(fanout=1))
    engine.push(b"a", 0.0)
    engine.push(b"b", 0.0)
    first, second = engine.datagrams_to_send()
    assert first.addrs == (addr(101),)
    assert second.addrs == (addr(102),)


def test_discovery_base_must_be_overridden() -> None:
    class Forgot(Discovery):
        pass

    with pytest.raises(NotImplementedError):
        Forgot().gossipiers()  # type: ignore[abstract]  # mypy sees the missing override
    with pytest.raises(TypeError):
        Discovery()  # type: ignore[misc]  # a Protocol
    with pytest.raises(LocalProtocolError):
        StaticDiscovery([("10.0.0.1", 0)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fanout": 0},
        {"fanout": 2.5},
        {"ack_timeout": 0},
        {"ack_timeout": 0.001, "min_ack_timeout": 0.002},
        {"sync_interval": -1},
        {"sync_jitter": 1.0},
        {"cache_entries": 0},
        {"cache_bytes": 10},
        {"max_datagram": 100},
        {"seen_capacity": True},
    ],
)
def test_config_nonsense_is_a_local_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError):
        GossipConfig(**kwargs)  # type: ignore[arg-type]


def test_push_misuse() -> None:
    engine = GossipEngine(StaticDiscovery([]), addr(0))
    with pytest.raises(LocalProtocolError, match="bytes"):
        engine.push("text", 0.0)  # type: ignore[arg-type]
    engine.push(b"alone", 0.0)  # no peers: kept, nothing sent, no crash
    assert engine.datagrams_to_send() == []


def test_duplicates_are_dropped_before_any_crypto() -> None:
    h = Harness(3)
    key = h.push(0, b"x")
    h.deliver()
    j = next(i for i in range(3) if key in h.delivered[i] and i != 0)
    engine = h.engines[j]
    genuine = sealed(PushMessage(key, b"x"), h.now)
    forged = genuine[:-1] + bytes([genuine[-1] ^ 1])  # bad MAC, seen key
    engine.receive(genuine, addr(0), h.now)
    engine.receive(forged, addr(0), h.now)
    stats = engine.statistics()
    assert stats.duplicates == 2
    assert "mac" not in stats.dropped  # never reached the MAC check
    # An unseen key with a bad MAC is still refused by the MAC.
    fresh = sealed(PushMessage(new_message_key(int((h.now + EPOCH) * 1000)), b"y"), h.now)
    engine.receive(fresh[:-1] + bytes([fresh[-1] ^ 1]), addr(0), h.now)
    assert engine.statistics().dropped["mac"] == 1
    assert engine.statistics().delivered == 1


@pytest.mark.parametrize(("limit", "echoes", "syncs"), [(3, 3, 0), (3, 2, 5), (0, 5, 5)])
def test_echoes_suppress_the_pull_fallback(limit: int, echoes: int, syncs: int) -> None:
    """A round without an ACK majority whose message came back ``echo_suppression`` times is
    spreading, not stalled: no PullSync. Fewer echoes (or the rule off): the fallback runs."""
    h = Harness(10, config=GossipConfig(echo_suppression=limit, sync_interval=100.0))
    key = h.push(0, b"x")
    targets = {dst for _, dst, _ in h.in_flight}
    h.in_flight.clear()  # no ACKs will come
    echo = sealed(PushMessage(key, b"x"), h.now)
    others = [a for a in map(addr, range(1, 10)) if a not in targets]
    for i in range(echoes):
        h.engines[0].receive(echo, others[i], h.now)  # duplicates from other forwarders
    h.advance(0.31)
    sent = [decode(h, d) for _, _, d in h.in_flight]
    assert sum(isinstance(p, PullSync) for p in sent) == syncs


@pytest.mark.parametrize(("echoers", "syncs"), [(2, 0), (1, 5)])
def test_a_target_that_pushes_the_message_back_counts_as_an_ack(echoers: int, syncs: int) -> None:
    """A duplicate from one of the round's own targets proves it holds the message: two such
    (of three targets) are a majority, and the round needs no pull fallback."""
    h = Harness(10, config=GossipConfig(echo_suppression=0, sync_interval=100.0))
    key = h.push(0, b"x")
    targets = sorted({dst for _, dst, _ in h.in_flight})
    h.in_flight.clear()
    echo = sealed(PushMessage(key, b"x"), h.now)
    for target in targets[:echoers]:
        h.engines[0].receive(echo, target, h.now)
    h.advance(0.31)
    sent = [(dst, decode(h, d)) for _, dst, d in h.in_flight]
    assert sum(isinstance(p, PullSync) for _, p in sent) == syncs
    assert not any(dst in targets[:echoers] for dst, _ in sent)  # known holders: never asked


def test_a_failed_round_offers_its_key_in_one_shared_datagram() -> None:
    """The fallback PullSync to fanout + 2 peers is one encryption sent to all of them
    (``send_many``: the eBPF cloner fans it out in the kernel)."""
    peers = [addr(i) for i in range(20)]
    engine = GossipEngine(
        StaticDiscovery(peers),
        addr(0),
        GossipConfig(echo_suppression=0, sync_interval=100.0),
        keyring=Keyring(KEY),
        rng=random.Random(5),
        clock_offset=EPOCH,
    )
    engine.start(0.0)
    engine.push(b"x", 0.0)
    engine.datagrams_to_send()
    engine.handle_timer(0.31)  # no ACK came
    (sync,) = engine.datagrams_to_send()
    assert len(set(sync.addrs)) == 5 and addr(0) not in sync.addrs
    packet = Codec(Keyring(KEY)).decode_untrusted(sync.data, EPOCH + 0.31)
    assert isinstance(packet, PullSync) and len(packet.keys) == 1
    assert engine.statistics().pull_syncs_sent == 5
