"""One exception hierarchy, split by whose fault an error is (as h11 does).

``LocalProtocolError``: the caller misused the API (bad configuration, a payload too large for
a datagram, use after close). ``RemoteProtocolError``: a peer sent bytes we refuse. The engine
turns every ``RemoteProtocolError`` into a dropped, counted packet; it never reaches the
application and never crashes a node.
"""

from __future__ import annotations

__all__ = [
    "DecryptError",
    "GossipError",
    "LocalProtocolError",
    "MalformedPacket",
    "RemoteProtocolError",
]


class GossipError(Exception):
    """Base class of every error this library raises on purpose."""


class LocalProtocolError(GossipError):
    """The API was misused: bad configuration, oversized payload, use after close."""


class RemoteProtocolError(GossipError):
    """A peer sent bytes we refuse. Subclasses say why; ``reason`` is a short stable tag
    used as the key of the dropped-packet counters."""

    reason: str = "remote"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class MalformedPacket(RemoteProtocolError):
    """The datagram does not parse: truncated, oversized, unknown version/type, bad lengths."""

    reason = "malformed"


class DecryptError(RemoteProtocolError):
    """The datagram parses but fails authentication: wrong or unknown key, bad MAC, bad
    padding, refused plaintext, or a replay outside the window or seen before."""

    reason = "decrypt"
