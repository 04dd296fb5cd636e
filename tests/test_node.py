"""The trio runtime on the in-memory network (virtual time) and on real loopback UDP."""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Awaitable, Callable
from typing import assert_type

import pytest
import trio
import trio.testing

from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.events import MessageDelivered, Outgoing
from gossip.node import Delivery, Gossiper, GossiperStatistics, Message, open_gossiper
from gossip.transport.base import Transport, TransportStatistics
from gossip.transport.memory import LinkConditions, MemoryNetwork
from gossip.transport.udp import CHECKPOINT_EVERY, open_udp_transport
from gossip.wire import key_timestamp_ms


async def run_cluster(
    transports: list[Transport],
    body: Callable[[list[Gossiper[GossipEngine]], list[dict[bytes, Message]]], Awaitable[None]],
    *,
    key: bytes | None = None,
    config: GossipConfig | None = None,
    delivery_queue: int = 1024,
    readers: bool | frozenset[int] = True,
    delivery: Delivery = "wait",
) -> None:
    disc = StaticDiscovery([t.local_address for t in transports])
    got: list[dict[bytes, Message]] = [{} for _ in transports]
    nodes: list[Gossiper[GossipEngine]] = []
    duplicates = 0

    async with trio.open_nursery() as nursery:

        async def node(i: int, task_status: trio.TaskStatus[None]) -> None:
            nonlocal duplicates
            async with open_gossiper(
                disc,
                transports[i],
                config,
                keyring=Keyring(key) if key else None,
                rng=random.Random(i),
                delivery_queue=delivery_queue,
                delivery=delivery,
            ) as g:
                nodes.append(g)
                task_status.started()
                if readers is False or (readers is not True and i not in readers):
                    await trio.sleep_forever()
                async for message in g:
                    duplicates += message.key in got[i]
                    got[i][message.key] = message

        for i in range(len(transports)):
            await nursery.start(node, i)
        nodes.sort(key=lambda g: transports.index(g.transport))
        await body(nodes, got)
        nursery.cancel_scope.cancel()
    assert duplicates == 0


@pytest.mark.parametrize("encrypted", [True, False])
async def test_cluster_under_loss_delivers_everything_once(
    autojump_clock: trio.testing.MockClock, encrypted: bool
) -> None:
    net = MemoryNetwork(seed=4, default=LinkConditions(loss=0.2, delay=0.001, jitter=0.002))
    transports: list[Transport] = [net.open_transport() for _ in range(20)]
    pushed: dict[bytes, tuple[int, bytes]] = {}

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        rng = random.Random(9)
        for m in range(30):
            i = rng.randrange(len(nodes))
            data = b"message %d" % m
            pushed[await nodes[i].push(data)] = (i, data)
            await trio.sleep(0.05)
        await trio.sleep(30)  # anti-entropy rounds in virtual time
        for key, (origin, data) in pushed.items():
            for i, received in enumerate(got):
                if i != origin:
                    assert received[key].data == data
                    assert received[key].sender in [t.local_address for t in transports]

    await run_cluster(transports, body, key=generate_key() if encrypted else None)


async def test_slow_application_never_blocks_the_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """go-gossip flaw 12: a full application channel made the node deaf. Here node 0's
    application never reads (``delivery="drop"``); it still relays everything and counts
    what it could not queue."""
    net = MemoryNetwork(seed=1)
    transports: list[Transport] = [net.open_transport() for _ in range(6)]

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        for m in range(40):
            await nodes[1 + m % 5].push(b"%d" % m)
            await trio.sleep(0.01)
        await trio.sleep(5)
        stats = nodes[0].statistics()
        assert stats.engine.delivered == 40  # it kept receiving, ACKing and forwarding
        assert stats.delivery_queued == 4
        assert stats.delivery_overflow == 36

    await run_cluster(transports, body, delivery_queue=4, readers=False, delivery="drop")


async def test_slow_application_waits_then_gets_everything(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``delivery="wait"``: node 0's application stops reading. Its queue holds 4, it takes
    no more (deferred, not lost), the others still get every message, and once it reads
    again anti-entropy brings it the other 36, each once."""
    net = MemoryNetwork(seed=1)
    transports: list[Transport] = [net.open_transport() for _ in range(6)]

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        keys = set()
        for m in range(40):
            keys.add(await nodes[1 + m % 5].push(b"%d" % m))
            await trio.sleep(0.01)
        await trio.sleep(5)
        stats = nodes[0].statistics()
        assert stats.delivery_queued == 4
        assert stats.engine.delivered == 4
        assert stats.engine.deferred > 0
        assert stats.delivery_overflow == 0
        for i in range(1, 6):  # node 0 did not stall the others
            assert len(got[i]) == 32 and set(got[i]) < keys  # 40 minus its own 8
        received: list[bytes] = []
        with trio.fail_after(30):
            while len(received) < 40:
                received.append((await nodes[0].receive()).key)
        assert sorted(received) == sorted(keys)
        await trio.sleep(5)
        assert nodes[0].statistics().delivery_queued == 0  # nothing twice

    await run_cluster(transports, body, delivery_queue=4, readers=frozenset(range(1, 6)))


async def test_receive_is_one_checkpoint_whether_it_waits_or_not(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A queued message is taken at a checkpoint; a reader that has to wait is woken once
    per message (the park is its checkpoint), not woken and then rescheduled again."""
    net = MemoryNetwork(seed=1)
    transports: list[Transport] = [net.open_transport() for _ in range(3)]

    class Steps(trio.abc.Instrument):
        def __init__(self) -> None:
            self.of: dict[trio.lowlevel.Task, int] = {}

        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.of[task] = self.of.get(task, 0) + 1

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        del got
        key = await nodes[1].push(b"queued")
        await trio.sleep(1)
        with trio.testing.assert_checkpoints():
            assert (await nodes[0].receive()).key == key
        steps = Steps()
        trio.lowlevel.add_instrument(steps)
        taken: list[bytes] = []
        reader: list[trio.lowlevel.Task] = []

        async def read() -> None:
            reader.append(trio.lowlevel.current_task())
            taken.append((await nodes[0].receive()).key)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(1)
            key = await nodes[2].push(b"awaited")
        trio.lowlevel.remove_instrument(steps)
        assert taken == [key]
        assert steps.of[reader[0]] == 2  # its start (up to the park), and the wake-up

    await run_cluster(transports, body, readers=frozenset({1, 2}))


async def test_shutdown_and_closed_transport(autojump_clock: trio.testing.MockClock) -> None:
    """go-gossip flaw 14: no shutdown path, and a closed socket made the read loop spin."""
    net = MemoryNetwork()
    a, b = net.open_transport(), net.open_transport()
    disc = StaticDiscovery([a.local_address, b.local_address])
    async with open_gossiper(disc, a) as g:
        await a.aclose()  # the receive loop must end, not spin
        await trio.sleep(1)
        with pytest.raises(trio.ClosedResourceError):
            await g.push(b"x")  # the node saw its transport close: trio's error, at once
        assert g.statistics().engine.pushed == 0  # and nothing changed
    # The block exited: both background tasks ended.
    with pytest.raises(trio.ClosedResourceError, match="closed"):
        await g.push(b"after close")
    with pytest.raises(trio.ClosedResourceError):
        g.push_nowait(b"after close")
    assert g.statistics().engine.pushed == 0
    await b.aclose()


async def test_iteration_ends_when_the_node_closes_after_draining(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    a, b = net.open_transport(), net.open_transport()
    disc = StaticDiscovery([a.local_address, b.local_address])
    seen: list[bytes] = []
    async with open_gossiper(disc, a) as ga, open_gossiper(disc, b) as gb:
        await ga.push(b"one")
        await ga.push(b"two")
        await trio.sleep(1)  # both delivered to b, not read yet
        await b.aclose()  # b's transport goes away under it
        with trio.fail_after(5):
            async for message in gb:  # what was delivered is read, then the loop ends
                seen.append(message.data)
        with pytest.raises(trio.EndOfChannel):
            gb.receive_nowait()
    assert seen == [b"one", b"two"]


async def test_iteration_ends_when_the_block_exits(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    a = net.open_transport()
    ended = trio.Event()

    async def reader(g: Gossiper[GossipEngine]) -> None:
        async for _ in g:
            pass
        ended.set()

    async with trio.open_nursery() as nursery:
        async with open_gossiper(StaticDiscovery([]), a) as g:
            nursery.start_soon(reader, g)
            await trio.sleep(1)
        with trio.fail_after(1):
            await ended.wait()


async def test_waiting_readers_are_woken_in_turn_and_a_cancelled_one_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Several tasks may wait in receive() (and in async for): each delivery wakes the one
    # that waited longest; a reader whose wait was cancelled is not woken for anything.
    net = MemoryNetwork()
    a, b = net.open_transport(), net.open_transport()
    disc = StaticDiscovery([a.local_address, b.local_address])
    got: list[tuple[str, bytes]] = []
    async with (
        open_gossiper(disc, a) as ga,
        open_gossiper(disc, b) as gb,
        trio.open_nursery() as nursery,
    ):

        async def by_receive(name: str) -> None:
            got.append((name, (await gb.receive()).data))

        async def by_iteration(name: str) -> None:
            async for message in gb:
                got.append((name, message.data))
                return

        gone = trio.CancelScope()

        async def cancelled() -> None:
            with gone:
                await by_receive("first")

        nursery.start_soon(cancelled)
        await trio.sleep(0.1)
        gone.cancel()
        nursery.start_soon(by_receive, "second")
        await trio.sleep(0.1)
        nursery.start_soon(by_iteration, "third")
        await trio.sleep(0.1)
        await ga.push(b"one")
        await trio.sleep(1)
        assert got == [("second", b"one")]
        await ga.push(b"two")
        await trio.sleep(1)
        assert got == [("second", b"one"), ("third", b"two")]
    assert not gb._readers  # nobody left waiting


async def test_a_flush_larger_than_a_checkpoint_batch_sends_everything_in_order() -> None:
    # The flush sends what needs no wait without a coroutine and hands the rest (from where
    # a checkpoint fell due, inside a fan-out too) to the awaitable sends.
    with trio.fail_after(10):
        async with (
            await open_udp_transport("127.0.0.1") as ta,
            await open_udp_transport("127.0.0.1", recv_buffer=1 << 20) as tb,
            open_gossiper(StaticDiscovery([ta.local_address]), ta) as g,
        ):
            to_b = tb.local_address
            out = [Outgoing(b"%d" % i, (to_b,)) for i in range(CHECKPOINT_EVERY - 2)]
            out.append(Outgoing(b"fan", (to_b,) * 5))  # split by the checkpoint
            out += [Outgoing(b"%d" % i, (to_b,)) for i in range(100, 200)]
            await g._flush(out, [])
            want = [o.data for o in out for _ in o.addrs]
            got = [(await tb.receive())[0] for _ in want]
            assert got == want
            assert ta.statistics().datagrams_sent == len(want)


async def test_an_idle_node_holds_nothing_of_its_last_pass() -> None:
    # The receive loop lets go of a pass's datagrams, events and batch before it waits: an
    # idle node (most of a node's life) keeps none of them alive through a collection.
    with trio.fail_after(10):
        async with (
            await open_udp_transport("127.0.0.1") as ta,
            await open_udp_transport("127.0.0.1") as tb,
        ):
            disc = StaticDiscovery([ta.local_address, tb.local_address])
            async with open_gossiper(disc, ta) as a, open_gossiper(disc, tb) as b:
                await a.push(b"x")
                assert (await b.receive()).data == b"x"
                await trio.sleep(0.05)  # b's ACK went out; both nodes wait
                gc.collect()
                alive = [o for o in gc.get_objects() if isinstance(o, Outgoing | MessageDelivered)]
                assert alive == []


class _Boom(Exception):
    pass


async def test_an_exception_in_the_block_comes_out_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    with pytest.raises(_Boom):  # not an ExceptionGroup holding it
        async with open_gossiper(StaticDiscovery([]), net.open_transport()):
            raise _Boom


async def test_message_keys_follow_the_seed_and_the_runtime_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a seeded rng the random part of the keys repeats from run to run; the time part is
    the runtime's clock as Unix time. Without one, the random parts differ."""

    async def push_three(rng: random.Random | None) -> list[bytes]:
        transport = MemoryNetwork().open_transport()
        started = time.time()
        async with open_gossiper(StaticDiscovery([]), transport, rng=rng) as g:
            await trio.sleep(1.5)  # virtual: the keys say 1.5 s after the start, Unix time
            keys = [await g.push(b"%d" % i) for i in range(3)]
        for key in keys:
            assert abs(key_timestamp_ms(key) - (started + 1.5) * 1000) < 500
        return keys

    first = await push_three(random.Random(9))
    again = await push_three(random.Random(9))
    assert [k[6:] for k in first] == [k[6:] for k in again]
    assert [k[6:] for k in await push_three(None)] != [k[6:] for k in first]


async def test_statistics_and_oversize_push(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    transports: list[Transport] = [net.open_transport() for _ in range(3)]

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        await nodes[0].push(b"x" * 100)
        await trio.sleep(1)
        stats = nodes[0].statistics()
        assert_type(stats, GossiperStatistics[EngineStatistics])  # mypy: no Any on the way
        assert_type(stats.transport, TransportStatistics)
        assert stats.engine.pushed == 1
        assert stats.engine.sent_by_type["push"] == 2
        assert stats.transport.datagrams_sent == stats.engine.datagrams_sent
        with pytest.raises(LocalProtocolError, match="1327 bytes"):
            await nodes[0].push(bytes(2000))

    await run_cluster(transports, body, key=generate_key())


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_real_udp_loopback_cluster(host: str) -> None:
    try:
        transports: list[Transport] = [await open_udp_transport(host, 0) for _ in range(8)]
    except OSError as err:  # pragma: no cover - depends on the host
        pytest.skip(f"no {host} loopback here: {err}")

    async def body(nodes: list[Gossiper[GossipEngine]], got: list[dict[bytes, Message]]) -> None:
        keys = [await nodes[i].push(b"over UDP %d" % i) for i in range(8)]
        with trio.fail_after(10):
            while not all(k in got[i] for i in range(8) for j, k in enumerate(keys) if i != j):
                await trio.sleep(0.01)

    try:
        await run_cluster(transports, body, key=generate_key())
    finally:
        for t in transports:
            await t.aclose()
