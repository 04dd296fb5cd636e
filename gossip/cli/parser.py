"""The ``gossip`` command line; it only parses arguments and dispatches.

Commands::

    gossip keygen PATH [--force]
        write a new cluster key file (mode 0600)
    gossip agent --bind HOST:PORT (--peers HOST:PORT[,...] | --join HOST:PORT[,...] |
                 --name NAME) [--meta KEY=VALUE ...]
                 [--profile native|go-gossip] [--key-file PATH | --passphrase-file PATH]
                 [--fanout N] [--transport udp|ebpf|tcp [--interface IF]] [--stream]
                 [--stats-interval SECONDS] [--delivery wait|drop]
                 [--push-window N] [--recv-buffer BYTES]
        run one node: stdin lines are published, delivered messages are JSON lines on stdout
        (flags, output and exit codes: :mod:`gossip.cli.agent`; they are a stable interface)
    gossip bridge --native-bind HOST:PORT --native-peers HOST:PORT[,...] [--key-file PATH]
                  --go-bind HOST:PORT --go-peers HOST:PORT[,...] [--passphrase-file PATH]
                  [--fanout N] [--gossip-number N] [--stats-interval SECONDS]
        one native node and one go-gossip node relaying messages both ways
        (:mod:`gossip.cli.bridge`)
    gossip demo [--nodes N] [--messages N] [--rate PER_S] [--size BYTES] [--seed N] [--static]
        a live loopback cluster and its numbers (:mod:`gossip.cli.demo`; ``make demo``)

Bad arguments exit with status 2 and a message on stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import trio

from gossip.cli.agent import AgentOptions, resolve_addresses, run_agent
from gossip.cli.bridge import BridgeOptions, run_bridge_command
from gossip.cli.common import parse_hostport
from gossip.cli.demo import DemoOptions, run_demo
from gossip.compat.gogossip.cipher import LegacyGoGossipCipher, read_passphrase_file
from gossip.compat.gogossip.wire import GOSSIP_NUMBER
from gossip.errors import GossipError, LocalProtocolError
from gossip.keyfile import read_key_file, write_key_file
from gossip.sim.cli import add_parser as add_sim_parser
from gossip.transport.udp import DEFAULT_RECV_BUFFER


def _keygen(args: argparse.Namespace) -> int:
    write_key_file(args.path, force=args.force)
    print(f"wrote a new cluster key to {args.path} (mode 0600)")
    return 0


def _hostport(text: str) -> tuple[str, int]:
    try:
        return parse_hostport(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _hostport_list(text: str) -> list[tuple[str, int]]:
    items = [item for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected HOST:PORT[,HOST:PORT...]")
    return [_hostport(item) for item in items]


def _tag(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _read_passphrase(path: str) -> LegacyGoGossipCipher:
    try:
        return LegacyGoGossipCipher(read_passphrase_file(path))
    except OSError as err:
        raise LocalProtocolError(
            f"cannot read passphrase file {path}: {err.strerror or err}"
        ) from None


#: Native push fan-out when ``--fanout`` is not given.
NATIVE_FANOUT = 3


def _agent(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    go = args.profile == "go-gossip"
    # Conflicts first: they are errors whatever the files hold.
    if go and args.key_file is not None:
        parser.error(
            "--key-file is for the native profile; with --profile go-gossip use --passphrase-file"
        )
    if not go and args.passphrase_file is not None:
        parser.error(
            "--passphrase-file needs --profile go-gossip; the native profile uses --key-file"
        )
    if args.transport != "udp" and go:
        parser.error(f"--transport {args.transport} is for the native profile only")
    if args.transport == "ebpf" and args.interface is None:
        parser.error("--transport ebpf needs --interface IF")
    if args.transport != "ebpf" and args.interface is not None:
        parser.error("--interface is only used with --transport ebpf")
    try:
        static = [p for group in args.peers or () for p in group]
        seeds = [p for group in args.join or () for p in group]
        bind, peers = resolve_addresses(args.bind, static)
        _, join = resolve_addresses(args.bind, seeds)
        keyring = None if args.key_file is None else read_key_file(args.key_file)
        cipher = None if args.passphrase_file is None else _read_passphrase(args.passphrase_file)
        options = AgentOptions(
            bind=bind,
            peers=peers,
            keyring=keyring,
            fanout=args.fanout or (GOSSIP_NUMBER if go else NATIVE_FANOUT),
            stats_interval=args.stats_interval,
            profile=args.profile,
            cipher=cipher,
            transport=args.transport,
            interface=args.interface,
            delivery=args.delivery,
            push_window=args.push_window,
            recv_buffer=args.recv_buffer,
            stream=args.stream,
            name=args.name,
            join=join,
            meta=tuple(args.meta or ()),
        )
    except LocalProtocolError as err:
        parser.error(str(err))  # exits 2
    return trio.run(run_agent, options)


def _bridge(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    try:
        native_bind, native_peers = resolve_addresses(
            args.native_bind, [p for group in args.native_peers for p in group]
        )
        go_bind, go_peers = resolve_addresses(
            args.go_bind, [p for group in args.go_peers for p in group]
        )
        options = BridgeOptions(
            native_bind=native_bind,
            native_peers=native_peers,
            go_bind=go_bind,
            go_peers=go_peers,
            keyring=None if args.key_file is None else read_key_file(args.key_file),
            cipher=None if args.passphrase_file is None else _read_passphrase(args.passphrase_file),
            fanout=args.fanout,
            gossip_number=args.gossip_number,
            stats_interval=args.stats_interval,
        )
    except LocalProtocolError as err:
        parser.error(str(err))  # exits 2
    return trio.run(run_bridge_command, options)


def _demo(args: argparse.Namespace) -> int:
    try:
        options = DemoOptions(
            nodes=args.nodes,
            messages=args.messages,
            rate=args.rate,
            size=args.size,
            seed=args.seed,
            static=args.static,
        )
    except LocalProtocolError as err:
        args.parser.error(str(err))
    report = trio.run(run_demo, options)
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The parser of every ``gossip`` command."""
    parser = argparse.ArgumentParser(prog="gossip", description="trio-gossip command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keygen", help="write a new cluster key file (mode 0600)")
    p.add_argument("path")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_keygen)
    p = sub.add_parser(
        "agent",
        help="run one node; stdin lines are published, messages are JSON lines on stdout",
        description="Run one gossip node on UDP. Every stdin line is published; every "
        "delivered message is a JSON line on stdout. See `pydoc gossip.cli.agent` for the format.",
    )
    p.add_argument(
        "--bind",
        required=True,
        type=_hostport,
        metavar="HOST:PORT",
        help="UDP address to listen on",
    )
    p.add_argument(
        "--peers",
        action="append",
        type=_hostport_list,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="a static cluster: peer addresses (IPv6 as [::1]:7946); may be repeated",
    )
    p.add_argument(
        "--join",
        action="append",
        type=_hostport_list,
        metavar="HOST:PORT[,HOST:PORT...]",
        help="a cluster with membership (SWIM + Lifeguard): seeds to join (none for the "
        "first node); may be repeated",
    )
    p.add_argument(
        "--name",
        help="this member's unique name (membership; default: the --bind address)",
    )
    p.add_argument(
        "--meta",
        action="append",
        type=_tag,
        metavar="KEY=VALUE",
        help="a string tag of this member (membership; repeatable, 512 bytes in all)",
    )
    p.add_argument(
        "--profile",
        choices=("native", "go-gossip"),
        default="native",
        help="native push-pull protocol (default) or the go-gossip compatibility profile",
    )
    p.add_argument(
        "--key-file", metavar="PATH", help="cluster key file from `gossip keygen` (native)"
    )
    p.add_argument(
        "--passphrase-file",
        metavar="PATH",
        help="go-gossip passphrase: legacy AES-256-CBC, NO integrity (go-gossip profile)",
    )
    p.add_argument(
        "--fanout",
        type=_positive_int,
        metavar="N",
        help="peers per push round, default 3; go-gossip: peers per pull round "
        "(GossipNumber), default 2",
    )
    p.add_argument(
        "--transport",
        choices=("udp", "ebpf", "tcp"),
        default="udp",
        help="udp (default), the eBPF cloner on --interface (native profile; falls back "
        "to udp when it cannot run), or tcp streams (native profile)",
    )
    p.add_argument("--interface", metavar="IF", help="interface of the eBPF cloner")
    p.add_argument(
        "--stream",
        action="store_true",
        help="also TCP streams on the --bind port: messages up to 64 KiB, packets over 1400 "
        "bytes go on a stream (native profile, udp or ebpf; every node needs it)",
    )
    p.add_argument(
        "--stats-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="print a stats JSON line this often",
    )
    p.add_argument(
        "--delivery",
        choices=("wait", "drop"),
        default="wait",
        help="when stdout falls behind: wait (default; take no new message until it catches "
        "up, anti-entropy brings them later) or drop (print fewer, count delivery_overflow)",
    )
    p.add_argument(
        "--push-window",
        type=_positive_int,
        default=64,
        metavar="N",
        help="own messages in their push round at most; stdin waits beyond (default 64)",
    )
    p.add_argument(
        "--recv-buffer",
        type=_positive_int,
        default=DEFAULT_RECV_BUFFER,
        metavar="BYTES",
        help="UDP receive buffer to ask for (default 4 MiB; the granted size is in stats)",
    )
    p.set_defaults(func=_agent, parser=p)
    p = sub.add_parser(
        "bridge",
        help="relay messages between a native cluster and a go-gossip cluster",
        description="Run one native node and one go-gossip-profile node in one process and "
        "relay every message delivered on one side into the other, once. Relays and stats are "
        "JSON lines on stdout. See `pydoc gossip.cli.bridge`.",
    )
    for side, what in (("native", "native (trio-gossip)"), ("go", "go-gossip")):
        p.add_argument(
            f"--{side}-bind",
            required=True,
            type=_hostport,
            metavar="HOST:PORT",
            help=f"UDP address of the {what} node",
        )
        p.add_argument(
            f"--{side}-peers",
            required=True,
            action="append",
            type=_hostport_list,
            metavar="HOST:PORT[,HOST:PORT...]",
            help=f"peers of the {what} node; may be repeated",
        )
    p.add_argument("--key-file", metavar="PATH", help="native cluster key file")
    p.add_argument(
        "--passphrase-file",
        metavar="PATH",
        help="go-gossip passphrase: legacy AES-256-CBC, NO integrity",
    )
    p.add_argument(
        "--fanout", type=_positive_int, default=3, metavar="N", help="native fanout; default 3"
    )
    p.add_argument(
        "--gossip-number",
        type=_positive_int,
        default=GOSSIP_NUMBER,
        metavar="N",
        help=f"go-gossip peers per pull round; default {GOSSIP_NUMBER}",
    )
    p.add_argument(
        "--stats-interval",
        type=_positive_float,
        metavar="SECONDS",
        help="print a stats JSON line this often",
    )
    p.set_defaults(func=_bridge, parser=p)
    p = sub.add_parser(
        "demo",
        help="run a local cluster, show dissemination live, then its numbers",
        description="Run a cluster on loopback UDP in one process, publish messages, stop a "
        "quarter of the nodes and publish again; print latency, packets and delivery ratio.",
    )
    p.add_argument("--nodes", type=_positive_int, default=32, metavar="N", help="default 32")
    p.add_argument(
        "--messages", type=_positive_int, default=200, metavar="N", help="per batch; default 200"
    )
    p.add_argument("--rate", type=_positive_float, default=25.0, metavar="PER_S", help="default 25")
    p.add_argument(
        "--size", type=_positive_int, default=256, metavar="BYTES", help="payload; default 256"
    )
    p.add_argument("--seed", type=int, help="seed origins, peer choices and victims")
    p.add_argument(
        "--static",
        action="store_true",
        help="a fixed peer list instead of membership (dead nodes stay in it)",
    )
    p.set_defaults(func=_demo, parser=p)
    add_sim_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command and exit with its status."""
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except GossipError as err:
        print(f"gossip: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)  # Ctrl-C before the agent's signal handler is installed, or in the demo
