"""Membership with real processes on loopback: join, idle cost, crash detection, pauses.

Run: ``python -m bench.membership_agents [--nodes 32] [--kill 0.1] [--idle 20] [--watch 60]
[--pause 3] [--pause 30] [--seed 1]``.

``--nodes`` agents (``python -m gossip agent --join ... --name nI --key-file K``), each its own
process, encrypted, default configuration, all started at once; every one is given the same
three seeds (the first three agents). Everything is read from the agents' own stdout (``member``
lines with their Unix ``ts``, ``stats`` lines every second), so the figures are what an
operator would see:

1. **Join**: from the moment the last agent listens until every agent has reported every
   other one ``joined`` (and from the first spawn, which includes Python's start-up).
2. **Idle cost**: datagrams and bytes each agent sent (UDP and TCP) per second over
   ``--idle`` seconds once converged (median and max over agents).
3. **Crash**: ``--kill`` of the agents (not the seeds), drawn with ``--seed``, get SIGKILL at
   once; for every (survivor, victim) pair, the time from the kill to the survivor's first
   ``suspect`` and to its ``failed`` line (p50, p99, max). Then ``--watch`` seconds more:
   every ``suspect`` or ``failed`` of a live agent is a false suspicion or a false failure.
4. **Pauses** (each ``--pause S``): one live agent gets SIGSTOP for S seconds, then SIGCONT;
   reported per survivor: suspected or not, failed or not, and after SIGCONT the time until
   it is ``alive`` or ``joined`` again with a higher incarnation.

Returns (``main()``) a dict with every figure, and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from gossip.keyfile import write_key_file


def free_ports(n: int) -> list[int]:
    """``n`` ports free for both UDP and TCP on 127.0.0.1 a moment ago."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < n:
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            tcp = socket.socket()
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                tcp.close()
                continue
            held += [udp, tcp]
            ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


class Agent:
    """One agent process and what it printed."""

    def __init__(self, name: str, address: str, process: trio.Process) -> None:
        self.name = name
        self.address = address
        self.process = process
        self.listening = trio.Event()
        #: (ts, change, name, incarnation) of every member line.
        self.members: list[tuple[float, str, str, int]] = []
        #: every stats line, parsed.
        self.stats: list[dict[str, Any]] = []
        self.alive = True
        self.stderr = b""

    async def read_stdout(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := await self.process.stdout.receive_some():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for raw in lines:
                line = json.loads(raw)
                if line["event"] == "member":
                    self.members.append(
                        (line["ts"], line["change"], line["name"], line["incarnation"])
                    )
                elif line["event"] == "stats":
                    self.stats.append(line)

    async def read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some():
            self.stderr += chunk
            if b"listening on" in self.stderr:
                self.listening.set()

    def joined(self) -> set[str]:
        """Members this agent holds alive now (from its lines)."""
        state: dict[str, str] = {}
        for _, change, name, _ in self.members:
            state[name] = change
        return {n for n, c in state.items() if c in ("joined", "alive", "updated", "suspect")}

    def first(self, change: str, name: str, after: float) -> float | None:
        for ts, c, n, _ in self.members:
            if c == change and n == name and ts >= after:
                return ts
        return None


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _until(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(step)
        return True
    return False


def _idle_rates(agents: Sequence[Agent], t0: float, t1: float) -> dict[str, Any]:
    """Datagrams and bytes sent per agent per second between two stats lines."""
    packets, octets = [], []
    for agent in agents:
        before = [s for s in agent.stats if s["ts"] <= t0]
        after = [s for s in agent.stats if s["ts"] >= t1]
        if not before or not after:
            continue
        a, b = before[-1], after[0]
        dt = b["ts"] - a["ts"]
        sent = b["transport"]["datagrams_sent"] - a["transport"]["datagrams_sent"]
        nbytes = b["transport"]["bytes_sent"] - a["transport"]["bytes_sent"]
        if b.get("stream") and a.get("stream"):  # --stream: TCP counts too
            sent += b["stream"]["datagrams_sent"] - a["stream"]["datagrams_sent"]
            nbytes += b["stream"]["bytes_sent"] - a["stream"]["bytes_sent"]
        packets.append(sent / dt)
        octets.append(nbytes / dt)
    return {
        "agents": len(packets),
        "packets_per_node_s_median": statistics.median(packets) if packets else None,
        "packets_per_node_s_max": max(packets) if packets else None,
        "bytes_per_node_s_median": statistics.median(octets) if octets else None,
        "bytes_per_node_s_max": max(octets) if octets else None,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    n = args.nodes
    ports = free_ports(n + 1)  # the last one for the late joiner
    addresses = [f"127.0.0.1:{p}" for p in ports]
    seeds = ",".join(addresses[:3])
    result: dict[str, Any] = {"nodes": n, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "cluster.key"
        write_key_file(key)
        agents: list[Agent] = []
        async with trio.open_nursery() as nursery:

            async def spawn(i: int) -> Agent:
                address = addresses[i]
                process = await trio.lowlevel.open_process(
                    [
                        *(sys.executable, "-m", "gossip", "agent", "--bind", address),
                        *("--join", seeds, "--name", f"n{i}", "--key-file", str(key)),
                        *("--stats-interval", "1"),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                agent = Agent(f"n{i}", address, process)
                agents.append(agent)
                nursery.start_soon(agent.read_stdout)
                nursery.start_soon(agent.read_stderr)
                return agent

            t_spawn = time.time()
            for i in range(n):
                await spawn(i)
            try:
                await _run_phases(args, agents, rng, t_spawn, result)
                result["late_join"] = await _late_join(agents, spawn, n)
            finally:
                with trio.CancelScope(shield=True):
                    for agent in agents:
                        if agent.process.returncode is None:
                            agent.process.kill()
                        await agent.process.wait()
                nursery.cancel_scope.cancel()
    return result


async def _late_join(agents: list[Agent], spawn: Any, index: int) -> dict[str, Any]:
    """One more agent joins the running cluster: from when it listens until every agent
    holds it alive, and until it holds every live agent alive."""
    late: Agent = await spawn(index)
    with trio.fail_after(60):
        await late.listening.wait()
    t_listen = time.time()
    live = [a for a in agents if a.alive and a is not late]
    names = {a.name for a in live} | {late.name}
    seen = await _until(lambda: all(late.name in a.joined() for a in live), 30)
    t_seen = time.time()
    knows = await _until(lambda: late.joined() >= names, 30)
    t_knows = time.time()
    return {
        "seen_by_all": seen,
        "seen_by_all_after_s": t_seen - t_listen if seen else None,
        "knows_all": knows,
        "knows_all_after_s": t_knows - t_listen if knows else None,
    }


async def _run_phases(
    args: argparse.Namespace,
    agents: list[Agent],
    rng: random.Random,
    t_spawn: float,
    result: dict[str, Any],
) -> None:
    n = len(agents)
    names = {a.name for a in agents}
    # 1. Join.
    with trio.move_on_after(120):
        for agent in agents:
            await agent.listening.wait()
    for agent in agents:
        if not agent.listening.is_set():
            raise RuntimeError(f"{agent.name} never listened: {agent.stderr.decode()!r}")
    t_listening = time.time()
    converged = await _until(lambda: all(a.joined() == names for a in agents), 60)
    t_converged = time.time()
    result["join"] = {
        "converged": converged,
        "after_last_listening_s": t_converged - t_listening if converged else None,
        "after_first_spawn_s": t_converged - t_spawn if converged else None,
        "listening_spread_s": t_listening - t_spawn,
    }
    # Exact: the last agent's line completing its view.
    if converged:
        last = 0.0
        for agent in agents:
            seen: set[str] = set()
            for ts, change, name, _ in agent.members:
                if change == "joined":
                    seen.add(name)
                    if seen == names:
                        last = max(last, ts)
                        break
        result["join"]["after_last_listening_s"] = max(0.0, last - t_listening)
    # 2. Idle cost.
    await trio.sleep(2)
    t0 = time.time()
    await trio.sleep(args.idle)
    t1 = time.time()
    await trio.sleep(1.5)
    result["idle"] = _idle_rates(agents, t0, t1) | {"seconds": t1 - t0}
    # 3. Crash.
    k = max(1, round(args.kill * n))
    victims = rng.sample(agents[3:], k)
    survivors = [a for a in agents if a not in victims]
    t_kill = time.time()
    for v in victims:
        v.process.kill()
        v.alive = False
    await _until(
        lambda: all(s.first("failed", v.name, t_kill) for s in survivors for v in victims),
        60,
    )
    detect, suspect = [], []
    missing = 0
    for s in survivors:
        for v in victims:
            f = s.first("failed", v.name, t_kill)
            if f is None:
                missing += 1
            else:
                detect.append(f - t_kill)
            u = s.first("suspect", v.name, t_kill)
            if u is not None:
                suspect.append(u - t_kill)
    t_watch = time.time()
    await trio.sleep(args.watch)
    false_suspect = false_failed = 0
    live = {a.name for a in survivors}
    for s in survivors:
        for ts, change, name, _ in s.members:
            if ts >= t_kill and name in live:
                false_suspect += change == "suspect"
                false_failed += change == "failed"
    result["crash"] = {
        "victims": [v.name for v in victims],
        "pairs": len(survivors) * len(victims),
        "undetected_pairs": missing,
        "failed_p50_s": _pct(detect, 0.5),
        "failed_p99_s": _pct(detect, 0.99),
        "failed_max_s": max(detect) if detect else None,
        "suspect_p50_s": _pct(suspect, 0.5),
        "watched_s": time.time() - t_watch,
        "false_suspicions": false_suspect,
        "false_failures": false_failed,
    }
    # 4. Pauses.
    result["pauses"] = []
    for seconds in args.pause:
        result["pauses"].append(await _pause(rng, survivors, seconds))


async def _pause(rng: random.Random, survivors: Sequence[Agent], seconds: float) -> dict[str, Any]:
    """SIGSTOP one live agent for ``seconds``: who suspected it, who failed it, and how soon
    after SIGCONT every other agent holds it alive again (at a higher incarnation when it
    had to refute)."""
    target = rng.choice(list(survivors[3:]))
    others = [a for a in survivors if a is not target]
    incarnation = max(
        (inc for a in others for _, _, nm, inc in a.members if nm == target.name), default=0
    )
    t_stop = time.time()
    os.kill(target.process.pid, signal.SIGSTOP)
    await trio.sleep(seconds)
    t_cont = time.time()
    os.kill(target.process.pid, signal.SIGCONT)

    def back(a: Agent) -> float | None:
        """When ``a`` last held the target alive after SIGCONT, or ``None`` if it does not."""
        state, when = "joined", t_stop
        for ts, change, nm, inc in a.members:
            if nm == target.name and ts >= t_stop:
                state, when = change, ts
                if change in ("alive", "joined") and inc <= incarnation:
                    state = "stale"  # alive news older than the pause
        return when if state in ("joined", "alive", "updated") else None

    await _until(lambda: all(back(a) is not None for a in others), 30)
    await trio.sleep(2)
    suspected = sum(1 for a in others if a.first("suspect", target.name, t_stop))
    failed = sum(1 for a in others if a.first("failed", target.name, t_stop))
    refuted = sum(1 for a in others if a.first("alive", target.name, t_stop))
    backs = [max(0.0, b - t_cont) for a in others if (b := back(a)) is not None]
    return {
        "seconds": seconds,
        "observers": len(others),
        "suspected_by": suspected,
        "failed_by": failed,
        "refuted_at": refuted,
        "back_everywhere": len(backs) == len(others),
        "back_after_cont_max_s": max(backs) if backs else None,
        "back_after_cont_p50_s": _pct(backs, 0.5),
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=32)
    parser.add_argument("--kill", type=float, default=0.1, help="fraction killed at once")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of idle measurement")
    parser.add_argument("--watch", type=float, default=60.0, help="seconds after detection")
    parser.add_argument("--pause", type=float, action="append", default=[], help="SIGSTOP secs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = trio.run(run, args)
    result["machine"] = (
        f"{platform.node()} {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    result["load_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for section in ("join", "idle", "crash", "late_join"):
            print(f"{section}:")
            for key, value in result[section].items():
                print(f"  {key:28} {_fmt(value)}")
        for pause in result["pauses"]:
            print("pause:")
            for key, value in pause.items():
                print(f"  {key:28} {_fmt(value)}")
    return result


if __name__ == "__main__":
    main()
