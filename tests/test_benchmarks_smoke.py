"""Tiny runs of every benchmark's ``main``, so that the benchmarks cannot rot unnoticed.

The figures themselves are not checked here (a shared machine is too noisy for that): only
that each benchmark runs end to end and its bookkeeping adds up.
"""

from __future__ import annotations

import pytest

from bench import (
    burst,
    dissemination,
    hostile_agent,
    hostile_tcp,
    memory_bound,
    memory_cluster,
    relay_cost,
)
from gossip.transport.tcp import DEFAULT_MAX_INBOUND


def test_dissemination_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    rows = dissemination.main(
        ["--nodes", "8", "--messages", "2", "--warmup", "1", "--idle", "0.05", "--settle", "0.02"]
    )
    assert len(rows) == 1
    assert rows[0]["timeouts"] == 0
    assert rows[0]["dup_delivered"] == 0
    assert rows[0]["push"] > 0
    assert "| 8 |" in capsys.readouterr().out


def test_relay_cost_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    result = relay_cost.main(["--runs", "1", "--n", "64", "--burst", "16"])
    assert set(result) == set(relay_cost.CASES)
    for fresh, dup in result.values():
        assert fresh > 0
        assert dup >= 0
    assert "Targets" in capsys.readouterr().out


def test_hostile_agent_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    report = hostile_agent.main(["--bad", "300", "--legit", "5", "--warmup", "5"])
    assert report.counted == report.bad_sent == 300
    assert report.legit_delivered == report.legit_pushed == 5
    assert report.kernel_drops == 0
    assert report.agent_exit == 0
    assert "counted in all" in capsys.readouterr().out


def test_hostile_tcp_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    # ~16 s: the slowest slowloris waits out the agent's 10 s frame timeout, the flood its
    # 5 s hello timeout.
    flood = str(DEFAULT_MAX_INBOUND + 4)
    report = hostile_tcp.main(
        [
            *("--bad", "300", "--legit", "5", "--warmup", "5"),
            *("--slowloris", "3", "--flood", flood, "--concurrency", "4"),
        ]
    )
    tally = report.tally
    assert report.counted == report.expected
    assert all(report.expected[r] > 0 for r in (*hostile_tcp.BAD_REASONS, "refused"))
    assert sum(tally.streams.values()) == 150
    assert set(tally.slowloris) == set(hostile_tcp.SLOWLORIS_KINDS)
    assert not tally.unclosed
    assert report.frames_counted == tally.frames == 150
    assert report.legit_delivered == report.legit_pushed == 5
    assert (report.dialed, report.inbound_open_after, report.agent_exit) == (1, 1, 0)
    assert "counted as frame_timeout" in capsys.readouterr().out


def test_memory_bound_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    results = memory_bound.main(["--messages", "200", "--configs", "default"])
    assert len(results) == 1
    assert results[0].final["engine"]["delivered"] == 200
    assert results[0].idle_kib > 0
    assert "| default |" in capsys.readouterr().out


def test_burst_smoke() -> None:
    r = burst.run_burst(3, 300, size=64, timeout=60)
    assert r["all_delivered_once"]
    assert r["delivered_min"] == 300
    assert r["duplicates"] == 0
    assert r["rate_to_all"] > 0


def test_memory_cluster_burst_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    r = memory_cluster.main(
        ["--nodes", "6", "--loss", "0.1", "--messages", "150", "--burst", "--tail", "60"]
    )
    assert r["fully_delivered"] == 150
    assert r["duplicates_delivered"] == 0
    assert r["complete_s"] is not None
    assert "push waits at the source" in capsys.readouterr().out
