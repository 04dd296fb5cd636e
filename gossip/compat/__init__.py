"""Compatibility profiles: speaking other gossip libraries' wire formats.

:mod:`gossip.compat.gogossip` is go-gossip (HEAD): its codec, engine, runtime and cipher.
See ``docs/interop.md``.
"""

from gossip.compat.gogossip import (
    MAX_DATAGRAM_SIZE,
    MAX_VALUE_SIZE,
    GoGossipEngine,
    GoGossipPacket,
    GoGossipStatistics,
    LegacyGoGossipCipher,
    PullRequest,
    PullResponse,
    chunk_items,
    decode_untrusted,
    encode,
    open_go_gossiper,
    read_passphrase_file,
)

__all__ = [
    "MAX_DATAGRAM_SIZE",
    "MAX_VALUE_SIZE",
    "GoGossipEngine",
    "GoGossipPacket",
    "GoGossipStatistics",
    "LegacyGoGossipCipher",
    "PullRequest",
    "PullResponse",
    "chunk_items",
    "decode_untrusted",
    "encode",
    "open_go_gossiper",
    "read_passphrase_file",
]
