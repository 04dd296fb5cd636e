"""GossipConfig.reverse_sync: a digest we are up to date with is answered with the newer keys
it lacks (proposal from the simulator, docs/sim-results.md)."""

from __future__ import annotations

import random

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.discovery import StaticDiscovery
from gossip.wire import PullRequest, PullSync, PushMessage, decode_untrusted, encode

ADDRS = [("10.0.0.1", 7946), ("10.0.0.2", 7946)]


def _engine(i: int, config: GossipConfig | None = None) -> GossipEngine:
    return GossipEngine(
        StaticDiscovery(ADDRS), ADDRS[i], config or GossipConfig(), rng=random.Random(i)
    )


def _holder(config: GossipConfig) -> tuple[GossipEngine, bytes, bytes]:
    """Node 1 holding an old and a new message (its pushes are dropped)."""
    b = _engine(1, config)
    old = b.push(b"old", 0.0)
    new = b.push(b"new", 0.002)
    b.datagrams_to_send()
    return b, old, new


def test_a_digest_of_old_keys_gets_the_newer_ones_back() -> None:
    b, old, new = _holder(GossipConfig(reverse_sync=True))
    b.receive(encode(PullSync((old,)), 0.01), ADDRS[0], 0.01)
    (out,) = b.datagrams_to_send()
    assert out.addrs == (ADDRS[0],)
    assert decode_untrusted(out.data) == PullSync((new,))
    # The node that lacked it asks for it; it never answers a reverse digest with another.
    a = _engine(0, GossipConfig(reverse_sync=True))
    a.receive(encode(PullSync((new,)), 0.011), ADDRS[1], 0.011)
    (ask,) = a.datagrams_to_send()
    assert decode_untrusted(ask.data) == PullRequest((new,))


def test_off_when_disabled_and_silent_when_nothing_is_newer() -> None:
    b, old, new = _holder(GossipConfig(reverse_sync=False))
    b.receive(encode(PullSync((old,)), 0.01), ADDRS[0], 0.01)
    assert b.datagrams_to_send() == []
    b, old, new = _holder(GossipConfig(reverse_sync=True))
    b.receive(encode(PullSync((old, new)), 0.01), ADDRS[0], 0.01)
    assert b.datagrams_to_send() == []


def test_a_full_digest_datagram_is_not_answered() -> None:
    """It may be one of several; the keys we would offer may be in the next one."""
    b = _engine(1, GossipConfig(reverse_sync=True))
    keys = [b.push(b"m%d" % i, i / 1000) for i in range(b.codec.max_keys() + 1)]
    b.datagrams_to_send()
    full = tuple(keys[: b.codec.max_keys()])
    b.receive(encode(PullSync(full), 1.0), ADDRS[0], 1.0)
    assert b.datagrams_to_send() == []


def test_initial_ack_timeout_bounds_the_first_round() -> None:
    b = _engine(1, GossipConfig(initial_ack_timeout=0.05))
    b.push(b"x", 0.0)
    assert b.get_timer() == 0.05


def test_keys_of_the_same_millisecond_cannot_ping_pong() -> None:
    """Two holders of two keys made in the same millisecond: a digest of one must not start an
    endless exchange of reverse digests (it did while 'newer' meant '>=')."""
    a, b = _engine(0), _engine(1)
    k1 = a.push(b"one", 0.0)
    k2 = a.push(b"two", 0.0)  # same millisecond
    for key, data in ((k1, b"one"), (k2, b"two")):
        b.receive(encode(PushMessage(key, data), 0.0), ADDRS[0], 0.0)
    a.datagrams_to_send()
    b.datagrams_to_send()
    queue = [(1, encode(PullSync((k1,)), 0.0))]
    engines = (a, b)
    for _ in range(50):
        if not queue:
            break
        dst, data = queue.pop()
        engines[dst].receive(data, ADDRS[1 - dst], 0.0)
        queue += [
            (1 - dst, out.data)
            for out in engines[dst].datagrams_to_send()
            if decode_untrusted(out.data).__class__ is PullSync
        ]
    assert queue == []


def test_a_key_from_the_far_future_in_a_digest_is_answered_with_nothing() -> None:
    """The newest listed key sets the floor of the reverse digest; the largest time a key can
    carry (2^48 - 1 ms) leaves nothing newer, and must not break the comparison of keys."""
    b, old, new = _holder(GossipConfig(reverse_sync=True))
    future = b"\xff" * 6 + bytes(10)
    b.receive(encode(PullSync((old, new, future)), 0.01), ADDRS[0], 0.01)
    assert b.datagrams_to_send() == []
    assert b.statistics().dropped == {}


class _NoWalk(list[bytes]):
    """An arrival order that fails the test if anything reads an entry of it."""

    def __getitem__(self, i: object) -> bytes:  # type: ignore[override]
        raise AssertionError("the arrival order was walked")


def test_a_digest_newer_than_everything_cached_is_answered_without_a_walk() -> None:
    # The commonest digest in an up-to-date cluster lists the newest message: nothing is
    # newer. The engine knows its newest cached key, so it does not walk the arrival order.
    b, old, new = _holder(GossipConfig(reverse_sync=True))
    order = b._order
    b._order = _NoWalk(order)
    b.receive(encode(PullSync((new,)), 0.01), ADDRS[0], 0.01)
    assert b.datagrams_to_send() == []
    # An older digest still walks it and gets the newer key back, as before.
    b._order = order
    b.receive(encode(PullSync((old,)), 0.01), ADDRS[0], 0.01)
    (out,) = b.datagrams_to_send()
    assert decode_untrusted(out.data) == PullSync((new,))
    # The newest key is an upper bound: after the newest message left the cache, a digest
    # of the old one is answered with nothing (the walk finds it gone), never a stale key.
    b._cache.pop(new)
    b.receive(encode(PullSync((old,)), 0.02), ADDRS[0], 0.02)
    assert b.datagrams_to_send() == []
