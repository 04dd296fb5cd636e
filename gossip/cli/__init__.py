"""The ``gossip`` command line: ``parser.py`` parses arguments and dispatches; ``agent.py`` (a
JSON-lines node), ``bridge.py`` (native <-> go-gossip relay) and ``demo.py`` (a measured
loopback cluster) are the commands; ``common.py`` is what they share (addresses as text, the
``stats`` fields, a non-blocking line writer). The simulator's command is in :mod:`gossip.sim.cli`.
"""

from gossip.cli.parser import build_parser, main

__all__ = ["build_parser", "main"]
