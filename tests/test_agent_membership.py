"""``gossip agent --join/--name/--meta``: real processes with membership on loopback UDP.

The member lines are a stable interface: key order, changes, a graceful leave on SIGTERM
seen as ``left``, a SIGKILL seen as ``failed``.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from gossip import cli
from gossip.keyfile import write_key_file

from .test_agent import Agent, loopback

TIMEOUT = 40  # real seconds for a whole test: failure detection takes ~5-8 s


@asynccontextmanager
async def open_members(
    addresses: Sequence[str], key_file: Path, seed: str
) -> AsyncIterator[list[Agent]]:
    agents = []
    try:
        for i, address in enumerate(addresses):
            process = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-m", "gossip", "agent", "--bind", address),
                    *("--join", seed, "--name", f"n{i}", "--meta", f"i={i}"),
                    *("--key-file", str(key_file), "--stats-interval", "60"),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            agents.append(Agent(process))
        for agent in agents:
            await agent.wait_ready()
        yield agents
    finally:
        with trio.CancelScope(shield=True):  # reaped even when the test timed out
            for agent in agents:
                if agent.process.returncode is None:
                    agent.process.kill()
                await agent.process.wait()


async def until_member(agent: Agent, name: str, change: str) -> dict[str, Any]:
    """Read stdout until a member line saying ``name`` ``change``; return it."""
    while True:
        line = await agent.read_json()
        if line["event"] == "member" and line["name"] == name and line["change"] == change:
            return line
        assert not (line["event"] == "member" and line["change"] == "failed"), line


async def test_members_join_fail_and_leave(tmp_path: Path) -> None:
    addresses = loopback(5)
    write_key_file(tmp_path / "cluster.key")
    with trio.fail_after(TIMEOUT):
        async with open_members(addresses, tmp_path / "cluster.key", addresses[0]) as agents:
            # Every agent reports its own join first, then every other member's.
            for i, agent in enumerate(agents):
                line = await agent.read_json()
                assert list(line) == [
                    *("event", "change", "name", "address", "incarnation", "meta", "ts")
                ]
                assert (line["change"], line["name"], line["address"]) == (
                    "joined",
                    f"n{i}",
                    addresses[i],
                )
                assert line["meta"] == {"i": str(i)}
                seen: dict[str, dict[str, Any]] = {}
                while len(seen) < len(agents) - 1:
                    line = await agent.read_json()
                    assert line["event"] == "member" and line["change"] == "joined", line
                    seen[line["name"]] = line
                for j in range(len(agents)):
                    if j != i:
                        assert seen[f"n{j}"]["address"] == addresses[j]
                        assert seen[f"n{j}"]["meta"] == {"i": str(j)}
            agents[4].process.kill()  # a crash
            for agent in agents[:4]:
                await until_member(agent, "n4", "failed")
            agents[3].process.send_signal(signal.SIGTERM)  # a graceful leave
            for agent in agents[:3]:
                line = await until_member(agent, "n3", "left")
                assert line["address"] == addresses[3]
            status, rest = await agents[3].finish()
            assert status == 0
            assert [(x["change"], x["name"]) for x in rest if x["event"] == "member"][-1] == (
                "left",
                "n3",
            )
            # The broadcast follows membership: a line still reaches the live members.
            await agents[0].send("after the churn")
            for agent in agents[1:3]:
                while (line := await agent.read_json())["event"] != "message":
                    pass
            for agent in agents[:3]:
                await agent.close_stdin()
            for agent in agents[:3]:
                status, rest = await agent.finish()
                assert status == 0
                stats = [x for x in rest if x["event"] == "stats"][-1]
                assert stats["membership"]["probes"] >= 1
                # Written after its own leave: n3 and itself left, n4 dead (kept 30 s).
                assert stats["membership"]["members"]["dead"] == 1
                assert stats["membership"]["members"]["left"] >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "127.0.0.1:0"], "give --peers"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--join", "127.0.0.1:2"], "not both"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--meta", "a=b"], "--meta needs"),
        (["--bind", "127.0.0.1:0", "--name", "a", "--meta", "novalue"], "KEY=VALUE"),
        (["--bind", "127.0.0.1:0", "--name", "a", "--meta", "k=" + "v" * 300], "255"),
        (["--bind", "127.0.0.1:0", "--name", "a", "--transport", "tcp"], "--join/--name need"),
    ],
)
def test_bad_membership_arguments_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["agent", *args])
    assert exc_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
