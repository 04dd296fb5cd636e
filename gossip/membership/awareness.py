"""Lifeguard's local health (LHA-Probe), as memberlist's ``awareness.go``.

A score in ``0 .. awareness_max - 1``: raised when this node's probes fail without the nacks
its helpers should have sent, or when it must refute a suspicion of itself (both hint that
*this* node is slow); lowered by every successful probe. The probe interval and timeout are
multiplied by ``score + 1``, so a starved node probes (and accuses) less and waits longer.
"""

from __future__ import annotations

__all__ = ["Awareness"]


class Awareness:
    """The health score. ``enabled=False`` keeps it at 0 (plain SWIM)."""

    __slots__ = ("enabled", "max", "score")

    def __init__(self, awareness_max: int, *, enabled: bool = True) -> None:
        self.max = awareness_max
        self.enabled = enabled
        self.score = 0

    def apply(self, delta: int) -> None:
        """Add ``delta`` to the score, clamped to ``0 .. max - 1``."""
        if self.enabled:
            self.score = min(self.max - 1, max(0, self.score + delta))

    def scale(self, timeout: float) -> float:
        """``timeout`` stretched by the current score."""
        return timeout * (self.score + 1)
