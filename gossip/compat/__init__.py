"""Compatibility profiles: speaking other gossip libraries' wire formats.

:mod:`gossip.compat.gogossip` is the go-gossip (HEAD) codec,
:mod:`gossip.compat.gogossip_engine` its sans-IO engine,
:mod:`gossip.compat.runtime` runs that engine over a transport (:func:`open_go_gossiper`), and
:mod:`gossip.compat.legacy_cipher` go-gossip's AES-256-CBC, which has no integrity and is
never used by the native suite. See ``docs/interop.md``.
"""

from gossip.compat.gogossip import (
    MAX_DATAGRAM_SIZE,
    MAX_VALUE_SIZE,
    GoGossipPacket,
    PullRequest,
    PullResponse,
    chunk_items,
    decode_untrusted,
    encode,
)
from gossip.compat.gogossip_engine import GoGossipEngine, GoGossipStatistics
from gossip.compat.legacy_cipher import LegacyGoGossipCipher, read_passphrase_file
from gossip.compat.runtime import open_go_gossiper

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
