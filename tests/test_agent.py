"""``gossip agent`` as scripts use it: real processes on loopback UDP, stdin in, JSON out.

Every test body runs under ``trio.fail_after``: a hung agent fails the test, never the run.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from gossip import cli
from gossip.cli.agent import resolve_addresses
from gossip.cli.common import format_address, parse_hostport
from gossip.keyfile import write_key_file

TIMEOUT = 15  # seconds of real time for a whole test; each agent starts in about 0.5 s


def free_udp_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` UDP ports that were free a moment ago (all held at once, so distinct)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    socks = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class Agent:
    """One ``python -m gossip agent`` process with line-oriented pipes."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self._out = b""
        self.stderr = b""

    async def wait_ready(self) -> None:
        """Wait for the start-up note on stderr: from then on the socket is bound."""
        assert self.process.stderr is not None
        while b"listening on" not in self.stderr:
            chunk = await self.process.stderr.receive_some()
            assert chunk, f"agent exited before listening: {self.stderr.decode()}"
            self.stderr += chunk

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode() + b"\n")

    async def close_stdin(self) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.aclose()

    async def read_json(self) -> dict[str, Any]:
        """The next stdout line, parsed."""
        assert self.process.stdout is not None
        while b"\n" not in self._out:
            chunk = await self.process.stdout.receive_some()
            assert chunk, "stdout closed"
            self._out += chunk
        line, self._out = self._out.split(b"\n", 1)
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    async def finish(self) -> tuple[int, list[dict[str, Any]]]:
        """Wait for exit; return the status and every stdout line not read yet."""
        assert self.process.stdout is not None and self.process.stderr is not None
        async with trio.open_nursery() as nursery:

            async def drain_stderr() -> None:
                assert self.process.stderr is not None
                while chunk := await self.process.stderr.receive_some():
                    self.stderr += chunk

            nursery.start_soon(drain_stderr)
            while chunk := await self.process.stdout.receive_some():
                self._out += chunk
        status = await self.process.wait()
        lines = [json.loads(line) for line in self._out.splitlines()]
        self._out = b""
        return status, lines


@asynccontextmanager
async def open_agents(
    addresses: Sequence[str],
    *extra: str,
    peers: Sequence[str] | None = None,
    stdin: int = subprocess.PIPE,
) -> AsyncIterator[list[Agent]]:
    """Start one agent per address, all with the same peer list (default: ``addresses``),
    and wait until all listen."""
    peer_list = ",".join(addresses if peers is None else peers)
    agents = []
    try:
        for address in addresses:
            process = await trio.lowlevel.open_process(
                [
                    sys.executable,
                    "-m",
                    "gossip",
                    "agent",
                    "--bind",
                    address,
                    "--peers",
                    peer_list,
                    *extra,
                ],
                stdin=stdin,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            agents.append(Agent(process))
        for agent in agents:
            await agent.wait_ready()
        yield agents
    finally:
        for agent in agents:
            if agent.process.returncode is None:
                agent.process.kill()
            await agent.process.wait()


def loopback(n: int) -> list[str]:
    return [f"127.0.0.1:{port}" for port in free_udp_ports(n)]


def check_message(line: dict[str, Any], text: str, cluster: Sequence[str]) -> None:
    assert list(line) == ["event", "key", "data", "sender", "ts"]  # stable key order
    assert line["event"] == "message"
    assert base64.b64decode(line["data"], validate=True) == text.encode("utf-8")
    assert len(bytes.fromhex(line["key"])) == 16
    assert line["sender"] in cluster
    assert abs(line["ts"] - time.time()) < 30


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "key-file"])
async def test_lines_spread_exactly_once_and_eof_exits_0(encrypted: bool, tmp_path: Path) -> None:
    # With a key file, a fourth agent without the key shares the peer list: it must hear
    # nothing, and nobody must deliver its plain-text message.
    addresses = loopback(4 if encrypted else 3)
    members, outsiders = addresses[:3], addresses[3:]
    extra: list[str] = []
    if encrypted:
        write_key_file(tmp_path / "cluster.key")
        extra = ["--key-file", str(tmp_path / "cluster.key")]
    texts = ["hello, gossip ✓", "second line from another node"]
    with trio.fail_after(TIMEOUT):
        async with (
            open_agents(members, *extra, peers=addresses) as agents,
            open_agents(outsiders, peers=addresses) as others,
        ):
            for outsider in others:
                await outsider.send("plain text from outside")
            await agents[0].send(texts[0])
            for agent in agents[1:]:
                check_message(await agent.read_json(), texts[0], addresses)
            await agents[1].send(texts[1])
            for agent in (agents[0], agents[2]):
                check_message(await agent.read_json(), texts[1], addresses)
            for agent in agents + others:
                await agent.close_stdin()
            results = [await agent.finish() for agent in agents + others]
    for status, rest in results:
        assert status == 0
        # Anything still to come would be a duplicate: each message was printed once above.
        assert rest == []


async def test_stdin_dev_null_exits_0_at_once() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_agents(loopback(1), stdin=subprocess.DEVNULL) as (agent,):
            status, lines = await agent.finish()
    assert (status, lines) == (0, [])


async def test_sigterm_and_sigint_exit_0() -> None:
    addresses = loopback(2)
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses) as agents:
            await agents[0].send("before the signal")
            check_message(await agents[1].read_json(), "before the signal", addresses)
            agents[0].process.send_signal(signal.SIGTERM)
            agents[1].process.send_signal(signal.SIGINT)
            results = [await agent.finish() for agent in agents]
    assert results == [(0, []), (0, [])]
    assert all(b"Traceback" not in agent.stderr for agent in agents)


async def test_stats_lines() -> None:
    addresses = loopback(2)
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses, "--stats-interval", "0.1") as agents:
            await agents[0].send("counted")
            seen: list[dict[str, Any]] = []
            # Three stats lines and the message, whichever comes first: on a busy machine the
            # message may take longer than three stats intervals.
            events = [line["event"] for line in seen]
            while events.count("stats") < 3 or "message" not in events:
                seen.append(await agents[1].read_json())
                events = [line["event"] for line in seen]
            for agent in agents:
                await agent.close_stdin()
            results = [await agent.finish() for agent in agents]
    assert events.count("message") == 1
    assert all(line["event"] == "stats" for line in results[1][1])  # and never again
    stats = [line for line in seen if line["event"] == "stats"]
    for line in stats:
        assert {
            "ts",
            "address",
            "engine",
            "transport",
            "delivery_queued",
            "delivery_overflow",
        } <= set(line)
        assert line["address"] == addresses[1]
        assert {"datagrams_sent", "delivered", "dropped", "sent_by_type"} <= set(line["engine"])
        assert {"datagrams_received", "bytes_sent"} <= set(line["transport"])
    assert results[1][0] == 0
    final = results[1][1] or stats
    assert final[-1]["event"] == "stats"  # a last stats line at shutdown
    assert final[-1]["engine"]["delivered"] == 1
    assert results[0][0] == 0


async def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    try:
        ports = free_udp_ports(2, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback address")
    addresses = [f"[::1]:{port}" for port in ports]
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses) as agents:
            await agents[1].send("over IPv6")
            line = await agents[0].read_json()
            check_message(line, "over IPv6", addresses)
            for agent in agents:
                await agent.close_stdin()
            assert [status for status, _ in [await a.finish() for a in agents]] == [0, 0]


def free_tcp_ports(n: int) -> list[int]:
    """``n`` TCP ports on 127.0.0.1 that were free a moment ago (distinct)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def test_lines_spread_over_tcp(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_tcp_ports(3)]
    write_key_file(tmp_path / "cluster.key")
    extra = ["--transport", "tcp", "--key-file", str(tmp_path / "cluster.key")]
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses, *extra, "--stats-interval", "10") as agents:
            await agents[0].send("over tcp")
            for agent in agents[1:]:
                while (line := await agent.read_json())["event"] != "message":
                    pass
                check_message(line, "over tcp", addresses)
            for agent in agents:
                await agent.close_stdin()
            results = [await agent.finish() for agent in agents]
    for status, rest in results:
        assert status == 0
        assert [line["event"] for line in rest][-1:] == ["stats"]
        transport = rest[-1]["transport"]
        assert transport["dialed"] >= 1
        assert transport["accepted"] >= 1
        # Agents exit one after another (peer_closed, connect_failed); no stream was bad.
        bad = ("bad_hello", "oversized", "truncated", "hello_timeout", "frame_timeout")
        assert [transport["closed"][reason] for reason in bad] == [0] * len(bad)


async def test_stream_carries_lines_longer_than_a_datagram(tmp_path: Path) -> None:
    addresses = [f"127.0.0.1:{port}" for port in free_tcp_ports(3)]
    write_key_file(tmp_path / "cluster.key")
    extra = ["--stream", "--key-file", str(tmp_path / "cluster.key")]
    long_line = "x" * 20_000
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses, *extra, "--stats-interval", "10") as agents:
            await agents[0].send(long_line)
            for agent in agents[1:]:
                while (line := await agent.read_json())["event"] != "message":
                    pass
                check_message(line, long_line, addresses)
            for agent in agents:
                await agent.close_stdin()
            results = [await agent.finish() for agent in agents]
    for status, rest in results:
        assert status == 0
        final = rest[-1]
        assert final["event"] == "stats"
        # The 20 KB message travelled on streams; no datagram was longer than 1400 bytes.
        assert final["stream"]["bytes_sent"] + final["stream"]["bytes_received"] > 20_000
        assert final["transport"]["bytes_sent"] <= 1400 * final["transport"]["datagrams_sent"]


async def test_bind_failure_exits_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with trio.fail_after(TIMEOUT):
            result = await trio.run_process(
                [sys.executable, "-m", "gossip", "agent", "--bind", address, "--peers", address],
                stdin=subprocess.DEVNULL,
                capture_stdout=True,
                capture_stderr=True,
                check=False,
            )
    assert result.returncode == 1
    assert b"cannot bind" in result.stderr
    assert result.stdout == b""


async def test_bad_arguments_exit_2_in_a_real_process() -> None:
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "gossip", "agent", "--bind", "::1:7946", "--peers", "x:1"],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert b"brackets" in result.stderr


def _bad_key_file(tmp_path: Path) -> str:
    path = tmp_path / "key"
    write_key_file(path)
    path.chmod(0o644)
    return str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--peers", "127.0.0.1:1"], "--bind"),
        (["--bind", "127.0.0.1:7946"], "--peers"),
        (["--bind", "127.0.0.1", "--peers", "127.0.0.1:1"], "HOST:PORT"),
        (["--bind", "127.0.0.1:70000", "--peers", "127.0.0.1:1"], "0..65535"),
        (["--bind", "::1:7946", "--peers", "127.0.0.1:1"], "brackets"),
        (["--bind", "[::1:7946", "--peers", "127.0.0.1:1"], "[IPV6]:PORT"),
        (["--bind", "127.0.0.1:7946", "--peers", ","], "HOST:PORT"),
        (["--bind", "127.0.0.1:7946", "--peers", "127.0.0.1:0"], "port 0"),
        (["--bind", "127.0.0.1:7946", "--peers", "127.0.0.1:1", "--fanout", "0"], "positive"),
        (["--bind", "127.0.0.1:7946", "--peers", "127.0.0.1:1", "--fanout", "x"], "positive"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--stats-interval", "-1"], "positive"),
        (
            ["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--stats-interval", "nan"],
            "positive",
        ),
        (["--bind", "127.0.0.1:0", "--peers", "[::1]:1"], "no IPv4 address"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--key-file", "/nonexistent"], "key"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--key-file", "BAD"], "chmod 600"),
        (["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--bogus"], "unrecognized"),
        (
            [
                *("--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1"),
                *("--profile", "go-gossip", "--transport", "tcp"),
            ],
            "native profile only",
        ),
        (
            ["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1", "--transport", "tcp", "--stream"],
            "--stream goes with",
        ),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [_bad_key_file(tmp_path) if a == "BAD" else a for a in args]
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["agent", *args])
    assert exc_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7946", ("127.0.0.1", 7946)),
        ("[::1]:7946", ("::1", 7946)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("node-a.example:0", ("node-a.example", 0)),
    ],
)
def test_parse_and_format_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected
    assert format_address(expected) == text


def test_resolution_canonicalises_and_dedupes() -> None:
    bind, peers = resolve_addresses(
        ("127.0.0.1", 0), [("127.0.0.1", 1), ("localhost", 1), ("127.0.0.1", 2)]
    )
    assert bind == ("127.0.0.1", 0)
    assert peers == (("127.0.0.1", 1), ("127.0.0.1", 2))
    if socket.has_ipv6:
        _, mapped = resolve_addresses(("::", 0), [("127.0.0.1", 1), ("0:0::1", 2)])
        assert mapped == (("::ffff:127.0.0.1", 1), ("::1", 2))
