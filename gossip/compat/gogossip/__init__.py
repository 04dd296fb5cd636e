"""The go-gossip (HEAD) profile: ``wire.py`` its packet format (JSON bodies parsed by
``_json.py``), ``engine.py`` its sans-IO engine (owns every type byte, so it runs alone),
``runtime.py`` that engine over a transport (:func:`open_go_gossiper`), ``cipher.py``
go-gossip's AES-256-CBC (no integrity; never used by the native suite). See ``docs/interop.md``.
"""

from gossip.compat.gogossip.cipher import LegacyGoGossipCipher, read_passphrase_file
from gossip.compat.gogossip.engine import GoGossipEngine, GoGossipStatistics
from gossip.compat.gogossip.runtime import open_go_gossiper
from gossip.compat.gogossip.wire import (
    GOSSIP_NUMBER,
    MAX_DATAGRAM_SIZE,
    MAX_VALUE_SIZE,
    GoGossipPacket,
    PullRequest,
    PullResponse,
    chunk_items,
    decode_untrusted,
    encode,
)

__all__ = [
    "GOSSIP_NUMBER",
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
