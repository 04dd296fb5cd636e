"""Discovery: who the peers are. :class:`Discovery` is a Protocol (anything with
``gossipiers()``) that apps may also subclass; the engine asks it often."""

from gossip.discovery.base import Discovery, StaticDiscovery

__all__ = ["Discovery", "StaticDiscovery"]
