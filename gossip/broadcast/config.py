"""The broadcast engine's parameters (:class:`GossipConfig`), validated when built, and the
constants its memory accounting rests on."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import attrs

from gossip.errors import LocalProtocolError
from gossip.wire import (
    DEFAULT_MAX_DATAGRAM,
    MAX_DATAGRAM_LIMIT,
    MIN_DATAGRAM_LIMIT,
)

__all__ = ["CACHE_ENTRY_OVERHEAD", "PULL_ATTEMPTS", "GossipConfig"]

#: Bytes charged per cached message on top of its payload (key, entry, LRU bookkeeping and the
#: arrival-order list), so that ``cache_bytes`` bounds real memory even for empty payloads:
#: 333 bytes measured with tracemalloc on CPython 3.11 (50,000 entries of 1 KiB).
CACHE_ENTRY_OVERHEAD: Final = 340
#: How often a pulled key is requested before we give up on that holder (anti-entropy will
#: offer it again). Pulls cross three lossy hops (digest, request, response): retrying the last
#: two is what makes repair robust under loss.
PULL_ATTEMPTS: Final = 3
#: Outstanding pulls remembered at most (oldest forgotten first): bounded memory under attack.


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not isinstance(value, int | float) or not value > 0:
        raise LocalProtocolError(f"{attribute.name} must be a positive number, got {value!r}")


def _count(minimum: int) -> Callable[[object, attrs.Attribute[int], int], None]:
    def check(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise LocalProtocolError(f"{attribute.name} must be an integer >= {minimum}")

    return check


@attrs.frozen
class GossipConfig:
    """Protocol parameters; every field is validated (``LocalProtocolError`` on nonsense).

    Attributes:
        fanout: peers per push round (the design card's GossipNumber).
        ack_timeout: the longest a push round waits for its ACKs before the pull fallback.
        adaptive_ack: wait ``max(min_ack_timeout, 4 x smoothed ACK round-trip)`` instead, capped
            by ``ack_timeout``: on a LAN the fallback starts in milliseconds, not 300 ms.
        min_ack_timeout: floor of the adaptive ACK wait.
        sync_interval: mean time between anti-entropy digests.
        sync_jitter: the interval is drawn from ``sync_interval * (1 +- sync_jitter)`` so that
            nodes started together do not sync in lockstep.
        cache_entries: an optional bound on cached messages (the design card's
            MessageCacheSize). ``None`` (the default): the count follows from ``cache_bytes``
            and ``message_ttl``; a message leaves the cache when it expires, so that a pull
            for it can be answered as long as anyone may ask.
        cache_bytes: bound of the cache in bytes (payload + 340 bytes per entry). When it is
            full of messages younger than ``message_ttl``, :meth:`GossipEngine.can_push` is
            false (the runtime's ``push`` waits) and relays evict the least recently used
            entry early, counted in ``cache_evicted_early``. 64 MiB holds a minute of ~2,300
            messages/s of 256 bytes; the memory is used only as traffic fills it.
        message_ttl: a message older than this is refused, no longer advertised or forwarded.
        max_clock_skew: tolerated difference between nodes' clocks.
        seen_capacity: keys remembered for deduplication; past it, the oldest is forgotten and
            messages older than it are refused (never delivered twice). Keep it above the
            messages one ``message_ttl`` carries (about 100 bytes each).
        push_window: own messages whose push round has not ended (no ACK majority, no echo,
            no deadline yet) at most; past it :meth:`GossipEngine.can_push` is false and the
            runtime's ``push`` waits, so a fast producer is paced by what the cluster absorbs.
            The window in force is smaller after failed rounds (AIMD, as TCP's congestion
            window: halved by each own round that misses its majority, grown by one per
            window of rounds that reach it), and the ACK wait backs off (doubled by each
            failed round, reset by an ACK in time): a congested cluster slows its sources
            instead of answering loss with more digests.
        max_datagram: largest datagram sent or accepted (default 1400: no IP fragmentation).
        replay_window: sealed packets whose timestamp is further from our clock are refused.
        replay_capacity: packet tags remembered by the replay guard.
        amplification_limit: answers to an unauthenticated peer we do not know are at most this
            many times the size of its request (no reflection amplification).
        sync_max_datagrams: digest datagrams per anti-entropy round, unless ``sync_coverage``
            needs more.
        sync_coverage: each cached message is offered by each holder, to a random peer, at
            least this many times within ``message_ttl``: when the cache holds more than
            ``sync_max_datagrams`` digests' worth per ``message_ttl / sync_coverage``, a
            round's digest grows with it (``entries x sync_interval x sync_coverage /
            message_ttl`` keys). After a burst of 10^4 messages at 10 % loss the stragglers'
            last gaps are found this way; a digest walk that took longer than the TTL left
            some unrepaired. The cost is ~``sync_coverage`` key entries (16 bytes) per
            message per node over the message's life.
        echo_suppression: a push round that missed its ACK majority is still not followed by
            a PullSync if the message came back to this node this many times meanwhile (it is
            spreading; the missing ACKs were duplicates). 0 disables. Lower saves packets and
            costs tail latency (docs/benchmarks.md has the trade-off).
        reverse_sync: answer a digest that lists only keys we hold with a ``PullSync`` of the
            newer cached keys it lacks (at most as many keys as it listed, never to a full
            datagram, which may have successors). A node that missed a message then pulls it
            at its *own* next anti-entropy round, not only when a holder happens to pick it.
        ring_forward: two of the ``fanout`` targets of every push round are the node's ring
            neighbours (the addresses before and after it in sorted order, wrapping around)
            instead of random peers, so that the push wave reaches every node without the
            pull path at 0 % loss. At least one target stays random (``fanout=2``: the
            successor and one random peer; ``fanout=1``: random). ``False``: all random.
        initial_ack_timeout: the ACK wait of push rounds before the first round-trip sample
            (``None``: ``ack_timeout``). On a LAN, 0.05 s moves the first message's pull
            fallback from 300 ms to 50 ms; on a WAN it costs packets (false fallbacks).
    """

    fanout: int = attrs.field(default=3, validator=_count(1))
    ack_timeout: float = attrs.field(default=0.3, validator=_positive)
    adaptive_ack: bool = True
    min_ack_timeout: float = attrs.field(default=0.005, validator=_positive)
    sync_interval: float = attrs.field(default=1.0, validator=_positive)
    sync_jitter: float = 0.25
    cache_entries: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_count(1))
    )
    cache_bytes: int = attrs.field(default=64 << 20, validator=_count(1024))
    message_ttl: float = attrs.field(default=60.0, validator=_positive)
    max_clock_skew: float = attrs.field(default=5.0, validator=_positive)
    seen_capacity: int = attrs.field(default=1 << 18, validator=_count(16))
    max_datagram: int = attrs.field(default=DEFAULT_MAX_DATAGRAM)
    replay_window: float = attrs.field(default=60.0, validator=_positive)
    replay_capacity: int = attrs.field(default=16384, validator=_count(16))
    amplification_limit: int = attrs.field(default=3, validator=_count(1))
    sync_max_datagrams: int = attrs.field(default=8, validator=_count(1))
    sync_coverage: int = attrs.field(default=12, validator=_count(1))
    echo_suppression: int = attrs.field(default=2, validator=_count(0))
    reverse_sync: bool = True
    ring_forward: bool = True
    initial_ack_timeout: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(_positive)
    )
    push_window: int = attrs.field(default=64, validator=_count(1))

    def __attrs_post_init__(self) -> None:
        if not MIN_DATAGRAM_LIMIT <= self.max_datagram <= MAX_DATAGRAM_LIMIT:
            raise LocalProtocolError(
                f"max_datagram must be {MIN_DATAGRAM_LIMIT}..{MAX_DATAGRAM_LIMIT}"
            )
        if not 0 <= self.sync_jitter < 1:
            raise LocalProtocolError("sync_jitter must be in [0, 1)")
        if self.min_ack_timeout > self.ack_timeout:
            raise LocalProtocolError("min_ack_timeout must not exceed ack_timeout")
