"""Memory is bounded by configuration: RSS of one node after 10^5 distinct 1 KiB messages.

Run: ``python -m bench.memory_bound [--messages 100000] [--size 1024] [--configs default,bytes]``.

Each configuration runs one node in a fresh subprocess (this module with ``--serve``): the
real runtime (``open_gossiper`` over ``open_udp_transport``, encrypted), an application task
that reads and discards every delivered message, and a peer list of this process's feeder
socket and three sink sockets that nobody reads (so the node forwards every message and keeps
its ACK rounds, as in a cluster). The feeder seals ``--messages`` distinct ``PushMessage`` s
(``--size`` bytes of payload each, one key each) with the cluster key and sends them, at most
``--window`` without their ``PushAck`` (flow control by ACKs, so nothing is lost to a full
socket buffer).

The subprocess reports its RSS (``/proc/self/status``) when idle (started, nothing received)
and after the last message was acknowledged, with its engine's counters. The acceptance bound
(issue 3) is ``final RSS - idle RSS <= cache_bytes + 20 MiB``.

Configurations:
    default: ``GossipConfig()`` (no entry bound, cache_bytes 64 MiB: 10^5 messages of 1 KiB
        fill it, so the byte bound binds at its default).
    bytes: ``cache_entries`` 10^6, cache_bytes 8 MiB: a small byte bound binds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from bench._proc import read_status_kib
from gossip.broadcast import GossipConfig
from gossip.crypto import Keyring, generate_key
from gossip.discovery.base import StaticDiscovery
from gossip.node import open_gossiper
from gossip.transport.udp import open_udp_transport
from gossip.wire import Codec, PacketType, PushMessage, new_message_key

MIB = 1 << 20
#: Allowance on top of the configured cache bytes (issue 3).
SLACK_BYTES = 20 * MIB

CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "bytes": {"cache_entries": 1_000_000, "cache_bytes": 8 * MIB},
}


# --------------------------------------------------------------------------- the node process


def _stats_line(node: Any, delivered: int) -> str:
    status = read_status_kib()
    return json.dumps(
        {
            "rss_kib": status["VmRSS"],
            "hwm_kib": status["VmHWM"],
            "app_delivered": delivered,
            **attrs.asdict(node.statistics()),
        }
    )


async def serve(key: bytes, peers: list[tuple[str, int]], config: GossipConfig) -> None:
    """The node: print ``ready`` with its address, then answer ``stats`` lines on stdin."""
    delivered = 0
    async with (
        await open_udp_transport("127.0.0.1", 0, recv_buffer=4 * MIB) as transport,
        open_gossiper(StaticDiscovery(peers), transport, config, keyring=Keyring(key)) as node,
        trio.open_nursery() as nursery,
    ):

        async def consume() -> None:
            nonlocal delivered
            async for _ in node:
                delivered += 1

        nursery.start_soon(consume)
        print(json.dumps({"ready": list(transport.local_address)}), flush=True)
        while True:
            line = await trio.to_thread.run_sync(sys.stdin.readline)
            if line.strip() != "stats":
                break
            print(_stats_line(node, delivered), flush=True)
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- the feeder


@attrs.frozen
class Result:
    config: str
    cache_entries_limit: int | None
    cache_bytes_limit: int
    messages: int
    idle_kib: int
    final_kib: int
    hwm_kib: int
    final: dict[str, Any]
    seconds: float

    @property
    def growth_bytes(self) -> int:
        return (self.final_kib - self.idle_kib) * 1024

    @property
    def bound_bytes(self) -> int:
        return self.cache_bytes_limit + SLACK_BYTES


def _sink() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    return sock


def run_config(name: str, messages: int, size: int, window: int) -> Result:
    """One fresh node process fed ``messages`` messages."""
    overrides = CONFIGS[name]
    config = GossipConfig(**overrides)
    key = generate_key()
    feeder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    feeder.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MIB)
    feeder.bind(("127.0.0.1", 0))
    sinks = [_sink() for _ in range(3)]
    peers = [feeder.getsockname(), *(s.getsockname() for s in sinks)]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.memory_bound",
            "--serve",
            json.dumps({"key": key.hex(), "peers": peers, "config": overrides}),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None

    def ask() -> dict[str, Any]:
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdin.write("stats\n")
        proc.stdin.flush()
        answer: dict[str, Any] = json.loads(proc.stdout.readline())
        return answer

    try:
        ready = json.loads(proc.stdout.readline())
        dst = tuple(ready["ready"])
        time.sleep(0.2)
        idle = ask()
        codec = Codec(Keyring(key))
        payload = bytearray(os.urandom(size))
        feeder.settimeout(5.0)
        sent = acked = 0
        t0 = time.perf_counter()

        def take_ack() -> None:
            nonlocal acked
            try:
                data = feeder.recv(65535)
            except TimeoutError:
                engine = ask()["engine"]  # what the node says, for the error
                raise RuntimeError(
                    f"no ACK for 5 s: {acked} of {sent} acknowledged; the node's engine: {engine}"
                ) from None
            if len(data) > 1 and data[1] == PacketType.PUSH_ACK:
                acked += 1

        while sent < messages:
            while sent - acked >= window:
                take_ack()
            # Distinct payloads too (the first 8 bytes count up), so nothing is shared.
            payload[:8] = sent.to_bytes(8, "big")
            now = time.time()
            dg = codec.encode(PushMessage(new_message_key(int(now * 1000)), bytes(payload)), now)
            feeder.sendto(dg, dst)
            sent += 1
        while acked < sent:
            take_ack()
        seconds = time.perf_counter() - t0
        time.sleep(0.2)
        final = ask()
    finally:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
        feeder.close()
        for s in sinks:
            s.close()
    return Result(
        config=name,
        cache_entries_limit=config.cache_entries,
        cache_bytes_limit=config.cache_bytes,
        messages=messages,
        idle_kib=idle["rss_kib"],
        final_kib=final["rss_kib"],
        hwm_kib=final["hwm_kib"],
        final=final,
        seconds=seconds,
    )


def print_table(results: Sequence[Result], args: argparse.Namespace) -> None:
    print(
        f"# {platform.node()} Python {platform.python_version()}, {os.cpu_count()} CPUs; one "
        f"encrypted node (subprocess) fed {args.messages} distinct {args.size}-byte messages"
    )
    print()
    print(
        "| config | cache limits (entries / bytes) | idle RSS MiB | final RSS MiB | peak MiB "
        "| growth MiB | bound MiB (cache_bytes + 20) | result | delivered | cache entries / "
        "MiB used | seen keys | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        engine = r.final["engine"]
        ok = r.growth_bytes <= r.bound_bytes
        print(
            f"| {r.config} | {r.cache_entries_limit} / {r.cache_bytes_limit / MIB:.0f} MiB | "
            f"{r.idle_kib / 1024:.1f} | {r.final_kib / 1024:.1f} | {r.hwm_kib / 1024:.1f} | "
            f"{r.growth_bytes / MIB:.1f} | {r.bound_bytes / MIB:.0f} | "
            f"{'met' if ok else 'MISSED'} | {engine['delivered']} | {engine['cache_entries']} / "
            f"{engine['cache_bytes'] / MIB:.1f} | {engine['seen_entries']} | {r.seconds:.1f} |"
        )


def main(argv: Sequence[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1024, help="payload bytes")
    parser.add_argument("--window", type=int, default=32, help="messages sent before their ACK")
    parser.add_argument("--configs", default="default,bytes", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the node subprocess
    args = parser.parse_args(argv)
    if args.serve:
        spec = json.loads(args.serve)
        peers = [(h, p) for h, p in spec["peers"]]
        trio.run(serve, bytes.fromhex(spec["key"]), peers, GossipConfig(**spec["config"]))
        return []
    results = [
        run_config(name, args.messages, args.size, args.window) for name in args.configs.split(",")
    ]
    print_table(results, args)
    return results


if __name__ == "__main__":
    main()
