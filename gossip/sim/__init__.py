"""A deterministic discrete-event simulator of 10-100,000 real gossip engines (issue 4).

Usage::

    from gossip.sim import Scenario, simulate

    result = simulate(Scenario(nodes=10_000, seed=1, loss=0.1))
    print(result.messages[0].time_to["99.99"], result.per_node_message(result.sent))

``gossip sim`` is its command line (:mod:`gossip.sim.cli`); :mod:`gossip.sim.theory` has the
analytical models the results are compared with. :mod:`gossip.sim.membership` simulates the
membership engines (SWIM + Lifeguard: joins, crashes, starved nodes; ``gossip sim
--membership``).
"""

from gossip.sim.core import (
    FRACTIONS,
    LAN,
    PACKET_TYPES,
    WAN,
    Latency,
    MessageOutcome,
    Scenario,
    SimResult,
    Simulation,
    node_address,
    simulate,
)

__all__ = [
    "FRACTIONS",
    "LAN",
    "PACKET_TYPES",
    "WAN",
    "Latency",
    "MessageOutcome",
    "Scenario",
    "SimResult",
    "Simulation",
    "node_address",
    "simulate",
]
