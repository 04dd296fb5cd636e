"""The go-gossip profile at run time: nodes and bridges in one process on the in-memory
network under a mock clock, ``gossip agent --profile go-gossip`` and ``gossip bridge`` as real
processes on loopback UDP (with an in-process node talking to an agent over UDP),
``--transport ebpf``.

Every test body runs under ``trio.fail_after``: a hung node fails the test, never the run
(under the mock clock, the deadline is virtual: a hang fails at once).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import os
import random
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, assert_type

import pytest
import trio

from gossip import cli
from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.cli.bridge import Bridge, BridgeOptions, Relay, go_key_for, run_bridge
from gossip.cli.common import format_address
from gossip.compat import (
    GoGossipEngine,
    GoGossipStatistics,
    LegacyGoGossipCipher,
    open_go_gossiper,
)
from gossip.compat.gogossip.wire import PULL_INTERVAL
from gossip.crypto import Keyring, generate_key
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.keyfile import write_key_file
from gossip.node import Gossiper, Message, open_gossiper
from gossip.transport.base import Address, Transport
from gossip.transport.ebpf import probe
from gossip.transport.memory import MemoryNetwork, MemoryTransport
from gossip.transport.udp import UDPTransport, open_udp_transport
from tests.test_agent import Agent, check_message, loopback, open_agents

TIMEOUT = 15
LOCALHOST = "127.0.0.1"
#: Long enough for several pull rounds (200 ms) and anti-entropy rounds (1 s): anything that
#: loops or duplicates shows up in it.
SETTLE = 1.2


def _cipher(passphrase: str | None) -> LegacyGoGossipCipher | None:
    return None if passphrase is None else LegacyGoGossipCipher(passphrase)


async def _transport(net: MemoryNetwork | None, stack: contextlib.AsyncExitStack) -> Transport:
    """A transport on ``net``, or on loopback UDP when ``None``, closed with ``stack``."""
    transport: MemoryTransport | UDPTransport
    if net is None:
        transport = await open_udp_transport(LOCALHOST, 0)
    else:
        transport = net.open_transport()
    stack.push_async_callback(transport.aclose)
    return transport


@contextlib.asynccontextmanager
async def go_cluster(
    n: int, net: MemoryNetwork | None, *, passphrase: str | None = None, seed: int = 0
) -> AsyncIterator[tuple[list[Gossiper[GoGossipEngine]], StaticDiscovery]]:
    """``n`` go-gossip-profile nodes on ``net`` (``None``: loopback UDP) sharing one
    (mutable) peer list."""
    discovery = StaticDiscovery()
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            transport = await _transport(net, stack)
            nodes.append(
                await stack.enter_async_context(
                    open_go_gossiper(
                        discovery,
                        transport,
                        cipher=_cipher(passphrase),
                        rng=random.Random(seed * 100 + i),
                    )
                )
            )
        discovery.set_peers(node.local_address for node in nodes)
        yield nodes, discovery


@contextlib.asynccontextmanager
async def native_cluster(
    n: int, net: MemoryNetwork, *, keyring: Keyring | None = None, seed: int = 0
) -> AsyncIterator[tuple[list[Gossiper[GossipEngine]], StaticDiscovery]]:
    """``n`` native nodes on ``net`` sharing one (mutable) peer list."""
    discovery = StaticDiscovery()
    async with contextlib.AsyncExitStack() as stack:
        nodes = []
        for i in range(n):
            transport = await stack.enter_async_context(net.open_transport())
            nodes.append(
                await stack.enter_async_context(
                    open_gossiper(
                        discovery,
                        transport,
                        GossipConfig(fanout=2),
                        keyring=keyring,
                        rng=random.Random(seed * 100 + i),
                    )
                )
            )
        discovery.set_peers(node.local_address for node in nodes)
        yield nodes, discovery


def drain(node: Gossiper[Any]) -> list[Message]:
    """Every message queued for the application right now."""
    out = []
    while True:
        try:
            out.append(node.receive_nowait())
        except trio.WouldBlock:
            return out


# ---------------------------------------------------------------------------------------
# Two profile nodes on the in-memory network
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, "s3cret passphrase"], ids=["plain", "legacy-cipher"])
async def test_two_profile_nodes_exchange_messages(
    autojump_clock: trio.testing.MockClock, passphrase: str | None
) -> None:
    with trio.fail_after(TIMEOUT):
        async with go_cluster(2, MemoryNetwork(seed=1), passphrase=passphrase) as ((a, b), _):
            start = trio.current_time()
            key_a = await a.push(b"from a")
            key_b = await b.push(b"from b")
            got_b = await b.receive()
            got_a = await a.receive()
            # Pull-only: each message arrives with the other node's first PullRequest round.
            assert trio.current_time() - start == pytest.approx(PULL_INTERVAL)
            assert (got_b.key, got_b.data, got_b.sender) == (key_a, b"from a", a.local_address)
            assert (got_a.key, got_a.data, got_a.sender) == (key_b, b"from b", b.local_address)
            assert len(key_a) == len(key_b) == 8
            # Five more rounds (ending between two): nothing is delivered again.
            await trio.sleep(5.5 * PULL_INTERVAL)
            assert drain(a) == drain(b) == []
            for node in (a, b):
                stats = node.statistics().engine
                assert stats.pull_rounds == stats.responses_received == 6
                assert stats.messages_delivered == 1
                # Every later answer brings both messages back, and they are not delivered.
                assert stats.duplicates == 2 * 5
                assert stats.dropped == {}
                assert node.statistics().transport.send_errors == 0


async def test_a_chosen_key_goes_through_the_runtime(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``push(data, key=K)`` on a go-gossip node (a KeyedPublisher; the bridge's way): the
    message travels under K. A native node draws its own keys: refused, nothing published
    (and mypy refuses the call, hence the ignore, which strict mode would flag if unused)."""
    net = MemoryNetwork(seed=3)
    with trio.fail_after(TIMEOUT):
        async with go_cluster(2, net) as ((a, b), _), native_cluster(2, net) as ((n, _m), _):
            assert await a.push(b"awaited", key=b"K" * 8) == b"K" * 8
            assert a.push_nowait(b"at once", key=b"L" * 8) == b"L" * 8
            got = {(await b.receive()).key, (await b.receive()).key}
            assert got == {b"K" * 8, b"L" * 8}
            with pytest.raises(LocalProtocolError, match="8 bytes"):
                a.push_nowait(b"bad", key=b"short")
            with pytest.raises(LocalProtocolError, match="draws its own message keys"):
                await n.push(b"x", key=bytes(16))  # type: ignore[call-arg]
            with pytest.raises(LocalProtocolError, match="draws its own message keys"):
                n.push_nowait(b"x", key=bytes(16))  # type: ignore[call-arg]
            assert n.statistics().engine.pushed == 0
            assert a.statistics().engine.messages_pushed == 2


async def test_encryption_mismatch_delivers_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A plaintext node in an encrypted cluster's peer list: everyone drops the other kind
    # (go-gossip would answer the plaintext request in plaintext, flaw 3).
    net = MemoryNetwork(seed=2)
    with trio.fail_after(TIMEOUT):
        async with (
            go_cluster(1, net, passphrase="pass") as ((encrypted,), ours),
            go_cluster(1, net, seed=1) as ((plain,), theirs),
        ):
            both = [encrypted.local_address, plain.local_address]
            ours.set_peers(both)
            theirs.set_peers(both)
            await encrypted.push(b"secret")
            await plain.push(b"public")
            await trio.sleep(1.0)
            assert drain(encrypted) == drain(plain) == []
            assert encrypted.statistics().engine.dropped.get("enc_mismatch", 0) > 0
            assert plain.statistics().engine.dropped.get("enc_mismatch", 0) > 0


# ---------------------------------------------------------------------------------------
# gossip agent --profile go-gossip
# ---------------------------------------------------------------------------------------


async def test_agent_go_gossip_profile(tmp_path: Path) -> None:
    # With the legacy cipher; plaintext agents are in the interoperation and bridge tests.
    addresses = loopback(2)
    (tmp_path / "pass").write_text("correct horse\n")
    extra = ["--profile", "go-gossip", "--fanout", "1", "--passphrase-file", str(tmp_path / "pass")]
    with trio.fail_after(TIMEOUT):
        async with open_agents(addresses, *extra) as agents:
            assert b"go-gossip profile" in agents[0].stderr
            await agents[0].send("hello, go ✓")
            line = await agents[1].read_json()
            check_message_go(line, "hello, go ✓", sender=addresses[0])
            await agents[1].send("and back")
            check_message_go(await agents[0].read_json(), "and back", sender=addresses[1])
            for agent in agents:
                await agent.close_stdin()
            results = [await agent.finish() for agent in agents]
    assert results == [(0, []), (0, [])]  # nothing delivered twice


def check_message_go(line: dict[str, Any], text: str, *, sender: str) -> None:
    assert list(line) == ["event", "key", "data", "sender", "ts"]  # the agent's contract
    assert line["event"] == "message"
    assert len(bytes.fromhex(line["key"])) == 8  # go-gossip's key
    assert base64.b64decode(line["data"], validate=True) == text.encode()
    assert line["sender"] == sender


async def test_agent_go_gossip_interoperates_with_library_node() -> None:
    # A plaintext agent process and an in-process profile node.
    with trio.fail_after(TIMEOUT):
        async with go_cluster(1, None) as ((node,), discovery):
            [agent_address] = loopback(1)
            ours = format_address(node.local_address)
            async with open_agents(
                [agent_address], "--profile", "go-gossip", peers=[agent_address, ours]
            ) as (agent,):
                host, port = agent_address.rsplit(":", 1)
                discovery.set_peers([node.local_address, (host, int(port))])
                key = await node.push(b"from the library")
                line = await agent.read_json()
                check_message_go(line, "from the library", sender=ours)
                assert bytes.fromhex(line["key"]) == key
                await agent.send("from the agent")
                message = await node.receive()
                assert message.data == b"from the agent"
                await agent.close_stdin()
                assert await agent.finish() == (0, [])


# ---------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------


def _files(tmp_path: Path) -> dict[str, str]:
    write_key_file(tmp_path / "key")
    (tmp_path / "pass").write_text("pass\n")
    (tmp_path / "empty").write_text("\n")
    return {
        "KEY": str(tmp_path / "key"),
        "PASS": str(tmp_path / "pass"),
        "EMPTY": str(tmp_path / "empty"),
    }


BASE = ["--bind", "127.0.0.1:0", "--peers", "127.0.0.1:1"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "go-gossip", "--key-file", "KEY"], "--key-file is for the native"),
        (["--passphrase-file", "PASS"], "--passphrase-file needs --profile go-gossip"),
        (["--profile", "native", "--passphrase-file", "PASS"], "needs --profile go-gossip"),
        (
            ["--profile", "go-gossip", "--transport", "ebpf", "--interface", "lo"],
            "native profile only",
        ),
        (["--transport", "ebpf"], "needs --interface"),
        (["--interface", "lo"], "only used with --transport ebpf"),
        (["--profile", "go"], "invalid choice"),
        (["--transport", "xdp"], "invalid choice"),
        (["--profile", "go-gossip", "--passphrase-file", "/nonexistent"], "passphrase file"),
        (["--profile", "go-gossip", "--passphrase-file", "EMPTY"], "empty"),
    ],
)
def test_agent_argument_conflicts_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _files(tmp_path)
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["agent", *BASE, *[files.get(a, a) for a in args]])
    assert exc_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err


NATIVE_SIDE = ["--native-bind", "127.0.0.1:0", "--native-peers", "127.0.0.1:1"]
GO_SIDE = ["--go-bind", "127.0.0.1:0", "--go-peers", "127.0.0.1:2"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (NATIVE_SIDE, "--go-bind"),
        (
            [*NATIVE_SIDE, "--go-bind", "127.0.0.1:0", "--go-peers", "127.0.0.1:0"],
            "port 0",
        ),
        (
            [*NATIVE_SIDE, *GO_SIDE, "--key-file", "PASS"],
            "key",
        ),
        (
            [*NATIVE_SIDE, *GO_SIDE, "--passphrase-file", "EMPTY"],
            "empty",
        ),
    ],
)
def test_bridge_bad_arguments_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = _files(tmp_path)
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["bridge", *[files.get(a, a) for a in args]])
    assert exc_info.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err


async def test_conflict_exits_2_in_a_real_process(tmp_path: Path) -> None:
    write_key_file(tmp_path / "key")
    with trio.fail_after(TIMEOUT):
        result = await trio.run_process(
            [
                *(sys.executable, "-m", "gossip", "agent", *BASE),
                *("--profile", "go-gossip", "--key-file", str(tmp_path / "key")),
            ],
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert b"--passphrase-file" in result.stderr
    assert result.stdout == b""


# ---------------------------------------------------------------------------------------
# The bridge, in-process on the in-memory network (its command on UDP: further down)
# ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def bridge_transports(net: MemoryNetwork) -> AsyncIterator[tuple[Transport, Transport]]:
    """The native and the go-gossip side's transports of one bridge, on ``net``."""
    async with net.open_transport() as native, net.open_transport() as go:
        yield native, go


#: Bridge options' bind addresses when its transports are given (not used then).
UNUSED: Address = (LOCALHOST, 0)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
async def test_bridge_relays_each_way_exactly_once(
    autojump_clock: trio.testing.MockClock, encrypted: bool
) -> None:
    keyring = Keyring(generate_key()) if encrypted else None
    passphrase = "bridge passphrase" if encrypted else None
    relays: list[Relay] = []
    net = MemoryNetwork(seed=3)
    with trio.fail_after(TIMEOUT):
        async with (
            native_cluster(2, net, keyring=keyring) as (natives, native_discovery),
            go_cluster(2, net, passphrase=passphrase) as (gos, go_discovery),
            bridge_transports(net) as transports,
            trio.open_nursery() as nursery,
        ):
            options = BridgeOptions(
                native_bind=UNUSED,
                native_peers=tuple(n.local_address for n in natives),
                go_bind=UNUSED,
                go_peers=tuple(g.local_address for g in gos),
                keyring=keyring,
                cipher=_cipher(passphrase),
            )
            bridge: Bridge = await nursery.start(
                functools.partial(
                    run_bridge, options, on_relay=relays.append, transports=transports
                )
            )
            assert (bridge.native.transport, bridge.go.transport) == transports
            native_discovery.set_peers(
                [*(n.local_address for n in natives), bridge.native.local_address]
            )
            go_discovery.set_peers([*(g.local_address for g in gos), bridge.go.local_address])

            native_key = await natives[0].push(b"from native")
            go_key = await gos[0].push(b"from go")
            # Every node gets the other side's message; the publisher's own side too.
            expected = {
                "native0": [b"from go"],
                "native1": [b"from native", b"from go"],
                "go0": [b"from native"],
                "go1": [b"from go", b"from native"],
            }
            nodes: dict[str, Gossiper[Any]] = {
                "native0": natives[0],
                "native1": natives[1],
                "go0": gos[0],
                "go1": gos[1],
            }
            got: dict[str, list[Message]] = collections.defaultdict(list)

            async def collect(name: str) -> None:
                while len(got[name]) < len(expected[name]):
                    got[name].append(await nodes[name].receive())

            async with trio.open_nursery() as waiting:
                for name in nodes:
                    waiting.start_soon(collect, name)
            await trio.sleep(SETTLE)  # anything looping or duplicated would arrive now
            for name, node in nodes.items():
                got[name].extend(drain(node))
            stats = bridge.statistics()
            nursery.cancel_scope.cancel()
    # Typed end to end (mypy checks these; an Any would fail them).
    assert_type(stats.native.engine, EngineStatistics)
    assert_type(stats.go.engine, GoGossipStatistics)

    for name, want in expected.items():
        assert sorted(m.data for m in got[name]) == sorted(want), name
    # The go key of a relayed native message is derived from its native id.
    assert {m.key for m in got["go0"]} == {go_key_for(native_key)}
    assert {m.data: m.key for m in got["go1"]}[b"from go"] == go_key
    # The native copy of the go message carries the bridge's native id, on both nodes.
    native_copy = [
        m.key for name in ("native0", "native1") for m in got[name] if m.data == b"from go"
    ]
    assert len(set(native_copy)) == 1 and len(native_copy[0]) == 16
    assert sorted((r.direction, r.data) for r in relays) == [
        ("go->native", b"from go"),
        ("native->go", b"from native"),
    ]
    assert stats.relayed == {"native->go": 1, "go->native": 1}
    assert stats.skipped == {}
    # The relayed messages came back to the bridge's nodes and were not delivered again.
    assert stats.native.engine.delivered == 1
    assert stats.go.engine.messages_delivered == 1
    assert stats.go.engine.duplicates > 0
    assert stats.native.delivery_overflow == stats.go.delivery_overflow == 0


async def test_two_bridges_do_not_loop(autojump_clock: trio.testing.MockClock) -> None:
    # Unsupported but safe: two bridges between the same clusters. A native message reaches
    # the go side once (both bridges derive the same go key); a go message reaches the native
    # side once per bridge (native ids cannot be derived) and the go side once more per
    # bridge (each relays the other's native copy back); then it stops.
    net = MemoryNetwork(seed=4)
    with trio.fail_after(TIMEOUT):
        async with (
            native_cluster(2, net) as (natives, native_discovery),
            go_cluster(2, net) as (gos, go_discovery),
            bridge_transports(net) as first,
            bridge_transports(net) as second,
            trio.open_nursery() as nursery,
        ):
            options = BridgeOptions(
                native_bind=UNUSED,
                native_peers=tuple(n.local_address for n in natives),
                go_bind=UNUSED,
                go_peers=tuple(g.local_address for g in gos),
            )
            bridges: list[Bridge] = [
                await nursery.start(functools.partial(run_bridge, options, transports=t))
                for t in (first, second)
            ]
            native_discovery.set_peers(
                [*(n.local_address for n in natives), *(b.native.local_address for b in bridges)]
            )
            go_discovery.set_peers(
                [*(g.local_address for g in gos), *(b.go.local_address for b in bridges)]
            )
            await natives[0].push(b"from native")
            await gos[0].push(b"from go")
            expected: dict[Gossiper[Any], dict[bytes, int]] = {
                natives[0]: {b"from go": 2},
                natives[1]: {b"from native": 1, b"from go": 2},
                gos[0]: {b"from native": 1, b"from go": 2},
                gos[1]: {b"from native": 1, b"from go": 3},
            }
            got: dict[Gossiper[Any], collections.Counter[bytes]] = {
                node: collections.Counter() for node in expected
            }

            async def collect(node: Gossiper[Any]) -> None:
                while got[node] != expected[node]:
                    got[node][(await node.receive()).data] += 1

            async with trio.open_nursery() as waiting:
                for node in expected:
                    waiting.start_soon(collect, node)
            before = [b.statistics().relayed for b in bridges]
            await trio.sleep(SETTLE)
            for node in expected:
                got[node].update(m.data for m in drain(node))
            after = [b.statistics() for b in bridges]
            nursery.cancel_scope.cancel()
    assert got == expected
    assert [s.relayed for s in after] == before == [{"native->go": 2, "go->native": 1}] * 2
    assert [s.skipped for s in after] == [{"already_bridged": 1}] * 2


async def test_bridge_skips_what_does_not_fit(autojump_clock: trio.testing.MockClock) -> None:
    # A go-gossip message larger than a native datagram can carry is counted, not relayed.
    net = MemoryNetwork(seed=5)
    with trio.fail_after(TIMEOUT):
        async with (
            go_cluster(1, net) as ((go,), go_discovery),
            bridge_transports(net) as transports,
            trio.open_nursery() as nursery,
        ):
            options = BridgeOptions(
                native_bind=UNUSED,
                native_peers=((LOCALHOST, 9),),
                go_bind=UNUSED,
                go_peers=(go.local_address,),
            )
            bridge: Bridge = await nursery.start(
                functools.partial(run_bridge, options, transports=transports)
            )
            go_discovery.set_peers([go.local_address, bridge.go.local_address])
            await go.push(b"x" * 4000)
            await go.push(b"small")
            while sum(bridge.statistics().relayed.values()) < 1:
                await trio.sleep(0.05)
            await trio.sleep(0.5)
            stats = bridge.statistics()
            nursery.cancel_scope.cancel()
    assert stats.relayed == {"native->go": 0, "go->native": 1}
    assert stats.skipped == {"too_large": 1}


async def test_bridge_command_between_two_agents() -> None:
    native_agent, go_agent, native_side, go_side = loopback(4)
    with trio.fail_after(TIMEOUT):
        async with (
            open_agents([native_agent], peers=[native_agent, native_side]) as (native,),
            open_agents([go_agent], "--profile", "go-gossip", peers=[go_agent, go_side]) as (go,),
        ):
            process = await trio.lowlevel.open_process(
                [
                    *(sys.executable, "-m", "gossip", "bridge"),
                    *(
                        "--native-bind",
                        native_side,
                        "--native-peers",
                        f"{native_agent},{native_side}",
                    ),
                    *("--go-bind", go_side, "--go-peers", f"{go_agent},{go_side}"),
                    *("--stats-interval", "30"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            bridge = Agent(process)
            try:
                assert process.stderr is not None
                while b"bridging native" not in bridge.stderr:
                    chunk = await process.stderr.receive_some()
                    assert chunk, bridge.stderr.decode()
                    bridge.stderr += chunk
                await native.send("native says hi")
                relay = await bridge.read_json()
                assert relay["event"] == "relay"
                assert relay["direction"] == "native->go"
                assert relay["sender"] == native_agent
                assert len(bytes.fromhex(relay["key"])) == 16
                assert bytes.fromhex(relay["relayed_key"]) == go_key_for(
                    bytes.fromhex(relay["key"])
                )
                line = await go.read_json()
                check_message_go(line, "native says hi", sender=go_side)
                assert line["key"] == relay["relayed_key"]
                await go.send("go says hi")
                relay = await bridge.read_json()
                assert (relay["direction"], relay["sender"]) == ("go->native", go_agent)
                check_message(await native.read_json(), "go says hi", [native_side])
                process.send_signal(signal.SIGTERM)
                status, rest = await bridge.finish()
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            for agent in (native, go):
                await agent.close_stdin()
                assert await agent.finish() == (0, [])
    assert status == 0
    [stats] = rest  # the last stats line at shutdown; no other relay
    assert stats["event"] == "stats"
    assert stats["relayed"] == {"native->go": 1, "go->native": 1}
    assert stats["skipped"] == {}
    assert stats["native"]["address"] == native_side
    assert stats["go"]["address"] == go_side
    assert stats["go"]["engine"]["messages_delivered"] == 1


# ---------------------------------------------------------------------------------------
# gossip agent --transport ebpf
# ---------------------------------------------------------------------------------------


async def test_agent_ebpf_unavailable_falls_back_to_udp() -> None:
    # Documented behaviour: when the cloner cannot run (here: no such interface; without root:
    # missing capabilities) the agent says why on stderr and runs on plain UDP.
    addresses = loopback(2)
    with trio.fail_after(TIMEOUT):
        async with (
            open_agents(
                addresses[:1],
                "--transport",
                "ebpf",
                "--interface",
                "nonexistent0",
                peers=addresses,
            ) as (cloned,),
            open_agents(addresses[1:], peers=addresses) as (plain,),
        ):
            assert b"falling back to plain UDP" in cloned.stderr
            await cloned.send("over the fallback")
            check_message(await plain.read_json(), "over the fallback", addresses)
            await plain.send("and back")
            check_message(await cloned.read_json(), "and back", addresses)
            for agent in (cloned, plain):
                await agent.close_stdin()
            assert [await agent.finish() for agent in (cloned, plain)] == [(0, []), (0, [])]
    # As root with the object built, the reason is the interface; otherwise it is whatever
    # stops the cloner first (capabilities, libbpf, the object).
    assert b"eBPF cloner cannot run on 'nonexistent0'" in cloned.stderr
    if os.geteuid() == 0 and await probe():
        assert b"no interface 'nonexistent0'" in cloned.stderr
