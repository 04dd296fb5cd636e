"""Analytical models the simulator's curves are compared with.

* Push rumour spreading needs ``log2 n + ln n`` rounds; push-pull needs ``log3 n + ln ln n``
  (Karp, Schindelhauer, Shenker, Vöcking 2000). A "round" is one hop here: an engine forwards a
  message as soon as it arrives, so hop counts play the part of rounds.
* serf's convergence model (the formula behind its "convergence simulator"):
  ``I(x)/N = 1 / (1 + (N+1) e^(-beta N x))`` with ``beta = fanout/N (1-loss) (1-failed) 0.5``,
  ``x`` in gossip rounds of 200 ms. It is a formula, not a measurement.
"""

from __future__ import annotations

import math
from typing import Final

__all__ = [
    "SERF_ROUND",
    "push_pull_rounds",
    "push_rounds",
    "serf_fraction",
    "serf_rounds",
    "serf_seconds",
]

#: serf's gossip interval (memberlist's LAN profile): one round of its model.
SERF_ROUND: Final = 0.2


def push_rounds(n: int) -> float:
    """Rounds push gossip needs to inform all ``n`` nodes: ``log2 n + ln n``."""
    return math.log2(n) + math.log(n)


def push_pull_rounds(n: int) -> float:
    """Rounds push-pull gossip needs: ``log3 n + ln ln n``."""
    return math.log(n, 3) + math.log(math.log(n))


def _beta_n(fanout: int, loss: float, failed: float) -> float:
    return fanout * (1 - loss) * (1 - failed) * 0.5


def serf_fraction(x: float, n: int, fanout: int, loss: float = 0.0, failed: float = 0.0) -> float:
    """serf's model: the fraction of ``n`` nodes informed after ``x`` rounds."""
    exponent = -_beta_n(fanout, loss, failed) * x
    return 1.0 / (1.0 + (n + 1) * math.exp(exponent))


def serf_rounds(
    fraction: float, n: int, fanout: int, loss: float = 0.0, failed: float = 0.0
) -> float:
    """Rounds until serf's model reaches ``fraction`` (1.0 is read as "all but half a node",
    since the logistic curve never reaches 1)."""
    fraction = min(fraction, 1 - 0.5 / n)
    beta_n = _beta_n(fanout, loss, failed)
    if beta_n <= 0:
        return math.inf
    return math.log((n + 1) * fraction / (1 - fraction)) / beta_n


def serf_seconds(
    fraction: float, n: int, fanout: int, loss: float = 0.0, failed: float = 0.0
) -> float:
    """:func:`serf_rounds` in seconds (200 ms rounds)."""
    return serf_rounds(fraction, n, fanout, loss, failed) * SERF_ROUND
