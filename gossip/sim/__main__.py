"""``python -m gossip.sim``: the ``gossip sim`` command."""

from gossip.sim.cli import main

main()
