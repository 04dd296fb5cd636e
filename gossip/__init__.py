"""trio-gossip: push-pull gossip for trio, with authenticated AES-256-CBC packets.

The public API, importable from here::

    from gossip import Keyring, StaticDiscovery, generate_key, open_gossiper, open_udp_transport

    async with open_udp_transport("127.0.0.1", 7946) as transport:
        async with open_gossiper(StaticDiscovery(peers), transport, keyring=Keyring(key)) as node:
            await node.push(b"hello")

The eBPF transport (``gossip.transport.ebpf.open_ebpf_transport``) is imported from its module:
it loads ctypes bindings this package does not need otherwise.
"""

from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.crypto import Keyring, generate_key, key_from_passphrase
from gossip.discovery import Discovery, StaticDiscovery
from gossip.engine import Engine, EngineContext, Publisher
from gossip.errors import (
    DecryptError,
    GossipError,
    LocalProtocolError,
    MalformedPacket,
    RemoteProtocolError,
)
from gossip.events import MessageDelivered, Outgoing, PacketDropped
from gossip.node import Gossiper, GossiperStatistics, Message, open_gossiper, run_engine
from gossip.transport.base import Address, Transport, TransportStatistics
from gossip.transport.memory import LinkConditions, MemoryNetwork
from gossip.transport.tcp import open_tcp_transport
from gossip.transport.udp import open_udp_transport
from gossip.wire import (
    PACKET_RANGES,
    Codec,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
    packet_range,
)

__version__ = "0.1.0"

__all__ = [
    "PACKET_RANGES",
    "Address",
    "Codec",
    "DecryptError",
    "Discovery",
    "Engine",
    "EngineContext",
    "EngineStatistics",
    "GossipConfig",
    "GossipEngine",
    "GossipError",
    "Gossiper",
    "GossiperStatistics",
    "Keyring",
    "LinkConditions",
    "LocalProtocolError",
    "MalformedPacket",
    "MemoryNetwork",
    "Message",
    "MessageDelivered",
    "Outgoing",
    "PacketDropped",
    "Publisher",
    "PullRequest",
    "PullResponse",
    "PullSync",
    "PushAck",
    "PushMessage",
    "RemoteProtocolError",
    "StaticDiscovery",
    "Transport",
    "TransportStatistics",
    "__version__",
    "generate_key",
    "key_from_passphrase",
    "open_gossiper",
    "open_tcp_transport",
    "open_udp_transport",
    "packet_range",
    "run_engine",
]
