"""Membership: SWIM with Lifeguard (issue 11), a sans-IO engine in the 0x10-0x1F range.

:class:`Membership` is the engine, and the node's :class:`~gossip.discovery.Discovery`
(``gossipiers()``: the live members). Rules live in their own modules: ``state`` (the member
table and incarnation rules), ``suspicion`` (Lifeguard's dynamic timeout), ``awareness``
(local health), ``queue`` (the piggyback queue), ``wire`` (packet bodies).
"""

from gossip.membership.config import MAX_METADATA, MAX_NAME, MembershipConfig
from gossip.membership.engine import (
    MemberConflict,
    MemberEvent,
    Membership,
    MembershipStatistics,
)
from gossip.membership.state import MemberInfo
from gossip.membership.wire import State, decode_tags_untrusted, encode_tags

__all__ = [
    "MAX_METADATA",
    "MAX_NAME",
    "MemberConflict",
    "MemberEvent",
    "MemberInfo",
    "Membership",
    "MembershipConfig",
    "MembershipStatistics",
    "State",
    "decode_tags_untrusted",
    "encode_tags",
]
