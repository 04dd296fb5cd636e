"""Lifeguard's dynamic suspicion timeout (LHA-Suspicion), as memberlist's ``suspicion.go``.

A suspicion starts with a long timeout, ``max``, and shrinks towards ``min`` as *independent*
confirmations arrive (other members suspecting the same incarnation)::

    min     = max(suspicion_min, suspicion_mult * max(1, log10 n) * probe_interval)
    max     = max_timeout_mult * min
    timeout = max(min, max - log(c + 1) / log(k + 1) * (max - min)),  k = suspicion_mult - 2

A node the whole cluster fails to reach is declared dead after about ``min``; one that a
single (perhaps overloaded) prober accuses gets ``max`` to hear of it and refute.
"""

from __future__ import annotations

import math

__all__ = ["Suspicion", "suspicion_bounds", "suspicion_timeout"]


def suspicion_bounds(
    n: int,
    suspicion_mult: float,
    max_timeout_mult: float,
    probe_interval: float,
    floor: float = 0.0,
) -> tuple[float, float]:
    """``(min, max)`` timeouts for a cluster of ``n`` members (``min`` at least ``floor``)."""
    low = max(floor, suspicion_mult * max(1.0, math.log10(max(1, n))) * probe_interval)
    return low, max_timeout_mult * low


def suspicion_timeout(confirmations: int, k: int, low: float, high: float) -> float:
    """The timeout after ``confirmations`` of ``k`` wanted (``k < 1``: always ``low``)."""
    if k < 1:
        return low
    frac = math.log(confirmations + 1) / math.log(k + 1)
    return max(low, high - frac * (high - low))


class Suspicion:
    """One suspected member: when it started, who confirmed, when it expires.

    Args:
        name: the suspected member.
        incarnation: the suspected incarnation (a refutation carries a higher one).
        accuser: the member whose suspicion started this one (not a confirmation).
        k: confirmations wanted to reach ``low``; ``0`` gives the fixed timeout ``low``.
        low, high: the timeout bounds (:func:`suspicion_bounds`).
        start: when this node learned of the suspicion.
    """

    __slots__ = (
        "_confirmed",
        "deadline",
        "extended",
        "high",
        "incarnation",
        "k",
        "low",
        "name",
        "start",
    )

    def __init__(  # noqa: PLR0917
        self,
        name: str,
        incarnation: int,
        accuser: str,
        k: int,
        low: float,
        high: float,
        start: float,
    ) -> None:
        self.name = name
        self.incarnation = incarnation
        self.k = k
        self.low = low
        self.high = high if k >= 1 else low
        self.start = start
        self._confirmed = {accuser}
        self.deadline = start + self.high
        #: The engine granted one more interval because its own timer ran late.
        self.extended = False

    @property
    def confirmations(self) -> int:
        """Independent confirmations so far (the accuser excluded)."""
        return len(self._confirmed) - 1

    def confirm(self, accuser: str) -> bool:
        """Count ``accuser``'s suspicion; ``True`` if it is new (worth gossiping on).

        Bounded: once ``k`` confirmations are in, the timeout is ``low`` and more names are
        not stored.
        """
        if self.confirmations >= self.k or accuser in self._confirmed:
            return False
        self._confirmed.add(accuser)
        self.deadline = self.start + suspicion_timeout(
            self.confirmations, self.k, self.low, self.high
        )
        return True
