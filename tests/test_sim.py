"""The simulator: deterministic, faithful to the trio runtime, right where we know the answer."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from gossip.broadcast import GossipConfig
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.node import Gossiper, open_gossiper
from gossip.sim import Latency, Scenario, Simulation, simulate
from gossip.sim.cli import add_parser
from gossip.sim.cli import main as sim_main
from gossip.sim.report import format_table, to_dict
from gossip.sim.theory import push_pull_rounds, serf_fraction, serf_seconds
from gossip.transport.memory import LinkConditions, MemoryNetwork

#: Fields of a report that measure the machine, not the simulated run.
MACHINE = ("wall_seconds", "setup_seconds", "peak_rss_mib")


def _behaviour(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in MACHINE}


def test_same_seed_same_result_different_seed_different() -> None:
    scenario = Scenario(nodes=300, seed=7, loss=0.1, duplicate=0.05, crashed=0.1)
    a = _behaviour(to_dict(simulate(scenario)))
    b = _behaviour(to_dict(simulate(scenario)))
    assert a == b
    c = _behaviour(to_dict(simulate(Scenario(nodes=300, seed=8, loss=0.1, duplicate=0.05))))
    assert a != c
    assert a["time_to"] != c["time_to"]


@pytest.mark.parametrize("encrypted", [False, True])
def test_same_seed_same_keys_and_event_log(
    capsys: pytest.CaptureFixture[str], encrypted: bool
) -> None:
    """Two runs of ``gossip sim`` with one seed: the same message keys and the same event log
    (SHA-256 over every event, each datagram's bytes included, sealed ones too); another seed
    gives another log."""
    argv = ["--nodes", "60", "--loss", "10%", "--messages", "3", "--interval", "0.2"]
    argv += ["--json", "--no-progress"] + (["--encrypted"] if encrypted else [])

    def trace(seed: int) -> str:
        with pytest.raises(SystemExit) as exit_info:
            sim_main([*argv, "--seed", str(seed)])
        assert exit_info.value.code == 0
        digest: str = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["trace"]
        return digest

    def keys(seed: int) -> str:
        scenario = Scenario(nodes=60, seed=seed, loss=0.1, messages=3, interval=0.2)
        result = simulate(attrs.evolve(scenario, encrypted=encrypted))
        assert len({m.key for m in result.messages}) == 3
        return hashlib.sha256(b"".join(m.key for m in result.messages)).hexdigest()

    assert trace(11) == trace(11)
    assert keys(11) == keys(11)
    assert trace(12) != trace(11)
    assert keys(12) != keys(11)


ARGS = ["--nodes", "200", "--seed", "3", "--loss", "20%", "--messages", "3", "--interval", "0.5"]
ARGS += ["--json", "--no-progress"]


def test_result_does_not_depend_on_hash_seed() -> None:
    """Nothing iterates a set or depends on hashing: another PYTHONHASHSEED, same numbers."""
    outputs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        proc = subprocess.run(
            [sys.executable, "-m", "gossip.sim", *ARGS],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(_behaviour(json.loads(proc.stdout.strip().splitlines()[-1])))
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("extra", [0, 3])
def test_fanout_of_everyone_reaches_everyone_in_one_hop(extra: int) -> None:
    n = 12
    # Constant latency: the origin's copies all land before any forwarded one can.
    scenario = Scenario(
        nodes=n, seed=1, config=GossipConfig(fanout=n - 1 + extra), latency=Latency(5e-4, 5e-4)
    )
    result = simulate(scenario)
    m = result.messages[0]
    assert m.delivered == n
    assert m.hops_to["50"] == m.hops_to["100"] == 1
    assert m.hop_histogram == [1, n - 1]
    assert m.time_to["100"] == pytest.approx(5e-4)
    assert m.pulled == 0
    # Everyone pushes once to everyone else, and ACKs the origin only.
    assert result.sent["push"] == (n - 1) + (n - 1) * (n - 2)  # forwards skip the sender
    assert result.sent["ack"] == n - 1
    assert result.sent["request"] == result.sent["response"] == 0


def test_fanout_of_everyone_under_jitter_still_needs_no_pull() -> None:
    """With 0.2-1 ms jitter a forwarded copy may beat the origin's, still no pull. The direct
    copy takes at most 1 ms and a k-hop path at least k x 0.2 ms: at most 5 hops."""
    n = 12
    result = simulate(Scenario(nodes=n, seed=1, config=GossipConfig(fanout=n - 1)))
    m = result.messages[0]
    assert m.delivered == n and m.pulled == 0
    assert m.hops_to["100"] is not None and 1 <= m.hops_to["100"] <= 5
    assert m.time_to["100"] is not None and m.time_to["100"] <= 0.001


def test_crashed_nodes_get_nothing_and_live_ones_everything() -> None:
    sim = Simulation(Scenario(nodes=200, seed=2, crashed=0.2, loss=0.1))
    result = sim.run()
    assert result.live_nodes == 160
    assert result.complete and result.delivery_ratio() == 1.0
    crashed = [i for i in range(200) if sim.state[i] == 2]
    assert len(crashed) == 40
    assert all(sim.delivered_at[0][i] < 0 for i in crashed)
    assert result.network_dropped["crashed"] > 0


def test_late_joiners_and_a_healed_partition_catch_up_by_pulling() -> None:
    sim = Simulation(
        Scenario(nodes=150, seed=4, late_joiners=0.1, join_window=2.0, partition=0.3, heal_at=1.5)
    )
    result = sim.run()
    m = result.messages[0]
    assert result.complete and m.delivered == 150
    assert result.network_dropped["partition"] > 0
    # Late joiners missed datagrams sent before they started (and got the message anyway).
    assert result.network_dropped["offline"] > 0
    # The cut-off side could only get it after the heal, through anti-entropy pulls.
    assert m.pulled > 0
    late = [i for i, t in sim.join_at.items() if t > sim.push_at[0] + 0.01]
    assert late and all(sim.delivered_at[0][i] >= sim.join_at[i] for i in late)


def test_packet_counts_match_the_engines_own_counters() -> None:
    sim = Simulation(Scenario(nodes=300, seed=6, loss=0.2, messages=3, interval=0.7))
    result = sim.run()
    stats = [e.statistics() for i, e in enumerate(sim.engines) if sim.state[i] != 2]
    assert sum(result.sent.values()) == sum(s.datagrams_sent for s in stats)
    assert sum(result.bytes_sent.values()) == sum(s.bytes_sent for s in stats)
    # Pull-fallback and anti-entropy digests are both PullSync to the engine.
    assert result.sent["sync"] + result.sent["digest"] == sum(s.pull_syncs_sent for s in stats)
    assert result.sent["sync"] > 0 and result.sent["digest"] > 0
    assert result.engine["pulled"] == sum(m.pulled for m in result.messages)


def test_hops_follow_the_delivering_sender() -> None:
    sim = Simulation(Scenario(nodes=400, seed=5, loss=0.2))
    sim.run()
    hops = sim.hops(0)
    assert hops[0] == 0 and hops.count(0) == 1  # only the origin
    # Every hop count up to the largest occurs (each copy came from a copy one hop shorter).
    assert set(hops) == set(range(hops[-1] + 1))


def test_bad_scenarios_are_refused() -> None:
    with pytest.raises(LocalProtocolError):
        Scenario(nodes=1)
    with pytest.raises(LocalProtocolError):
        Scenario(nodes=10, loss=1.5)
    with pytest.raises(LocalProtocolError):
        Scenario(nodes=10, crashed=1.0)
    with pytest.raises(LocalProtocolError):
        Scenario(nodes=10, messages=2, warmup=2)
    with pytest.raises(LocalProtocolError):
        Latency(0.002, 0.001)
    with pytest.raises(LocalProtocolError):
        Scenario(nodes=10, max_time=120.0)  # past the 60 s message TTL


def test_cli_json_is_the_last_line_and_table_says_encryption_is_off(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sim_main(["--nodes", "50", "--seed", "1", "--json", "--no-progress"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out.strip().splitlines()
    data = json.loads(out[-1])
    assert data["nodes"] == 50 and data["delivery_ratio"] == 1.0
    assert data["encrypted"] is False
    assert set(data["time_to"]) == {"50", "90", "99", "99.99", "100"}
    assert data["packets_per_node_message"]["push"] == pytest.approx(3.0)
    table = format_table(simulate(Scenario(nodes=50, seed=1)))
    assert "encryption off" in table and "hop-rounds" in table


def test_add_parser_registers_the_sim_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    """As ``gossip.cli.build_parser`` uses it: ``add_parser(sub)``, then ``args.func(args)``."""
    parser = argparse.ArgumentParser(prog="gossip")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["sim", "--nodes", "30", "--loss", "10%", "--json"])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["network"]["loss"] == 0.1
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["sim", "--nodes", "30", "--loss", "2"])
    assert exit_info.value.code == 2


def test_encrypted_runs_behave_alike() -> None:
    plain = to_dict(simulate(Scenario(nodes=100, seed=9)))
    sealed = to_dict(simulate(Scenario(nodes=100, seed=9, encrypted=True)))
    # Same decisions (same seeds), bigger packets.
    assert sealed["time_to"] == plain["time_to"]
    assert sealed["packets_per_node_message"] == plain["packets_per_node_message"]
    assert sealed["bytes_per_node_message"]["push"] > plain["bytes_per_node_message"]["push"]


def test_theory_matches_the_published_numbers() -> None:
    assert push_pull_rounds(10_000) == pytest.approx(10.6, abs=0.05)
    assert serf_fraction(0, 1000, 3) == pytest.approx(1 / 1002)
    # serf's 200 ms rounds: ~2 s for 1,000 nodes, about twice that at 50 % loss.
    assert 1.8 < serf_seconds(0.9999, 1000, 3) < 2.3
    assert 3.6 < serf_seconds(0.9999, 1000, 3, loss=0.5) < 4.5


# ------------------------------------------------------------- agreement with the trio runtime

#: One message on a small cluster, no anti-entropy in the window (sync_interval 100 s): push,
#: ACK and the pull fallback are all there is, so both sides count the same packets.
AGREE_NODES = 24
AGREE_CONFIG = GossipConfig(sync_interval=100.0)
AGREE_SEEDS = range(12)


async def _runtime_once(seed: int, loss: float) -> tuple[float, float]:
    """Delivery ratio and packets per node of one message on the trio runtime."""
    net = MemoryNetwork(seed=seed, default=LinkConditions(loss=loss, delay=0.0002, jitter=0.0008))
    transports = [net.open_transport() for _ in range(AGREE_NODES)]
    discovery = StaticDiscovery([t.local_address for t in transports])
    nodes: list[Gossiper[Any]] = []
    got = [0] * AGREE_NODES
    async with trio.open_nursery() as nursery:

        async def node(i: int, task_status: trio.TaskStatus[None]) -> None:
            rng = random.Random(seed * 1000 + i)
            async with open_gossiper(discovery, transports[i], AGREE_CONFIG, rng=rng) as g:
                nodes.append(g)
                task_status.started()
                async for _ in g:
                    got[i] += 1

        for i in range(AGREE_NODES):
            await nursery.start(node, i)
        await trio.sleep(1.0)
        origin = random.Random(seed).randrange(AGREE_NODES)
        await nodes[origin].push(bytes(256))
        await trio.sleep(2.0)  # far past every ACK deadline and pull
        nursery.cancel_scope.cancel()
    got[origin] = 1
    sent = sum(g.engine.statistics().datagrams_sent for g in nodes)
    return sum(got) / AGREE_NODES, sent / AGREE_NODES


@pytest.mark.parametrize("loss", [0.0, 0.2])
async def test_simulator_agrees_with_trio_runtime(
    autojump_clock: trio.testing.MockClock, loss: float
) -> None:
    runtime = [await _runtime_once(seed, loss) for seed in AGREE_SEEDS]
    simulated = []
    for seed in AGREE_SEEDS:
        result = simulate(
            Scenario(nodes=AGREE_NODES, seed=seed, config=AGREE_CONFIG, loss=loss, max_time=2.0)
        )
        simulated.append((result.delivery_ratio(), sum(result.sent.values()) / AGREE_NODES))
    rt_ratio = statistics.mean(r for r, _ in runtime)
    sim_ratio = statistics.mean(r for r, _ in simulated)
    rt_packets = statistics.mean(p for _, p in runtime)
    sim_packets = statistics.mean(p for _, p in simulated)
    print(f"runtime {rt_ratio:.3f} {rt_packets:.2f}  simulator {sim_ratio:.3f} {sim_packets:.2f}")
    assert sim_ratio == pytest.approx(rt_ratio, abs=0.05)
    assert sim_packets == pytest.approx(rt_packets, rel=0.12)
