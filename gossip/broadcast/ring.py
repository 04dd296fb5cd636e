"""The ring every node forwards along: all addresses sorted, the last followed by the first.

Handing each message to both ring neighbours makes the push wave alone reach every node at 0 %
loss (docs/protocol.md); the random targets keep the spread logarithmic.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import LRUCache

from gossip.transport.base import Address

__all__ = ["ring_neighbours"]

#: Sorted rings of recent peer sequences, by ``id`` (the entry keeps the sequence alive, so an
#: id is never reused while cached): engines sharing one list (a simulator's 100,000) sort it
#: once and then bisect.
_RINGS: LRUCache[int, tuple[Sequence[Address], list[Address], Callable[[Any], Any] | None]] = (
    LRUCache(maxsize=16)
)


def ring_neighbours(peers: Sequence[Address], address: Address) -> tuple[Address, ...]:
    """The peers after and before ``address`` on the ring of ``peers`` sorted (the largest is
    followed by the smallest): ``(successor, predecessor)``, one of them if they are the same
    peer, ``()`` without other peers; never ``address`` itself. Addresses that do not compare
    (mixed types) are ordered by their ``repr``."""
    entry = _RINGS.get(id(peers))
    if entry is None or entry[0] is not peers:
        unique = set(peers)
        try:
            entry = (peers, sorted(unique), None)
        except TypeError:
            entry = (peers, sorted(unique, key=repr), repr)
        _RINGS[id(peers)] = entry
    _, order, key = entry
    try:
        probe = address if key is None else key(address)
        after = bisect.bisect_right(order, probe, key=key)
        before = bisect.bisect_left(order, probe, key=key) - 1
    except TypeError:  # our own address does not compare with the peers'
        order, probe = sorted(order, key=repr), repr(address)
        after = bisect.bisect_right(order, probe, key=repr)
        before = bisect.bisect_left(order, probe, key=repr) - 1
    if not order:
        return ()
    found = (order[after % len(order)], order[before % len(order)])
    return tuple(dict.fromkeys(p for p in found if p != address))
