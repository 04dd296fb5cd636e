"""A snapshot of the broadcast engine's counters (:meth:`GossipEngine.statistics`)."""

from __future__ import annotations

import attrs

__all__ = ["EngineStatistics"]


@attrs.frozen
class EngineStatistics:
    """A snapshot of an engine's counters."""

    datagrams_received: int
    datagrams_sent: int
    bytes_sent: int
    sent_by_type: dict[str, int]
    pushed: int
    delivered: int
    duplicates: int
    dropped: dict[str, int]
    acks_received: int
    late_acks: int
    ack_rounds_failed: int
    pull_syncs_sent: int
    pulled: int
    pull_retries: int
    cache_entries: int
    cache_bytes: int
    seen_entries: int
    cache_expired: int = 0
    cache_evicted_early: int = 0
    deferred: int = 0
    in_flight: int = 0
    #: The source's congestion window now (``push_window`` at most; halved by a failed round).
    window: int = 0
