"""The SWIM + Lifeguard membership engine (sans-IO): who is in the cluster, who failed.

::

    every probe interval x (health + 1):  next member of a shuffled round-robin order
        Ping(seq) ----------------------------------------------> target   (to a suspect: buddy,
        <--------------------------------------------------- Ack(seq)      the Ping carries the
        no Ack after probe_timeout x (health + 1):                         suspicion)
        PingReq(seq, target) --> k helpers --Ping--> target --Ack--> helper --Ack(seq)--> us
                                  helper, no Ack in probe_timeout --Nack(seq)--> us
        no Ack by the end of the interval: Suspect(target) is gossiped; health +
            (expected nacks - nacks, or 1 without helpers)
    every suspicion: a timer from max down to min as independent confirmations arrive;
        expiry -> Dead (failed); a suspect hearing of it refutes: Alive(incarnation + 1)
    every gossip interval, while updates are queued: Gossip to gossip_nodes members
    every push-pull interval (scaled by n): full state with one random member

State changes ride on every packet (a queue of updates, each sent ``retransmit_mult *
ceil(log10(n + 1))`` times, least-sent and newest first within the datagram's room). The
engine never does I/O, never reads a clock, draws every random choice from
``context.rng``, drops and counts every bad datagram, and bounds every table.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import math
from collections.abc import Iterable, Sequence
from typing import Final

import attrs

from gossip.discovery.base import Discovery
from gossip.engine import EngineContext
from gossip.errors import LocalProtocolError, RemoteProtocolError
from gossip.events import Outgoing, PacketDropped
from gossip.membership.awareness import Awareness
from gossip.membership.config import MAX_METADATA, MembershipConfig
from gossip.membership.queue import BroadcastQueue
from gossip.membership.state import (
    CONFIRM,
    FULL,
    Conflict,
    Member,
    MemberInfo,
    MemberTable,
)
from gossip.membership.suspicion import Suspicion, suspicion_bounds
from gossip.membership.wire import (
    TYPES,
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
    State,
    Suspect,
    Update,
    encode_head,
    encode_member,
    encode_update,
    parse_untrusted,
    updates_section,
)
from gossip.transport.base import Address

__all__ = ["MemberConflict", "MemberEvent", "Membership", "MembershipStatistics"]

_LIVE: Final = (State.ALIVE, State.SUSPECT)
_MAX_UPDATES: Final = 255
_U32_MASK: Final = 0xFFFF_FFFF
_NACK_FRACTION: Final = 0.8
#: How long table digests must keep differing before a full exchange (gossip settles a
#: change in about a second), and the least time between two such exchanges.
_DIGEST_PATIENCE: Final = 2.0
_DIGEST_BACKOFF: Final = 10.0
#: The largest member entry (state, incarnation, a 255-byte name, an IPv6 address, 512 bytes
#: of metadata) in a PushPull, with its header: every update and entry fits one packet.
MIN_BODY: Final = 3 + 1 + 4 + 256 + 19 + 514
_MAX_SEEDS: Final = 1024


@attrs.frozen
class MemberEvent:
    """A member changed: ``change`` is ``joined``, ``updated`` (metadata), ``suspect``,
    ``alive`` (a suspicion refuted), ``failed`` or ``left``; ``member`` is its new view.
    This node reports itself too (``joined`` at start, ``updated``, ``left``)."""

    change: str
    member: MemberInfo


@attrs.frozen
class MemberConflict:
    """News refused because it would merge two members (see
    :class:`gossip.membership.state.Conflict`): ``kind`` is ``name`` or ``address``;
    ``known`` is the member this node keeps, ``name`` / ``address`` the claim."""

    kind: str
    known: MemberInfo
    name: str
    address: Address


@attrs.frozen
class MembershipStatistics:
    """Counters of one membership engine (a snapshot).

    Attributes:
        members: rows of the table by state name (``alive``, ``suspect``, ``dead``, ``left``).
        incarnation: this node's incarnation.
        health_score: Lifeguard's local health (0 = healthy .. awareness_max - 1).
        probes: probes started; ``acks``: answered (directly or through a helper).
        indirect_probes: PingReqs sent; ``relayed``: PingReqs served for others.
        nacks_sent, nacks_received: Lifeguard's nacks.
        stalled_probes: probes dropped without accusing because this node's timer ran a
            whole interval late (it was paused or starved, not the target).
        suspicions: members this node accused; ``failures``: members it declared dead.
        refutations: suspicions (or deaths) of this node it refuted.
        conflicts: name or address conflicts refused.
        queued: updates waiting to be piggybacked; ``updates_sent``: piggybacked copies.
        push_pulls_sent, push_pulls_received: full-state packets (``digest_syncs`` of the
            sent were started by a table digest that kept differing).
        received: authenticated packets by kind.
        dropped: refused datagrams and updates, by reason.
    """

    members: dict[str, int]
    incarnation: int
    health_score: int
    probes: int
    acks: int
    indirect_probes: int
    relayed: int
    nacks_sent: int
    nacks_received: int
    stalled_probes: int
    suspicions: int
    failures: int
    refutations: int
    conflicts: int
    queued: int
    updates_sent: int
    push_pulls_sent: int
    push_pulls_received: int
    received: dict[str, int]
    dropped: dict[str, int]
    #: Full-state exchanges started because table digests kept differing.
    digest_syncs: int = 0


class _Probe:
    """This node's probe in flight (one at a time)."""

    __slots__ = (
        "acked",
        "direct_deadline",
        "end",
        "expected_nacks",
        "indirect",
        "nacks",
        "seq",
        "target",
    )

    def __init__(self, seq: int, target: str, direct_deadline: float, end: float) -> None:
        self.seq = seq
        self.target = target
        self.direct_deadline = direct_deadline
        self.end = end
        self.indirect = False
        self.expected_nacks = 0
        self.nacks = 0
        self.acked = False


class _Relay:
    """An indirect probe this node runs for a prober."""

    __slots__ = ("deadline", "prober", "seq")

    def __init__(self, prober: Address, seq: int, deadline: float) -> None:
        self.prober = prober
        self.seq = seq
        self.deadline = deadline


_KINDS: Final = {
    Ping: "ping",
    Ack: "ack",
    PingReq: "ping-req",
    Nack: "nack",
    Gossip: "gossip",
    PushPull: "push-pull",
}


class Membership(Discovery):
    """SWIM with Lifeguard's local health, dynamic suspicion and buddy system.

    It is also the node's :class:`~gossip.discovery.Discovery`: :meth:`gossipiers` returns the
    live members' addresses, so the broadcast engine follows membership.

    Args:
        context: the node's codec, address, randomness and start time.
        name: this member's unique name (1..255 UTF-8 bytes).
        config: settings (memberlist's LAN profile by default).
        metadata: up to 512 bytes spread with this member's state.
        seeds: addresses to join at start (a push-pull to each); see :meth:`join`.

    Raises:
        LocalProtocolError: a bad name, metadata, or a local address that is not a numeric
            IP address.
    """

    def __init__(
        self,
        context: EngineContext,
        *,
        name: str,
        config: MembershipConfig | None = None,
        metadata: bytes = b"",
        seeds: Iterable[Address] = (),
    ) -> None:
        self.config = config = config if config is not None else MembershipConfig()
        self.codec = context.codec
        self.rng = context.rng
        host, port = context.local_address
        try:
            host = str(ipaddress.ip_address(host))  # the form the wire gives back
        except ValueError:
            raise LocalProtocolError(f"not a numeric IP address: {host!r}") from None
        self.address: Address = (host, port)
        self.name = name
        _check_meta(metadata)
        now = context.now
        local = Member(name, self.address, State.ALIVE, 0, metadata, now)
        encode_update(Alive(0, name, self.address, metadata))  # validates name and address
        self._table = MemberTable(local, config.max_members)
        self._awareness = Awareness(config.awareness_max, enabled=config.local_health)
        self._suspicions: dict[str, Suspicion] = {}
        # Deadlines only move earlier (confirmations): a heap with stale entries skipped
        # (at most k + 1 per suspicion) keeps the timer and the expiry check O(log n).
        self._deadlines: list[tuple[float, int, Suspicion]] = []
        self._pushed = 0  # the heap's tie-breaker: Suspicions do not compare
        self._queue = BroadcastQueue(config.max_queue)
        self._max_body = self.codec.max_body()
        if self._max_body < MIN_BODY:
            raise LocalProtocolError(
                f"membership needs {MIN_BODY}-byte bodies (the largest update or member "
                f"entry); this codec's datagrams hold {self._max_body}: raise max_datagram"
            )
        self._order: list[str] = []
        self._order_index = 0
        # Table digests compared on Pings (see _compare_digest).
        self._digest_agreed = -math.inf
        self._digest_differs: float | None = None
        self._digest_sync_after = -math.inf
        self._digest_syncs = 0
        # The shared probe schedule's ring (see _shared_target): its round, the live set it
        # was built from, and this node's place on it.
        self._ring: list[str] = []
        self._ring_index = 0
        self._ring_round: int | None = None
        self._ring_marker: tuple[Address, ...] | None = None
        self._probe: _Probe | None = None
        self._relays: dict[int, _Relay] = {}
        self._seq = self.rng.getrandbits(32)
        # Staggered starts: nodes started together do not probe in lock step.
        self._next_probe = now + self.rng.uniform(0, config.probe_interval)
        self._next_gossip = now + config.gossip_interval
        self._next_push_pull = now + self.rng.uniform(0.5, 1.0) * config.push_pull_interval
        self._next_reconnect = now + self.rng.uniform(0.5, 1.0) * config.reconnect_interval
        self._seeds: dict[Address, None] = {}
        self._followup: float | None = None
        self._join_backoff = config.join_retry
        self._left = False
        self._out: list[Outgoing] = []
        self._events: list[object] = [MemberEvent("joined", local.info())]
        self._timer: float | None = None
        self._probes = self._acks = self._indirect = self._relayed = 0
        self._nacks_sent = self._nacks_received = self._stalled = 0
        self._accused = self._failures = self._refutations = self._conflicts = 0
        self._updates_sent = self._pp_sent = self._pp_received = 0
        self._received: dict[str, int] = {}
        self._dropped: dict[str, int] = {}
        seeds = tuple(seeds)
        if seeds:
            self.join(seeds, now)
        self._rearm()

    # -- the Engine protocol ------------------------------------------------------------

    @property
    def packet_types(self) -> range:
        return TYPES

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        """Open, authenticate and handle one datagram; bad ones are dropped and counted."""
        try:
            ptype, body = self.codec.open_untrusted(datagram, now)
            packet = parse_untrusted(ptype, body)
        except RemoteProtocolError as err:
            self._drop(err.reason, addr)
            return
        kind = _KINDS[type(packet)]
        self._received[kind] = self._received.get(kind, 0) + 1
        self._handle(packet, addr, now)
        self._rearm()

    def handle_timer(self, now: float) -> None:
        """Run whatever is due: relays' nacks, the probe's phases, suspicion expiries, the
        next probe, gossip, push-pull, reaping."""
        config = self.config
        relays = self._relays
        while relays:  # one timeout for all: insertion order is deadline order
            seq, relay = next(iter(relays.items()))
            if relay.deadline > now:
                break
            del relays[seq]
            self._nacks_sent += 1
            self._send(Nack(relay.seq), (relay.prober,), now)
        probe = self._probe
        if probe is not None:
            if not probe.indirect and now >= probe.direct_deadline and now < probe.end:
                self._indirect_probe(probe, now)
            if now >= probe.end:
                self._probe = None
                self._probe_failed(probe, now)
        while (s := self._earliest_suspicion()) is not None and s.deadline <= now:
            heapq.heappop(self._deadlines)
            if now - s.deadline > config.probe_interval and not s.extended:
                # This node's timer ran late (paused, starved): a refutation may be waiting
                # unread in its socket. One more interval before a verdict.
                s.extended = True
                s.deadline = now + config.probe_interval
                self._push_deadline(s)
                continue
            name = s.name
            del self._suspicions[name]
            m = self._table.get(name)
            if m is not None and m.state == State.SUSPECT and m.incarnation == s.incarnation:
                self._failures += 1
                self._apply(Dead(s.incarnation, name, self.name), now)
        if now >= self._next_probe and self._probe is None and not self._left:
            self._table.reap(now - config.reap_time)
            self._start_probe(now)
            self._next_probe = now + self._awareness.scale(config.probe_interval)
        if now >= self._next_gossip and len(self._queue):
            self._gossip(now)
            self._next_gossip = now + config.gossip_interval
        if now >= self._next_push_pull:
            n = self._table.live_count()
            period = config.push_pull_period(n)
            self._next_push_pull = now + period
            # With digests compared on every Ping, a view that agreed with the pingers
            # through the whole period needs no full exchange: idle costs no push-pull.
            agreed = (
                config.digest_sync
                and self._digest_differs is None
                and now - self._digest_agreed < period
            )
            if not self._left and not agreed:
                peers = self._table.live_addresses()
                if peers:
                    self._push_pull(peers[self.rng.randrange(len(peers))], now, join=False)
        if self._followup is not None and now >= self._followup:
            self._followup = None
            seeds = [s for s in self._seeds if s in set(self._table.live_addresses())]
            if seeds and not self._left:
                self._push_pull(seeds[self.rng.randrange(len(seeds))], now, join=True)
        if now >= self._next_reconnect:
            if self._table.live_addresses() or not self._seeds:
                self._next_reconnect = now + config.reconnect_interval
                self._join_backoff = config.join_retry
            else:
                # Alone: no seed answered yet (it was not up, the datagram was lost): try
                # again soon, backing off to the reconnect interval.
                self._next_reconnect = now + self._join_backoff
                self._join_backoff = min(2 * self._join_backoff, config.reconnect_interval)
            if not self._left:
                self._reconnect(now)
        self._rearm()

    def _reconnect(self, now: float) -> None:
        """A push-pull to one member held dead or one seed that is not a live member (all
        seeds if no member is live): partitions and lost joins heal (serf's reconnect)."""
        live = self._table.live_addresses()
        targets: Sequence[Address] = list(self._seeds)
        if live:
            live_set = set(live)
            dead = [m.address for m in self._table.down.values() if m.state == State.DEAD]
            seeds = [s for s in self._seeds if s not in live_set]
            targets = self._choose(1, dead + seeds)
        for peer in targets:
            self._push_pull(peer, now, join=True)

    def get_timer(self) -> float | None:
        return self._timer

    def datagrams_to_send(self) -> Sequence[Outgoing]:
        out, self._out = self._out, []
        return out

    def pop_events(self) -> Sequence[object]:
        events, self._events = self._events, []
        return events

    def statistics(self) -> MembershipStatistics:
        by_state: dict[str, int] = {s.name.lower(): 0 for s in State}
        for m in self._table:
            by_state[m.state.name.lower()] += 1
        local = self._table.local
        return MembershipStatistics(
            members=by_state,
            incarnation=local.incarnation,
            health_score=self._awareness.score,
            probes=self._probes,
            acks=self._acks,
            indirect_probes=self._indirect,
            relayed=self._relayed,
            nacks_sent=self._nacks_sent,
            nacks_received=self._nacks_received,
            stalled_probes=self._stalled,
            suspicions=self._accused,
            failures=self._failures,
            refutations=self._refutations,
            conflicts=self._conflicts,
            queued=len(self._queue),
            updates_sent=self._updates_sent,
            push_pulls_sent=self._pp_sent,
            push_pulls_received=self._pp_received,
            digest_syncs=self._digest_syncs,
            received=dict(self._received),
            dropped=dict(self._dropped),
        )

    # -- the application's calls --------------------------------------------------------

    def gossipiers(self) -> Sequence[Address]:
        """The live (alive or suspect) members' addresses, this node excluded: the broadcast
        engine's peers. A cached tuple, rebuilt after a change."""
        return self._table.live_addresses()

    def members(self) -> tuple[MemberInfo, ...]:
        """A snapshot of the table: every member this node knows, itself included, with
        dead and departed ones until they are reaped."""
        return tuple(m.info() for m in self._table)

    def member(self, name: str) -> MemberInfo | None:
        """One member's view, or ``None``."""
        m = self._table.get(name)
        return None if m is None else m.info()

    @property
    def incarnation(self) -> int:
        return self._table.local.incarnation

    @property
    def health_score(self) -> int:
        return self._awareness.score

    @property
    def leave_complete(self) -> bool:
        """After :meth:`leave`: the Leave has been sent as often as any update is; the
        runtime may close the node."""
        return self._left and self.name not in self._queue

    def join(self, seeds: Iterable[Address], now: float) -> int:
        """Send this node's full state to each seed, asking for theirs (a push-pull); returns
        how many were contacted (this node's own address is skipped)."""
        count = 0
        for host, port in seeds:
            try:
                peer = (str(ipaddress.ip_address(host)), port)
            except ValueError:
                raise LocalProtocolError(f"a seed is a numeric (host, port): {host!r}") from None
            if peer != self.address:
                if len(self._seeds) < _MAX_SEEDS:
                    self._seeds[peer] = None
                self._push_pull(peer, now, join=True)
                count += 1
        if count:
            # Until a seed answers, the reconnect timer retries soon (see handle_timer).
            self._next_reconnect = min(self._next_reconnect, now + self.config.join_retry)
        if count and self.config.join_followup:
            # Nodes that join the seed after this one learn of each other only by gossip,
            # and gossip can miss a few: one more exchange with a seed, which by then has
            # heard from every joiner, closes the gap (64 nodes started at once agree in
            # about a second instead of at the next push-pull).
            self._followup = now + self.config.join_followup
        self._rearm()
        return count

    def set_metadata(self, metadata: bytes, now: float) -> None:
        """Replace this node's metadata (a new incarnation, spread like any change).

        Raises:
            LocalProtocolError: more than 512 bytes, or after :meth:`leave`.
        """
        _check_meta(metadata)
        if self._left:
            raise LocalProtocolError("this node has left the cluster")
        local = self._table.local
        self._table.bump_local((local.incarnation + 1) & _U32_MASK, metadata)
        self._announce_self()
        self._events.append(MemberEvent("updated", local.info()))
        self._rearm()

    def leave(self, now: float) -> None:
        """Leave gracefully: a Leave is sent at once to ``gossip_nodes`` members (marked
        reliable) and piggybacked as any update; probing stops. Idempotent."""
        if self._left:
            return
        self._left = True
        local = self._table.local
        self._table.leave_local(now)
        self._probe = None
        update = Leave(local.incarnation, self.name)
        self._queue.push(self.name, encode_update(update))
        for peer in self._choose(self.config.gossip_nodes, self._table.live_addresses()):
            self._send(Gossip(), (peer,), now, reliable=True)
        self._events.append(MemberEvent("left", local.info()))
        self._rearm()

    # -- handling packets ---------------------------------------------------------------

    def _handle(self, packet: MembershipPacket, addr: Address, now: float) -> None:
        if type(packet) is PushPull:
            self._merge(packet, addr, now)
            return
        updates: tuple[Update, ...] = packet.updates  # type: ignore[union-attr]
        for update in updates:
            self._apply(update, now)
        if type(packet) is Ping:
            if packet.target != self.name:
                self._drop("misdirected", addr)  # the address now belongs to someone else
                return
            extra: list[Update] = []
            src = self._table.get(packet.source)
            if src is not None and src.state == State.DEAD:
                # It thinks it is alive: tell it it was declared dead, so it refutes at once
                # (a paused node resuming; a restarted one, under its old name).
                extra.append(Dead(src.incarnation, src.name, self.name))
            self._send(Ack(packet.seq), (addr,), now, extra)
            if packet.digest and self.config.digest_sync:
                self._compare_digest(packet.digest, addr, now)
        elif type(packet) is Ack:
            probe = self._probe
            if probe is not None and packet.seq == probe.seq and not probe.acked:
                probe.acked = True
                self._acks += 1
                self._awareness.apply(-1)
            else:
                relay = self._relays.pop(packet.seq, None)
                if relay is not None:
                    self._send(Ack(relay.seq), (relay.prober,), now)
        elif type(packet) is PingReq:
            self._relay(packet, addr, now)
        elif type(packet) is Nack:
            probe = self._probe
            if probe is not None and packet.seq == probe.seq:
                self._nacks_received += 1
                probe.nacks += 1

    def _relay(self, req: PingReq, prober: Address, now: float) -> None:
        if len(self._relays) >= self.config.max_pending:
            self._drop("busy", prober)
            return
        seq = self._next_seq()
        # The Nack must reach the prober before its probe ends (it asked at probe_timeout and
        # gives up at probe_interval, twice that by default): a Nack at 0.8 x probe_timeout
        # leaves room for the trip back.
        deadline = now + _NACK_FRACTION * self.config.probe_timeout
        self._relays[seq] = _Relay(prober, req.seq, deadline)
        self._relayed += 1
        self._send(Ping(seq, req.target, self.name), (req.address,), now, self._buddy(req.target))

    def _merge(self, packet: PushPull, addr: Address, now: float) -> None:
        self._pp_received += 1
        for m in packet.members:
            if m.state == State.ALIVE:
                self._apply(Alive(m.incarnation, m.name, m.address, m.meta), now)
            elif m.state == State.SUSPECT:
                self._apply(Alive(m.incarnation, m.name, m.address, m.meta), now)
                self._apply(Suspect(m.incarnation, m.name, self.name), now)
            elif m.state == State.DEAD:
                # Another node's verdict is not ours: suspect, and let the timer (or a
                # refutation) decide, as memberlist does.
                self._apply(Suspect(m.incarnation, m.name, self.name), now)
            else:
                self._apply(Leave(m.incarnation, m.name), now)
        if not packet.reply:
            self._push_pull(addr, now, join=False, reply=True)

    # -- the incarnation rules ----------------------------------------------------------

    def _apply(self, update: Update, now: float) -> None:
        """Apply one piggybacked update; accepted news is queued to spread further."""
        if update.name == self.name:
            self._about_me(update)
            return
        table = self._table
        name = update.name
        if type(update) is Alive:
            result = table.alive(name, update.address, update.incarnation, update.meta, now)
            if result is None:
                return
            if isinstance(result, Conflict):
                self._conflict(result)
                return
            if result == FULL:
                self._dropped["full"] = self._dropped.get("full", 0) + 1
                return
            self._suspicions.pop(name, None)
        elif type(update) is Suspect:
            result = table.suspect(name, update.incarnation, now)
            if result is None:
                return
            s = self._suspicions.get(name)
            if result == CONFIRM and s is not None and s.incarnation == update.incarnation:
                if not s.confirm(update.accuser):
                    return  # nothing new: do not gossip it again
                self._push_deadline(s)
                result = ""
            else:
                s = self._suspicions[name] = self._new_suspicion(update, now)
                self._push_deadline(s)
                if result == CONFIRM:
                    result = ""
        else:
            left = type(update) is Leave
            result = table.dead(name, update.incarnation, now, left=left)
            if result is None:
                return
            self._suspicions.pop(name, None)
        self._queue.push(name, encode_update(update))
        if result:
            m = table.get(name)
            assert m is not None
            self._events.append(MemberEvent(result, m.info()))

    def _new_suspicion(self, update: Suspect, now: float) -> Suspicion:
        config = self.config
        n = self._table.live_count()
        low, high = suspicion_bounds(
            n,
            config.suspicion_mult,
            config.suspicion_max_timeout_mult,
            config.probe_interval,
            config.suspicion_min,
        )
        # Lifeguard's local health stretches this node's suspicion timeouts too: a node that
        # misses acks is likely the slow one (it reads the refutation late), so it must not
        # be the first to declare a member dead. The awareness is 0 (no stretch) when healthy
        # or when local health is off.
        stretch = self._awareness.scale(1.0)
        low, high = low * stretch, high * stretch
        k = config.confirmations_wanted()
        if not config.dynamic_suspicion or n - 2 < k:
            k = 0  # too few members to expect confirmations: the fixed timeout
        return Suspicion(update.name, update.incarnation, update.accuser, k, low, high, now)

    def _about_me(self, update: Update) -> None:
        local = self._table.local
        if type(update) is Alive:
            if update.address != self.address:
                self._conflict(Conflict("name", local.info(), update.name, update.address))
            elif update.incarnation > local.incarnation or (
                update.incarnation == local.incarnation and update.meta != local.meta
            ):
                self._refute(update.incarnation)  # a previous life's news, or a forgery
        elif self._left:
            return
        elif update.incarnation >= local.incarnation:
            # Suspect, Dead or Leave of this (running) node: refute with a newer incarnation.
            self._refute(update.incarnation)
        elif self.name not in self._queue:
            # An accusation this node already refuted: its sender missed the refutation
            # (lost, or gossiped out): say it again, same incarnation.
            self._announce_self()

    def _refute(self, incarnation: int) -> None:
        local = self._table.local
        self._table.bump_local((max(local.incarnation, incarnation) + 1) & _U32_MASK)
        self._refutations += 1
        # Lifeguard: being suspected hints that this node is the slow one.
        self._awareness.apply(1)
        self._announce_self()

    def _announce_self(self) -> None:
        local = self._table.local
        self._queue.push(
            self.name, encode_update(Alive(local.incarnation, self.name, self.address, local.meta))
        )

    def _conflict(self, conflict: Conflict) -> None:
        self._conflicts += 1
        self._events.append(
            MemberConflict(conflict.kind, conflict.known, conflict.name, conflict.address)
        )

    # -- probing ------------------------------------------------------------------------

    def _start_probe(self, now: float) -> None:
        target = self._shared_target(now) if self.config.probe_schedule == "shared" else None
        if target is None:
            target = self._next_target()
        if target is None:
            return
        config = self.config
        seq = self._next_seq()
        self._probe = _Probe(
            seq,
            target.name,
            now + self._awareness.scale(config.probe_timeout),
            now + self._awareness.scale(config.probe_interval),
        )
        self._probes += 1
        self._send(
            Ping(
                seq, target.name, self.name, digest=self._table.digest if config.digest_sync else 0
            ),
            (target.address,),
            now,
            self._buddy(target.name),
        )

    def _compare_digest(self, digest: int, addr: Address, now: float) -> None:
        """A pinger's table digest against ours: a difference that lasts
        :data:`_DIGEST_PATIENCE` (gossip in flight settles sooner) makes this node exchange
        full state with the pinger, at most once per :data:`_DIGEST_BACKOFF`."""
        if digest == self._table.digest:
            self._digest_agreed = now
            self._digest_differs = None
            return
        if self._digest_differs is None:
            self._digest_differs = now
            return
        if now - self._digest_differs < _DIGEST_PATIENCE or now < self._digest_sync_after:
            return
        m = self._table.by_address(addr)
        if self._left or m is None or m.state not in _LIVE:
            return  # only with a member we know (never an exchange with a stranger)
        self._digest_syncs += 1
        self._digest_sync_after = now + _DIGEST_BACKOFF
        self._digest_differs = None
        self._push_pull(addr, now, join=False)

    def _buddy(self, target: str) -> list[Update]:
        """Lifeguard's buddy system: a Ping to a suspect carries the suspicion, so that the
        suspect hears of it at once and refutes in its Ack."""
        m = self._table.get(target)
        if self.config.buddy and m is not None and m.state == State.SUSPECT:
            return [Suspect(m.incarnation, target, self.name)]
        return []

    def _shared_target(self, now: float) -> Member | None:
        """The member this node probes at this step of the cluster's shared schedule.

        Every node orders the live members (itself included) on one ring, shuffled anew
        each round by hashing the round number with each name, and at step ``t`` (wall-clock
        time / ``probe_interval``) probes the member ``t mod (n - 1) + 1`` places after
        itself. So at every step each member is probed by exactly one other member (where
        views agree), a crashed member is probed within about one interval rather than
        after an exponential wait (the tail of SWIM's independent shuffles: seconds at
        n = 64), and each member still probes every other once per round. ``None`` when
        the ring names no live member (views disagree): the caller takes the
        round-robin."""
        marker = self._table.live_addresses()
        if not marker:
            return None
        local = self._table.local
        step = math.floor((now + self.codec.clock_offset) / self.config.probe_interval)
        span = len(marker)  # the other live members
        round_no = step // span
        if round_no != self._ring_round or marker is not self._ring_marker:
            salt = round_no.to_bytes(8, "big", signed=True)
            names = [m.name for m in self._table if m.state in _LIVE or m is local]
            names.sort(key=lambda n: hashlib.blake2b(salt + n.encode(), digest_size=8).digest())
            self._ring = names
            self._ring_index = names.index(local.name)
            self._ring_round, self._ring_marker = round_no, marker
        ring = self._ring
        name = ring[(self._ring_index + step % (len(ring) - 1) + 1) % len(ring)]
        m = self._table.get(name)
        if m is None or m is local or m.state not in _LIVE:
            return None
        return m

    def _next_target(self) -> Member | None:
        """The next live member of a shuffled round-robin order: each member is probed once
        per round, and members that joined during a round wait at most one more."""
        for _ in range(2):
            while self._order_index < len(self._order):
                name = self._order[self._order_index]
                self._order_index += 1
                m = self._table.get(name)
                if m is not None and m.state in _LIVE and m is not self._table.local:
                    return m
            self._order = [
                m.name for m in self._table if m.state in _LIVE and m is not self._table.local
            ]
            self.rng.shuffle(self._order)
            self._order_index = 0
        return None

    def _indirect_probe(self, probe: _Probe, now: float) -> None:
        probe.indirect = True
        target = self._table.get(probe.target)
        if probe.acked or target is None or target.state not in _LIVE:
            return
        live = self._table.live_addresses()
        k = self.config.indirect_checks
        chosen = tuple(a for a in self._choose(k + 1, live) if a != target.address)[:k]
        self._indirect += len(chosen)
        if self.config.local_health:
            probe.expected_nacks = len(chosen)
        req = PingReq(probe.seq, target.name, target.address)
        for helper in chosen:
            self._send(req, (helper,), now)

    def _probe_failed(self, probe: _Probe, now: float) -> None:
        if probe.acked:
            return
        if now - probe.end > self.config.probe_interval:
            # This node's own timer ran an interval late: it was paused or starved, so the
            # silence says nothing about the target.
            self._stalled += 1
            self._awareness.apply(1)
            return
        if probe.expected_nacks:
            self._awareness.apply(max(0, probe.expected_nacks - probe.nacks))
        else:
            self._awareness.apply(1)
        m = self._table.get(probe.target)
        if m is None or m.state not in _LIVE:
            return
        if m.state == State.ALIVE:
            self._accused += 1
        self._apply(Suspect(m.incarnation, m.name, self.name), now)

    # -- sending ------------------------------------------------------------------------

    def _send(
        self,
        packet: MembershipPacket,
        addrs: tuple[Address, ...],
        now: float,
        extra: Sequence[Update] = (),
        *,
        reliable: bool = False,
    ) -> bool:
        """Seal ``packet`` with ``extra`` updates first, then as many queued ones as fit;
        ``False`` if a Gossip found nothing to carry (nothing is sent)."""
        ptype, head = encode_head(packet)
        encoded = [encode_update(u) for u in extra]
        budget = self._max_body - len(head) - 1 - sum(map(len, encoded))
        while budget < 0:  # long names in a small datagram: the extras are a bonus
            budget += len(encoded.pop())
        limit = self.config.retransmit_limit(self._table.live_count())
        taken = self._queue.take(budget, limit, _MAX_UPDATES - len(encoded))
        if encoded:
            taken = [u for u in taken if u not in encoded]  # the same news once per packet
        self._updates_sent += len(taken) * len(addrs)
        encoded += taken
        if not encoded and type(packet) is Gossip:
            return False
        body = head + updates_section(encoded)
        data = self.codec.seal(ptype, body, now)
        self._out.append(Outgoing(data, addrs, _KINDS[type(packet)], reliable))
        return True

    def _gossip(self, now: float) -> None:
        cutoff = now - self.config.gossip_to_the_dead
        # The recently dead too: a paused member hears of its death and refutes.
        dead = [
            m.address
            for m in self._table.down.values()
            if m.state == State.DEAD and m.since >= cutoff
        ]
        live = self._table.live_addresses()
        n = len(live) + len(dead)
        picks = self.rng.sample(range(n), min(n, self.config.gossip_nodes))
        for i in picks:
            peer = live[i] if i < len(live) else dead[i - len(live)]
            if not self._send(Gossip(), (peer,), now):
                break

    def _push_pull(self, peer: Address, now: float, *, join: bool, reply: bool = False) -> None:
        """Send the whole table to ``peer`` in as many packets as it takes (each entry is
        merged on its own, so the parts need no reassembly). Only the first asks for a reply;
        a table of more than one datagram is marked reliable (the stream transport)."""
        local = self._table.local
        entries = [local] + [m for m in self._table if m is not local]
        parts: list[list[bytes]] = [[]]
        room = self._max_body - 3
        for m in entries:
            raw = encode_member(MemberState(m.state, m.incarnation, m.name, m.address, m.meta))
            if sum(map(len, parts[-1])) + len(raw) > room:
                parts.append([])
            parts[-1].append(raw)
        reliable = len(parts) > 1
        for i, part in enumerate(parts):
            ptype, head = encode_head(PushPull(join, reply or i > 0, ()))
            body = head[:1] + len(part).to_bytes(2, "big") + b"".join(part)
            data = self.codec.seal(ptype, body, now)
            self._out.append(Outgoing(data, (peer,), "push-pull", reliable))
            self._pp_sent += 1

    def _choose(self, k: int, candidates: Sequence[Address]) -> tuple[Address, ...]:
        if len(candidates) <= k:
            return tuple(candidates)
        return tuple(self.rng.sample(candidates, k))

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & _U32_MASK
        return self._seq

    def _drop(self, reason: str, addr: Address) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1
        self._events.append(PacketDropped(reason, addr))

    def _rearm(self) -> None:
        """Recompute the earliest due time (after every input: get_timer is then free)."""
        times = [self._next_push_pull, self._next_reconnect]
        if self._followup is not None:
            times.append(self._followup)
        if not self._left:
            times.append(self._next_probe)
        if len(self._queue):
            times.append(self._next_gossip)
        probe = self._probe
        if probe is not None:
            times.append(probe.end if probe.indirect else probe.direct_deadline)
        if self._relays:
            times.append(next(iter(self._relays.values())).deadline)
        s = self._earliest_suspicion()
        if s is not None:
            times.append(s.deadline)
        self._timer = min(times)

    def _push_deadline(self, s: Suspicion) -> None:
        self._pushed += 1
        heapq.heappush(self._deadlines, (s.deadline, self._pushed, s))

    def _earliest_suspicion(self) -> Suspicion | None:
        """The live suspicion due first; drops stale heap entries (a refuted or replaced
        suspicion, or an older deadline of one that was confirmed since)."""
        heap = self._deadlines
        while heap:
            deadline, _n, s = heap[0]
            if self._suspicions.get(s.name) is s and s.deadline == deadline:
                return s
            heapq.heappop(heap)
        return None


def _check_meta(metadata: bytes) -> None:
    if not isinstance(metadata, bytes) or len(metadata) > MAX_METADATA:
        raise LocalProtocolError(f"metadata is bytes, at most {MAX_METADATA} of them")
