"""Settings of the membership engine: hashicorp/memberlist's LAN profile, and one switch per
Lifeguard part so that its benefit can be measured rather than assumed.

Times are in seconds. The derived quantities (push-pull interval scaled with the cluster,
retransmit limit) are methods, so the engine and the tests compute them one way.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from gossip.errors import LocalProtocolError

__all__ = ["MAX_METADATA", "MAX_NAME", "MembershipConfig"]

#: The largest metadata a member may carry (bytes), as kinship and memberlist allow.
MAX_METADATA = 512
#: The longest member name (UTF-8 bytes): one length byte on the wire.
MAX_NAME = 255


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise LocalProtocolError(f"{attribute.name} must be a positive number, got {value!r}")


def _non_negative(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise LocalProtocolError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _count(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise LocalProtocolError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _optional_count(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _count(instance, attribute, value)


@attrs.frozen
class MembershipConfig:
    """Membership settings. The defaults are memberlist's ``DefaultLANConfig`` (probe every
    1 s, timeout 500 ms, 3 indirect checks, gossip every 200 ms to 3, retransmit mult 4,
    push-pull every 30 s, local health up to 8x) but for two things that make a crash
    noticed in about 5 s instead of 10 (docs/benchmarks.md, issue 11): the *shared* probe
    schedule, and a suspicion timeout of ``max(3 s, 1.5 x log10 n x probe_interval)`` that
    reaches its minimum after 2 independent confirmations (memberlist: ``4 x log10 n x
    probe_interval``, 6.0 s at 32 members, and ``k = mult - 2``). The 3 s floor is what
    lets an overloaded member that reads its packets up to 2.5 s late refute in time.
    :meth:`memberlist_lan` is memberlist's profile exactly.

    Attributes:
        probe_interval: one member probed per interval (scaled by local health).
        probe_schedule: ``shared`` (the default): every node derives the same shuffled ring
            of members each round and at each step (wall-clock time / ``probe_interval``)
            probes the member as many places ahead of itself as the step says, so each
            member is probed by exactly one member per interval and a crash is noticed
            within about one interval; ``random``: SWIM's (and memberlist's) independent
            shuffle per node, where the wait for the first probe of a crashed member is
            exponential. Both probe every member once per round.
        probe_timeout: how long a direct Ping waits for its Ack before indirect probes
            (scaled by local health as well); must be below ``probe_interval``.
        indirect_checks: helpers asked to probe a silent member (``PingReq``).
        suspicion_mult: suspicion timeout ``min = mult * max(1, log10 n) * probe_interval``.
        suspicion_min: a floor under that ``min`` (seconds): a member must have time to hear
            the suspicion and refute even when it reads its packets late (an overloaded
            process), whatever the cluster's size.
        suspicion_max_timeout_mult: ``max = this * min`` (Lifeguard's starting timeout).
        suspicion_confirmations: independent confirmations that bring a suspicion's timeout
            down to ``min`` (Lifeguard's ``k``); ``None``: memberlist's ``suspicion_mult -
            2``.
        awareness_max: local health scores run ``0 .. awareness_max - 1``.
        gossip_interval: how often queued updates are sent on their own to ``gossip_nodes``.
        gossip_nodes: members each gossip round goes to.
        retransmit_mult: each update is piggybacked ``mult * ceil(log10(n + 1))`` times.
        push_pull_interval: full-state exchange with one member; stretched above 32 members.
        digest_sync: every Ping carries the prober's table digest (8 bytes: the XOR of a
            hash of each live member's name and incarnation); a member whose own digest
            keeps differing for 2 s exchanges full state with the prober (at most once per
            10 s), and the periodic push-pull is skipped while the digests seen agreed
            through the whole period. Idle, nothing but probes is sent; a difference is
            repaired within seconds instead of at the next push-pull. Off: memberlist's
            periodic push-pull only.
        join_followup: a second push-pull with one (live) seed this long after
            :meth:`~gossip.membership.Membership.join` (0: none), so that members that
            joined at the same time learn of each other without waiting for gossip to reach
            them all or for the next periodic push-pull.
        join_retry: while this node knows no live member, its seeds are tried again after
            this long, then twice as long each time up to ``reconnect_interval`` (agents
            started together may send their join before the seed listens).
        reconnect_interval: how often a push-pull goes to one member held dead or one seed
            that is not a live member (to all seeds when this node knows no live member), so
            that a healed partition or a lost join still converges. Nothing is sent while
            every seed is a live member and nobody is dead.
        reap_time: dead and left members are kept this long (answering late news) then
            forgotten.
        gossip_to_the_dead: dead members stay gossip targets this long, so a paused node
            hears it was declared dead and refutes.
        local_health, dynamic_suspicion, buddy: the three Lifeguard parts. Off: the score
            stays 0 (and no Nack is expected), the suspicion timeout is the fixed ``min``, a
            Ping to a suspect does not carry the suspicion.
        max_members: the member table's cap (news of more members is dropped, counted).
        max_queue: updates waiting to be piggybacked; the most-sent go first when full.
        max_pending: indirect probes this node runs for others at once (more are refused).
    """

    probe_interval: float = attrs.field(default=1.0, validator=_positive)
    probe_timeout: float = attrs.field(default=0.5, validator=_positive)
    probe_schedule: str = attrs.field(
        default="shared", validator=attrs.validators.in_(("shared", "random"))
    )
    indirect_checks: int = attrs.field(default=3, validator=_count)
    suspicion_mult: float = attrs.field(default=1.5, validator=_positive)
    suspicion_min: float = attrs.field(default=3.0, validator=_non_negative)
    suspicion_max_timeout_mult: float = attrs.field(default=6, validator=_positive)
    suspicion_confirmations: int | None = attrs.field(default=2, validator=_optional_count)
    awareness_max: int = attrs.field(default=8, validator=_positive)
    gossip_interval: float = attrs.field(default=0.2, validator=_positive)
    gossip_nodes: int = attrs.field(default=3, validator=_count)
    retransmit_mult: int = attrs.field(default=4, validator=_positive)
    push_pull_interval: float = attrs.field(default=30.0, validator=_positive)
    digest_sync: bool = True
    join_followup: float = attrs.field(default=1.0, validator=_non_negative)
    join_retry: float = attrs.field(default=1.0, validator=_positive)
    reconnect_interval: float = attrs.field(default=30.0, validator=_positive)
    reap_time: float = attrs.field(default=30.0, validator=_positive)
    gossip_to_the_dead: float = attrs.field(default=30.0, validator=_positive)
    local_health: bool = True
    dynamic_suspicion: bool = True
    buddy: bool = True
    max_members: int = attrs.field(default=65536, validator=_positive)
    max_queue: int = attrs.field(default=4096, validator=_positive)
    max_pending: int = attrs.field(default=256, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.probe_timeout >= self.probe_interval:
            raise LocalProtocolError("probe_timeout must be shorter than probe_interval")

    @classmethod
    def memberlist_lan(cls, **changes: Any) -> MembershipConfig:
        """hashicorp/memberlist's ``DefaultLANConfig`` as it is: suspicion ``4 x log10 n x
        probe_interval`` with ``k = 2``, each node's own shuffled probe order."""
        settings: dict[str, Any] = {
            "suspicion_mult": 4,
            "suspicion_min": 0.0,
            "suspicion_confirmations": None,
            "probe_schedule": "random",
            "digest_sync": False,
        }
        return cls(**(settings | changes))

    @classmethod
    def plain_swim(cls, **changes: Any) -> MembershipConfig:
        """SWIM without any Lifeguard part (the baseline Lifeguard is measured against)."""
        return cls(local_health=False, dynamic_suspicion=False, buddy=False, **changes)

    def confirmations_wanted(self) -> int:
        """Lifeguard's ``k``: confirmations that bring a suspicion down to ``min``."""
        if self.suspicion_confirmations is not None:
            return self.suspicion_confirmations
        return max(0, math.ceil(self.suspicion_mult) - 2)

    def retransmit_limit(self, n: int) -> int:
        """How many times an update is piggybacked in a cluster of ``n`` members."""
        return self.retransmit_mult * math.ceil(math.log10(max(1, n) + 1))

    def push_pull_period(self, n: int) -> float:
        """memberlist's ``pushPullScale``: the interval up to 32 members, then one more
        interval per doubling (about 3x at 100), so full-state traffic stays flat."""
        if n <= 32:
            return self.push_pull_interval
        return self.push_pull_interval * (math.ceil(math.log2(n) - math.log2(32)) + 1)
