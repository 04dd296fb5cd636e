"""A sans-IO engine that speaks go-gossip's pull-only protocol (HEAD).

The engine does no I/O and reads no clock: the runtime feeds it datagrams
(:meth:`~GoGossipEngine.receive`), application messages (:meth:`~GoGossipEngine.push`) and
timer expiries (:meth:`~GoGossipEngine.handle_timer`), each with the current protocol time
``now``; it collects datagrams to send (:meth:`~GoGossipEngine.datagrams_to_send`), events
(:meth:`~GoGossipEngine.pop_events`) and says when its next timer is due
(:meth:`~GoGossipEngine.get_timer`). Randomness comes from an injected ``random.Random``.

Behaviour, as a go-gossip node (``shared/reference/go-gossip.md`` section 2):

- Every :data:`~gossip.compat.gogossip.PULL_INTERVAL` (200 ms) it sends one PullRequest to
  ``gossip_number`` (default 2) peers drawn from ``discovery.gossipiers()`` (all of them when
  there are no more than that).
- A PullRequest is answered with every cached message, oldest first, chunked as Go chunks
  (:func:`~gossip.compat.gogossip.chunk_items`), one datagram per chunk to the requester's
  source address. An empty cache sends nothing.
- A PullResponse's new messages are cached and delivered once (:class:`MessageDelivered`);
  known keys are counted as duplicates.
- A pushed message is cached (so peers pull it) but **not delivered locally**, as in Go: the
  application already has it. A bridge relies on this to avoid loops.

What it does not inherit from Go (section 3): bad input never raises out of ``receive``, it
becomes a :class:`PacketDropped` with a reason; a datagram whose ``enc`` byte is not the
configured one is dropped (flaw 3); memory is bounded (``cache_size`` values of at most
:data:`~gossip.compat.gogossip.MAX_VALUE_SIZE` bytes, ``seen_size`` 8-byte keys,
``rate_table_size`` buckets); work per datagram is bounded (the datagram size cap, and the
encoded answer is built once per cache change, not once per request); a value that cannot
fit a chunk is refused at :meth:`push` and dropped on receipt (flaw 11); answers are
rate-limited per source address and in total (flaw 9 cannot be removed while staying
compatible - an answer is the whole cache - but it can be bounded); peers are drawn from the
whole list without repetition (flaw 13); keys come from the injected generator (pass
``random.SystemRandom()`` in production, flaw 10) and never collide with a key seen before.
"""

from __future__ import annotations

import random

import attrs
import cachetools

from gossip.compat.gogossip.cipher import LegacyGoGossipCipher
from gossip.compat.gogossip.wire import (
    CACHE_SIZE,
    GOSSIP_NUMBER,
    KEY_SIZE,
    MAX_VALUE_SIZE,
    PULL_INTERVAL,
    PullRequest,
    PullResponse,
    chunk_items,
    decode_untrusted,
    encode,
)
from gossip.discovery.base import Discovery
from gossip.errors import LocalProtocolError, RemoteProtocolError
from gossip.events import Event, MessageDelivered, Outgoing, PacketDropped
from gossip.transport.base import Address

__all__ = ["GoGossipEngine", "GoGossipStatistics"]

#: Default per-source answer budget. A go-gossip peer asks one node at most once per
#: 200 ms tick (5 per second); the burst absorbs jitter.
ANSWER_RATE = 5.0
ANSWER_BURST = 10.0
#: Default budget of answers per second over all sources: spoofed source addresses each get
#: a fresh per-source bucket, this one bounds them together.
GLOBAL_ANSWER_RATE = 100.0
GLOBAL_ANSWER_BURST = 200.0
#: Default number of source addresses whose buckets are remembered (least recently used
#: evicted first).
RATE_TABLE_SIZE = 1024
#: Default number of message keys remembered for de-duplication after their value left the
#: cache (go-gossip keeps a filter too): a message still circulating in other nodes' caches
#: is not delivered twice. 16 Ki keys cost well under 4 MB.
SEEN_SIZE = 16 * 1024
_KEY_DRAWS = 16


@attrs.frozen
class GoGossipStatistics:
    """Counters of one :class:`GoGossipEngine` (a snapshot)."""

    pull_rounds: int = 0
    #: PullRequest datagrams sent, one per destination.
    pull_requests_sent: int = 0
    requests_received: int = 0
    requests_answered: int = 0
    requests_rate_limited: int = 0
    response_datagrams_sent: int = 0
    responses_received: int = 0
    messages_delivered: int = 0
    duplicates: int = 0
    messages_pushed: int = 0
    cached_messages: int = 0
    #: New messages skipped while the application's delivery queue was full.
    deferred: int = 0
    #: Datagrams refused, keyed by :attr:`PacketDropped.reason`.
    dropped: dict[str, int] = attrs.field(factory=dict)


@attrs.define
class _Bucket:
    tokens: float
    updated: float

    def take(self, now: float, rate: float, burst: float) -> bool:
        if now > self.updated:
            self.tokens = min(burst, self.tokens + (now - self.updated) * rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class GoGossipEngine:
    """The go-gossip compatibility profile as a sans-IO state machine.

    Args:
        discovery: where peers come from (:class:`~gossip.discovery.Discovery`: any object
            with ``gossipiers()``, go-gossip's ``Gossipiers()``).
        rng: the source of randomness (peer choice, message keys). Tests pass a seeded
            ``random.Random``; production should pass ``random.SystemRandom()``.
        cipher: :class:`LegacyGoGossipCipher` for an encrypted cluster, ``None`` for a
            plaintext one. Datagrams of the other kind are dropped.
        now: protocol time at which the node starts; the first PullRequest round is due one
            ``pull_interval`` later (as Go's ticker).
        local_address: this node's own address, skipped when ``gossipiers()`` includes it.
        gossip_number: peers per PullRequest round.
        pull_interval: seconds between PullRequest rounds.
        cache_size: messages kept to answer PullRequests (LRU).
        seen_size: message keys remembered for de-duplication; at least ``cache_size``.
        answer_rate, answer_burst: token bucket of answers per source address.
        global_answer_rate, global_answer_burst: token bucket of answers over all sources.
        rate_table_size: source addresses whose buckets are kept.

    Raises:
        LocalProtocolError: a setting out of range.
    """

    def __init__(
        self,
        discovery: Discovery,
        *,
        rng: random.Random,
        cipher: LegacyGoGossipCipher | None = None,
        now: float = 0.0,
        local_address: Address | None = None,
        gossip_number: int = GOSSIP_NUMBER,
        pull_interval: float = PULL_INTERVAL,
        cache_size: int = CACHE_SIZE,
        seen_size: int = SEEN_SIZE,
        answer_rate: float = ANSWER_RATE,
        answer_burst: float = ANSWER_BURST,
        global_answer_rate: float = GLOBAL_ANSWER_RATE,
        global_answer_burst: float = GLOBAL_ANSWER_BURST,
        rate_table_size: int = RATE_TABLE_SIZE,
    ) -> None:
        if gossip_number < 1:
            raise LocalProtocolError("gossip_number must be at least 1")
        if not pull_interval > 0:
            raise LocalProtocolError("pull_interval must be positive")
        if cache_size < 1 or rate_table_size < 1:
            raise LocalProtocolError("cache_size and rate_table_size must be at least 1")
        if seen_size < cache_size:
            # Everything in the cache must also be remembered as seen, or an evicted key
            # could be stored and delivered again while its value is still cached.
            raise LocalProtocolError("seen_size must be at least cache_size")
        if not (answer_rate > 0 and global_answer_rate > 0):
            raise LocalProtocolError("answer rates must be positive")
        if answer_burst < 1 or global_answer_burst < 1:
            raise LocalProtocolError("answer bursts must be at least 1")
        self._discovery = discovery
        self._local_address = local_address
        self._rng = rng
        self._cipher = cipher
        self._gossip_number = gossip_number
        self._interval = pull_interval
        # Round n is due at epoch + n * interval: computed, not accumulated, so float error
        # does not drift the schedule.
        self._epoch = now
        self._round = 1
        self._next_pull = now + pull_interval
        # Insertion order is the cache's LRU order: keys are never re-inserted (``_seen``
        # covers the cache) and reads walk the whole cache oldest first, which keeps it.
        self._cache: cachetools.LRUCache[bytes, bytes] = cachetools.LRUCache(cache_size)
        self._seen: cachetools.LRUCache[bytes, bool] = cachetools.LRUCache(seen_size)
        self._answer_rate = answer_rate
        self._answer_burst = answer_burst
        self._global_rate = global_answer_rate
        self._global_burst = global_answer_burst
        self._buckets: cachetools.LRUCache[Address, _Bucket] = cachetools.LRUCache(rate_table_size)
        self._global_bucket = _Bucket(global_answer_burst, now)
        # With a fixed IV a PullRequest always encrypts to the same bytes: encode it once.
        self._pull_datagram = encode(PullRequest(), cipher)
        self._answer: tuple[bytes, ...] | None = None  # encoded chunks of the cache
        self._outgoing: list[Outgoing] = []
        self._events: list[Event] = []
        self._counters: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        #: Set by the runtime: ``False`` while the application's queue is full. New messages
        #: of a PullResponse are then skipped (``deferred``); the next pull brings them again.
        self.accepting = True

    # ---- inputs ---------------------------------------------------------------------

    def can_push(self, size: int, now: float) -> bool:
        """Always: go-gossip has no push round to wait for (pulls read the cache)."""
        return True

    def push(self, data: bytes, now: float, *, key: bytes | None = None) -> bytes:
        """Offer a message to the cluster: it is cached and served to the next PullRequests.

        As in go-gossip it is not delivered to this node's own application. Nothing is sent
        now (the protocol is pull-only).

        Args:
            data: the payload, at most :data:`~gossip.compat.gogossip.MAX_VALUE_SIZE` bytes.
            now: protocol time (unused; kept for the shape shared by engines).
            key: the 8-byte key to use (a bridge derives it from the native message id, so
                two bridges agree). ``None`` draws a fresh random key. A key already seen
                makes the call a no-op.

        Returns:
            The message key.

        Raises:
            LocalProtocolError: the payload is too large, or ``key`` is not 8 bytes.
        """
        del now
        if len(data) > MAX_VALUE_SIZE:
            raise LocalProtocolError(
                f"a go-gossip message carries at most {MAX_VALUE_SIZE} bytes, not {len(data)}"
                " (a larger one never fits a PullResponse; go-gossip itself hangs on it)"
            )
        if key is None:
            for _ in range(_KEY_DRAWS):
                key = self._rng.randbytes(KEY_SIZE)
                if key not in self._seen:
                    break
            else:  # pragma: no cover - needs a broken generator
                raise LocalProtocolError("the random generator keeps drawing used keys")
        elif len(key) != KEY_SIZE:
            raise LocalProtocolError(f"a go-gossip key is {KEY_SIZE} bytes, not {len(key)}")
        elif key in self._seen:
            return bytes(key)
        key = bytes(key)
        self._remember(key, bytes(data))
        self._count("messages_pushed")
        return key

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """Handle one datagram from ``addr``. Never raises for bad input: a refused datagram
        becomes a :class:`PacketDropped` event and a counter.

        Args:
            datagram: untrusted bytes.
            addr: the source address (an answer goes there).
            now: protocol time.
        """
        try:
            packet = decode_untrusted(datagram, self._cipher)
        except RemoteProtocolError as exc:
            self._drop(exc.reason, addr)
            return
        if isinstance(packet, PullRequest):
            self._on_pull_request(addr, now)
        else:
            self._on_pull_response(packet, addr, now)

    def handle_timer(self, now: float) -> None:
        """Run what is due at ``now``: a PullRequest round when its time has come. Calling it
        early, or twice, does nothing more."""
        if now < self._next_pull:
            return
        self._pull_round()
        self._round += 1
        if self._epoch + self._round * self._interval <= now:
            # Fell behind (a stalled runtime): skip the missed rounds as Go's ticker drops
            # ticks, instead of sending them in a burst.
            self._round = int((now - self._epoch) // self._interval) + 1
            while self._epoch + self._round * self._interval <= now:
                self._round += 1
        self._next_pull = self._epoch + self._round * self._interval

    # ---- outputs --------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """Protocol time of the next PullRequest round: call :meth:`handle_timer` then."""
        return self._next_pull

    def datagrams_to_send(self) -> list[Outgoing]:
        """Take the datagrams queued since the last call."""
        out, self._outgoing = self._outgoing, []
        return out

    def pop_events(self) -> list[Event]:
        """Take the events (:class:`MessageDelivered`, :class:`PacketDropped`) queued since
        the last call."""
        events, self._events = self._events, []
        return events

    def cached_items(self) -> list[tuple[bytes, bytes]]:
        """The cached ``(key, value)`` pairs, oldest first: what a PullRequest receives."""
        return list(self._cache.items())

    @property
    def key_size(self) -> int:
        """Go's 8-byte keys; :meth:`push` takes one (``key=``), which makes the engine a
        :class:`~gossip.engine.KeyedPublisher`."""
        return KEY_SIZE

    @property
    def packet_types(self) -> range:
        """Every type byte: go-gossip's datagrams have no label, so this engine runs alone."""
        return range(256)

    def statistics(self) -> GoGossipStatistics:
        """A snapshot of the counters."""
        return GoGossipStatistics(
            cached_messages=len(self._cache), dropped=dict(self._dropped), **self._counters
        )

    # ---- internals ------------------------------------------------------------------

    def _count(self, name: str, n: int = 1) -> None:
        self._counters[name] = self._counters.get(name, 0) + n

    def _drop(self, reason: str, addr: Address) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        self._events.append(PacketDropped(reason=reason, addr=addr))

    def _remember(self, key: bytes, value: bytes) -> None:
        self._seen[key] = True
        self._cache[key] = value  # evicts the oldest when full
        self._answer = None

    def _pull_round(self) -> None:
        self._count("pull_rounds")
        # De-duplicate, keep order; draw without repetition from the whole list (Go draws
        # with repetition from the first N entries only, flaw 13).
        peers = list(dict.fromkeys(self._discovery.gossipiers()))
        if self._local_address in peers:
            peers.remove(self._local_address)
        if len(peers) > self._gossip_number:
            peers = self._rng.sample(peers, self._gossip_number)
        if not peers:
            return
        self._outgoing.append(Outgoing(self._pull_datagram, tuple(peers), "request"))
        self._count("pull_requests_sent", len(peers))

    def _on_pull_request(self, addr: Address, now: float) -> None:
        self._count("requests_received")
        if not self._cache:
            return  # Go sends nothing for an empty cache
        bucket = self._buckets.get(addr)
        if bucket is None:
            bucket = _Bucket(self._answer_burst, now)
            self._buckets[addr] = bucket
        if not bucket.take(now, self._answer_rate, self._answer_burst) or not (
            self._global_bucket.take(now, self._global_rate, self._global_burst)
        ):
            self._count("requests_rate_limited")
            self._drop("rate_limited", addr)
            return
        if self._answer is None:
            self._answer = tuple(
                encode(chunk, self._cipher) for chunk in chunk_items(self._cache.items())
            )
        for datagram in self._answer:
            self._outgoing.append(Outgoing(datagram, (addr,), "response"))
        self._count("requests_answered")
        self._count("response_datagrams_sent", len(self._answer))

    def _on_pull_response(self, packet: PullResponse, addr: Address, now: float) -> None:
        self._count("responses_received")
        if any(len(value) > MAX_VALUE_SIZE for _, value in packet.items):
            # No conforming go-gossip node can send such a value (it never fits a chunk);
            # storing it would make us unable to serve it, and a Go node that pulled it from
            # us would hang. Refuse the whole datagram.
            self._drop("oversize", addr)
            return
        for key, value in packet.items:
            if key in self._seen:
                self._count("duplicates")
                continue
            if not self.accepting:
                self._count("deferred")
                continue
            self._remember(key, value)
            self._count("messages_delivered")
            self._events.append(MessageDelivered(key=key, data=value, sender=addr, at=now))
