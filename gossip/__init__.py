"""trio-gossip: push-pull gossip for trio, with authenticated AES-256-CBC packets."""

from gossip.crypto import Keyring, generate_key, key_from_passphrase
from gossip.errors import (
    DecryptError,
    GossipError,
    LocalProtocolError,
    MalformedPacket,
    RemoteProtocolError,
)
from gossip.wire import (
    Codec,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
)

__version__ = "0.1.0"

__all__ = [
    "Codec",
    "DecryptError",
    "GossipError",
    "Keyring",
    "LocalProtocolError",
    "MalformedPacket",
    "PullRequest",
    "PullResponse",
    "PullSync",
    "PushAck",
    "PushMessage",
    "RemoteProtocolError",
    "__version__",
    "generate_key",
    "key_from_passphrase",
]
