"""The discovery seam: the engine asks ``gossipiers()`` for peers whenever it picks some."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from gossip.errors import LocalProtocolError
from gossip.transport.base import Address

__all__ = ["Discovery", "StaticDiscovery"]


@runtime_checkable
class Discovery(Protocol):
    """Where a node finds its peers: any object with a :meth:`gossipiers` method (go-gossip's
    ``Discovery`` interface). Every engine takes one: the native engine, the go-gossip profile.

    A ``typing.Protocol``, so an object that merely has the method fits (and
    ``isinstance(obj, Discovery)`` says so), and a class may also subclass it explicitly, as
    the design card shows::

        class MyDiscovery(Discovery):
            def gossipiers(self) -> Sequence[Address]:
                return self.members

    The engine calls ``gossipiers()`` every time it chooses peers (each push, forward and sync
    round), so membership changes take effect at once. Keep it cheap: return a cached sequence
    and refresh it elsewhere (a DNS re-resolve task, a membership protocol's callback).
    """

    def gossipiers(self) -> Sequence[Address]:
        """The peers to gossip with: ``(host, port)`` pairs with numeric hosts. It may include
        this node's own address; the engine skips it. (``Gossipiers()`` in go-gossip.)"""
        raise NotImplementedError  # a subclass that forgot to override it


class StaticDiscovery(Discovery):
    """A fixed peer list, replaceable at run time with :meth:`set_peers`."""

    def __init__(self, peers: Iterable[Address] = ()) -> None:
        self._peers: tuple[Address, ...] = ()
        self.set_peers(peers)

    def set_peers(self, peers: Iterable[Address]) -> None:
        """Replace the peer list (duplicates removed, order kept)."""
        checked: dict[Address, None] = {}
        for peer in peers:
            if (
                not isinstance(peer, tuple)
                or len(peer) != 2
                or not isinstance(peer[0], str)
                or not isinstance(peer[1], int)
                or not 0 < peer[1] < 65536
            ):
                raise LocalProtocolError(f"a peer is a (host, port) tuple, got {peer!r}")
            checked[peer] = None
        self._peers = tuple(checked)

    def gossipiers(self) -> Sequence[Address]:
        return self._peers
