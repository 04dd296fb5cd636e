"""The piggyback queue (memberlist's ``TransmitLimitedQueue``): updates waiting to ride on
probe traffic, each sent to ``limit = retransmit_mult * ceil(log10(n + 1))`` members.

One entry per member name (news about a member replaces older news about it, which is
moot). Each packet takes the least-sent updates first, newest first among equals, while they
fit its byte budget. Bounded: when full, the most-sent (then oldest) entry goes.
"""

from __future__ import annotations

__all__ = ["BroadcastQueue"]


class BroadcastQueue:
    """Encoded updates by subject name, bucketed by how often each was sent."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        # _levels[t]: names sent t times, in insertion order (dicts keep it).
        self._levels: list[dict[str, bytes]] = [{}]
        self._level_of: dict[str, int] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._level_of)

    def __contains__(self, name: str) -> bool:
        return name in self._level_of

    def push(self, name: str, update: bytes) -> None:
        """Queue ``update`` about ``name``, replacing older news about it."""
        self._remove(name)
        if len(self._level_of) >= self.cap:
            self._evict()
        self._levels[0][name] = update
        self._level_of[name] = 0

    def take(self, budget: int, limit: int, count: int) -> list[bytes]:
        """Up to ``count`` updates of at most ``budget`` bytes in all; each taken one counts
        as sent once and leaves the queue after ``limit`` sends."""
        taken: list[tuple[str, bytes, int]] = []
        for t, level in enumerate(self._levels):
            if budget <= 0 or len(taken) >= count:
                break
            for name in reversed(level):  # newest first
                update = level[name]
                if len(update) <= budget:
                    taken.append((name, update, t))
                    budget -= len(update)
                    if len(taken) >= count:
                        break
        for name, _update, t in taken:
            update = self._levels[t].pop(name)
            if t + 1 >= limit:
                del self._level_of[name]
                continue
            while len(self._levels) <= t + 1:
                self._levels.append({})
            self._levels[t + 1][name] = update
            self._level_of[name] = t + 1
        return [u for _n, u, _t in taken]

    def _remove(self, name: str) -> None:
        t = self._level_of.pop(name, None)
        if t is not None:
            del self._levels[t][name]

    def _evict(self) -> None:
        for level in reversed(self._levels):
            if level:
                name = next(iter(level))
                del level[name]
                del self._level_of[name]
                self.evicted += 1
                return
