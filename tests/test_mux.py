"""One node, several engines (issue 10): the type registry, the mux, and a second engine
sharing a node's port, codec, replay guard and timer with the broadcast engine."""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring, ReplayGuard, generate_key
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.errors import LocalProtocolError, MalformedPacket, RemoteProtocolError
from gossip.events import MessageDelivered, Outgoing, PacketDropped
from gossip.mux import Mux
from gossip.node import Gossiper, open_gossiper
from gossip.transport.base import Address, Transport, TransportStatistics
from gossip.transport.memory import MemoryNetwork
from gossip.transport.tcp import open_tcp_transport
from gossip.transport.udp import open_udp_transport
from gossip.wire import PACKET_RANGES, Codec, PushAck, packet_range

from .harness import addr

PING, PONG = 0x10, 0x11


@attrs.frozen
class Pong:
    """The toy engine's event: ``peer`` answered our ping number ``seq``."""

    peer: Address
    seq: int


@attrs.frozen
class PingStatistics:
    pings: int
    pongs: int
    dropped: dict[str, int]


class PingEngine:
    """A second protocol in the membership range: ping every peer each ``interval``."""

    def __init__(self, context: EngineContext, interval: float = 1.0) -> None:
        self.codec = context.codec
        self.discovery = context.discovery
        self.me = context.local_address
        self.interval = interval
        self.next = context.now + interval
        self.seq = 0
        self.out: list[Outgoing] = []
        self.events: list[object] = []
        self.pings = self.pongs = 0
        self.dropped: dict[str, int] = {}

    @property
    def packet_types(self) -> range:
        return range(PING, PONG + 1)

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        try:
            ptype, body = self.codec.open_untrusted(datagram, now)
        except RemoteProtocolError as err:
            self.dropped[err.reason] = self.dropped.get(err.reason, 0) + 1
            self.events.append(PacketDropped(err.reason, addr))
            return
        if ptype == PING:
            self.pings += 1
            self.out.append(Outgoing(self.codec.seal(PONG, body, now), (addr,)))
        else:
            self.pongs += 1
            self.events.append(Pong(addr, int.from_bytes(body, "big")))

    def handle_timer(self, now: float) -> None:
        self.seq += 1
        peers = tuple(p for p in self.discovery.gossipiers() if p != self.me)
        self.out.append(Outgoing(self.codec.seal(PING, self.seq.to_bytes(4, "big"), now), peers))
        self.next = now + self.interval

    def get_timer(self) -> float | None:
        return self.next

    def datagrams_to_send(self) -> Sequence[Outgoing]:
        out, self.out = self.out, []
        return out

    def pop_events(self) -> Sequence[object]:
        events, self.events = self.events, []
        return events

    def statistics(self) -> PingStatistics:
        return PingStatistics(self.pings, self.pongs, dict(self.dropped))


class Silent(PingEngine):
    """Owns a range, never wakes."""

    def __init__(self, types: range) -> None:
        self._types = types
        self.out, self.events = [], []

    @property
    def packet_types(self) -> range:
        return self._types

    def get_timer(self) -> float | None:
        return None


class Recorder(Silent):
    """Owns a range and records what the mux hands it: datagrams, and timer firings."""

    def __init__(self, types: range, timer: float | None = None) -> None:
        super().__init__(types)
        self.timer = timer
        self.got: list[bytes] = []
        self.fired: list[float] = []

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        self.got.append(datagram)

    def handle_timer(self, now: float) -> None:
        self.fired.append(now)

    def get_timer(self) -> float | None:
        return self.timer


# -- the registry and the envelope --------------------------------------------------------


def test_ranges_are_disjoint_and_the_broadcast_packets_are_in_theirs() -> None:
    ranges = list(PACKET_RANGES.values())
    for i, a in enumerate(ranges):
        for b in ranges[i + 1 :]:
            assert not set(a) & set(b)
    assert set(range(1, 6)) <= set(packet_range("broadcast"))
    assert packet_range("membership") == range(0x10, 0x20)
    assert packet_range("kv") == range(0x20, 0x30)
    with pytest.raises(LocalProtocolError, match="no packet range"):
        packet_range("metrics")


def test_seal_and_open_any_reserved_type_with_one_replay_guard() -> None:
    codec = Codec(Keyring(generate_key()), replay=ReplayGuard())
    datagram = codec.seal(0x2A, b"a store update", 100.0)
    assert codec.open_untrusted(datagram, 100.0) == (0x2A, b"a store update")
    with pytest.raises(RemoteProtocolError) as err:
        codec.open_untrusted(datagram, 100.0)  # the same capture again
    assert err.value.reason == "replay"
    with pytest.raises(LocalProtocolError, match="no reserved range"):
        codec.seal(0x30, b"x", 0.0)
    with pytest.raises(LocalProtocolError, match="does not fit"):
        codec.seal(0x10, bytes(codec.max_body() + 1), 0.0)
    stray = bytearray(codec.seal(0x10, b"x", 101.0))
    stray[1] = 0x30  # no range holds it: refused before any crypto
    with pytest.raises(MalformedPacket) as bad:
        codec.open_untrusted(bytes(stray), 101.0)
    assert bad.value.reason == "type"


def test_engine_packets_for_a_stream_go_up_to_max_stream() -> None:
    codec = Codec(Keyring(generate_key()), max_stream=200_000)
    assert codec.max_body() < 1400 < codec.max_body(stream=True) <= 200_000
    big = bytes(codec.max_body(stream=True))
    packet = codec.seal(0x1F, big, 5.0, stream=True)
    assert len(packet) <= 200_000
    assert codec.open_untrusted(packet, 5.0) == (0x1F, big)
    with pytest.raises(LocalProtocolError, match="1400-byte datagram"):
        codec.seal(0x1F, big, 5.0)  # not without stream=True
    with pytest.raises(LocalProtocolError, match="200000-byte stream packet"):
        codec.seal(0x1F, big + bytes(16), 5.0, stream=True)
    with pytest.raises(MalformedPacket) as err:
        codec.open_untrusted(packet + bytes(200_000 - len(packet) + 1), 6.0)
    assert err.value.reason == "oversize"
    # A bad label on a packet between the two limits is named for what it is, not its size.
    wrong = bytearray(packet)
    wrong[0] = 0xB1
    with pytest.raises(MalformedPacket) as err:
        codec.open_untrusted(bytes(wrong), 6.0)
    assert err.value.reason == "version"
    with pytest.raises(LocalProtocolError, match="max_stream"):
        Codec(max_datagram=9000, max_stream=8000)
    with pytest.raises(LocalProtocolError, match="max_stream"):
        Codec(max_stream=(1 << 20) + 1)


def test_the_broadcast_decoder_refuses_other_engines_types() -> None:
    codec = Codec()
    with pytest.raises(MalformedPacket) as err:
        codec.decode_untrusted(codec.seal(0x10, bytes(16), 0.0), 0.0)
    assert err.value.reason == "type"


# -- the mux ------------------------------------------------------------------------------


def test_mux_refuses_colliding_foreign_and_unreserved_ranges() -> None:
    with pytest.raises(LocalProtocolError, match="claimed by"):
        Mux([Silent(range(0x10, 0x14)), Silent(range(0x13, 0x18))])
    with pytest.raises(LocalProtocolError, match="not inside one reserved range"):
        Mux([Silent(range(0x0E, 0x12))])  # straddles broadcast and membership
    with pytest.raises(LocalProtocolError, match="not inside one reserved range"):
        Mux([Silent(range(0x40, 0x50))])
    with pytest.raises(LocalProtocolError, match="runs alone"):
        Mux([Silent(range(256)), Silent(range(0x10, 0x11))])
    with pytest.raises(LocalProtocolError, match="at least one engine"):
        Mux([])
    assert Mux([Silent(range(256))]).engines  # a foreign wire format alone is fine


def test_mux_routes_by_type_and_counts_what_nobody_owns() -> None:
    a, b = Recorder(range(0x10, 0x12)), Recorder(range(0x20, 0x22))
    mux = Mux([a, b])
    src = addr(1)
    for datagram in (b"\xa1\x10x", b"\xa1\x21y", b"\xa1\x12z", b"\xa1\x05w", b"\xa1", b""):
        mux.receive(datagram, src, 0.0)
    assert a.got == [b"\xa1\x10x"]
    assert b.got == [b"\xa1\x21y"]
    assert mux.statistics().dropped == {"type": 2, "truncated": 2}
    events = mux.pop_events()
    assert [e.reason for e in events if isinstance(e, PacketDropped)] == [
        "type",
        "type",
        "truncated",
        "truncated",
    ]
    assert mux.pop_events() == []


def test_mux_merges_timers_and_fires_only_the_due_engines() -> None:
    ctx = EngineContext(Codec(), addr(0), StaticDiscovery([addr(0), addr(1)]), random.Random(0), 0)
    early, late = PingEngine(ctx, interval=1.0), Recorder(range(0x20, 0x21), timer=5.0)
    fired = late.fired
    mux = Mux([early, late])
    assert mux.get_timer() == 1.0
    mux.handle_timer(1.0)
    assert early.seq == 1
    assert fired == []
    assert mux.get_timer() == 2.0
    assert [o.addrs for o in mux.datagrams_to_send()] == [(addr(1),)]
    mux.handle_timer(5.0)
    assert fired == [5.0]


# -- two engines on one node ----------------------------------------------------------------


async def test_a_second_engine_shares_the_node_with_the_broadcast_engine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=3)
    transports = [net.open_transport() for _ in range(3)]
    disc = StaticDiscovery([t.local_address for t in transports])
    key = generate_key()
    pongs: list[list[Pong]] = [[] for _ in transports]
    got: list[list[bytes]] = [[] for _ in transports]
    nodes: list[Gossiper[GossipEngine]] = []
    async with trio.open_nursery() as nursery:

        async def run(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with open_gossiper(
                disc,
                transports[i],
                keyring=Keyring(key),
                rng=random.Random(i),
                engines=[PingEngine],
            ) as node:
                node.subscribe(Pong, pongs[i].append)
                nodes.append(node)
                task_status.started()
                async for m in node:
                    got[i].append(m.data)

        for i in range(3):
            await nursery.start(run, i)
        await nodes[0].push(b"broadcast and ping on one port")
        await trio.sleep(3.5)
        nursery.cancel_scope.cancel()
    for node in nodes:
        ping = node.mux.engines[1]
        assert isinstance(ping, PingEngine)
        assert ping.codec is node.engine.codec  # one keyring, one replay guard
        assert node.engine.packet_types == packet_range("broadcast")
    for i in range(3):
        # Three ping rounds to two peers each: every pong came back and reached subscribers.
        assert sorted({p.peer for p in pongs[i]}) == sorted(
            t.local_address for j, t in enumerate(transports) if j != i
        )
        assert sorted(p.seq for p in pongs[i]) == [1, 1, 2, 2, 3, 3]
    others = [t for t in got if t]
    assert others == [[b"broadcast and ping on one port"]] * 2


async def test_a_replayed_datagram_of_another_engine_is_refused_by_the_shared_guard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=4)
    a, b, spy = net.open_transport(), net.open_transport(), net.open_transport()
    key = generate_key()
    async with (
        open_gossiper(
            StaticDiscovery([b.local_address]),
            a,
            keyring=Keyring(key),
            rng=random.Random(1),
            engines=[PingEngine],
        ) as node,
    ):
        # A ping captured in flight and replayed twice: the first copy is news, then replays.
        ping = node.engine.codec.seal(PING, b"\x00\x00\x00\x07", trio.current_time())
        for _ in range(3):
            await spy.send(ping, a.local_address)
        await trio.sleep(0.1)
        engine = node.mux.engines[1]
        assert isinstance(engine, PingEngine)
        assert engine.pings == 1
        assert engine.dropped == {"replay": 2}
        # A broadcast packet cannot be replayed into the other engine either (its own guard
        # is the same object): an ACK sealed once, sent twice.
        ack = node.engine.codec.encode(PushAck(bytes(16)), trio.current_time())
        await spy.send(ack, a.local_address)
        await spy.send(ack, a.local_address)
        await trio.sleep(0.1)
        assert node.engine.statistics().dropped.get("replay") == 1


async def test_subscribing_to_delivered_messages_is_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=5)
    t = net.open_transport()
    async with open_gossiper(StaticDiscovery([]), t) as node:
        with pytest.raises(LocalProtocolError, match="receive"):
            node.subscribe(MessageDelivered, print)


# -- a datagram transport and a stream transport on one node -------------------------------


class Recording:
    """A transport that records the size of every datagram sent through it."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.sizes: list[int] = []

    @property
    def local_address(self) -> Address:
        return self.inner.local_address

    async def send(self, data: bytes, addr: Address) -> None:
        self.sizes.append(len(data))
        await self.inner.send(data, addr)

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        self.sizes.extend(len(data) for _ in addrs)
        await self.inner.send_many(data, addrs)

    async def receive(self) -> tuple[bytes, Address]:
        return await self.inner.receive()

    def statistics(self) -> TransportStatistics:
        return self.inner.statistics()

    async def aclose(self) -> None:
        await self.inner.aclose()


class ReliablePong(PingEngine):
    """Pongs must not be lost: they are marked for the stream transport."""

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        super().receive(datagram, addr, now)
        self.out = [attrs.evolve(o, reliable=True) for o in self.out]


async def test_large_and_reliable_outputs_go_on_the_stream_transport(
    autojump_clock: trio.testing.MockClock,
) -> None:
    datagrams, streams = MemoryNetwork(seed=6), MemoryNetwork(seed=7)
    addrs = [("10.0.0.1", 7946), ("10.0.0.2", 7946)]
    dgram = [Recording(datagrams.open_transport(a)) for a in addrs]
    stream = [Recording(streams.open_transport(a)) for a in addrs]
    key = generate_key()
    config = GossipConfig(max_datagram=9000)  # messages up to ~9 KB, larger than a datagram
    got: list[list[bytes]] = [[], []]
    pongs: list[list[Pong]] = [[], []]
    async with trio.open_nursery() as nursery:
        nodes: list[Gossiper[GossipEngine]] = []

        async def run(i: int, task_status: trio.TaskStatus[None]) -> None:
            async with open_gossiper(
                StaticDiscovery(addrs),
                dgram[i],
                config,
                keyring=Keyring(key),
                rng=random.Random(i),
                engines=[ReliablePong],
                stream=stream[i],
            ) as node:
                node.subscribe(Pong, pongs[i].append)
                nodes.append(node)
                task_status.started()
                async for m in node:
                    got[i].append(m.data)

        for i in range(2):
            await nursery.start(run, i)
        big, small = b"L" * 5000, b"s" * 100
        await nodes[0].push(big)
        await nodes[0].push(small)
        await trio.sleep(1.5)
        nursery.cancel_scope.cancel()
    assert sorted(got[1]) == sorted([big, small])
    # Nothing longer than a datagram went on the datagram transports ...
    assert max(dgram[0].sizes + dgram[1].sizes) <= 1400
    # ... the 5 KB push did go on the stream, and so did every (reliable) pong.
    assert max(stream[0].sizes) > 5000
    assert len(pongs[0]) == len(pongs[1]) == 1
    pong_size = len(Codec(Keyring(key)).seal(PONG, bytes(4), 0.0))
    assert stream[1].sizes.count(pong_size) >= 1


async def test_a_stream_on_another_port_is_a_clear_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    with pytest.raises(LocalProtocolError, match="one address"):
        async with open_gossiper(
            StaticDiscovery([]),
            net.open_transport(("10.0.0.1", 7946)),
            stream=net.open_transport(("10.0.0.1", 7947)),
        ):
            pass


async def test_udp_and_tcp_on_one_port_carry_a_message_larger_than_a_datagram() -> None:
    key = generate_key()
    payload = bytes(range(256)) * 80  # 20 KiB
    config = GossipConfig(max_datagram=30000)
    with trio.fail_after(10):
        async with (
            open_udp_transport("127.0.0.1") as ua,
            open_udp_transport("127.0.0.1") as ub,
            open_tcp_transport("127.0.0.1", ua.local_address[1]) as ta,
            open_tcp_transport("127.0.0.1", ub.local_address[1]) as tb,
        ):
            peers = [ua.local_address, ub.local_address]
            async with (
                open_gossiper(
                    StaticDiscovery(peers), ua, config, keyring=Keyring(key), stream=ta
                ) as a,
                open_gossiper(
                    StaticDiscovery(peers), ub, config, keyring=Keyring(key), stream=tb
                ) as b,
            ):
                await a.push(payload)
                message = await b.receive()
                assert message.data == payload
                assert message.sender == ua.local_address
                assert tb.statistics().datagrams_received >= 1
                assert ub.statistics().bytes_received < len(payload)


class BulkPong(PingEngine):
    """Answers a ping with a pong of ``size`` bytes: a full-state answer, on the stream."""

    size = 512 * 1024

    def receive(self, datagram: bytes, addr: Address, now: float) -> None:
        try:
            ptype, body = self.codec.open_untrusted(datagram, now)
        except RemoteProtocolError as err:
            self.dropped[err.reason] = self.dropped.get(err.reason, 0) + 1
            return
        if ptype == PING:
            pong = self.codec.seal(PONG, body + bytes(self.size), now, stream=True)
            self.out.append(Outgoing(pong, (addr,), reliable=True))
        else:
            self.pongs += 1
            self.events.append(Pong(addr, len(body)))


async def test_udp_and_tcp_on_one_port_carry_an_engines_half_megabyte_packet() -> None:
    key = generate_key()
    with trio.fail_after(10):
        async with (
            open_udp_transport("127.0.0.1") as ua,
            open_udp_transport("127.0.0.1") as ub,
            open_tcp_transport("127.0.0.1", ua.local_address[1]) as ta,
            open_tcp_transport("127.0.0.1", ub.local_address[1]) as tb,
        ):
            peers = [ua.local_address, ub.local_address]
            pongs: list[Pong] = []
            got = trio.Event()

            def on_pong(pong: Pong) -> None:
                pongs.append(pong)
                got.set()

            async with (
                open_gossiper(
                    StaticDiscovery(peers),
                    ua,
                    keyring=Keyring(key),
                    engines=[lambda c: BulkPong(c, interval=0.05)],
                    stream=ta,
                ) as a,
                open_gossiper(
                    StaticDiscovery(peers),
                    ub,
                    keyring=Keyring(key),
                    engines=[lambda c: BulkPong(c, interval=3600)],
                    stream=tb,
                ),
            ):
                a.subscribe(Pong, on_pong)
                await got.wait()
            # The ping went as a datagram, the 512 KiB pong on B's stream to A.
            assert pongs[0].peer == ub.local_address
            assert pongs[0].seq == 4 + BulkPong.size
            assert ta.statistics().bytes_received > BulkPong.size
            assert ua.statistics().bytes_received < 1400 * 4


async def test_a_node_of_one_engine_routes_past_the_mux_but_the_mux_still_drops() -> None:
    # The receive loop hands a single engine its own types directly (and drains UDP with
    # receive_batch); what it does not own still goes through the mux, which counts it.
    with trio.fail_after(10):
        async with (
            open_udp_transport("127.0.0.1") as ta,
            open_udp_transport("127.0.0.1") as tb,
        ):
            discovery = StaticDiscovery([ta.local_address, tb.local_address])
            async with (
                open_gossiper(discovery, ta, rng=random.Random(1)) as a,
                open_gossiper(discovery, tb, rng=random.Random(2)) as b,
            ):
                assert a.mux.single is a.engine
                dropped: list[PacketDropped] = []
                b.subscribe(PacketDropped, dropped.append)
                for junk in (b"\xa1\x21y", b"\xa1", b"\xa1\x05w"):
                    await ta.send(junk, tb.local_address)
                key = await a.push(b"hello")
                message = await b.receive()
                assert (message.key, message.data) == (key, b"hello")
                while len(dropped) < 3:
                    await trio.sleep(0.001)
                assert b.mux.statistics().dropped == {"type": 1, "truncated": 1}
                # 0x05 is the engine's (a PullResponse): too short, it drops it itself.
                assert b.engine.statistics().dropped == {"truncated": 1}
                assert sorted(e.reason for e in dropped) == ["truncated", "truncated", "type"]
