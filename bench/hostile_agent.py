"""Hostile datagrams at a running ``gossip agent``: it keeps delivering, counts every bad one,
and its memory stays flat.

Run: ``python -m bench.hostile_agent [--bad 100000] [--legit 1000] [--seed 1]``.

A real agent (``python -m gossip agent --key-file ... --stats-interval ...``, a subprocess) has
one peer: a gossip node in this process that pushes ``--legit`` encrypted messages to it during
the attack. An attacker socket sends ``--bad`` datagrams at the agent, the legitimate pushes
interleaved among them: 40 % random bytes of random length 0..1500 (half of those with a
valid-looking head: magic, packet type, encryption byte); 40 % mutations (bit flips, byte
sets, truncations, extensions, insertions; ``bench.fuzz_decode``'s ``mutate``) of valid packets
of every type sealed with the cluster key, sealed with another key, or in plain text; 10 %
exact replays and 10 % mutations of legitimate pushes captured on their way to the agent (the
peer's transport keeps copies). A mutation that leaves the packet unchanged is drawn again, so
every bad datagram is bad.

Before the attack a warm-up (``--warmup`` legitimate messages, enough to fill the default
512-entry message cache, and 2,000 bad datagrams) brings the agent to its working size; the
baseline RSS is read after it. Datagrams go in bursts of ``--burst``; before each burst the
attacker waits until the agent's socket queue (``/proc/net/udp``) is empty, and the socket's
kernel drop counter is checked at the end, so that loss on loopback cannot hide a miscount.

Reported, from the agent's own ``stats`` and ``message`` lines and ``/proc/PID/status``:
legitimate messages delivered (JSON ``message`` lines) against those pushed; datagrams
dropped by reason, plus those refused as duplicates (a replayed or altered capture whose
message key the agent has seen: dropped before any crypto), whose sum must equal the bad
datagrams sent; kernel drops on the agent's
socket; RSS before and after the attack and its growth (target < 5 MiB), and the peak.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import attrs
import trio

from bench._proc import read_status_kib, udp_socket_info
from bench.fuzz_decode import mutate
from gossip.crypto import Keyring, generate_key
from gossip.discovery.base import StaticDiscovery
from gossip.keyfile import read_key_file, write_key_file
from gossip.node import open_gossiper
from gossip.transport.base import Address
from gossip.transport.udp import UDPTransport
from gossip.wire import (
    Codec,
    Packet,
    PacketType,
    PullRequest,
    PullResponse,
    PullSync,
    PushAck,
    PushMessage,
)

#: Acceptance target (issue 3): RSS growth over the attack.
TARGET_RSS_GROWTH_KIB = 5 * 1024

#: Bad datagrams in the warm-up.
WARMUP_BAD = 2000


class AgentProcess:
    """A ``gossip agent`` subprocess and a thread that reads its stdout lines."""

    def __init__(
        self,
        peers: Sequence[Address],
        key_file: Path,
        stats_interval: float,
        extra: Sequence[str] = (),
    ) -> None:
        peer_list = ",".join(f"{h}:{p}" for h, p in peers)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gossip",
                "agent",
                "--bind",
                "127.0.0.1:0",
                "--peers",
                peer_list,
                "--key-file",
                str(key_file),
                "--stats-interval",
                str(stats_interval),
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stderr is not None
        first = self.proc.stderr.readline().decode()
        # "gossip agent: listening on 127.0.0.1:PORT (...)"
        if "listening on" not in first:
            self.proc.kill()
            raise RuntimeError(f"the agent did not start: {first!r}")
        hostport = first.split("listening on", 1)[1].split()[0]
        host, port = hostport.rsplit(":", 1)
        self.address: Address = (host, int(port))
        self.keys: set[str] = set()
        self.messages = 0
        self.stats: dict[str, Any] | None = None
        self.stats_seen = 0
        self._lock = threading.Lock()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        self._stderr = threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True)
        self._stderr.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            event = json.loads(line)
            with self._lock:
                if event["event"] == "message":
                    self.messages += 1
                    self.keys.add(event["key"])
                elif event["event"] == "stats":
                    self.stats = event
                    self.stats_seen += 1

    @staticmethod
    def _drain(stream: IO[bytes]) -> None:
        for _ in stream:
            pass

    def keys_snapshot(self) -> set[str]:
        with self._lock:
            return set(self.keys)

    def latest_stats(self) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            return self.stats_seen, self.stats

    def memory(self) -> dict[str, int]:
        return read_status_kib(self.proc.pid)

    def stop(self) -> int:
        """Close stdin (the agent's shutdown signal) and wait for it to exit."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            status = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self._reader.join(timeout=5)
        return status


def valid_pool(rng: random.Random, key: bytes) -> list[bytes]:
    """Valid packets of every type: sealed with ``key``, with another key, and plain."""
    now = time.time()
    samples: list[Packet] = [
        PushMessage(rng.randbytes(16), rng.randbytes(512)),
        PushMessage(rng.randbytes(16), b""),
        PushAck(rng.randbytes(16)),
        PullSync(tuple(rng.randbytes(16) for _ in range(20))),
        PullRequest((rng.randbytes(16),)),
        PullResponse(rng.randbytes(16), rng.randbytes(100)),
    ]
    codecs = [Codec(Keyring(key)), Codec(Keyring(generate_key())), Codec()]
    return [c.encode(p, now + i * 1e-3) for c in codecs for i, p in enumerate(samples)]


def bad_datagrams(
    rng: random.Random, pool: Sequence[bytes], captured: Sequence[bytes]
) -> Iterator[bytes]:
    """An endless stream of datagrams the agent must refuse: 40 % random, 40 % mutations of
    ``pool``, and once ``captured`` (legitimate pushes the agent already has) is not empty,
    10 % exact replays of them and 10 % mutations of them."""
    while True:
        r = rng.random()
        if r < 0.4:
            dg = rng.randbytes(rng.randrange(1501))
            if len(dg) >= 3 and rng.random() < 0.5:  # a valid-looking head
                dg = bytes([0xA1, rng.randint(1, 5), rng.randint(0, 1)]) + dg[3:]
            yield dg
        elif r < 0.8 or not captured:
            yield _mutated(rng, rng.choice(pool))
        elif r < 0.9:
            yield rng.choice(captured)
        else:
            yield _mutated(rng, rng.choice(captured))


def _mutated(rng: random.Random, base: bytes) -> bytes:
    while (dg := mutate(rng, base)) == base:
        pass
    return dg


class _Recorder:
    """A transport that keeps a copy of the PushMessages it sends: the attacker's capture."""

    def __init__(self, inner: UDPTransport, captured: list[bytes], limit: int = 256) -> None:
        self._inner = inner
        self._captured = captured
        self._limit = limit
        self.local_address = inner.local_address
        self.receive = inner.receive
        self.statistics = inner.statistics
        self.aclose = inner.aclose

    def _keep(self, data: bytes) -> None:
        if data[1] == PacketType.PUSH_MESSAGE:
            if len(self._captured) >= self._limit:
                self._captured.pop(0)
            self._captured.append(data)

    async def send(self, data: bytes, addr: Address) -> None:
        self._keep(data)
        await self._inner.send(data, addr)

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        self._keep(data)
        await self._inner.send_many(data, addrs)


@attrs.frozen
class Report:
    bad_sent: int
    legit_pushed: int
    legit_delivered: int
    dropped: dict[str, int]
    #: Refused as duplicates (a replayed or altered capture whose message key was seen).
    duplicates: int
    kernel_drops: int
    rss_before_kib: int
    rss_after_kib: int
    hwm_kib: int
    attack_seconds: float
    agent_exit: int

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @property
    def counted(self) -> int:
        """Bad datagrams the agent accounted for: dropped with a reason, or duplicates."""
        return self.dropped_total + self.duplicates

    @property
    def growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib


def _dropped(stats: dict[str, Any] | None) -> dict[str, int]:
    """Drops of the engine and of the node's router (types no engine owns), by reason."""
    if not stats:
        return {}
    total = dict(stats["engine"]["dropped"])
    for reason, n in stats.get("dropped", {}).items():
        total[reason] = total.get(reason, 0) + n
    return total


async def _wait_drained(port: int) -> None:
    """Until the agent's socket queue is empty (it has read everything sent so far)."""
    while True:
        info = udp_socket_info(port)
        if info is None or info.rx_queue == 0:
            return
        await trio.sleep(0.0005)


async def _settle(agent: AgentProcess, expect_keys: set[str], timeout: float) -> dict[str, Any]:
    """Wait until the agent printed every key in ``expect_keys`` and two newer stats lines."""
    with trio.move_on_after(timeout):
        while not expect_keys <= agent.keys_snapshot():
            await trio.sleep(0.01)
    await _wait_drained(agent.address[1])
    seen, _ = agent.latest_stats()
    with trio.move_on_after(timeout):
        while agent.latest_stats()[0] < seen + 2:
            await trio.sleep(0.01)
    _, stats = agent.latest_stats()
    assert stats is not None
    return stats


async def _attack(
    agent: AgentProcess,
    peer_sock: socket.socket,
    keyring: Keyring,
    *,
    bad: int,
    legit: int,
    warmup: int,
    burst: int,
    seed: int,
    cluster_key: bytes,
) -> Report:
    rng = random.Random(seed)
    attacker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    attacker.bind(("127.0.0.1", 0))
    captured: list[bytes] = []
    stream = bad_datagrams(rng, valid_pool(rng, cluster_key), captured)
    dst = agent.address
    port = dst[1]
    pushed: set[str] = set()
    with attacker:
        async with (
            UDPTransport(peer_sock) as transport,
            open_gossiper(
                StaticDiscovery([dst]), _Recorder(transport, captured), keyring=keyring
            ) as peer,
        ):

            async def run_phase(n_bad: int, n_legit: int) -> None:
                every = max(1, n_bad // max(1, n_legit))
                legit_left = n_legit
                for i in range(n_bad):
                    if i % burst == 0:
                        await _wait_drained(port)
                    attacker.sendto(next(stream), dst)
                    if legit_left and i % every == every - 1:
                        pushed.add((await peer.push(rng.randbytes(64))).hex())
                        legit_left -= 1
                for _ in range(legit_left):
                    pushed.add((await peer.push(rng.randbytes(64))).hex())

            await run_phase(WARMUP_BAD, warmup)
            stats0 = await _settle(agent, set(pushed), 10.0)
            mem0 = agent.memory()
            delivered0 = len(agent.keys_snapshot() & pushed)
            t0 = time.perf_counter()
            before = set(pushed)
            await run_phase(bad, legit)
            attack_seconds = time.perf_counter() - t0
            stats1 = await _settle(agent, set(pushed), 10.0)
            mem1 = agent.memory()
            info = udp_socket_info(port)
            new_keys = pushed - before
            delivered = len(agent.keys_snapshot() & new_keys)
    d0, d1 = _dropped(stats0), _dropped(stats1)
    dropped = {k: d1.get(k, 0) - d0.get(k, 0) for k in d1 if d1.get(k, 0) != d0.get(k, 0)}
    duplicates = stats1["engine"]["duplicates"] - stats0["engine"]["duplicates"]
    assert delivered0 == warmup, f"warm-up: {delivered0} of {warmup} delivered"
    return Report(
        bad_sent=bad,
        legit_pushed=len(new_keys),
        legit_delivered=delivered,
        dropped=dropped,
        duplicates=duplicates,
        kernel_drops=info.drops if info else -1,
        rss_before_kib=mem0["VmRSS"],
        rss_after_kib=mem1["VmRSS"],
        hwm_kib=mem1["VmHWM"],
        attack_seconds=attack_seconds,
        agent_exit=0,
    )


def run(bad: int, legit: int, *, warmup: int = 600, burst: int = 64, seed: int = 1) -> Report:
    """Start an agent, attack it, stop it; the report."""
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "cluster.key"
        cluster_key = write_key_file(key_file)
        peer_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer_sock.bind(("127.0.0.1", 0))
        agent = AgentProcess([peer_sock.getsockname()], key_file, stats_interval=0.05)
        try:
            report = trio.run(
                functools.partial(
                    _attack,
                    agent,
                    peer_sock,
                    read_key_file(key_file),
                    bad=bad,
                    legit=legit,
                    warmup=warmup,
                    burst=burst,
                    seed=seed,
                    cluster_key=cluster_key,
                )
            )
        finally:
            status = agent.stop()
    return attrs.evolve(report, agent_exit=status)


def print_report(r: Report, args: argparse.Namespace) -> None:
    print(
        f"# {platform.node()} Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"`gossip agent` subprocess, encrypted; seed {args.seed}; bursts of {args.burst}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    counted = r.counted == r.bad_sent
    growth_ok = r.growth_kib < TARGET_RSS_GROWTH_KIB
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| bad datagrams sent | {r.bad_sent} | |")
    print(f"| ... dropped with a reason | {r.dropped_total} | |")
    print(f"| ... refused as duplicates (replayed or altered captures) | {r.duplicates} | |")
    print(f"| ... counted in all | {r.counted} | = sent: {'met' if counted else 'MISSED'} |")
    print(f"| kernel drops on the agent's socket | {r.kernel_drops} | 0 |")
    print(
        f"| legitimate messages delivered | {r.legit_delivered} / {r.legit_pushed} | all: "
        f"{'met' if r.legit_delivered == r.legit_pushed else 'MISSED'} |"
    )
    print(f"| RSS before attack (KiB) | {r.rss_before_kib} | |")
    print(f"| RSS after attack (KiB) | {r.rss_after_kib} | |")
    print(
        f"| RSS growth (KiB) | {r.growth_kib} | < {TARGET_RSS_GROWTH_KIB}: "
        f"{'met' if growth_ok else 'MISSED'} |"
    )
    print(f"| peak RSS, whole run (KiB) | {r.hwm_kib} | |")
    print(
        f"| attack duration (s) / rate | {r.attack_seconds:.1f} / "
        f"{r.bad_sent / r.attack_seconds:,.0f} per s | |"
    )
    print(f"| agent exit status | {r.agent_exit} | 0 |")
    print()
    print("Dropped by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(r.dropped.items())))


def main(argv: Sequence[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bad", type=int, default=100_000, help="hostile datagrams")
    parser.add_argument("--legit", type=int, default=1000, help="legitimate pushes interleaved")
    parser.add_argument("--warmup", type=int, default=600, help="legitimate pushes before")
    parser.add_argument("--burst", type=int, default=64, help="datagrams between queue checks")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args.bad, args.legit, warmup=args.warmup, burst=args.burst, seed=args.seed)
    print_report(report, args)
    return report


if __name__ == "__main__":
    main()
