"""Discovery: who the peers are. Apps subclass :class:`Discovery`; the engine asks it often."""

from gossip.discovery.base import Discovery, StaticDiscovery

__all__ = ["Discovery", "StaticDiscovery"]
