"""The push-pull gossip engine: sans-IO (no sockets, no clock reads, injected randomness).

Inputs: :meth:`GossipEngine.receive` (a datagram, its source, ``now``), :meth:`~GossipEngine.push`
(application data) and :meth:`~GossipEngine.handle_timer`. Outputs: :meth:`datagrams_to_send`,
:meth:`pop_events` and :meth:`get_timer` (the next deadline). The same engine runs under the trio
runtime, in the simulator and in hypothesis state machines.

The rules (docs/protocol.md has the table):

* ``push``: the origin caches its message and sends ``PushMessage`` to ``fanout`` peers: its
  two ring neighbours (``ring_forward``) and ``fanout - 2`` drawn uniformly without replacement
  from ``discovery.gossipiers()``.
* First receipt of a message (push or pull): cache it, deliver it, ``PushAck`` the pusher, and
  forward it once to ``fanout`` peers other than the sender, chosen the same way (one
  encryption shared by the fan-out). A duplicate gets no ACK and is not forwarded.
* The ring: every address sorted, the last followed by the first. Every node that gets a
  message hands it to both ring neighbours (but the sender), so at 0 % loss the push wave
  alone reaches every node: each informed run of the ring grows at both ends every hop, while
  the random targets seed new runs and keep the spread logarithmic. Forward-once to random
  peers only misses ``e^(-fanout)`` of them (6 % at fanout 3), who then wait for the pull
  path. docs/benchmarks.md has the before/after.
* Every push round collects ACKs (a duplicate pushed back to us by one of the round's targets
  counts as its ACK: it holds the message). Without a real majority (``acks > sent / 2``) by the ACK
  deadline (adaptive: 4 x smoothed RTT, at most ``ack_timeout``), the key goes into a
  ``PullSync`` digest to ``fanout + 2`` peers not known to hold it; a peer lacking it answers
  ``PullRequest``; the holder answers ``PullResponse``. Unless the message came back to us
  ``echo_suppression`` times meanwhile: then it is spreading, and the missing ACKs were
  duplicates.
* A pulled key that does not arrive is requested again (up to 3 times): a pull crosses three
  lossy hops.
* Anti-entropy: every ``sync_interval`` (jittered) a ``PullSync`` of every cached recent key goes
  to one random peer, which pulls what it lacks, or, if it lacks nothing, answers with a digest
  of the strictly newer keys the sender lacks (reverse sync). This is what brings delivery to
  100 % under loss and to late joiners.
* Message keys carry their birth time: a message older than ``message_ttl`` is neither accepted,
  advertised nor forwarded, and its key is forgotten ``max_clock_skew`` later. Hence the seen
  set is bounded and nothing can be delivered twice.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import OrderedDict, deque
from collections.abc import Sequence, Set
from typing import Any, Final

from cachetools import LRUCache

from gossip.broadcast.config import CACHE_ENTRY_OVERHEAD, PULL_ATTEMPTS, GossipConfig
from gossip.broadcast.ring import ring_neighbours
from gossip.broadcast.statistics import EngineStatistics
from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery.base import Discovery
from gossip.errors import LocalProtocolError, RemoteProtocolError
from gossip.events import Event, MessageDelivered, Outgoing, PacketDropped
from gossip.transport.base import Address
from gossip.wire import (
    MESSAGE_KEY_SIZE,
    PACKET_RANGES,
    Codec,
    PacketType,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
    key_timestamp_ms,
    new_message_key,
    peek_message_key,
)

__all__ = ["GossipEngine"]

_WANTED_MAX: Final = 4096


class _Round:
    """One push round waiting for ACKs."""

    __slots__ = ("acked", "echoed", "exclude", "started", "targets")

    def __init__(self, targets: tuple[Address, ...], exclude: Address | None, now: float) -> None:
        self.targets = targets
        self.acked: set[Address] = set()
        self.exclude = exclude
        self.started = now
        self.echoed = 0


#: Largest factor by which failed push rounds stretch the ACK wait (``ack_timeout`` caps it).
_MAX_BACKOFF: Final = 64.0
_PUSH: Final = int(PacketType.PUSH_MESSAGE)
_RESPONSE: Final = int(PacketType.PULL_RESPONSE)
_TYPE_NAMES: Final = {
    PushMessage: "push",
    PushAck: "ack",
    PullSync: "sync",
    PullRequest: "request",
    PullResponse: "response",
}
#: The Outgoing.kind of an anti-entropy round's PullSync (other PullSyncs are "sync").
_DIGEST: Final = "digest"


class GossipEngine:
    """One node's push-pull protocol state machine.

    Args:
        discovery: where peers come from; asked on every peer choice.
        local_address: this node's address, never chosen as a peer.
        config: protocol parameters.
        keyring: cluster keys; ``None`` for a plain-text cluster.
        rng: the only source of randomness (peer choice, jitter, the random bits of message
            keys): seed it for determinism. ``None``: a fresh ``random.Random`` for peer choice
            and jitter, and :mod:`secrets` for the keys (unpredictable keys keep a plain-text
            cluster's messages from being pre-empted; see :func:`gossip.wire.new_message_key`).
        clock_offset: ``now + clock_offset`` is Unix time; lets the runtime pass a monotonic
            clock while labels and message keys carry wall-clock time.
    """

    def __init__(
        self,
        discovery: Discovery,
        local_address: Address,
        config: GossipConfig | None = None,
        *,
        keyring: Keyring | None = None,
        rng: random.Random | None = None,
        clock_offset: float = 0.0,
        codec: Codec | None = None,
    ) -> None:
        self.config = config = config or GossipConfig()
        self.discovery = discovery
        self.local_address = local_address
        self._rng = rng or random.Random()
        # Message keys from the injected rng (a seeded run makes the same keys), else secrets.
        self._key_rng = rng
        if codec is None:
            codec = Codec(
                keyring,
                max_datagram=config.max_datagram,
                replay=ReplayGuard(config.replay_window, config.replay_capacity)
                if keyring is not None
                else None,
                clock_offset=clock_offset,
            )
        elif keyring is not None:
            raise LocalProtocolError("give the engine a keyring or a codec (which has one)")
        elif codec.max_datagram != config.max_datagram:
            raise LocalProtocolError(
                f"the codec's max_datagram ({codec.max_datagram}) is not the config's "
                f"({config.max_datagram})"
            )
        #: Shared with the other engines of a node (one keyring, one replay guard).
        self.codec = codec
        self._clock_offset = clock_offset
        self._echo_limit = config.echo_suppression
        self._ttl_ms = int(config.message_ttl * 1000)
        self._skew_ms = int(config.max_clock_skew * 1000)
        # The cache bounds bytes natively (getsizeof); the entry bound is kept by hand below.
        self._cache: LRUCache[bytes, bytes] = LRUCache(
            maxsize=config.cache_bytes, getsizeof=lambda data: len(data) + CACHE_ENTRY_OVERHEAD
        )
        # Seen keys: a set for lookups and a deque for their arrival order. No timestamps are
        # stored: each key carries its own (half the memory of an OrderedDict of key -> ms).
        self._seen: set[bytes] = set()
        self._seen_order: deque[bytes] = deque()
        self._seen_floor = -1
        # Cached keys in arrival order (close to birth order): the cache expires by age from
        # the front, and digests walk it with a cursor. ``_order[:_order_head]`` is spent;
        # keys the cache already evicted are skipped where met.
        self._order: list[bytes] = []
        self._order_head = 0
        # The largest (newest) key ever cached: no cached key is newer (it may have left).
        self._newest_cached = b""
        self._recent_cursor = 0
        self._rounds: dict[bytes, _Round] = {}
        self._own: set[bytes] = set()  # our own messages whose push round has not ended
        #: Set by the runtime: ``False`` while the application's delivery queue is full. New
        #: messages are then neither delivered nor acknowledged (``deferred``): anti-entropy
        #: offers them again later, and the pushers' missing ACKs slow the source.
        self.accepting = True
        self._ring_source: Sequence[Address] | None = None
        self._ring_peers: tuple[Address, ...] = ()
        # Ring neighbours per push round: at most fanout - 1, so one target stays random
        # (a fan-out of ring neighbours alone would walk the ring: linear time).
        self._ring_targets = min(2, config.fanout - 1) if config.ring_forward else 0
        # Keys we asked for: key -> [peer to ask, attempts, deadline]. Bounded (oldest first out).
        self._wanted: OrderedDict[bytes, list[Any]] = OrderedDict()
        self._pull_timers: list[tuple[float, int, bytes]] = []
        self._timers: list[tuple[float, int, bytes]] = []  # ACK deadlines: (when, seq, key)
        self._timer_seq = 0
        self._next_sync: float | None = None
        self._srtt: float | None = None
        self._rttvar = 0.0
        # Doubled by each push round that ends without its majority, reset by the next ACK
        # that comes in time (RFC 6298's back-off): under a burst ACKs queue behind data,
        # and a wait sized for an idle LAN would turn every round into a PullSync fallback.
        # Also forgotten by a node whose rounds have not failed for one backed-off wait (see
        # _spread), so that it cannot outlive the queues it answers.
        self._backoff = 1.0
        self._last_failure = -math.inf
        # Fallback offers of failed rounds, per peer, sent together one round trip after the
        # first: under a burst many rounds fail at once, and one digest per failed round
        # (5 datagrams each) would feed the congestion that made them fail.
        self._offers: dict[Address, list[bytes]] = {}
        self._offers_due: float | None = None
        # The source's congestion window (AIMD, as TCP's): halved by an own round that
        # fails, grown by one per window of rounds that reach their majority; at most
        # ``push_window``. A failed round means a target did not take the message in time.
        self._window = float(config.push_window)
        self._out: list[Outgoing] = []
        self._events: list[Event] = []
        # Counters (plain ints: cheapest to bump on the per-packet path).
        self._n_received = 0
        self._n_sent = 0
        self._n_bytes_sent = 0
        # By Outgoing.kind; statistics() counts anti-entropy digests under "sync" (a PullSync).
        self._sent_by_type: dict[str, int] = dict.fromkeys((*_TYPE_NAMES.values(), _DIGEST), 0)
        self._n_pushed = 0
        self._n_delivered = 0
        self._n_duplicates = 0
        self._dropped: dict[str, int] = {}
        self._n_acks = 0
        self._n_late_acks = 0
        self._n_failed_rounds = 0
        self._n_syncs = 0
        self._n_pulled = 0
        self._n_pull_retries = 0
        self._n_expired = 0
        self._n_evicted_early = 0
        self._n_deferred = 0

    # ---------------------------------------------------------------- outputs

    def datagrams_to_send(self) -> list[Outgoing]:
        """Datagrams produced since the last call, in order."""
        out, self._out = self._out, []
        return out

    def pop_events(self) -> list[Event]:
        """Events produced since the last call, in order."""
        events, self._events = self._events, []
        return events

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called (``None``: no timer pending)."""
        timers = self._timers
        while timers and timers[0][2] not in self._rounds:
            heapq.heappop(timers)  # a round that already ended (ACK majority)
        pulls = self._pull_timers
        while pulls and pulls[0][2] not in self._wanted:
            heapq.heappop(pulls)  # a pull that was answered
        # Called after every datagram by the runtime: no allocation here.
        due = self._next_sync
        if timers and (due is None or timers[0][0] < due):
            due = timers[0][0]
        if pulls and (due is None or pulls[0][0] < due):
            due = pulls[0][0]
        offers_due = self._offers_due
        if offers_due is not None and (due is None or offers_due < due):
            due = offers_due
        return due

    def statistics(self) -> EngineStatistics:
        """A snapshot of the counters."""
        return EngineStatistics(
            datagrams_received=self._n_received,
            datagrams_sent=self._n_sent,
            bytes_sent=self._n_bytes_sent,
            sent_by_type=self._sent_by_packet(),
            pushed=self._n_pushed,
            delivered=self._n_delivered,
            duplicates=self._n_duplicates,
            dropped=dict(self._dropped),
            acks_received=self._n_acks,
            late_acks=self._n_late_acks,
            ack_rounds_failed=self._n_failed_rounds,
            pull_syncs_sent=self._n_syncs,
            pulled=self._n_pulled,
            pull_retries=self._n_pull_retries,
            cache_entries=len(self._cache),
            cache_bytes=int(self._cache.currsize),
            seen_entries=len(self._seen),
            cache_expired=self._n_expired,
            cache_evicted_early=self._n_evicted_early,
            deferred=self._n_deferred,
            in_flight=len(self._own),
            window=int(self._window),
        )

    def _sent_by_packet(self) -> dict[str, int]:
        sent = dict(self._sent_by_type)
        sent["sync"] += sent.pop(_DIGEST)
        return sent

    @property
    def packet_types(self) -> range:
        """The broadcast range of the packet type byte (five packets; the rest reserved)."""
        return PACKET_RANGES["broadcast"]

    @property
    def window(self) -> int:
        """Own push rounds allowed in flight now: ``push_window``, halved by each own round
        that fails, grown back by one per window of rounds that reach their majority."""
        return int(self._window)

    @property
    def in_flight(self) -> int:
        """Own messages whose push round has not ended yet."""
        return len(self._own)

    def can_push(self, size: int, now: float) -> bool:
        """Whether a message of ``size`` bytes can be pushed now without overrunning the
        window (:attr:`window` own rounds in flight) or evicting a cached message that a
        pull may still ask for. :meth:`push` does not check it; the runtime waits on it."""
        if len(self._own) >= self._window:
            return False
        self._expire_cache(now)
        cache = self._cache
        entries = self.config.cache_entries
        if entries is not None and len(cache) >= entries:
            return False
        return cache.currsize + size + CACHE_ENTRY_OVERHEAD <= cache.maxsize

    # ---------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        """Arm the anti-entropy timer; call once when the node starts."""
        self._next_sync = now + self._sync_delay()

    def push(self, data: bytes, now: float) -> bytes:
        """Publish ``data``; returns its message key.

        Raises:
            LocalProtocolError: ``data`` is not bytes or does not fit in one datagram.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise LocalProtocolError("push() takes bytes")
        data = bytes(data)
        limit = self.codec.max_payload()
        if len(data) > limit:
            raise LocalProtocolError(
                f"payload of {len(data)} bytes exceeds {limit} bytes, the most a "
                f"{self.config.max_datagram}-byte datagram carries"
            )
        key = new_message_key(self._now_ms(now), self._key_rng)
        self._remember(key, key_timestamp_ms(key), now)
        self._cache_put(key, data, now)
        self._n_pushed += 1
        self._spread(key, data, None, now)
        return key

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """Handle one datagram from ``addr``. Never raises for bad bytes: they are dropped,
        counted and reported as :class:`PacketDropped`."""
        self._n_received += 1
        key = peek_message_key(datagram)
        if key is not None and key in self._seen:
            # A duplicate costs no crypto. A forged datagram carrying a seen key is dropped
            # here too, exactly as it would be after a failed MAC check.
            self._echo(key, addr)
            return
        try:
            packet = self.codec.decode_untrusted(datagram, now)
        except RemoteProtocolError as err:
            self._drop(err.reason, addr)
            return
        if isinstance(packet, PushMessage):
            self._on_message(packet.key, packet.data, addr, now, pushed=True)
        elif isinstance(packet, PushAck):
            self._on_ack(packet.key, addr, now)
        elif isinstance(packet, PullSync):
            self._on_sync(packet.keys, addr, now)
        elif isinstance(packet, PullRequest):
            self._on_request(packet.keys, addr, len(datagram), now)
        else:
            self._on_message(packet.key, packet.data, addr, now, pushed=False)

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``: ACK deadlines, the fallback offers of failed push
        rounds, pull retries and the anti-entropy round."""
        timers = self._timers
        offers = self._offers
        while timers and timers[0][0] <= now:
            _, _, key = heapq.heappop(timers)
            rnd = self._rounds.pop(key, None)
            own = key in self._own
            self._own.discard(key)
            if rnd is None or len(rnd.acked) * 2 > len(rnd.targets):
                continue  # ended: by its ACK majority, or it came back echo_suppression times
            # No real majority: the message may have stalled. Offer it to fanout + 2 random
            # peers, never to one known to hold it (an ACKer, the sender). A silent target may
            # be drawn again: under loss it is the likeliest to lack the message; without loss
            # it is a duplicate, which is why it is not preferred (measured both ways).
            self._n_failed_rounds += 1
            self._backoff = min(self._backoff * 2, _MAX_BACKOFF)
            self._last_failure = now
            if own:
                self._window = max(1.0, self._window / 2)
            known: set[Address | None] = {rnd.exclude, *rnd.acked}
            for peer in self._choose(self.config.fanout + 2, known):
                offers.setdefault(peer, []).append(key)
            if self._offers_due is None:
                # At most one batch of offers per smoothed round trip: ~1 ms on an idle LAN,
                # and as long as the queues are under a burst, which is when rounds fail.
                self._offers_due = now + (self._srtt or 0.0)
        due = self._offers_due
        if offers and (not self._rounds or (due is not None and now >= due)):
            # With no round in flight, no other round can fail within a round trip (a new one
            # waits at least 4 srtt): waiting would batch nothing and cost a timer wake-up and
            # a round trip per failed round (an idle cluster's case; under a burst rounds are
            # always in flight and the batch waits).
            self._send_offers(now)
        self._retry_pulls(now)
        if self._next_sync is not None and now >= self._next_sync:
            self._anti_entropy(now)
            self._next_sync = now + self._sync_delay()

    # ---------------------------------------------------------------- handlers

    def _on_message(
        self, key: bytes, data: bytes, addr: Address, now: float, *, pushed: bool
    ) -> None:
        if key in self._seen:
            self._echo(key, addr)
            return
        key_ms = key_timestamp_ms(key)
        now_ms = self._now_ms(now)
        if key_ms + self._ttl_ms < now_ms or key_ms <= self._seen_floor:
            self._drop("expired", addr)
            return
        if key_ms > now_ms + self._skew_ms:
            self._drop("future", addr)
            return
        if not self.accepting:
            # The application is behind: take it later (a pull), not now. No ACK, so the
            # pusher's round falls back and the source sees the cluster is not keeping up.
            self._n_deferred += 1
            return
        self._remember(key, key_ms, now)
        self._cache_put(key, data, now)
        self._wanted.pop(key, None)
        self._n_delivered += 1
        if not pushed:
            self._n_pulled += 1
        self._events.append(MessageDelivered(key, data, addr, now))
        if pushed:
            self._emit(self.codec.encode_ack(key, now), (addr,), "ack")
        self._spread(key, data, addr, now)

    def _echo(self, key: bytes, addr: Address) -> None:
        """A duplicate of ``key`` came back from ``addr``: count it against its push round."""
        self._n_duplicates += 1
        rnd = self._rounds.get(key)
        if rnd is not None:
            rnd.echoed += 1
            if addr in rnd.targets:
                # A target that pushes the message to us holds it, just as if it had ACKed.
                rnd.acked.add(addr)
            if rnd.echoed == self._echo_limit or len(rnd.acked) * 2 > len(rnd.targets):
                # Its fallback is now ruled out whatever ACKs come: end it here, so that its
                # deadline never wakes the node (a timer expiry costs ~30 us in trio).
                del self._rounds[key]
                self._own.discard(key)

    def _on_ack(self, key: bytes, addr: Address, now: float) -> None:
        rnd = self._rounds.get(key)
        if rnd is None or addr not in rnd.targets or addr in rnd.acked:
            if key in self._seen:
                self._n_late_acks += 1  # after the round ended: normal, not an attack
            else:
                self._drop("unexpected-ack", addr)
            return
        self._n_acks += 1
        rnd.acked.add(addr)
        self._observe_rtt(now - rnd.started)
        if len(rnd.acked) * 2 > len(rnd.targets):
            del self._rounds[key]  # majority: done (its timer entry is skipped lazily)
            if key in self._own:
                self._own.discard(key)
                window = self._window
                self._window = min(float(self.config.push_window), window + 1 / window)

    def _on_sync(self, keys: tuple[bytes, ...], addr: Address, now: float) -> None:
        now_ms = self._now_ms(now)
        oldest = now_ms - self._ttl_ms
        wanted = self._wanted
        missing = []
        for k in keys:
            if k in self._seen or not oldest <= key_timestamp_ms(k) <= now_ms + self._skew_ms:
                continue
            entry = wanted.get(k)
            if entry is not None:
                entry[0] = addr  # already asked someone: a retry will ask this newer holder
                continue
            missing.append(k)
        if missing:
            # Never larger than the digest that asked: no amplification.
            self._send(PullRequest(tuple(missing)), (addr,), now)
            self._expect(missing, addr, now)
        elif self.config.reverse_sync and keys and len(keys) < self.codec.max_keys():
            self._reverse_sync(keys, addr, oldest, now)

    def _reverse_sync(
        self, keys: tuple[bytes, ...], addr: Address, oldest: int, now: float
    ) -> None:
        """The sender of a digest we are fully up to date with may lack newer messages: offer
        them (push-pull anti-entropy; without it, a node that missed a message waits until a
        holder's random digest picks it). Only keys newer than its newest: older ones it was
        offered before. Never answered in turn: a reverse digest lists only keys its receiver
        lacks, and a digest with a missing key gets a PullRequest, not a digest."""
        # A key starts with its time (big-endian), so bytes order is time order: keys are
        # compared whole, not decoded. This runs for every digest that finds nothing missing
        # (~1 per node and message), and in an up-to-date cluster it finds nothing: the
        # cheapest test goes first (the cache's __contains__ is a Python call).
        newest = key_timestamp_ms(max(keys))
        # Strictly newer: each reverse digest then only climbs in time, so an exchange always
        # ends (with ">=", two keys made in the same millisecond bounced back and forth forever).
        floor = max(newest + 1, oldest)
        if floor >> 48:
            return  # a key from the far future (it was not taken): nothing is newer
        floor_key = floor.to_bytes(6, "big") + bytes(MESSAGE_KEY_SIZE - 6)
        if self._newest_cached < floor_key:
            # Nothing ever cached is that new: the common case, answered without a walk.
            return
        listed = set(keys)
        # From the newest end of the arrival order, a bounded walk (the cache may hold 10^5).
        order, cache, head = self._order, self._cache, self._order_head
        newer: list[bytes] = []
        wanted = len(keys)
        i = len(order)
        stop = max(head, i - 4 * wanted - 64)
        while i > stop:
            i -= 1
            k = order[i]
            if k >= floor_key and k not in listed and k in cache:
                newer.append(k)
                if len(newer) == wanted:
                    break
        if newer:
            newer.reverse()
            self._pull_sync(newer, (addr,), now)  # no larger than the digest

    def _expect(self, keys: Sequence[bytes], peer: Address, now: float) -> None:
        """Remember a pull so that a lost request or response is retried."""
        deadline = now + self._ack_wait()
        wanted = self._wanted
        for k in keys:
            wanted[k] = [peer, 1, deadline]
            self._timer_seq += 1
            heapq.heappush(self._pull_timers, (deadline, self._timer_seq, k))
        while len(wanted) > _WANTED_MAX:
            wanted.popitem(last=False)

    def _retry_pulls(self, now: float) -> None:
        """Ask again for pulled keys that did not arrive in time (at most PULL_ATTEMPTS)."""
        pulls = self._pull_timers
        wanted = self._wanted
        again: dict[Address, list[bytes]] = {}
        while pulls and pulls[0][0] <= now:
            _, _, key = heapq.heappop(pulls)
            entry = wanted.get(key)
            if entry is None or entry[2] > now:
                continue  # answered, or rescheduled
            if entry[1] >= PULL_ATTEMPTS:
                del wanted[key]
                continue
            entry[1] += 1
            entry[2] = now + self._ack_wait()
            self._timer_seq += 1
            heapq.heappush(pulls, (entry[2], self._timer_seq, key))
            again.setdefault(entry[0], []).append(key)
        step = self.codec.max_keys()
        for peer, keys in again.items():
            self._n_pull_retries += len(keys)
            for i in range(0, len(keys), step):
                self._send(PullRequest(tuple(keys[i : i + step])), (peer,), now)

    def _on_request(self, keys: tuple[bytes, ...], addr: Address, size: int, now: float) -> None:
        # Sealed packets prove the sender holds a cluster key; known peers are in our own
        # discovery. Anyone else (a spoofed source in a plain-text cluster) gets answers no
        # larger than amplification_limit times its request.
        budget = None
        if not self.codec.encrypted and addr not in self.discovery.gossipiers():
            budget = self.config.amplification_limit * size
        for key in dict.fromkeys(keys):  # a key asked twice is answered once
            data = self._cache.get(key)
            if data is None:
                continue
            if budget is not None:
                budget -= self.codec.datagram_size(len(key) + len(data))
                if budget < 0:
                    self._drop("amplification", addr)
                    return
            self._emit(self.codec.encode_message(_RESPONSE, key, data, now), (addr,), "response")

    # ---------------------------------------------------------------- machinery

    def _spread(self, key: bytes, data: bytes, sender: Address | None, now: float) -> None:
        """Push ``key`` to ``fanout`` random peers other than ``sender`` and await ACKs."""
        peers = self.discovery.gossipiers()
        ring = self._ring(peers) if self._ring_targets else ()
        if sender is not None and sender in ring:
            ring = tuple([p for p in ring if p != sender])
        exclude: set[Address | None] = {sender, *ring}
        targets = ring + self._choose(self.config.fanout - len(ring), exclude, peers)
        if not targets:
            return
        # One encryption for the whole fan-out (send_many; the eBPF cloner does it in-kernel).
        self._emit(self.codec.encode_message(_PUSH, key, data, now), targets, "push")
        rnd = _Round(targets, sender, now)
        self._rounds[key] = rnd
        if sender is None:
            self._own.add(key)
        if self._backoff > 1.0 and now - self._last_failure > self._ack_wait():
            # No round failed for a whole backed-off wait: nothing says the queues it answered
            # are still there (as TCP restarts its window after an idle RTO). Kept until the
            # next ACK in time, it outlived them on an idle cluster: at 0 % loss most failed
            # rounds are silent because their targets had the message (a duplicate is not
            # ACKed), so one message's duplicates stretched the wait of the next, whose
            # fallback offers then landed in the message after it, each answered there with a
            # reverse sync (N = 128 on loopback: +0.2 PullSync per node and message).
            self._backoff = 1.0
        self._timer_seq += 1
        heapq.heappush(self._timers, (now + self._ack_wait(), self._timer_seq, key))

    def _send_offers(self, now: float) -> None:
        """Send the pending fallback offers. Peers offered the same keys (all of them, when
        one round failed) share one datagram: one encryption, one send_many (which the eBPF
        cloner fans out in the kernel)."""
        shared: dict[tuple[bytes, ...], list[Address]] = {}
        for peer, offered in self._offers.items():
            shared.setdefault(tuple(offered), []).append(peer)
        self._offers = {}
        self._offers_due = None
        for keys, peers in shared.items():
            self._pull_sync(keys, tuple(peers), now)

    def _pull_sync(
        self, keys: Sequence[bytes], peers: tuple[Address, ...], now: float, kind: str = "sync"
    ) -> None:
        """Send ``peers`` digests of those ``keys`` still cached (one datagram per max_keys)."""
        live = [k for k in keys if k in self._cache]
        step = self.codec.max_keys()
        for i in range(0, len(live), step):
            packet = PullSync(tuple(live[i : i + step]))
            self._emit(self.codec.encode(packet, now), peers, kind)
            self._n_syncs += len(peers)

    def _anti_entropy(self, now: float) -> None:
        self._expire_seen(now)
        self._expire_cache(now)
        digest = self._digest(now)
        if digest:
            for peer in self._choose(1, set()):
                self._pull_sync(digest, (peer,), now, _DIGEST)

    def _digest(self, now: float) -> list[bytes]:
        """Cached keys younger than the TTL, ``sync_max_datagrams`` datagrams of them, or
        more when ``sync_coverage`` needs it. Successive digests walk the cache in arrival
        order with a cursor (wrapping), so that a node that missed a message is offered it
        before the cache forgets it; the cost of a round is bounded by the limit, not a walk
        of the whole cache (which may hold 10^5 messages). Built from the cache, not the seen
        set: only what we can serve is worth advertising."""
        self._expire_cache(now)
        oldest = self._now_ms(now) - self._ttl_ms
        order, cache, head = self._order, self._cache, self._order_head
        end = len(order)
        cfg = self.config
        limit = max(
            self.codec.max_keys() * cfg.sync_max_datagrams,
            math.ceil(len(cache) * cfg.sync_interval * cfg.sync_coverage / cfg.message_ttl),
        )
        start = self._recent_cursor if head <= self._recent_cursor < end else head
        picked: list[bytes] = []
        # key_timestamp_ms(k) >= oldest, as a comparison of bytes (a key starts with its time).
        oldest_key = max(oldest, 0).to_bytes(6, "big")
        i = start
        for _ in range(end - head):
            k = order[i]
            if k >= oldest_key and k in cache:
                picked.append(k)
                if len(picked) == limit:
                    i += 1
                    break
            i += 1
            if i == end:
                i = head
        self._recent_cursor = i
        return picked

    def _ring(self, peers: Sequence[Address]) -> tuple[Address, ...]:
        """Our ring neighbours (successor, predecessor; as many as ``_ring_targets``),
        recomputed when discovery's list changes."""
        if peers is not self._ring_source:
            self._ring_source = peers
            neighbours = ring_neighbours(peers, self.local_address)
            self._ring_peers = neighbours[: self._ring_targets]
        return self._ring_peers

    def _choose(
        self, n: int, exclude: Set[Address | None], peers: Sequence[Address] | None = None
    ) -> tuple[Address, ...]:
        """``n`` distinct peers uniformly at random, never ourselves nor ``exclude``."""
        if n <= 0:
            return ()
        if peers is None:
            peers = self.discovery.gossipiers()
        total = len(peers)
        local = self.local_address
        if total > 2 * (n + len(exclude) + 1):
            # Rejection sampling: a few rng.random() calls (~0.2 us each) instead of
            # random.sample (~5 us); a uniformly random subset all the same.
            rnd = self._rng.random
            chosen: list[Address] = []
            for _ in range(8 * n + 8):
                peer = peers[int(rnd() * total)]
                if peer != local and peer not in exclude and peer not in chosen:
                    chosen.append(peer)
                    if len(chosen) == n:
                        return tuple(chosen)
        # Small lists (or a run of bad luck): filter, then sample.
        candidates = [p for p in peers if p != local and p not in exclude]
        if len(candidates) <= n:
            return tuple(candidates)
        return tuple(self._rng.sample(candidates, n))

    def _send(
        self,
        packet: PushMessage | PushAck | PullSync | PullRequest | PullResponse,
        addrs: tuple[Address, ...],
        now: float,
    ) -> None:
        self._emit(self.codec.encode(packet, now), addrs, _TYPE_NAMES[type(packet)])

    def _emit(self, data: bytes, addrs: tuple[Address, ...], kind: str) -> None:
        self._out.append(Outgoing(data, addrs, kind))
        n = len(addrs)
        self._n_sent += n
        self._n_bytes_sent += n * len(data)
        self._sent_by_type[kind] += n

    def _drop(self, reason: str, addr: Address) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        self._events.append(PacketDropped(reason, addr))

    def _remember(self, key: bytes, key_ms: int, now: float) -> None:
        seen = self._seen
        seen.add(key)
        self._seen_order.append(key)
        if len(seen) > self.config.seen_capacity:
            # Forget the oldest; refuse anything at least as old from now on.
            oldest = self._seen_order.popleft()
            seen.discard(oldest)
            self._seen_floor = max(self._seen_floor, key_timestamp_ms(oldest))
        else:
            self._expire_seen(now, limit=2)

    def _expire_seen(self, now: float, limit: int | None = None) -> None:
        # A key older than TTL + skew is refused on arrival anyway: forgetting it is safe.
        horizon = self._now_ms(now) - self._ttl_ms - self._skew_ms
        order = self._seen_order
        n = 0
        while order and (limit is None or n < limit):
            if key_timestamp_ms(order[0]) >= horizon:
                break
            self._seen.discard(order.popleft())
            n += 1

    def _cache_put(self, key: bytes, data: bytes, now: float) -> None:
        cache = self._cache
        if len(data) + CACHE_ENTRY_OVERHEAD > cache.maxsize:
            return  # larger than the whole cache: delivered, but not kept for pulls
        order = self._order
        head = self._order_head
        if head < len(order) and key_timestamp_ms(order[head]) < self._now_ms(now) - self._ttl_ms:
            self._expire_cache(now, limit=2)  # (checked here first: a call saved per put)
        entries = self.config.cache_entries
        before = len(cache)
        if entries is not None:
            while len(cache) >= entries:
                cache.popitem()
        cache[key] = data  # LRUCache evicts by bytes here if it must
        after = len(cache)
        if after <= before:
            # Younger than the TTL (expired entries left above): a pull may still want them.
            self._n_evicted_early += before + 1 - after
        self._newest_cached = max(self._newest_cached, key)
        order = self._order  # (a compaction in _expire_cache makes a new list)
        order.append(key)
        if len(order) - self._order_head > 2 * after + 1024:
            self._compact_order()

    def _expire_cache(self, now: float, limit: int | None = None) -> None:
        """Drop cached messages older than the TTL from the front of the arrival order."""
        order, cache = self._order, self._cache
        head = self._order_head
        oldest = self._now_ms(now) - self._ttl_ms
        end = len(order) if limit is None else min(len(order), head + limit)
        while head < end and key_timestamp_ms(order[head]) < oldest:
            if cache.pop(order[head], None) is not None:
                self._n_expired += 1
            head += 1
        self._order_head = head
        if head > 1024 and head * 2 > len(order):
            self._compact_order()

    def _compact_order(self) -> None:
        """Forget spent and evicted keys of the arrival order (amortised O(1) per key)."""
        cache = self._cache
        cursor_key = (
            self._order[self._recent_cursor]
            if self._order_head <= self._recent_cursor < len(self._order)
            else None
        )
        self._order = [k for k in self._order[self._order_head :] if k in cache]
        self._order_head = 0
        self._recent_cursor = 0
        if cursor_key is not None and cursor_key in cache:
            self._recent_cursor = self._order.index(cursor_key)

    def _ack_wait(self) -> float:
        cfg = self.config
        if self._srtt is None and cfg.initial_ack_timeout is not None:
            return min(cfg.ack_timeout, cfg.initial_ack_timeout)
        if not cfg.adaptive_ack or self._srtt is None:
            return cfg.ack_timeout
        srtt = self._srtt
        wait = max(cfg.min_ack_timeout, 4 * srtt, srtt + 4 * self._rttvar)
        return min(cfg.ack_timeout, wait * self._backoff)

    def _observe_rtt(self, sample: float) -> None:
        # RFC 6298's smoothing (alpha = 1/8, beta = 1/4); an ACK in time ends a back-off.
        srtt = self._srtt
        if srtt is None:
            self._srtt, self._rttvar = sample, sample / 2
        else:
            self._rttvar += (abs(srtt - sample) - self._rttvar) / 4
            self._srtt = srtt + (sample - srtt) / 8
        self._backoff = 1.0

    def _sync_delay(self) -> float:
        cfg = self.config
        return cfg.sync_interval * (1 + cfg.sync_jitter * (2 * self._rng.random() - 1))

    def _now_ms(self, now: float) -> int:
        return int((now + self._clock_offset) * 1000)
