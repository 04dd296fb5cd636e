"""Transports: how datagrams move between gossip nodes."""

from gossip.transport.base import Address, Transport, TransportStatistics

__all__ = ["Address", "Transport", "TransportStatistics"]
