"""The member table and SWIM's incarnation rules, as pure bookkeeping (no packets, no timers).

Rules for news about *another* member (news about this node is the engine's: it refutes)::

    news                  known as            accepted when                  change reported
    Alive(i, addr, meta)  unknown             address not held by a live one joined
                          alive, same addr    i > inc                        updated (meta) / -
                          suspect, same addr  i > inc                        alive
                          dead/left           i > inc, or a new address      joined (a rejoin)
                          alive/suspect at another address, or another live name at this
                          address                                            conflict (not merged)
    Suspect(i)            alive               i >= inc                       suspect
                          suspect             i >= inc                       (a confirmation)
    Dead(i)               alive/suspect       i >= inc                       failed
    Leave(i)              alive/suspect/dead  i >= inc                       left

Older incarnations are ignored, so a stale update can never undo a newer one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Final

import attrs

from gossip.membership.wire import State
from gossip.transport.base import Address

__all__ = ["CONFIRM", "FULL", "SILENT", "Conflict", "Member", "MemberInfo", "MemberTable"]

#: Outcomes besides a change name: accepted without an event; a repeated suspicion; the
#: table is full.
SILENT: Final = ""
CONFIRM: Final = "confirm"
FULL: Final = "full"
_LIVE: Final = (State.ALIVE, State.SUSPECT)


@attrs.frozen
class MemberInfo:
    """A member as the application sees it (a snapshot)."""

    name: str
    address: Address
    state: State
    incarnation: int
    meta: bytes


@attrs.frozen
class Conflict:
    """News that would merge two members: ``kind`` is ``name`` (a known live name at another
    address) or ``address`` (a known live address under another name)."""

    kind: str
    known: MemberInfo
    name: str
    address: Address


class Member:
    """One row of the table (mutable; the engine hands out :class:`MemberInfo` copies)."""

    __slots__ = ("address", "incarnation", "meta", "name", "since", "state")

    def __init__(  # noqa: PLR0917
        self, name: str, address: Address, state: State, incarnation: int, meta: bytes, since: float
    ) -> None:
        self.name = name
        self.address = address
        self.state = state
        self.incarnation = incarnation
        self.meta = meta
        self.since = since  # when the state last changed

    def info(self) -> MemberInfo:
        return MemberInfo(self.name, self.address, self.state, self.incarnation, self.meta)


def member_hash(name: str, incarnation: int) -> int:
    """64 bits of one live member's identity in the table digest (the same on every node)."""
    raw = hashlib.blake2b(name.encode() + incarnation.to_bytes(4, "big"), digest_size=8)
    return int.from_bytes(raw.digest(), "big")


class MemberTable:
    """Members by name and by address, this node included; at most ``cap`` rows.

    ``digest`` is the XOR of :func:`member_hash` over the live members (this node
    included), kept up to date by every change: two nodes whose digests agree hold the same
    live members at the same incarnations (up to a 2^-64 chance), without exchanging them.
    """

    def __init__(self, local: Member, cap: int) -> None:
        self.local = local
        self.cap = cap
        self._by_name: dict[str, Member] = {local.name: local}
        self._by_addr: dict[Address, str] = {local.address: local.name}
        self._live: tuple[Address, ...] | None = None
        self._live_count = 1  # kept up to date by every change: n is asked per packet
        self.digest = member_hash(local.name, local.incarnation)
        #: Dead and departed members (not this node), in the order they went down: gossip
        #: to the dead, reconnects and reaping read it instead of the whole table.
        self.down: dict[str, Member] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Member]:
        return iter(self._by_name.values())

    def get(self, name: str) -> Member | None:
        return self._by_name.get(name)

    def by_address(self, address: Address) -> Member | None:
        name = self._by_addr.get(address)
        return None if name is None else self._by_name.get(name)

    def live_count(self) -> int:
        """Alive and suspect members, this node included (``n`` of the formulas)."""
        return self._live_count

    def live_addresses(self) -> tuple[Address, ...]:
        """Addresses of the alive and suspect members but this node (cached)."""
        live = self._live
        if live is None:
            live = self._rebuild()
        return live

    def _xor(self, m: Member) -> None:
        """Toggle ``m`` in the digest (call before and after changing a live member)."""
        if m.state in _LIVE:
            self.digest ^= member_hash(m.name, m.incarnation)

    def bump_local(self, incarnation: int, meta: bytes | None = None) -> None:
        """This node's new incarnation (a refutation, new metadata)."""
        local = self.local
        self._xor(local)
        local.incarnation = incarnation
        if meta is not None:
            local.meta = meta
        self._xor(local)

    def leave_local(self, now: float) -> None:
        """This node leaves: it is no longer counted among the live."""
        self._xor(self.local)
        if self.local.state in _LIVE:
            self._live_count -= 1
        self.local.state, self.local.since = State.LEFT, now
        self._live = None

    def _rebuild(self) -> tuple[Address, ...]:
        local = self.local
        self._live = tuple(
            m.address for m in self._by_name.values() if m.state in _LIVE and m is not local
        )
        return self._live

    def alive(
        self, name: str, address: Address, incarnation: int, meta: bytes, now: float
    ) -> str | Conflict | None:
        """Apply ``Alive`` news about another member; ``None``: ignored (stale)."""
        m = self._by_name.get(name)
        holder = self._by_addr.get(address)
        if holder is not None and holder != name:
            other = self._by_name[holder]
            if other.state in _LIVE:
                return Conflict("address", other.info(), name, address)
        if m is None:
            if len(self._by_name) >= self.cap:
                return FULL
            m = self._by_name[name] = Member(name, address, State.ALIVE, incarnation, meta, now)
            self._by_addr[address] = name
            self._xor(m)
            self._live = None
            self._live_count += 1
            return "joined"
        if m.address != address:
            if m.state in _LIVE:
                return Conflict("name", m.info(), name, address)
            # A dead or departed member back at a new address: a new life, whatever its
            # incarnation (a restarted process starts again from 0).
            if self._by_addr.get(m.address) == name:
                del self._by_addr[m.address]
            m.address = address
            self._by_addr[address] = name
            self._live = None
        elif incarnation <= m.incarnation:
            return None
        old = m.state
        meta_changed = meta != m.meta
        self._xor(m)
        m.state, m.incarnation, m.meta = State.ALIVE, incarnation, meta
        self._xor(m)
        if old == State.ALIVE:
            return "updated" if meta_changed else SILENT
        m.since = now
        self._live = None
        if old == State.SUSPECT:
            return "alive"
        self._live_count += 1
        self.down.pop(name, None)
        return "joined"

    def suspect(self, name: str, incarnation: int, now: float) -> str | None:
        """Apply ``Suspect`` news: ``suspect`` (new), ``confirm`` (already), ``None``."""
        m = self._by_name.get(name)
        if m is None or incarnation < m.incarnation or m.state not in _LIVE:
            return None
        self._xor(m)
        m.incarnation = incarnation
        self._xor(m)
        if m.state == State.SUSPECT:
            return CONFIRM
        m.state, m.since = State.SUSPECT, now
        return "suspect"

    def dead(self, name: str, incarnation: int, now: float, *, left: bool) -> str | None:
        """Apply ``Dead`` (``left=False``) or ``Leave`` news: ``failed``, ``left`` or ``None``."""
        m = self._by_name.get(name)
        if m is None or incarnation < m.incarnation or m.state == State.LEFT:
            return None
        if m.state == State.DEAD and not left:
            return None
        self._xor(m)
        if m.state in _LIVE:
            self._live_count -= 1
        m.state = State.LEFT if left else State.DEAD
        m.incarnation, m.since = incarnation, now
        self._live = None
        self.down.pop(name, None)  # re-inserted: the dict stays in order of going down
        self.down[name] = m
        return "left" if left else "failed"

    def reap(self, before: float) -> list[Member]:
        """Forget the dead and departed members whose state changed before ``before``."""
        gone: list[Member] = []
        for m in self.down.values():  # oldest first
            if m.since >= before:
                break
            gone.append(m)
        for m in gone:
            del self._by_name[m.name]
            del self.down[m.name]
            if self._by_addr.get(m.address) == m.name:
                del self._by_addr[m.address]
        return gone
