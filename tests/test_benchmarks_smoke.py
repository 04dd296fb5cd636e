"""Tiny runs of every benchmark's ``main``, so that the benchmarks cannot rot unnoticed.

The figures themselves are not checked here (a shared machine is too noisy for that): only
that each benchmark runs end to end and its bookkeeping adds up.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from bench import (
    ab,
    burst,
    dissemination,
    fuzz_membership,
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
        # A duplicate ends at the seen-set lookup: dearer than nothing, cheaper than a fresh
        # message (decoded, cached, delivered, forwarded and ACKed).
        assert 0 < dup < fresh
    assert "Targets" in capsys.readouterr().out


def test_fuzz_membership_smoke(capsys: pytest.CaptureFixture[str]) -> None:
    result = fuzz_membership.main(["--count", "3000", "--sealed", "2000"])
    assert result["bugs"] == 0 and result["view_unchanged"]
    plain = result["plain"]
    # Every datagram with a membership label went through the parser: parsed or refused.
    assert plain["parsed"] + plain["MalformedPacket"] + plain["not a membership label"] == 3000
    sealed = result["sealed"]
    # Every sealed-cluster datagram without the key was dropped, and counted by reason.
    assert sum(n for k, n in sealed.items() if k.startswith("dropped: ")) >= sealed["sent"]
    assert "view unchanged: True" in capsys.readouterr().out


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


ROOT = Path(ab.__file__).resolve().parent.parent


def _worktrees() -> set[str] | None:
    """Paths of the repository's worktrees (None: not a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "list", "--porcelain"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return {line[9:] for line in done.stdout.splitlines() if line.startswith("worktree ")}


@pytest.mark.skipif(_worktrees() is None, reason="needs git and a git checkout")
def test_ab_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _worktrees()
    assert before is not None
    out_json = tmp_path / "ab.json"
    ab_args = ["--base", "HEAD", "--head", "HEAD", "--runs", "1", "--preset", "relay"]
    tiny = ["--runs", "1", "--n", "64", "--burst", "16"]
    report = ab.main([*ab_args, "--json", str(out_json), "--", *tiny])
    out = capsys.readouterr().out
    assert "| metric | base median | head median | head / base |" in out
    assert "| **relay runtime fresh us** |" in out
    assert "| **relay runtime dup us** |" in out
    metrics = {m["label"]: m for m in json.loads(out_json.read_text())["metrics"]}
    for label in ("relay runtime fresh us", "relay runtime dup us"):
        m = metrics[label]
        assert m["judged"]
        assert len(m["base"]) == len(m["head"]) == 1
        assert m["base_median"] > 0
        assert m["head_median"] > 0
        assert math.isfinite(m["ratio"])
        assert m["ratio"] > 0
    # Each side ran its own worktree's code, and every worktree is gone.
    tmp = Path(str(report["tmp"]))
    revisions = json.loads(out_json.read_text())["revisions"]
    assert [r["side"] for r in revisions] == ["base", "head"]
    assert revisions[0]["tree"] != revisions[1]["tree"]
    for r in revisions:
        assert Path(r["gossip"]).is_relative_to(Path(r["tree"]))
        assert Path(r["tree"]).is_relative_to(tmp)
    after = _worktrees()
    assert after is not None
    assert not [p for p in after - before if "trio-gossip-ab-" in p]
    assert not [p for p in after if Path(p).is_relative_to(tmp)]
    assert not tmp.exists()


def test_ab_table_arithmetic() -> None:
    rows = [{"nodes": 128, "p50_ms": 30.0}, {"nodes": 32, "p50_ms": 6.0}]
    assert ab.flatten(rows) == {
        "N=128/nodes": 128.0,
        "N=128/p50_ms": 30.0,
        "N=32/nodes": 32.0,
        "N=32/p50_ms": 6.0,
    }
    assert ab.flatten({"case": [1.5, 2.5]}) == {"case/0": 1.5, "case/1": 2.5}
    spec = ab.MetricSpec("x", "x", judged=True)
    row = ab.Row(spec, [10.0, 12.0, 11.0], [11.0, 12.5, 11.4], 0.05)
    assert row.ratio == pytest.approx(11.4 / 11.0)
    assert row.passed
    assert row.verdict.startswith("within 5 %")
    slower = ab.Row(spec, [10.0], [10.6], 0.05)
    assert not slower.passed
    assert slower.verdict.startswith("SLOWER")
    assert ab.Row(spec, [10.0], [9.0], 0.05).verdict.startswith("faster")
    assert not math.isfinite(ab.Row(spec, [0.0], [0.0], 0.05).ratio)
