"""The discrete-event simulator: N real :class:`~gossip.broadcast.GossipEngine` s in virtual time.

One heap holds every future event: a datagram's arrival at a node, or a node's engine timer.
No node has a task or a socket. After the simulator touches an engine (a datagram, a timer, a
push) it flushes the engine's datagrams into the heap, reads its events, and asks
``get_timer()`` again; an engine it did not touch is never asked, so an idle node costs one
heap entry, and one event per anti-entropy interval.

Determinism: one master seed makes the network's ``random.Random`` and one per engine (peer
choice, sync jitter, the random bits of message keys), and the choice of crashed nodes, late
joiners, partition sides and message origins; the engines' clock is the virtual one (keys and
labels carry virtual milliseconds), and an ``encrypted`` run draws its IVs from a generator
seeded by the same seed. Ties in the heap break by a sequence number; no set or hash order is
ever iterated. So a seed reproduces a run bit for bit, every datagram's bytes included:
:attr:`SimResult.trace` is a SHA-256 over every event of the run (each arrival with its
datagram, each timer, each start and push with its key), equal for equal seeds.

Hop counts stay outside the engine and the wire: a node's copy of a message has hop
``h(sender) + 1``, where the sender is the source of the datagram that delivered it (the
origin has hop 0). The sender held its copy when it sent, so its hop is already known.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import resource
import struct
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Final

import attrs

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring
from gossip.discovery.base import Discovery
from gossip.errors import LocalProtocolError
from gossip.events import MessageDelivered
from gossip.transport.base import Address

__all__ = [
    "FRACTIONS",
    "LAN",
    "PACKET_TYPES",
    "WAN",
    "Latency",
    "MessageOutcome",
    "Scenario",
    "SimResult",
    "Simulation",
    "node_address",
    "simulate",
]

#: Delivery fractions reported, as labels (percent) and values.
FRACTIONS: Final = (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.99", 0.9999), ("100", 1.0))

#: Counters of sent datagrams, by the kind the engine gives each (``Outgoing.kind``). ``digest``
#: is a ``PullSync`` of the periodic anti-entropy round; ``sync`` any other ``PullSync``: the
#: pull fallback of a push round without an ACK majority (to ``fanout + 2`` peers), or a
#: reverse sync.
PACKET_TYPES: Final = ("push", "ack", "sync", "request", "response", "digest")
_INDEX: Final = {name: i for i, name in enumerate(PACKET_TYPES)}
#: One record of the event log hashed into :attr:`SimResult.trace`: time, node, source (a
#: node index, or one of the negative tags below), followed by the datagram or key if any.
_RECORD: Final = struct.Struct("<dii")
_TIMER: Final = -1
_START: Final = -2
_PUSH: Final = -3

#: Cluster key of ``--encrypted`` runs (a fixed test key: the simulator measures behaviour).
SIM_KEY: Final = bytes(range(32))

_OFFLINE: Final = 0  # a late joiner before its join time
_LIVE: Final = 1
_CRASHED: Final = 2


def _probability(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise LocalProtocolError(f"{attribute.name} must be a probability in [0, 1]: {value!r}")


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
        raise LocalProtocolError(f"{attribute.name} must be finite and >= 0: {value!r}")


@attrs.frozen
class Latency:
    """One-way latency of every hop, drawn uniformly from ``[low, high]`` seconds per datagram.

    The spread also reorders datagrams: two sent back to back arrive in either order.
    """

    low: float = attrs.field(validator=_non_negative)
    high: float = attrs.field(validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.high < self.low:
            raise LocalProtocolError("latency high must be >= low")


#: A LAN: 0.2-1 ms per hop.
LAN: Final = Latency(0.0002, 0.001)
#: A WAN: 20-120 ms per hop (nodes spread over regions; heavy reordering).
WAN: Final = Latency(0.020, 0.120)


def node_address(i: int) -> Address:
    """The simulated address of node ``i`` (``10.x.y.z:7946``)."""
    return (f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 7946)


@attrs.frozen
class Scenario:
    """What to simulate.

    Attributes:
        nodes: cluster size (every node knows every other: one shared peer list).
        seed: the master seed; the whole run follows from it.
        config: every engine's protocol parameters.
        latency: per-hop latency distribution (:data:`LAN` or :data:`WAN`).
        loss: probability that a datagram is lost (each one independently).
        duplicate: probability that a datagram arrives twice (independent latencies).
        crashed: fraction of nodes that are dead for the whole run: they never send nor
            receive, but stay in everyone's peer list. Origins are never crashed.
        late_joiners: fraction of the live nodes that are offline at first and start at a
            uniform random time in ``[start, start + join_window]``.
        join_window: see ``late_joiners``.
        partition: fraction of nodes cut off from the rest (datagrams between the two sides
            are dropped) until ``heal_at`` seconds after the first push.
        heal_at: see ``partition``.
        messages: messages pushed, each from a random live node, ``interval`` seconds apart.
        interval: time between pushes.
        warmup: the first ``warmup`` messages are pushed but not measured (they let the
            adaptive ACK timers learn the round trip, as in a running cluster).
        payload: bytes of application data per message.
        start: virtual time of the first push; nodes start at 0 (their anti-entropy timers are
            jittered, so by then their phases are spread).
        max_time: give up this many seconds after the last push.
        settle: seconds after full delivery until the run stops, so that late ACKs and the
            pull fallback of the last push rounds are counted (default: ACK timeout + two
            maximal hops).
        encrypted: seal every packet (AES-256-CBC + HMAC); changes bytes, not behaviour.
    """

    nodes: int = attrs.field()
    seed: int = 0
    config: GossipConfig = attrs.field(factory=GossipConfig)
    latency: Latency = LAN
    loss: float = attrs.field(default=0.0, validator=_probability)
    duplicate: float = attrs.field(default=0.0, validator=_probability)
    crashed: float = attrs.field(default=0.0, validator=_probability)
    late_joiners: float = attrs.field(default=0.0, validator=_probability)
    join_window: float = attrs.field(default=1.0, validator=_non_negative)
    partition: float = attrs.field(default=0.0, validator=_probability)
    heal_at: float = attrs.field(default=1.0, validator=_non_negative)
    messages: int = 1
    interval: float = attrs.field(default=1.0, validator=_non_negative)
    warmup: int = 0
    payload: int = 256
    start: float = attrs.field(default=1.0, validator=_non_negative)
    max_time: float = attrs.field(default=50.0, validator=_non_negative)
    settle: float | None = None
    encrypted: bool = False

    @nodes.validator
    def _check_nodes(self, _attribute: attrs.Attribute[int], value: int) -> None:
        if not isinstance(value, int) or not 2 <= value <= 1 << 24:
            raise LocalProtocolError("nodes must be an integer in 2..16777216")

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.messages, int) or self.messages < 1:
            raise LocalProtocolError("messages must be >= 1")
        if not isinstance(self.warmup, int) or not 0 <= self.warmup < self.messages:
            raise LocalProtocolError("warmup must be in [0, messages)")
        if not isinstance(self.payload, int) or self.payload < 0:
            raise LocalProtocolError("payload must be >= 0 bytes")
        if round(self.crashed * self.nodes) > self.nodes - 1:
            raise LocalProtocolError("at least one node must be live")
        if self.message_ttl_margin() <= 0:
            raise LocalProtocolError(
                "the run must end before the message TTL: lower max_time or messages*interval"
            )

    def message_ttl_margin(self) -> float:
        """Seconds between the longest possible run and the first message's expiry."""
        last_push = self.start + (self.messages - 1) * self.interval
        return self.config.message_ttl - (last_push + self.max_time - self.start)

    def settle_time(self) -> float:
        """Seconds the run goes on after full delivery (see ``settle``)."""
        if self.settle is not None:
            return self.settle
        return self.config.ack_timeout + 2 * self.latency.high


@attrs.frozen
class MessageOutcome:
    """How one message spread.

    Attributes:
        origin: index of the node that pushed it.
        key: its message key (the same for the same seed).
        pushed_at: virtual time of the push.
        expected: live nodes (the origin included) that should get it.
        delivered: how many of them got it (the origin included).
        time_to: seconds from the push until each fraction (:data:`FRACTIONS`) of the
            expected nodes had it; ``None`` if never.
        hops_to: hop count (the origin is hop 0) by which that fraction had it.
        pulled: deliveries by a ``PullResponse`` (the pull path) rather than a push.
        hop_histogram: deliveries per hop count (index 0: the origin).
    """

    origin: int
    key: bytes
    pushed_at: float
    expected: int
    delivered: int
    time_to: dict[str, float | None]
    hops_to: dict[str, int | None]
    pulled: int
    hop_histogram: list[int]


@attrs.frozen
class SimResult:
    """A run's results; :meth:`to_json` gives the machine-readable form.

    ``sent`` and ``bytes_sent`` count datagrams (UDP payload bytes) sent by all nodes by packet
    type (:data:`PACKET_TYPES`) from the first measured push to the end of the run. Digests of
    the periodic anti-entropy are in ``digest``; they are a per-second cost of every node
    holding messages (``digest_rate``), not a cost of one message.
    """

    scenario: Scenario
    live_nodes: int
    messages: list[MessageOutcome]
    #: Hex SHA-256 of the run's event log: every heap event (arrival with its datagram bytes,
    #: timer), start and push (with the message key), in order. Equal seeds, equal traces.
    trace: str
    sent: dict[str, int]
    bytes_sent: dict[str, int]
    window: float
    digest_rate: float
    network_dropped: dict[str, int]
    engine: dict[str, int]
    engine_dropped: dict[str, int]
    complete: bool
    virtual_time: float
    events: int
    wall_seconds: float
    setup_seconds: float
    peak_rss_mib: float

    @property
    def measured(self) -> list[MessageOutcome]:
        """The messages after the warm-up."""
        return self.messages[self.scenario.warmup :]

    def delivery_ratio(self) -> float:
        """Deliveries at live nodes over (live nodes x measured messages)."""
        got = sum(m.delivered for m in self.measured)
        return got / sum(m.expected for m in self.measured)

    def per_node_message(
        self, counts: dict[str, int], *, digests: bool = False
    ) -> dict[str, float]:
        """``counts`` divided by live nodes and measured messages; adds ``total`` (without the
        anti-entropy digests unless ``digests``)."""
        scale = self.live_nodes * len(self.measured)
        out = {name: counts[name] / scale for name in PACKET_TYPES}
        out["total"] = sum(v for k, v in out.items() if digests or k != "digest")
        return out


class _PeerTable(tuple[Address, ...]):
    """The shared peer tuple with O(1) membership.

    The engine asks ``addr in gossipiers()`` on each ``PullRequest`` of a plain-text cluster
    (its amplification guard): a plain tuple would scan 100,000 addresses each time.
    """

    positions: dict[Address, int]

    def __contains__(self, item: object) -> bool:
        return item in self.positions


class _SharedDiscovery(Discovery):
    """One peer list for every simulated node (``_choose`` samples indices: O(fanout))."""

    def __init__(self, peers: _PeerTable) -> None:
        self._peers = peers

    def gossipiers(self) -> Sequence[Address]:
        return self._peers


#: Progress callback: (fraction of expected deliveries done, virtual time, events so far).
Progress = Callable[[float, float, int], None]


class Simulation:
    """One run of a :class:`Scenario`; build it, call :meth:`run` once.

    After the run, :meth:`delivery_times` and :meth:`hops` give the raw per-node data of each
    message (for plots).
    """

    def __init__(self, scenario: Scenario) -> None:
        started = time.perf_counter()
        self.scenario = sc = scenario
        n = sc.nodes
        master = random.Random(sc.seed)
        self._net_rng = random.Random(master.getrandbits(64))
        engine_base = master.getrandbits(64) << 32
        order = list(range(n))
        master.shuffle(order)  # crashed first, then late joiners, then the rest
        n_crashed = round(sc.crashed * n)
        self.state = bytearray([_LIVE]) * n
        for i in order[:n_crashed]:
            self.state[i] = _CRASHED
        live = order[n_crashed:]
        n_late = min(round(sc.late_joiners * len(live)), len(live) - 1)
        self.join_at: dict[int, float] = {}
        for i in live[:n_late]:
            self.state[i] = _OFFLINE
            self.join_at[i] = sc.start + master.random() * sc.join_window
        on_time = live[n_late:]
        self.live_nodes = len(live)
        # Partition: a random fraction of all nodes on side 1 until heal time.
        self.side = bytearray(n)
        cut = list(range(n))
        master.shuffle(cut)
        for i in cut[: round(sc.partition * n)]:
            self.side[i] = 1
        self.origins = [on_time[master.randrange(len(on_time))] for _ in range(sc.messages)]
        self.push_at = [sc.start + m * sc.interval for m in range(sc.messages)]
        #: Each message's key, once pushed.
        self.keys: list[bytes] = [b""] * sc.messages

        self.addrs = peers = _PeerTable(node_address(i) for i in range(n))
        peers.positions = {a: i for i, a in enumerate(peers)}
        discovery = _SharedDiscovery(peers)
        # Seeded IVs: a simulated run's bytes are reproducible too (never do this on a network).
        # A string seed, not a draw from ``master``: encrypted runs make the plain runs' choices.
        keyring = (
            Keyring(SIM_KEY, random_bytes=random.Random(f"sim IVs {sc.seed}").randbytes)
            if sc.encrypted
            else None
        )
        cfg = sc.config
        self.engines: list[GossipEngine] = []
        placeholder: GossipEngine | None = None
        for i in range(n):
            if self.state[i] == _CRASHED:
                # Never touched: crashed nodes neither send nor receive. One shared stand-in.
                if placeholder is None:
                    placeholder = GossipEngine(discovery, peers[i], cfg, rng=random.Random(0))
                self.engines.append(placeholder)
                continue
            self.engines.append(
                GossipEngine(
                    discovery, peers[i], cfg, keyring=keyring, rng=random.Random(engine_base | i)
                )
            )
        self.delivered_at = [array("d", [-1.0]) * n for _ in range(sc.messages)]
        self.hop = [array("i", [-1]) * n for _ in range(sc.messages)]
        self.pulled = [0] * sc.messages
        self.setup_seconds = time.perf_counter() - started

    # -------------------------------------------------------------- raw results

    def delivery_times(self, m: int) -> list[float]:
        """Seconds from push to arrival at each node that got message ``m`` (sorted)."""
        t0 = self.push_at[m]
        return sorted(t - t0 for t in self.delivered_at[m] if t >= 0)

    def hops(self, m: int) -> list[int]:
        """Hop count of each node's copy of message ``m`` (sorted; the origin's is 0)."""
        return sorted(h for h in self.hop[m] if h >= 0)

    # -------------------------------------------------------------- the loop

    def run(self, progress: Progress | None = None, progress_every: int = 1 << 15) -> SimResult:
        """Run to full delivery of every message plus the settle time, or to ``max_time``."""
        sc = self.scenario
        started = time.perf_counter()
        n = sc.nodes
        engines = self.engines
        addrs = self.addrs
        index = addrs.positions
        state = self.state
        side = self.side
        rng_random = self._net_rng.random
        loss = sc.loss
        dup = sc.duplicate
        lat_lo = sc.latency.low
        lat_span = sc.latency.high - sc.latency.low
        partitioned = sc.partition > 0
        heal_at = sc.start + sc.heal_at
        heappush = heapq.heappush
        heappop = heapq.heappop

        sent = [0] * len(PACKET_TYPES)
        sent_bytes = [0] * len(PACKET_TYPES)
        index_of = _INDEX
        dropped = {"loss": 0, "partition": 0, "offline": 0, "crashed": 0}
        n_loss = n_part = n_offline = n_crashed = 0

        # Heap entries: (time, seq, node, src, datagram, its kind). src >= 0: a datagram from
        # node src; src == _TIMER: node's engine timer (valid only while timer_seq[node] == seq).
        heap: list[tuple[float, int, int, int, bytes, str]] = []
        seq = 0
        timer_at = [-1.0] * n
        timer_seq = [0] * n

        # Control events, in time order: node starts and pushes.
        control: list[tuple[float, int, int]] = []  # (time, kind, arg); kind 0 start, 1 push
        for i in range(n):
            if state[i] == _LIVE:
                control.append((0.0, 0, i))
        for i, t in sorted(self.join_at.items(), key=lambda item: (item[1], item[0])):
            control.append((t, 0, i))
        control.extend((t, 1, m) for m, t in enumerate(self.push_at))
        control.sort()
        n_control = len(control)
        ci = 0

        msg_of: dict[bytes, int] = {}
        delivered_at = self.delivered_at
        hop = self.hop
        pulled = self.pulled
        expected = self.live_nodes
        remaining = [expected] * sc.messages
        done_msgs = 0
        total_expected = expected * sc.messages
        total_done = 0
        stop_at = self.push_at[-1] + sc.max_time
        settle = sc.settle_time()
        measure_from = self.push_at[sc.warmup]
        snapshot: tuple[list[int], list[int]] | None = None
        payload = bytes(sc.payload)
        events = 0
        now = end = 0.0
        trace = hashlib.sha256()
        log = trace.update
        record = _RECORD.pack

        while True:
            # ---- next event: control first on ties (a start precedes traffic at that time)
            if ci < n_control and (not heap or control[ci][0] <= heap[0][0]):
                t, kind, arg = control[ci]
                if t > stop_at:
                    end = stop_at
                    break
                now = t
                ci += 1
                src = -1
                datagram = None
                if kind == 0:
                    node = arg
                    state[node] = _LIVE
                    engine = engines[node]
                    engine.start(now)
                    log(record(now, node, _START))
                else:
                    if arg == sc.warmup:
                        snapshot = (list(sent), list(sent_bytes))
                    node = self.origins[arg]
                    engine = engines[node]
                    key = engine.push(payload, now)
                    log(record(now, node, _PUSH))
                    log(key)
                    msg_of[key] = arg
                    self.keys[arg] = key
                    delivered_at[arg][node] = now
                    hop[arg][node] = 0
                    remaining[arg] -= 1
                    total_done += 1
            else:
                if not heap:
                    end = now
                    break
                if heap[0][0] > stop_at:
                    end = stop_at
                    break
                now, s, node, src, data, kind_in = heappop(heap)
                events += 1
                if src < 0:
                    if timer_seq[node] != s:
                        continue  # superseded
                    log(record(now, node, _TIMER))
                    timer_at[node] = -1.0
                    engine = engines[node]
                    engine.handle_timer(now)
                    datagram = None
                else:
                    log(record(now, node, src))
                    log(data)
                    st = state[node]
                    if st != _LIVE:
                        if st == _CRASHED:
                            n_crashed += 1
                        else:
                            n_offline += 1
                        continue
                    engine = engines[node]
                    engine.receive(data, addrs[src], now)
                    datagram = data
                if progress is not None and events % progress_every == 0:
                    progress(total_done / total_expected, now, events)

            # ---- flush what the engine produced
            for out in engine.datagrams_to_send():
                data = out.data
                dst_addrs = out.addrs
                what = out.kind
                k = len(dst_addrs)
                t = index_of[what]
                sent[t] += k
                sent_bytes[t] += k * len(data)
                for a in dst_addrs:
                    dst = index[a]
                    if partitioned and side[dst] != side[node] and now < heal_at:
                        n_part += 1
                        continue
                    if loss and rng_random() < loss:
                        n_loss += 1
                        continue
                    seq += 1
                    at = now + lat_lo + lat_span * rng_random()
                    heappush(heap, (at, seq, dst, node, data, what))
                    if dup and rng_random() < dup:
                        seq += 1
                        at = now + lat_lo + lat_span * rng_random()
                        heappush(heap, (at, seq, dst, node, data, what))
            if datagram is not None:
                for ev in engine.pop_events():
                    if type(ev) is MessageDelivered:
                        m = msg_of[ev.key]
                        if delivered_at[m][node] < 0:
                            delivered_at[m][node] = now
                            hop[m][node] = hop[m][src] + 1
                            if kind_in == "response":
                                pulled[m] += 1
                            remaining[m] -= 1
                            total_done += 1
                            if remaining[m] == 0:
                                done_msgs += 1
                                if done_msgs == sc.messages:
                                    stop_at = min(stop_at, now + settle)
            else:
                engine.pop_events()  # timers and pushes deliver nothing
            # ---- re-arm this engine's one timer entry
            t2 = engine.get_timer()
            if t2 is not None and t2 != timer_at[node]:
                timer_at[node] = t2
                seq += 1
                timer_seq[node] = seq
                heappush(heap, (t2 if t2 > now else now, seq, node, _TIMER, b"", ""))

        dropped.update(loss=n_loss, partition=n_part, offline=n_offline, crashed=n_crashed)
        if snapshot is None:  # cannot happen: the measured pushes precede stop_at
            snapshot = ([0] * len(sent), [0] * len(sent))
        sent_d = {name: sent[i] - snapshot[0][i] for i, name in enumerate(PACKET_TYPES)}
        bytes_d = {name: sent_bytes[i] - snapshot[1][i] for i, name in enumerate(PACKET_TYPES)}
        window = max(end - measure_from, 1e-9)
        engine_totals, engine_dropped = self._engine_totals()
        wall = time.perf_counter() - started
        return SimResult(
            scenario=sc,
            live_nodes=self.live_nodes,
            messages=[self._outcome(m) for m in range(sc.messages)],
            trace=trace.hexdigest(),
            sent=sent_d,
            bytes_sent=bytes_d,
            window=window,
            digest_rate=sent_d["digest"] / self.live_nodes / window,
            network_dropped=dropped,
            engine=engine_totals,
            engine_dropped=engine_dropped,
            complete=done_msgs == sc.messages,
            virtual_time=end,
            events=events,
            wall_seconds=wall,
            setup_seconds=self.setup_seconds,
            peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )

    # -------------------------------------------------------------- summaries

    def _outcome(self, m: int) -> MessageOutcome:
        times = self.delivery_times(m)
        hops = self.hops(m)
        expected = self.live_nodes
        time_to: dict[str, float | None] = {}
        hops_to: dict[str, int | None] = {}
        for label, fraction in FRACTIONS:
            k = max(1, math.ceil(fraction * expected - 1e-9))
            time_to[label] = times[k - 1] if len(times) >= k else None
            hops_to[label] = hops[k - 1] if len(hops) >= k else None
        histogram = [0] * ((hops[-1] + 1) if hops else 0)
        for h in hops:
            histogram[h] += 1
        return MessageOutcome(
            origin=self.origins[m],
            key=self.keys[m],
            pushed_at=self.push_at[m],
            expected=expected,
            delivered=len(times),
            time_to=time_to,
            hops_to=hops_to,
            pulled=self.pulled[m],
            hop_histogram=histogram,
        )

    def _engine_totals(self) -> tuple[dict[str, int], dict[str, int]]:
        fields = (
            "delivered",
            "duplicates",
            "pulled",
            "acks_received",
            "late_acks",
            "ack_rounds_failed",
            "pull_syncs_sent",
        )
        totals = dict.fromkeys(fields, 0)
        dropped: dict[str, int] = {}
        for i, engine in enumerate(self.engines):
            if self.state[i] == _CRASHED:
                continue
            stats = engine.statistics()
            for name in fields:
                totals[name] += getattr(stats, name)
            for reason, count in stats.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
        return totals, dict(sorted(dropped.items()))


def simulate(scenario: Scenario, progress: Progress | None = None) -> SimResult:
    """Build and run one :class:`Simulation`."""
    return Simulation(scenario).run(progress)
