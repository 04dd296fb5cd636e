"""The public API is importable from the package, and the README's example runs."""

from __future__ import annotations

import random

import trio
import trio.testing

import gossip


def test_everything_in_all_is_importable_and_typed() -> None:
    for name in gossip.__all__:
        assert getattr(gossip, name) is not None, name
    assert {"open_gossiper", "GossipConfig", "StaticDiscovery", "Keyring"} <= set(gossip.__all__)
    assert {"open_udp_transport", "open_tcp_transport", "MemoryNetwork"} <= set(gossip.__all__)


async def test_the_readme_example_on_two_nodes(autojump_clock: trio.testing.MockClock) -> None:
    key = gossip.generate_key()
    net = gossip.MemoryNetwork(seed=1)
    got: list[bytes] = []
    async with net.open() as ta, net.open() as tb:
        peers = [ta.local_address, tb.local_address]
        async with (
            gossip.open_gossiper(
                gossip.StaticDiscovery(peers), ta, keyring=gossip.Keyring(key), rng=random.Random(1)
            ) as a,
            gossip.open_gossiper(
                gossip.StaticDiscovery(peers), tb, keyring=gossip.Keyring(key), rng=random.Random(2)
            ) as b,
        ):
            await a.push(b"hello, cluster")
            with trio.fail_after(5):
                async for message in b:
                    got.append(message.data)
                    break
    assert got == [b"hello, cluster"]
