"""A burst piped into one ``gossip agent`` of N (issue 15): is every message delivered, once?

Run::

    python -m bench.burst --nodes 3 16 --messages 100000          # the acceptance runs
    python -m bench.burst --nodes 3 16 64 --messages 10000 --runs 3 --memberlist
                                                                   # side by side, interleaved

N real agents (``python -m gossip agent``, one process each, encrypted with one key file) on
127.0.0.1. Lines of ``--size`` bytes (a sequence number, then padding) are written into agent
0's stdin through a pipe as fast as the pipe takes them; the agent reads stdin only as fast
as it can publish (its push window), so the writer is paced by the cluster. Each agent's
stdout goes to a file, which this process only counts lines of while the burst runs (so the
harness costs the agents almost no CPU); at the end every file is parsed in full.

Reported per run: messages delivered exactly once at every other agent (and duplicates),
time until the last agent had them all, the sustained rate (messages / that time, i.e.
messages per second that reached every node), the source's own rate (lines / time until
stdin was read to its end), ``push_waits``, the kernel's drops (each agent's
``transport.receive_drops`` and the system's ``RcvbufErrors`` delta from /proc/net/snmp),
repairs (messages pulled), and memory (RSS before the burst, peak, after; the largest agent).

With ``--memberlist`` each run of ours is followed by hashicorp/memberlist's broadcast queue
doing the same job (``bench/memberlist_burst``, all nodes in one Go process; see
``bench/memberlist_burst.py``), so the two are measured in one interleaved window.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench._proc import read_status_kib
from gossip.keyfile import write_key_file

#: How often the harness looks at the agents' output and memory, in seconds.
POLL = 0.25
MESSAGE_TAG = b'"event": "message"'


def free_ports(n: int) -> list[int]:
    """``n`` distinct free UDP ports on 127.0.0.1 (bound, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rcvbuf_errors() -> int:
    """The system's UDP ``RcvbufErrors`` (datagrams dropped for a full receive buffer)."""
    with open("/proc/net/snmp", encoding="ascii") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")])


def payload(seq: int, size: int) -> bytes:
    head = b"%010d " % seq
    return head + b"x" * (size - len(head))


class Agent:
    """One agent process whose stdout goes to a file."""

    def __init__(  # noqa: PLR0917 - a private helper of this script
        self, index: int, port: int, peers: str, key: Path, workdir: Path, extra: list[str]
    ) -> None:
        self.index = index
        self.out_path = workdir / f"agent{index}.out"
        self.err_path = workdir / f"agent{index}.err"
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gossip",
                "agent",
                "--bind",
                f"127.0.0.1:{port}",
                "--peers",
                peers,
                "--key-file",
                str(key),
                "--stats-interval",
                "1",
                *extra,
            ],
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=self._err,
        )
        self._reader = open(self.out_path, "rb")  # noqa: SIM115
        self.count = 0
        self.complete_at: float | None = None
        self.peak_rss_kib = 0

    def ready(self) -> bool:
        return b"listening on" in self.err_path.read_bytes()

    def poll_count(self) -> int:
        chunk = self._reader.read()
        # A line may be cut at the end of a read; the tag is 18 bytes, so count whole lines.
        cut = chunk.rfind(b"\n") + 1
        self._reader.seek(cut - len(chunk), os.SEEK_CUR)
        self.count += chunk[:cut].count(MESSAGE_TAG)
        return self.count

    def rss_kib(self) -> int:
        try:
            rss = read_status_kib(self.proc.pid)["VmRSS"]
        except (FileNotFoundError, KeyError, ProcessLookupError):
            return 0
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        return rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        self._out.close()
        self._err.close()
        self._reader.close()

    def parse(self) -> tuple[list[int], dict[str, Any] | None]:
        """Sequence numbers delivered (in order, duplicates kept) and the last stats line."""
        seqs: list[int] = []
        last: dict[str, Any] | None = None
        with open(self.out_path, "rb") as f:
            for line in f:
                event = json.loads(line)
                if event["event"] == "message":
                    seqs.append(int(base64.b64decode(event["data"])[:10]))
                elif event["event"] == "stats":
                    last = event
        return seqs, last


def run_burst(
    n: int, m: int, size: int = 256, timeout: float = 900.0, extra: list[str] | None = None
) -> dict[str, Any]:
    """One burst of ``m`` messages into agent 0 of ``n``; returns the measurements."""
    workdir = Path(tempfile.mkdtemp(prefix="gossip-burst-"))
    key = workdir / "cluster.key"
    write_key_file(key)
    ports = free_ports(n)
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    agents = [Agent(i, p, peers, key, workdir, extra or []) for i, p in enumerate(ports)]
    try:
        deadline = time.monotonic() + 60
        while not all(a.ready() for a in agents):
            if time.monotonic() > deadline or any(a.proc.poll() is not None for a in agents):
                raise RuntimeError(f"agents did not start; see {workdir}")
            time.sleep(0.1)
        time.sleep(1.0)  # every agent's socket is bound and its first timers ran
        rss_before = max(a.rss_kib() for a in agents)
        drops_before = rcvbuf_errors()
        source = agents[0]
        assert source.proc.stdin is not None
        stdin = source.proc.stdin
        written: dict[str, float] = {}

        def write() -> None:
            chunk: list[bytes] = []
            for seq in range(m):
                chunk.append(payload(seq, size) + b"\n")
                if len(chunk) == 256:
                    stdin.write(b"".join(chunk))
                    chunk.clear()
            stdin.write(b"".join(chunk))
            stdin.flush()
            written["at"] = time.monotonic()
            stdin.close()  # end of input: the agent finishes its rounds, lingers, exits

        start = time.monotonic()
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        receivers = agents[1:]
        timeline: list[tuple[float, int]] = []
        while True:
            now = time.monotonic()
            for a in agents:
                a.rss_kib()
            for a in receivers:
                if a.poll_count() >= m and a.complete_at is None:
                    a.complete_at = now - start
            timeline.append((round(now - start, 2), min(a.count for a in receivers)))
            if all(a.complete_at is not None for a in receivers) or now - start > timeout:
                break
            time.sleep(POLL)
        writer.join(timeout=5)
        time.sleep(2.0)  # a late duplicate would show up here
        rss_after = max(a.rss_kib() for a in receivers)
        peak = max(a.peak_rss_kib for a in agents)
        drops_after = rcvbuf_errors()
    finally:
        for a in agents:
            a.stop()
    results = [a.parse() for a in agents]
    complete = [a.complete_at for a in receivers]
    exact = []
    duplicates = 0
    for seqs, _ in results[1:]:
        duplicates += len(seqs) - len(set(seqs))
        exact.append(len(set(seqs)) if set(seqs) <= set(range(m)) else -1)
    stats = [s for _, s in results]

    def total(path: tuple[str, ...]) -> int:
        out = 0
        for s in stats:
            if s is None:
                continue
            value: Any = s
            for part in path:
                value = value.get(part, 0) if isinstance(value, dict) else 0
            out += int(value)
        return out

    finished = None if any(c is None for c in complete) else max(c for c in complete if c)
    source_stats = stats[0] or {}
    return {
        "nodes": n,
        "messages": m,
        "size": size,
        "delivered_min": min(exact),
        "all_delivered_once": all(x == m for x in exact) and duplicates == 0,
        "duplicates": duplicates,
        "complete_s": finished,
        "rate_to_all": None if finished is None else m / finished,
        "stdin_read_s": written.get("at", float("nan")) - start,
        "source_rate": m / (written.get("at", float("nan")) - start),
        "push_waits": source_stats.get("push_waits"),
        "receive_drops": total(("transport", "receive_drops")),
        "rcvbuf_errors": drops_after - drops_before,
        "receive_buffer": (stats[1] or {}).get("transport", {}).get("receive_buffer"),
        "pulled": total(("engine", "pulled")),
        "deferred": total(("engine", "deferred")),
        "evicted_early": total(("engine", "cache_evicted_early")),
        "delivery_overflow": total(("delivery_overflow",)),
        "rss_before_mib": rss_before / 1024,
        "rss_peak_mib": peak / 1024,
        "rss_after_mib": rss_after / 1024,
        "timeline": timeline[:: max(1, len(timeline) // 40)],
        "workdir": str(workdir),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| system | N | messages | delivered once at every node | time to all s | "
        "msgs/s to all nodes | source msgs/s | push waits | kernel drops | pulled | "
        "RSS MiB before / peak / after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.get("system") == "memberlist" and "error" in r:
            lines.append(
                f"| memberlist | {r['n']} | {r['m']} | failed: {r['error']} | | | | | | | |"
            )
            continue
        if r.get("system") == "memberlist":
            lines.append(
                f"| memberlist {r.get('interval_ms', '')} ms | {r['n']} | {r['m']} | "
                f"{100 * r.get('delivered_fraction', 0):.2f} % | "
                f"{r.get('time_to_complete_s') or 'never'} | "
                f"{r.get('sustained_rate_msgs', 0):.0f} | | | | | |"
            )
            continue
        done = "yes" if r["all_delivered_once"] else f"NO (min {r['delivered_min']})"
        lines.append(
            f"| trio-gossip | {r['nodes']} | {r['messages']} | {done} | "
            f"{r['complete_s'] or float('nan'):.1f} | {r['rate_to_all'] or 0:.0f} | "
            f"{r['source_rate']:.0f} | {r['push_waits']} | {r['receive_drops']} "
            f"(snmp {r['rcvbuf_errors']}) | {r['pulled']} | {r['rss_before_mib']:.0f} / "
            f"{r['rss_peak_mib']:.0f} / {r['rss_after_mib']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 16])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--memberlist", action="store_true", help="interleave memberlist runs")
    parser.add_argument("--interval-ms", type=float, default=5.0, help="memberlist gossip interval")
    parser.add_argument("--json", type=Path, help="write every run's results here")
    parser.add_argument("agent_args", nargs="*", help="extra agent flags, after --")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for run in range(args.runs):
        for n in args.nodes:
            r = run_burst(n, args.messages, args.size, args.timeout, args.agent_args)
            r["run"] = run
            rows.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "timeline"}), flush=True)
            if args.memberlist:
                from bench.memberlist_burst import run_memberlist  # noqa: PLC0415

                try:
                    ml = run_memberlist(n, args.messages, args.interval_ms, min(args.timeout, 120))
                except RuntimeError as err:  # e.g. its cluster did not form within 60 s
                    ml = {"n": n, "m": args.messages, "error": str(err)[-200:]}
                ml.update(system="memberlist", run=run)
                rows.append(ml)
                print(json.dumps(ml), flush=True)
    print(table(rows))
    if args.runs > 1:
        for n in args.nodes:
            ours = [r["rate_to_all"] or 0 for r in rows if r.get("nodes") == n]
            print(f"N={n}: median msgs/s to all nodes {statistics.median(ours):.0f}", end="")
            theirs = [
                r.get("sustained_rate_msgs", 0)
                for r in rows
                if r.get("system") == "memberlist" and r.get("n") == n
            ]
            if theirs:
                print(f"; memberlist {statistics.median(theirs):.0f}", end="")
            print()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
