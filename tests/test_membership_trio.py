"""Membership engines driven by a minimal trio pump over the in-memory network, under
MockClock: the shape the runtime (``open_cluster``) drives them in, with an encrypted codec,
a partition that heals, and a crash."""

from __future__ import annotations

import math
import random

import trio
import trio.testing

from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.membership import MemberEvent, Membership, MembershipConfig, State
from gossip.mux import Mux
from gossip.transport.memory import LinkConditions, MemoryNetwork, MemoryTransport
from gossip.wire import Codec

KEY = bytes(range(32))


async def pump(mux: Mux, transport: MemoryTransport, events: list[object]) -> None:
    """After every input: flush datagrams and events; one timer, re-armed when an input
    moved it (what gossip.node does for the broadcast engine)."""
    rearm = trio.Event()

    async def flush() -> None:
        for out in mux.datagrams_to_send():
            await transport.send_many(out.data, out.addrs)
        events.extend(mux.pop_events())

    async def receiver() -> None:
        nonlocal rearm
        while True:
            data, src = await transport.receive()
            mux.receive(data, src, trio.current_time())
            await flush()
            rearm.set()

    async def timers() -> None:
        nonlocal rearm
        while True:
            due = mux.get_timer()
            with trio.move_on_at(math.inf if due is None else due):
                await rearm.wait()
            rearm = trio.Event()
            now = trio.current_time()
            if due is not None and now >= due:
                mux.handle_timer(now)
                await flush()

    await flush()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        nursery.start_soon(timers)


def state(engine: Membership, name: str) -> State | None:
    member = engine.member(name)
    return None if member is None else member.state


def live(engine: Membership) -> set[str]:
    return {m.name for m in engine.members() if m.state == State.ALIVE}


async def test_a_cluster_under_trio_joins_heals_and_detects(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork(seed=1, default=LinkConditions(delay=0.002, jitter=0.002, loss=0.01))
    n = 8
    transports = [net.open_transport((f"10.6.0.{i + 1}", 7946)) for i in range(n)]
    seed = transports[0].local_address
    engines: list[Membership] = []
    events: list[list[object]] = [[] for _ in range(n)]
    names = {f"m{i}" for i in range(n)}
    async with trio.open_nursery() as nursery:
        for i, t in enumerate(transports):
            ctx = EngineContext(
                Codec(Keyring(KEY), replay=ReplayGuard()),
                t.local_address,
                StaticDiscovery(),
                random.Random(i),
                trio.current_time(),
            )
            engine = Membership(
                ctx, name=f"m{i}", config=MembershipConfig(), seeds=[seed] if i else ()
            )
            engines.append(engine)
            nursery.start_soon(pump, Mux([engine]), t, events[i])
        await trio.sleep(3.0)
        assert all(live(e) == names for e in engines)

        # A partition longer than the suspicion timeout: each side fails the other ...
        left, right = transports[:4], transports[4:]
        net.partition([t.local_address for t in left], [t.local_address for t in right])
        await trio.sleep(60.0)
        assert live(engines[0]) == {"m0", "m1", "m2", "m3"}
        assert live(engines[7]) == {"m4", "m5", "m6", "m7"}
        # ... and once it heals, the reconnect push-pulls (to the right side's seed, m0: the
        # dead were reaped after 30 s) merge them again.
        net.heal()
        await trio.sleep(60.0)
        assert all(live(e) == names for e in engines)

        net.crash(transports[5].local_address)
        start = trio.current_time()
        while not all(
            engines[i].member("m5") is not None and engines[i].member("m5").state == State.DEAD  # type: ignore[union-attr]
            for i in range(n)
            if i != 5
        ):
            await trio.sleep(0.1)
        assert trio.current_time() - start < 15.0
        nursery.cancel_scope.cancel()
    changes = [
        ev.change for ev in events[0] if isinstance(ev, MemberEvent) and ev.member.name == "m5"
    ]
    assert changes[0] == "joined" and changes[-1] == "failed"
    assert "left" not in changes
