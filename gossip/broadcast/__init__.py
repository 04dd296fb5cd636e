"""The push-pull broadcast engine (packet types 0x01-0x0F): what the application publishes
through and receives from.

``engine.py`` holds the state machine (:class:`GossipEngine`: push rounds, ACKs, pull fallback,
anti-entropy, the cache and the seen set), ``config.py`` its parameters, ``statistics.py`` its
counters, ``ring.py`` the ring it forwards along. The wire format is in :mod:`gossip.wire`.
"""

from gossip.broadcast.config import CACHE_ENTRY_OVERHEAD, PULL_ATTEMPTS, GossipConfig
from gossip.broadcast.engine import GossipEngine
from gossip.broadcast.ring import ring_neighbours
from gossip.broadcast.statistics import EngineStatistics

__all__ = [
    "CACHE_ENTRY_OVERHEAD",
    "PULL_ATTEMPTS",
    "EngineStatistics",
    "GossipConfig",
    "GossipEngine",
    "ring_neighbours",
]
