"""Hostile TCP streams and frames at a running ``gossip agent --transport tcp``: it keeps
delivering, counts and closes every bad stream, and its memory stays flat.

Run: ``python -m bench.hostile_tcp [--bad 100000] [--stream-share 0.5] [--legit 1000]
[--warmup 600] [--slowloris 64] [--flood 300] [--concurrency 32] [--seed 1]``.

A real agent (``python -m gossip agent --transport tcp --key-file ... --stats-interval ...``, a
subprocess, default limits) has one peer: a gossip node in this process on the TCP transport
that pushes ``--legit`` encrypted messages to it during the attack. The attacker, in this
process too, throws ``--bad`` hostile items at the agent:

- bad streams (``--stream-share`` of them), ``--concurrency`` at a time, each on a connection
  of its own, in six kinds with the reason the agent must count: random garbage and hellos
  with a wrong version, flags or port 0 (``bad_hello``); a good hello, then a length above
  1 MiB up to 2^32 - 1 (``oversized``); end of stream inside the hello, inside a length or
  inside a payload (up to 64 KiB announced), or at once (``truncated``). The attacker ends
  its side (or not, for the first two kinds) and waits until the agent closed the stream.
- bad frames (the rest): well-framed frames on four long-lived attacker connections whose
  payloads are hostile datagrams from ``bench.hostile_agent`` (random bytes, mutations of
  valid packets sealed with the cluster key, another key or none, replays and mutations of
  captured legitimate pushes). The transport delivers them; the engine must drop each with a
  reason or as a duplicate. At most 2,048 frames are in flight (the agent's ``stats`` lines
  say how many it took), so that its receive buffer is not the thing measured.
- slowloris: ``--slowloris`` connections open at once during the attack, replaced as the
  agent closes them: silent; the hello one byte a second; a good hello, then a frame one byte
  a second. The agent must close them at its hello timeout (5 s), resp. frame timeout (10 s).
- a flood at the end, while the last slowloris drain: ``--flood`` silent connections at once,
  more than the agent's inbound limit (256) lets in. Each one the agent refuses is closed at
  once, each it accepts at the hello timeout; the attacker tells them apart by the time.

A warm-up (``--warmup`` legitimate messages, 2,000 bad streams, 2,000 bad frames and a flood)
brings the agent to its working size; the baseline RSS is read after it.

Reported, from the agent's own ``stats`` and ``message`` lines and ``/proc/PID/status``:
legitimate messages delivered against pushed; for every kind of bad stream, how many were
sent, closed by the agent (seen from the attacker's side) and counted under its reason
(``transport.closed``, ``transport.refused``); bad frames sent against those the engine
dropped with a reason, refused as duplicates, or the transport dropped for a full receive
buffer; RSS before and after the attack and its growth (target < 5 MiB), and the peak.
Loopback TIME_WAIT sockets do not run out of ports here: Linux reuses them for loopback
connections (``net.ipv4.tcp_tw_reuse = 2``, the default).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import random
import socket
import statistics
import struct
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from bench.hostile_agent import TARGET_RSS_GROWTH_KIB, AgentProcess, bad_datagrams, valid_pool
from gossip.crypto import Keyring
from gossip.discovery.base import StaticDiscovery
from gossip.keyfile import read_key_file, write_key_file
from gossip.node import open_gossiper
from gossip.transport.base import Address, Transport
from gossip.transport.tcp import (
    DEFAULT_FRAME_TIMEOUT,
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_INBOUND,
    MAGIC,
    encode_frame,
    encode_hello,
    open_tcp_transport,
)
from gossip.wire import PacketType, peek_message_key

#: Each kind of bad stream, and the reason the agent must count it under.
STREAM_KINDS = {
    "garbage": "bad_hello",
    "bad_hello": "bad_hello",
    "oversized": "oversized",
    "truncated_hello": "truncated",
    "truncated_frame": "truncated",
    "empty": "truncated",
}
#: Each kind of slowloris, and the reason.
SLOWLORIS_KINDS = {
    "silent": "hello_timeout",
    "byte_a_second_hello": "hello_timeout",
    "byte_a_second_frame": "frame_timeout",
}
#: Reasons of ``transport.closed`` that mean a bad stream.
BAD_REASONS = ("bad_hello", "oversized", "truncated", "hello_timeout", "frame_timeout")

WARMUP_STREAMS = 2000
WARMUP_FRAMES = 2000
#: Bad frames the attacker lets be in flight (sent, not yet taken by the agent).
FRAME_WINDOW = 2048
#: Connections the bad frames travel on.
FRAME_CONNECTIONS = 4
#: A stream the agent did not close within this many seconds past its timeout counts as
#: not closed.
CLOSE_GRACE = 5.0
#: A flood connection closed sooner than this was refused (accepted ones wait 5 s).
REFUSED_WITHIN = DEFAULT_HEADER_TIMEOUT / 2


def bad_stream(rng: random.Random, kind: str, port: int) -> bytes:
    """The bytes of one bad stream of ``kind`` (a key of :data:`STREAM_KINDS`)."""
    hello = encode_hello(port)
    if kind == "garbage":
        while (data := rng.randbytes(rng.randint(8, 512)))[:4] == MAGIC:
            pass
        return data
    if kind == "bad_hello":
        version, flags, bad_port = rng.choice([(2, 0, port), (1, 1, port), (1, 0, 0), (0, 0, port)])
        tail = rng.randbytes(rng.randint(0, 64))
        return struct.pack("!4sBBH", MAGIC, version, flags, bad_port) + tail
    if kind == "oversized":
        length = rng.randint(DEFAULT_MAX_FRAME + 1, 0xFFFFFFFF)
        return hello + struct.pack("!I", length) + rng.randbytes(rng.randint(0, 256))
    if kind == "truncated_hello":
        return hello[: rng.randint(1, len(hello) - 1)]
    if kind == "truncated_frame":
        length = rng.randint(1, 65536)
        if rng.random() < 0.3:
            return hello + struct.pack("!I", length)[: rng.randint(1, 3)]
        return hello + struct.pack("!I", length) + rng.randbytes(rng.randrange(min(length, 4096)))
    if kind == "empty":
        return b""
    raise ValueError(kind)


async def _wait_closed(stream: trio.SocketStream, timeout: float) -> bool:
    """Until the agent closed ``stream`` (end of stream or reset); False after ``timeout``."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(4096):
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return True
    return False


async def _send(stream: trio.SocketStream, data: bytes, *, end: bool) -> None:
    try:
        if data:
            await stream.send_all(data)
        if end:
            await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the agent closed it first


class _Recorder:
    """The legitimate peer's transport, keeping copies of the pushes it sends (the attacker's
    capture, replayed and mutated as bad frames).

    A copy joins the capture only once the agent has delivered its message: a replay that
    overtook the original would be an authentic packet, delivered (and answered) as any
    relayed message is, not a bad frame.
    """

    def __init__(self, inner: Transport, captured: list[bytes], limit: int = 256) -> None:
        self._inner = inner
        self._captured = captured
        self._pending: list[bytes] = []
        self._limit = limit
        self.local_address = inner.local_address
        self.receive = inner.receive
        self.statistics = inner.statistics
        self.aclose = inner.aclose

    def _keep(self, data: bytes) -> None:
        if data[1] == PacketType.PUSH_MESSAGE:
            self._pending.append(data)

    def promote(self, delivered: set[str]) -> None:
        """Move the copies of messages in ``delivered`` (hex keys) into the capture."""
        still = []
        for data in self._pending:
            key = peek_message_key(data)
            if key is not None and key.hex() in delivered:
                if len(self._captured) >= self._limit:
                    self._captured.pop(0)
                self._captured.append(data)
            else:
                still.append(data)
        self._pending = still[-self._limit :]

    async def send(self, data: bytes, addr: Address) -> None:
        self._keep(data)
        await self._inner.send(data, addr)

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        self._keep(data)
        await self._inner.send_many(data, addrs)


@attrs.define
class Tally:
    """What the attacker did in one phase."""

    streams: Counter[str] = attrs.field(factory=Counter)
    slowloris: Counter[str] = attrs.field(factory=Counter)
    frames: int = 0
    flood_refused: int = 0
    flood_accepted: int = 0
    #: Streams the agent had not closed in time, by kind.
    unclosed: Counter[str] = attrs.field(factory=Counter)
    #: Seconds from connect to the agent's close, per slowloris kind.
    slowloris_seconds: dict[str, list[float]] = attrs.field(factory=dict)

    def expected(self) -> dict[str, int]:
        """What the agent must count: ``transport.closed`` by reason, and ``refused``."""
        out = dict.fromkeys(BAD_REASONS, 0)
        for kind, n in self.streams.items():
            out[STREAM_KINDS[kind]] += n
        for kind, n in self.slowloris.items():
            out[SLOWLORIS_KINDS[kind]] += n
        out["hello_timeout"] += self.flood_accepted
        out["refused"] = self.flood_refused
        return out


class Attacker:
    """The hostile side: bad streams, bad frames, slowloris, a flood."""

    def __init__(
        self,
        agent: AgentProcess,
        rng: random.Random,
        decoy_port: int,
        frame_payloads: Iterator[bytes],
        recorder: _Recorder,
    ) -> None:
        self.agent = agent
        self.recorder = recorder
        self.addr = agent.address
        self.rng = rng
        self.decoy_port = decoy_port  # the port attacker hellos announce
        self.frame_payloads = frame_payloads
        self.progress = 0  # bad streams and frames done in the current phase

    async def _connect(self) -> trio.SocketStream:
        return await trio.open_tcp_stream(*self.addr)

    async def bad_streams(self, kinds: Iterator[str], tally: Tally, concurrency: int) -> None:
        async def worker() -> None:
            for kind in kinds:
                data = bad_stream(self.rng, kind, self.decoy_port)
                stream = await self._connect()
                async with stream:
                    # Garbage and bad hellos need no end of stream: the agent must not wait.
                    await _send(stream, data, end=kind not in ("garbage", "bad_hello"))
                    if not await _wait_closed(stream, CLOSE_GRACE):
                        tally.unclosed[kind] += 1
                tally.streams[kind] += 1
                self.progress += 1

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)

    async def bad_frames(self, n: int, tally: Tally) -> None:
        """``n`` frames of hostile payloads on long-lived connections, paced by what the
        agent took (its ``transport.datagrams_received``)."""
        base = self._taken()
        streams = [await self._connect() for _ in range(FRAME_CONNECTIONS)]
        try:
            for stream in streams:
                await stream.send_all(encode_hello(self.decoy_port))
            sent = 0
            while sent < n:
                while sent - (self._taken() - base) > FRAME_WINDOW - 64:
                    await trio.sleep(0.005)
                self.recorder.promote(self.agent.keys_snapshot())
                burst = min(64, n - sent)
                data = b"".join(encode_frame(next(self.frame_payloads)) for _ in range(burst))
                await streams[sent // 64 % FRAME_CONNECTIONS].send_all(data)
                sent += burst
                tally.frames += burst
                self.progress += burst
        finally:
            for stream in streams:
                await stream.aclose()

    def _taken(self) -> int:
        _, stats = self.agent.latest_stats()
        return int(stats["transport"]["datagrams_received"]) if stats else 0

    async def slowloris_pool(self, size: int, stop: trio.Event, tally: Tally) -> None:
        kinds = list(SLOWLORIS_KINDS)

        async def worker(kind: str) -> None:
            while not stop.is_set():
                await self.slowloris(kind, tally)

        async with trio.open_nursery() as nursery:
            for i in range(size):
                nursery.start_soon(worker, kinds[i % len(kinds)])

    async def slowloris(self, kind: str, tally: Tally) -> None:
        stream = await self._connect()
        start = trio.current_time()
        if kind == "silent":
            trickle, timeout = b"", DEFAULT_HEADER_TIMEOUT
        elif kind == "byte_a_second_hello":
            trickle, timeout = encode_hello(self.decoy_port), DEFAULT_HEADER_TIMEOUT
        else:
            await stream.send_all(encode_hello(self.decoy_port))
            trickle, timeout = encode_frame(bytes(1000)), DEFAULT_FRAME_TIMEOUT

        async def send_slowly() -> None:
            for byte in trickle:
                await _send(stream, bytes([byte]), end=False)
                await trio.sleep(1)

        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(send_slowly)
            closed = await _wait_closed(stream, timeout + CLOSE_GRACE)
            nursery.cancel_scope.cancel()
        tally.slowloris[kind] += 1
        tally.slowloris_seconds.setdefault(kind, []).append(trio.current_time() - start)
        if not closed:
            tally.unclosed[kind] += 1

    async def flood(self, n: int, tally: Tally) -> None:
        """``n`` silent connections at once; each is refused (closed at once) or accepted
        (closed at the hello timeout)."""

        async def one(stream: trio.SocketStream) -> None:
            start = trio.current_time()
            async with stream:
                closed = await _wait_closed(stream, DEFAULT_HEADER_TIMEOUT + CLOSE_GRACE)
            if not closed:
                tally.unclosed["flood"] += 1
            elif trio.current_time() - start < REFUSED_WITHIN:
                tally.flood_refused += 1
            else:
                tally.flood_accepted += 1

        async with trio.open_nursery() as nursery:
            for _ in range(n):
                nursery.start_soon(one, await self._connect())


def _stream_kinds(rng: random.Random, n: int) -> Iterator[str]:
    kinds = list(STREAM_KINDS)
    return (rng.choice(kinds) for _ in range(n))


async def _run_phase(
    attacker: Attacker,
    *,
    streams: int,
    frames: int,
    legit: int,
    slowloris: int,
    flood: int,
    concurrency: int,
    push: Callable[[], Awaitable[None]],
) -> Tally:
    tally = Tally()
    attacker.progress = 0
    total = streams + frames
    stop_slowloris = trio.Event()

    async def pushes() -> None:
        for i in range(legit):
            while attacker.progress < (i + 1) * total // (legit + 1):
                await trio.sleep(0.002)
            await push()

    async with trio.open_nursery() as nursery:
        if slowloris:
            nursery.start_soon(attacker.slowloris_pool, slowloris, stop_slowloris, tally)
        async with trio.open_nursery() as attack:
            attack.start_soon(pushes)
            attack.start_soon(
                attacker.bad_streams, _stream_kinds(attacker.rng, streams), tally, concurrency
            )
            attack.start_soon(attacker.bad_frames, frames, tally)
        # The slowloris pool drains (no new ones) while the flood runs.
        stop_slowloris.set()
        if flood:
            await attacker.flood(flood, tally)
    return tally


@attrs.frozen
class Report:
    tally: Tally
    #: ``transport.closed`` deltas by reason, plus ``refused``.
    counted: dict[str, int]
    #: Bad frames accounted for: engine drops with a reason, duplicates, transport drops.
    frames_dropped: dict[str, int]
    frames_duplicates: int
    frames_receive_drops: int
    other_closes: dict[str, int]
    legit_pushed: int
    legit_delivered: int
    inbound_open_after: int
    dialed: int
    rss_before_kib: int
    rss_after_kib: int
    hwm_kib: int
    attack_seconds: float
    agent_exit: int

    @property
    def expected(self) -> dict[str, int]:
        return self.tally.expected()

    @property
    def streams_counted(self) -> bool:
        return self.counted == self.expected

    @property
    def frames_counted(self) -> int:
        return (
            sum(self.frames_dropped.values()) + self.frames_duplicates + self.frames_receive_drops
        )

    @property
    def bad_streams(self) -> int:
        t = self.tally
        return (
            sum(t.streams.values()) + sum(t.slowloris.values()) + t.flood_refused + t.flood_accepted
        )

    @property
    def growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_before_kib


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


async def _settle(
    agent: AgentProcess, expect_keys: set[str], timeout: float, baseline_inbound: int
) -> dict[str, Any]:
    """Until the agent printed every key, has no attacker connection left, and three stats
    lines in a row show the same counters."""
    with trio.move_on_after(timeout):
        while not expect_keys <= agent.keys_snapshot():
            await trio.sleep(0.01)
    last: tuple[Any, ...] | None = None
    same = 0
    seen = agent.latest_stats()[0]
    with trio.move_on_after(timeout):
        while same < 3:
            while agent.latest_stats()[0] == seen:
                await trio.sleep(0.01)
            seen, stats = agent.latest_stats()
            assert stats is not None
            t, e = stats["transport"], stats["engine"]
            now = (
                t["inbound_open"] <= baseline_inbound,
                tuple(t["closed"].values()),
                t["refused"],
                t["datagrams_received"],
                e["duplicates"],
                tuple(e["dropped"].values()),
                tuple(stats.get("dropped", {}).values()),
            )
            same = same + 1 if now == last and now[0] else 0
            last = now
    _, stats = agent.latest_stats()
    assert stats is not None
    return stats


async def _attack(
    agent: AgentProcess,
    legit_transport: Transport,
    keyring: Keyring,
    cluster_key: bytes,
    args: argparse.Namespace,
) -> Report:
    rng = random.Random(args.seed)
    captured: list[bytes] = []
    payloads = bad_datagrams(rng, valid_pool(rng, cluster_key), captured)
    pushed: set[str] = set()
    n_streams = round(args.bad * args.stream_share)
    with socket.socket() as decoy:
        # The port attacker hellos announce: it listens and never accepts. The agent never
        # answers a bad frame, so it never dials it (``dialed`` would show it).
        decoy.bind(("127.0.0.1", 0))
        decoy.listen(16)
        recorder = _Recorder(legit_transport, captured)
        async with open_gossiper(
            StaticDiscovery([agent.address]), recorder, keyring=keyring
        ) as peer:

            async def push() -> None:
                pushed.add((await peer.push(rng.randbytes(64))).hex())

            attacker = Attacker(agent, rng, decoy.getsockname()[1], payloads, recorder)
            phase = functools.partial(_run_phase, attacker, concurrency=args.concurrency, push=push)
            await phase(
                streams=min(WARMUP_STREAMS, n_streams),
                frames=min(WARMUP_FRAMES, args.bad - n_streams),
                legit=args.warmup,
                slowloris=0,
                flood=args.flood,
            )
            stats0 = await _settle(agent, set(pushed), 30.0, 1)
            mem0 = agent.memory()
            delivered0 = len(agent.keys_snapshot() & pushed)
            before = set(pushed)
            t0 = time.perf_counter()
            tally = await phase(
                streams=n_streams,
                frames=args.bad - n_streams,
                legit=args.legit,
                slowloris=args.slowloris,
                flood=args.flood,
            )
            attack_seconds = time.perf_counter() - t0
            stats1 = await _settle(agent, set(pushed), 30.0, 1)
            mem1 = agent.memory()
            new_keys = pushed - before
            delivered = len(agent.keys_snapshot() & new_keys)
    assert delivered0 == args.warmup, f"warm-up: {delivered0} of {args.warmup} delivered"
    t0s, t1s = stats0["transport"], stats1["transport"]
    closed = _delta(t0s["closed"], t1s["closed"])
    counted = {r: closed.pop(r, 0) for r in BAD_REASONS}
    counted["refused"] = t1s["refused"] - t0s["refused"]
    e0, e1 = stats0["engine"], stats1["engine"]
    return Report(
        tally=tally,
        counted=counted,
        # The engine's drops, and the node's router's (types no engine owns).
        frames_dropped=_delta(
            _merge(e0["dropped"], stats0.get("dropped", {})),
            _merge(e1["dropped"], stats1.get("dropped", {})),
        ),
        frames_duplicates=e1["duplicates"] - e0["duplicates"],
        frames_receive_drops=t1s["receive_drops"] - t0s["receive_drops"],
        other_closes=closed,
        legit_pushed=len(new_keys),
        legit_delivered=delivered,
        inbound_open_after=t1s["inbound_open"],
        dialed=t1s["dialed"],
        rss_before_kib=mem0["VmRSS"],
        rss_after_kib=mem1["VmRSS"],
        hwm_kib=mem1["VmHWM"],
        attack_seconds=attack_seconds,
        agent_exit=0,
    )


async def _main(args: argparse.Namespace, key_file: Path, cluster_key: bytes) -> Report:
    async with open_tcp_transport("127.0.0.1") as legit_transport:
        agent = await trio.to_thread.run_sync(
            functools.partial(
                AgentProcess,
                [legit_transport.local_address],
                key_file,
                0.05,
                ("--transport", "tcp"),
            )
        )
        try:
            report = await _attack(
                agent, legit_transport, read_key_file(key_file), cluster_key, args
            )
        finally:
            status = await trio.to_thread.run_sync(agent.stop)
    return attrs.evolve(report, agent_exit=status)


def run(args: argparse.Namespace) -> Report:
    """Start an agent, attack it, stop it; the report."""
    with tempfile.TemporaryDirectory() as tmp:
        key_file = Path(tmp) / "cluster.key"
        cluster_key = write_key_file(key_file)
        return trio.run(_main, args, key_file, cluster_key)


def print_report(r: Report, args: argparse.Namespace) -> None:
    t = r.tally
    print(
        f"# {platform.node()} Python {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"`gossip agent --transport tcp` subprocess, encrypted, default limits "
        f"(max_inbound {DEFAULT_MAX_INBOUND}); seed {args.seed}; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    expected = r.expected
    print("| measure | sent | agent counted | target |")
    print("|---|---|---|---|")
    for kind, reason in STREAM_KINDS.items():
        print(f"| bad streams: {kind} | {t.streams[kind]} | (as {reason}) | |")
    for kind, reason in SLOWLORIS_KINDS.items():
        secs = t.slowloris_seconds.get(kind) or [float("nan")]
        print(
            f"| slowloris: {kind} | {t.slowloris[kind]} | (as {reason}; closed "
            f"after {statistics.median(secs):.2f} s median, {max(secs):.2f} s max) | |"
        )
    print(
        f"| flood beyond the inbound limit | {t.flood_refused + t.flood_accepted} "
        f"({t.flood_refused} closed at once) | (accepted ones as hello_timeout) | |"
    )
    for reason in (*BAD_REASONS, "refused"):
        ok = r.counted[reason] == expected[reason]
        print(
            f"| ... counted as {reason} | {expected[reason]} | {r.counted[reason]} | "
            f"= sent: {'met' if ok else 'MISSED'} |"
        )
    print(
        f"| bad streams closed by the agent (seen by the attacker) | {r.bad_streams} | "
        f"{r.bad_streams - sum(t.unclosed.values())} | all: "
        f"{'met' if not t.unclosed else 'MISSED ' + str(dict(t.unclosed))} |"
    )
    print(
        f"| bad frames (hostile payloads, good framing) | {t.frames} | {r.frames_counted} "
        f"(engine drops {sum(r.frames_dropped.values())}, duplicates {r.frames_duplicates}, "
        f"receive-buffer drops {r.frames_receive_drops}) | = sent: "
        f"{'met' if r.frames_counted == t.frames else 'MISSED'} |"
    )
    print(
        f"| legitimate messages delivered | {r.legit_pushed} | {r.legit_delivered} | all: "
        f"{'met' if r.legit_delivered == r.legit_pushed else 'MISSED'} |"
    )
    print(
        f"| inbound connections open after (the peer's) | | {r.inbound_open_after} | 1: "
        f"{'met' if r.inbound_open_after == 1 else 'MISSED'} |"
    )
    print(
        f"| outbound dials by the agent (to the peer only) | | {r.dialed} | 1: "
        f"{'met' if r.dialed == 1 else 'MISSED'} |"
    )
    print(f"| RSS before attack (KiB) | | {r.rss_before_kib} | |")
    print(f"| RSS after attack (KiB) | | {r.rss_after_kib} | |")
    growth_ok = r.growth_kib < TARGET_RSS_GROWTH_KIB
    print(
        f"| RSS growth (KiB) | | {r.growth_kib} | < {TARGET_RSS_GROWTH_KIB}: "
        f"{'met' if growth_ok else 'MISSED'} |"
    )
    print(f"| peak RSS, whole run (KiB) | | {r.hwm_kib} | |")
    items = sum(t.streams.values()) + t.frames
    print(
        f"| attack duration (s) / rate of streams and frames | | {r.attack_seconds:.1f} / "
        f"{items / r.attack_seconds:,.0f} per s | |"
    )
    print(f"| agent exit status | | {r.agent_exit} | 0 |")
    print()
    drops = ", ".join(f"{k} {v}" for k, v in sorted(r.frames_dropped.items()))
    others = ", ".join(f"{k} {v}" for k, v in sorted(r.other_closes.items()))
    print(f"Engine drops by reason: {drops}")
    print(f"Other closes (not bad streams): {others or 'none'}")


def main(argv: Sequence[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bad", type=int, default=100_000, help="bad streams and frames")
    parser.add_argument("--stream-share", type=float, default=0.5, help="of --bad: streams")
    parser.add_argument("--legit", type=int, default=1000, help="legitimate pushes interleaved")
    parser.add_argument("--warmup", type=int, default=600, help="legitimate pushes before")
    parser.add_argument("--slowloris", type=int, default=64, help="slowloris open at once")
    parser.add_argument("--flood", type=int, default=300, help="connections opened at once")
    parser.add_argument("--concurrency", type=int, default=32, help="bad streams at once")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args)
    print_report(report, args)
    return report


if __name__ == "__main__":
    main()
