"""``gossip sim``: simulate N real engines in virtual time and report how one message spreads.

Usage::

    gossip sim --nodes N [--seed S] [--loss P] [--crashed P] [--fanout F] [--json] [...]
    gossip sim --membership --nodes N [--loss P] [--crashed P] [--starved P] [--duration S]
        [--seed S] [--plain-swim] [--json]

``--membership`` runs the membership simulator (:mod:`gossip.sim.membership`: SWIM with
Lifeguard, or plain SWIM with ``--plain-swim``) instead of one broadcast: every node joins
through 3 seeds, ``--settle`` seconds of warm-up, then ``--starved`` nodes read each datagram
0.5-2.5 s late and ``--crashed`` nodes are killed at once, for ``--duration`` seconds; it
reports join convergence, crash detection, false suspicions and deaths, and traffic.

Probabilities are fractions (``0.1``) or percentages (``10%``). With ``--json`` the last line of
stdout is one JSON object (:func:`gossip.sim.report.to_dict`); otherwise a table. A progress
bar goes to stderr when it is a terminal (``--progress`` forces it, ``--no-progress`` hides it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from typing import Any

from gossip.broadcast import GossipConfig
from gossip.errors import LocalProtocolError
from gossip.membership import MembershipConfig
from gossip.sim.core import LAN, WAN, Latency, Scenario, Simulation
from gossip.sim.membership import MembershipScenario, format_membership, membership_to_dict
from gossip.sim.membership import simulate as simulate_membership
from gossip.sim.report import format_table, to_dict

__all__ = ["add_parser", "main", "run"]


def _probability(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a probability (0.1 or 10%), got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected seconds >= 0, got {text!r}")
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    return parse


def _latency(text: str) -> Latency:
    if text == "lan":
        return LAN
    if text == "wan":
        return WAN
    try:
        low, high = (float(part) / 1000 for part in text.split(":"))
        return Latency(low, high)
    except (ValueError, LocalProtocolError):
        raise argparse.ArgumentTypeError(
            f"expected lan, wan or LOW_MS:HIGH_MS, got {text!r}"
        ) from None


def add_parser(subparsers: Any) -> None:
    """Register the ``sim`` subcommand on ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "sim",
        help="simulate N nodes of the real engine in virtual time (deterministic)",
        description="Run N real GossipEngines over a simulated network in virtual time, push "
        "messages, and report time and hop-rounds to 50/90/99/99.99/100 % delivery, packets "
        "and bytes per node per message by type, the delivery ratio among live nodes and how "
        "many needed the pull path. One seed reproduces a run bit for bit.",
    )
    add_arguments(p)
    p.set_defaults(func=run, parser=p)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sim`` options (shared by ``gossip sim`` and ``python -m gossip.sim``)."""
    p.add_argument("--nodes", type=_count(2), required=True, metavar="N")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="default 0")
    p.add_argument("--loss", type=_probability, default=0.0, metavar="P", help="per datagram")
    p.add_argument(
        "--crashed", type=_probability, default=0.0, metavar="P", help="fraction of dead nodes"
    )
    p.add_argument("--fanout", type=_count(1), default=3, metavar="F", help="default 3")
    p.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    g = p.add_argument_group("engine")
    g.add_argument("--ack-timeout", type=_positive_seconds, metavar="S", help="default 0.3")
    g.add_argument("--min-ack-timeout", type=_positive_seconds, metavar="S", help="default 0.005")
    g.add_argument(
        "--fixed-ack", action="store_true", help="always wait --ack-timeout (no adaptive ACK)"
    )
    g.add_argument("--sync-interval", type=_positive_seconds, metavar="S", help="default 1")
    g.add_argument("--echo-suppression", type=_count(0), metavar="K", help="default 2 (0: off)")
    g.add_argument(
        "--no-ring",
        dest="ring_forward",
        action="store_false",
        help="all push targets random (default: both ring neighbours + fanout-2 random)",
    )
    g.add_argument("--encrypted", action="store_true", help="seal packets (default: off)")
    g = p.add_argument_group("network")
    g.add_argument(
        "--latency",
        type=_latency,
        default=None,
        metavar="lan|wan|LOW:HIGH",
        help="per hop, uniform: lan = 0.2:1 ms (default), wan = 20:120 ms, or LOW:HIGH in ms "
        "(--membership: default 1:3, 2 ms +- 1 ms)",
    )
    g.add_argument("--duplicate", type=_probability, default=0.0, metavar="P")
    g.add_argument(
        "--late-joiners", type=_probability, default=0.0, metavar="P", help="fraction of live"
    )
    g.add_argument(
        "--join-window", type=_seconds, default=1.0, metavar="S", help="they start within S"
    )
    g.add_argument(
        "--partition", type=_probability, default=0.0, metavar="P", help="fraction cut off"
    )
    g.add_argument("--heal-at", type=_seconds, default=1.0, metavar="S", help="after the push")
    g = p.add_argument_group("run")
    g.add_argument("--messages", type=_count(1), default=1, metavar="M", help="default 1")
    g.add_argument("--interval", type=_seconds, default=1.0, metavar="S", help="between pushes")
    g.add_argument(
        "--warmup", type=_count(0), default=0, metavar="W", help="unmeasured first messages"
    )
    g.add_argument("--payload", type=_count(0), default=256, metavar="BYTES", help="default 256")
    g.add_argument(
        "--max-time", type=_seconds, default=50.0, metavar="S", help="after the last push"
    )
    g = p.add_argument_group("membership (with --membership; the engine options above are ignored)")
    g.add_argument(
        "--membership",
        action="store_true",
        help="simulate SWIM + Lifeguard membership instead of one broadcast",
    )
    g.add_argument(
        "--starved", type=_probability, default=0.0, metavar="P", help="fraction reading late"
    )
    g.add_argument(
        "--duration", type=_seconds, default=60.0, metavar="S", help="after the warm-up (60)"
    )
    g.add_argument("--settle", type=_seconds, default=10.0, metavar="S", help="warm-up (10)")
    g.add_argument(
        "--crash-at", type=_seconds, default=0.0, metavar="S", help="after the warm-up (0)"
    )
    g.add_argument("--seeds", type=_count(1), default=3, metavar="K", help="seed nodes (3)")
    g.add_argument(
        "--plain-swim", action="store_true", help="Lifeguard's three parts off (the baseline)"
    )
    g.add_argument(
        "--join-only",
        action="store_true",
        help="stop when every node sees every node alive (within --settle; no faults)",
    )
    bar = g.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="force the bar")
    bar.add_argument("--no-progress", dest="progress", action="store_false")


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """Build the :class:`Scenario` (raises ``LocalProtocolError`` on inconsistent options)."""
    overrides: dict[str, Any] = {"fanout": args.fanout}
    if args.ack_timeout is not None:
        overrides["ack_timeout"] = args.ack_timeout
    if args.min_ack_timeout is not None:
        overrides["min_ack_timeout"] = args.min_ack_timeout
    elif args.ack_timeout is not None:
        overrides["min_ack_timeout"] = min(GossipConfig().min_ack_timeout, args.ack_timeout)
    if args.fixed_ack:
        overrides["adaptive_ack"] = False
    if args.sync_interval is not None:
        overrides["sync_interval"] = args.sync_interval
    if args.echo_suppression is not None:
        overrides["echo_suppression"] = args.echo_suppression
    if not args.ring_forward:
        overrides["ring_forward"] = False
    return Scenario(
        nodes=args.nodes,
        seed=args.seed,
        config=GossipConfig(**overrides),
        latency=args.latency if args.latency is not None else LAN,
        loss=args.loss,
        duplicate=args.duplicate,
        crashed=args.crashed,
        late_joiners=args.late_joiners,
        join_window=args.join_window,
        partition=args.partition,
        heal_at=args.heal_at,
        messages=args.messages,
        interval=args.interval,
        warmup=args.warmup,
        payload=args.payload,
        max_time=args.max_time,
        encrypted=args.encrypted,
    )


class _Bar:
    """A one-line progress bar on stderr, redrawn at most 5 times a second."""

    def __init__(self) -> None:
        self._last = 0.0
        self._started = time.perf_counter()

    def __call__(self, done: float, now: float, events: int) -> None:
        wall = time.perf_counter()
        if wall - self._last < 0.2:
            return
        self._last = wall
        filled = int(done * 30)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (30 - filled)}] {done * 100:6.2f} % delivered, "
            f"{now:7.3f} s virtual, {events:,} events, {wall - self._started:5.1f} s wall "
        )
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\r" + " " * 100 + "\r")
        sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    """The ``sim`` handler: exit status 0 (1 if a message missed a live node)."""
    parser: argparse.ArgumentParser = args.parser
    if args.membership:
        return run_membership(args)
    try:
        scenario = scenario_from_args(args)
    except LocalProtocolError as err:
        parser.error(str(err))  # exits 2
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = _Bar() if show else None
    sim = Simulation(scenario)
    try:
        result = sim.run(bar)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(to_dict(result), sort_keys=False))
    else:
        print(format_table(result))
    return 0 if result.complete else 1


def membership_scenario_from_args(args: argparse.Namespace) -> MembershipScenario:
    """The :class:`MembershipScenario` of ``--membership`` (``LocalProtocolError`` if bad)."""
    latency: Latency = args.latency if args.latency is not None else Latency(0.001, 0.003)
    return MembershipScenario(
        nodes=args.nodes,
        seed=args.seed,
        config=MembershipConfig.plain_swim() if args.plain_swim else MembershipConfig(),
        latency=latency.low,
        jitter=latency.high - latency.low,
        loss=args.loss,
        crashed=args.crashed,
        starved=args.starved,
        seeds=args.seeds,
        settle=args.settle,
        crash_at=args.crash_at,
        duration=args.duration,
        encrypted=args.encrypted,
        stop_when_joined=args.join_only,
    )


def run_membership(args: argparse.Namespace) -> int:
    """``--membership``: exit status 0 (1 if a crashed node was not failed everywhere, or
    the join did not converge within the warm-up)."""
    try:
        scenario = membership_scenario_from_args(args)
    except LocalProtocolError as err:
        args.parser.error(str(err))  # exits 2
    result = simulate_membership(scenario)
    if args.json:
        print(json.dumps(membership_to_dict(result), sort_keys=False))
    else:
        print(format_membership(result))
    ok = result.join_time is not None and all(t is not None for t in result.all_failed)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> None:
    """``python -m gossip.sim``: the same as ``gossip sim``."""
    parser = argparse.ArgumentParser(prog="gossip sim", description=__doc__.split("\n")[0])
    add_arguments(parser)
    parser.set_defaults(parser=parser)
    sys.exit(run(parser.parse_args(argv)))
