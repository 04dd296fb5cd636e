"""The trio runtime of the go-gossip profile: :class:`GoGossipEngine` over a transport.

A thin wrapper around :func:`gossip.node.run_engine`, the same pump that drives the native
engine, so a go-gossip node is a :class:`~gossip.node.Gossiper` like a native one
(``push``, ``receive``, ``statistics``).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from gossip.compat.gogossip.cipher import LegacyGoGossipCipher
from gossip.compat.gogossip.engine import GoGossipEngine
from gossip.compat.gogossip.wire import GOSSIP_NUMBER
from gossip.discovery.base import Discovery
from gossip.node import Gossiper, run_engine
from gossip.transport.base import Transport

__all__ = ["open_go_gossiper"]


@asynccontextmanager
async def open_go_gossiper(
    discovery: Discovery,
    transport: Transport,
    *,
    cipher: LegacyGoGossipCipher | None = None,
    gossip_number: int = GOSSIP_NUMBER,
    rng: random.Random | None = None,
    delivery_queue: int = 1024,
) -> AsyncIterator[Gossiper[GoGossipEngine]]:
    """Run a go-gossip-profile node on ``transport`` until the block exits.

    Example::

        async with await open_udp_transport("0.0.0.0", 7946) as transport:
            async with open_go_gossiper(StaticDiscovery(peers), transport) as node:
                await node.push(b"hello")          # served to the peers' next PullRequests
                async for message in node:         # message.key: go-gossip's 8-byte key
                    print(message.data)

    Args:
        discovery: where peers come from (``gossipiers()``).
        transport: the network; the caller keeps ownership (it is not closed here).
        cipher: go-gossip's legacy cipher (no integrity); ``None`` for a plaintext cluster.
        gossip_number: peers per PullRequest round (Go's ``GossipNumber``).
        rng: randomness for peer choice and message keys; default ``random.SystemRandom()``
            (seed a ``random.Random`` only in tests).
        delivery_queue: messages buffered for the application before ``delivery_overflow``.

    Raises:
        LocalProtocolError: a setting out of range.
    """
    clock_offset = time.time() - trio.current_time()
    engine = GoGossipEngine(
        discovery,
        rng=random.SystemRandom() if rng is None else rng,
        cipher=cipher,
        now=trio.current_time(),
        local_address=transport.local_address,
        gossip_number=gossip_number,
    )
    async with run_engine(
        engine, transport, delivery_queue=delivery_queue, clock_offset=clock_offset
    ) as gossiper:
        yield gossiper
