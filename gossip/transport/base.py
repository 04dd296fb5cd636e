"""The seam between the gossip runtime and the network.

A transport moves whole datagrams. It never parses them: every byte it hands up is untrusted.
Sends must not block the caller's event loop for long; ``send`` and ``send_many`` return as
soon as the kernel took the datagram (they wait only when the socket buffer is full).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, Self, runtime_checkable

import attrs

__all__ = ["Address", "AsyncClosing", "Transport", "TransportStatistics"]

#: A peer's address: ``(host, port)`` with the host as a numeric IPv4 or IPv6 string.
Address = tuple[str, int]


@attrs.frozen
class TransportStatistics:
    """Counters of one transport (a snapshot)."""

    datagrams_sent: int = 0
    datagrams_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    send_errors: int = 0
    #: The receive buffer the kernel granted, in bytes (0: not a socket, or unknown).
    receive_buffer: int = 0
    #: Datagrams the kernel dropped for a full receive buffer (0 where it does not tell).
    receive_drops: int = 0
    #: Datagrams ``send_many`` handed to a fallback path (the eBPF transport uses it when the
    #: kernel fan-out cannot serve a group); keyed by reason. Empty for plain transports.
    fallbacks: dict[str, int] = attrs.field(factory=dict)


@runtime_checkable
class Transport(Protocol):
    """What the gossip runtime needs from a network.

    Implementations: :class:`gossip.transport.udp.UDPTransport`,
    :class:`gossip.transport.memory.MemoryTransport`, and the optional eBPF cloner.
    """

    @property
    def local_address(self) -> Address:
        """The address peers use to reach this transport."""
        ...

    async def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram to ``addr``. Errors of the network (unreachable peer, full
        buffer after waiting) are counted in ``send_errors``, never raised: gossip tolerates
        loss. Raises ``trio.ClosedResourceError`` after ``aclose`` (and in a send that
        ``aclose`` interrupts), ``trio.BrokenResourceError`` if the transport failed."""
        ...

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        """Send the same datagram to every address in ``addrs`` (a fan-out). Transports that
        can do this cheaper than a loop of ``send`` (the eBPF cloner) override it."""
        ...

    async def receive(self) -> tuple[bytes, Address]:
        """Wait for the next datagram and return it with its source address. Raises
        ``trio.ClosedResourceError`` once the transport is closed."""
        ...

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        ...

    async def aclose(self) -> None:
        """Release the socket; idempotent."""
        ...


class AsyncClosing:
    """Mixin: ``async with transport:`` closes it on exit (subclasses define ``aclose``)."""

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
