"""``gossip bridge``: one native node and one go-gossip node that relay messages both ways.

::

     trio-gossip cluster              gossip bridge: one process          go-gossip cluster
                         ┌───────────────────────────────────────────┐
     native peers ◄────► │ native node ── delivered ──► go node      │ ◄────► Go peers
     push-pull,          │ (--native-bind)   push(data, key=K(id))   │  pull-only,
     16-byte ids,        │                                           │  8-byte keys,
     --key-file          │ native node ◄── push(data) ── go node     │  --passphrase-file
                         │ (new 16-byte id)   delivered (--go-bind)  │
                         └───────────────────────────────────────────┘
     K(id) = the first 8 bytes of SHA-256(context || native id), the same in every bridge

A message delivered to the bridge's native node is pushed into its go-gossip node under the
8-byte key :func:`go_key_for` derives from the native id; a message delivered to its
go-gossip node is pushed into its native node (which draws a new native id). Go peers pull
the relayed messages from the bridge's go node; native peers get them pushed.

Exactly once, no loops:

* An engine never delivers its own pushes, so a relayed message is not handed back to the
  bridge by the node it was pushed into, however often it circulates: the native engine
  remembers its id, the go-gossip engine its key (when the go node later pulls the relayed
  message back from a Go peer, it is counted as a duplicate, not delivered).
* Each side de-duplicates by key, so a message is delivered at most once per node; the
  bridge relays only deliveries, so at most once per direction.
* The bridge also remembers (bounded) every key it pushed and every go-gossip key that
  stands for a message its native node has; a delivery matching one is never relayed and
  is counted under ``skipped`` (``echo``: a key the bridge pushed came back; should stay 0;
  ``already_bridged``: the message is already on the other side, which happens only when
  another bridge relays between the same clusters; ``duplicate``: the go node forgot a key,
  it remembers 16 Ki, and delivered it again). Deriving go keys from native ids makes two
  bridges agree on the go key of a native message; run **one** bridge per pair of clusters
  all the same: two bridges do not loop, but a message published on the go side is then
  relayed into the native cluster by both (native ids cannot be derived), so it arrives
  twice there, and each bridge relays the other's native copy back (three copies on the go
  side).

Limits: a go-gossip message larger than the native node's largest payload (about 1.3 KB
with the default 1400-byte datagrams) cannot be relayed, nor a native message over 4,086
bytes into go-gossip (impossible with the default native datagram size); both are counted
under ``skipped["too_large"]``. A message lost to a full delivery queue
(``delivery_overflow`` in the side's statistics) is not relayed.

Output of ``gossip bridge`` (JSON lines on stdout, like ``gossip agent``)::

    {"event": "relay", "direction": "native->go" | "go->native", "key": "<hex>",
     "relayed_key": "<hex>", "data": "<base64>", "sender": "<host:port>", "ts": <float>}
    {"event": "stats", "ts": <float>, "relayed": {...}, "skipped": {...},
     "lines_dropped": <int>, "native": {"address": ..., "engine": {...}, "transport": {...},
     "delivery_queued": <int>, "delivery_overflow": <int>}, "go": {...}}

``key`` is the message's id on the side it came from (16 bytes native, 8 go-gossip),
``relayed_key`` its id on the other side, ``sender`` the peer it came from (the previous
hop; the publisher's address is not on the wire). Relay lines
that cannot be written because stdout is stalled (more than 4096 pending) are dropped
from stdout and counted in ``lines_dropped``; the relaying itself never waits for stdout.
Stderr carries human-readable notes; the first is ``bridging native HOST:PORT <-> go-gossip
HOST:PORT``. Shutdown: SIGINT, SIGTERM or stdout closed by its reader (stdin is not read);
exit status 0, 1 when an address cannot be bound or stdout fails, 2 for bad arguments.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import json
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final, Literal

import attrs
import cachetools
import trio

from gossip.broadcast import EngineStatistics, GossipConfig, GossipEngine
from gossip.cli.common import format_address, node_stats, write_lines
from gossip.compat.gogossip.cipher import LegacyGoGossipCipher
from gossip.compat.gogossip.engine import GoGossipEngine, GoGossipStatistics
from gossip.compat.gogossip.runtime import open_go_gossiper
from gossip.compat.gogossip.wire import GOSSIP_NUMBER, KEY_SIZE
from gossip.crypto import Keyring
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError
from gossip.node import Gossiper, GossiperStatistics, Message, open_gossiper
from gossip.transport.base import Address, Transport
from gossip.transport.udp import UDPTransport, open_udp_transport

__all__ = [
    "Bridge",
    "BridgeOptions",
    "BridgeStatistics",
    "Direction",
    "Relay",
    "format_relay",
    "go_key_for",
    "open_bridge",
    "run_bridge",
    "run_bridge_command",
]

#: Which way a message crossed the bridge.
Direction = Literal["native->go", "go->native"]
NATIVE_TO_GO: Final[Direction] = "native->go"
GO_TO_NATIVE: Final[Direction] = "go->native"

#: Keys remembered per kind (pushed native ids, pushed go keys, go keys standing for native
#: messages) to recognise a message coming back. About 100 bytes each.
DEFAULT_MEMORY: Final = 65536
#: Relay lines buffered for a stalled stdout before they are dropped (and counted).
MAX_PENDING_LINES: Final = 4096
#: Seconds a shutdown waits to print what is pending.
DRAIN_TIMEOUT: Final = 1.0

_KEY_CONTEXT: Final = b"trio-gossip bridge: go-gossip key of a native message\x00"


def go_key_for(native_key: bytes) -> bytes:
    """The go-gossip key (8 bytes) under which a native message is relayed: a hash of its id,
    so every bridge relays one native message under the same key."""
    return hashlib.sha256(_KEY_CONTEXT + native_key).digest()[:KEY_SIZE]


@attrs.frozen
class BridgeOptions:
    """What a bridge runs with; addresses already resolved to numeric hosts.

    Attributes:
        native_bind, native_peers: the native node's UDP address and its peers.
        go_bind, go_peers: the go-gossip node's UDP address and its peers.
        keyring: native cluster keys; ``None`` for a plain-text native cluster.
        cipher: go-gossip's legacy cipher; ``None`` for a plaintext go-gossip cluster.
        fanout: the native node's push fanout.
        gossip_number: the go-gossip node's peers per PullRequest round.
        stats_interval: seconds between ``stats`` lines of ``gossip bridge``; ``None``: none.
        delivery_queue: messages buffered per side before they count as overflow.
        memory: keys remembered per kind for loop detection.
    """

    native_bind: Address
    native_peers: tuple[Address, ...]
    go_bind: Address
    go_peers: tuple[Address, ...]
    keyring: Keyring | None = None
    cipher: LegacyGoGossipCipher | None = None
    fanout: int = 3
    gossip_number: int = GOSSIP_NUMBER
    stats_interval: float | None = None
    delivery_queue: int = 1024
    memory: int = DEFAULT_MEMORY

    def __attrs_post_init__(self) -> None:
        if self.memory < 1:
            raise LocalProtocolError("memory must be at least 1")


@attrs.frozen(slots=True)
class Relay:
    """One message relayed across the bridge.

    Attributes:
        direction: ``"native->go"`` or ``"go->native"``.
        key: its id on the side it came from (16 bytes native, 8 bytes go-gossip).
        relayed_key: its id on the other side.
        data: the payload.
        sender: the peer the bridge received it from (the previous hop, not the publisher).
        timestamp: Unix time of arrival at the bridge.
    """

    direction: Direction
    key: bytes
    relayed_key: bytes
    data: bytes
    sender: Address | None
    timestamp: float


@attrs.frozen
class BridgeStatistics:
    """A snapshot of a bridge's counters.

    Attributes:
        relayed: messages relayed, by direction.
        skipped: deliveries not relayed, by reason: ``echo`` (a key the bridge pushed came
            back), ``already_bridged`` (the message is already on the other side: another
            bridge relayed it), ``duplicate`` (the go node delivered a key again after
            forgetting it), ``too_large`` (does not fit the other side).
        native, go: each node's :class:`~gossip.node.GossiperStatistics`.
    """

    relayed: dict[str, int]
    skipped: dict[str, int]
    native: GossiperStatistics[EngineStatistics]
    go: GossiperStatistics[GoGossipStatistics]


class Bridge:
    """Relays between a running native node and a running go-gossip node.

    Args:
        native: the native node (:func:`~gossip.node.open_gossiper`).
        go: the go-gossip node (:func:`~gossip.compat.open_go_gossiper`).
        memory: keys remembered per kind for loop detection.
        on_relay: called (synchronously, keep it cheap) with every :class:`Relay`.
    """

    def __init__(
        self,
        native: Gossiper[GossipEngine],
        go: Gossiper[GoGossipEngine],
        *,
        memory: int = DEFAULT_MEMORY,
        on_relay: Callable[[Relay], None] | None = None,
    ) -> None:
        self.native = native
        self.go = go
        self.on_relay = on_relay
        # Native ids the bridge pushed into the native node.
        self._native_pushed: cachetools.LRUCache[bytes, None] = cachetools.LRUCache(memory)
        # Go keys the bridge pushed into the go node.
        self._go_pushed: cachetools.LRUCache[bytes, None] = cachetools.LRUCache(memory)
        # Go keys the go node delivered.
        self._go_delivered: cachetools.LRUCache[bytes, None] = cachetools.LRUCache(memory)
        # Go keys standing for messages the native cluster has: go_key_for() of the native
        # messages the native node delivered or the bridge pushed there.
        self._go_covered: cachetools.LRUCache[bytes, None] = cachetools.LRUCache(memory)
        self._relayed: dict[str, int] = {NATIVE_TO_GO: 0, GO_TO_NATIVE: 0}
        self._skipped: dict[str, int] = {}

    def statistics(self) -> BridgeStatistics:
        """Counters of the bridge and of both nodes."""
        return BridgeStatistics(
            relayed=dict(self._relayed),
            skipped=dict(self._skipped),
            native=self.native.statistics(),
            go=self.go.statistics(),
        )

    async def run(self) -> None:
        """Relay both ways until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._from_native)
            nursery.start_soon(self._from_go)

    async def _from_native(self) -> None:
        async for message in self.native:
            self.relay_from_native(message)

    async def _from_go(self) -> None:
        async for message in self.go:
            await self.relay_from_go(message)

    def relay_from_native(self, message: Message) -> Relay | None:
        """Relay one message delivered to the native node into the go-gossip node.

        Synchronous: a go-gossip push only stores the message (go peers pull it).

        Returns:
            The relay, or ``None`` when it was skipped (counted in ``skipped``).
        """
        if message.key in self._native_pushed:
            return self._skip("echo")
        go_key = go_key_for(message.key)
        if go_key in self._go_delivered or go_key in self._go_pushed:
            self._go_covered[go_key] = None
            return self._skip("already_bridged")
        try:
            # Never blocks: a go-gossip push only caches the message (peers pull it).
            self.go.push_nowait(message.data, key=go_key)
        except LocalProtocolError:
            return self._skip("too_large")
        self._go_covered[go_key] = None
        self._go_pushed[go_key] = None
        return self._relayed_one(NATIVE_TO_GO, message, go_key)

    async def relay_from_go(self, message: Message) -> Relay | None:
        """Relay one message delivered to the go-gossip node into the native node.

        Returns:
            The relay, or ``None`` when it was skipped (counted in ``skipped``).
        """
        key = message.key
        if key in self._go_delivered:
            # The go node forgot the key (it remembers 16 Ki) and delivered it again.
            return self._skip("duplicate")
        self._go_delivered[key] = None
        if key in self._go_pushed:
            return self._skip("echo")
        if key in self._go_covered:
            return self._skip("already_bridged")
        try:
            native_key = await self.native.push(message.data)
        except LocalProtocolError:
            return self._skip("too_large")
        self._native_pushed[native_key] = None
        # If another bridge relays this native copy back into go-gossip, recognise it.
        self._go_covered[go_key_for(native_key)] = None
        return self._relayed_one(GO_TO_NATIVE, message, native_key)

    def _skip(self, reason: str) -> Relay | None:
        self._skipped[reason] = self._skipped.get(reason, 0) + 1
        return None

    def _relayed_one(self, direction: Direction, message: Message, relayed_key: bytes) -> Relay:
        self._relayed[direction] += 1
        relay = Relay(
            direction, message.key, relayed_key, message.data, message.sender, message.timestamp
        )
        if self.on_relay is not None:
            self.on_relay(relay)
        return relay


async def _bind(address: Address, side: str) -> UDPTransport:
    try:
        return await open_udp_transport(*address)
    except OSError as err:
        raise OSError(
            err.errno,
            f"cannot bind the {side} node at {format_address(address)}: {err.strerror or err}",
        ) from err


@asynccontextmanager
async def open_bridge(
    options: BridgeOptions,
    *,
    on_relay: Callable[[Relay], None] | None = None,
    transports: tuple[Transport, Transport] | None = None,
) -> AsyncIterator[Bridge]:
    """Open both nodes on UDP and relay between them until the block exits.

    ``transports``: the native and the go-gossip node's transports to use instead (the
    caller keeps ownership; ``native_bind`` and ``go_bind`` are then not used).

    Raises:
        OSError: an address cannot be bound (the message names the side).
    """
    async with contextlib.AsyncExitStack() as stack:
        if transports is None:
            native_transport: Transport = await stack.enter_async_context(
                await _bind(options.native_bind, "native")
            )
            go_transport: Transport = await stack.enter_async_context(
                await _bind(options.go_bind, "go-gossip")
            )
        else:
            native_transport, go_transport = transports
        native = await stack.enter_async_context(
            open_gossiper(
                StaticDiscovery(options.native_peers),
                native_transport,
                GossipConfig(fanout=options.fanout),
                keyring=options.keyring,
                delivery_queue=options.delivery_queue,
            )
        )
        go = await stack.enter_async_context(
            open_go_gossiper(
                StaticDiscovery(options.go_peers),
                go_transport,
                cipher=options.cipher,
                gossip_number=options.gossip_number,
                delivery_queue=options.delivery_queue,
            )
        )
        bridge = Bridge(native, go, memory=options.memory, on_relay=on_relay)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run)
            try:
                yield bridge
            finally:
                nursery.cancel_scope.cancel()


async def run_bridge(
    options: BridgeOptions,
    *,
    on_relay: Callable[[Relay], None] | None = None,
    transports: tuple[Transport, Transport] | None = None,
    task_status: trio.TaskStatus[Bridge] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a bridge until cancelled; for ``nursery.start``, which returns the :class:`Bridge`
    once both nodes listen (its ``native.local_address``, ``go.local_address`` and
    ``statistics()`` are then available).

    Example::

        async with trio.open_nursery() as nursery:
            bridge = await nursery.start(run_bridge, options)
            ...
            print(bridge.statistics().relayed)
            nursery.cancel_scope.cancel()

    ``transports``: as for :func:`open_bridge`.

    Raises:
        OSError: an address cannot be bound.
    """
    async with open_bridge(options, on_relay=on_relay, transports=transports) as bridge:
        task_status.started(bridge)
        await trio.sleep_forever()


# ---------------------------------------------------------------- the command


def _note(text: str) -> None:
    print(f"gossip bridge: {text}", file=sys.stderr, flush=True)


def format_relay(relay: Relay) -> str:
    """The stdout line of a relayed message (without the newline)."""
    return json.dumps(
        {
            "event": "relay",
            "direction": relay.direction,
            "key": relay.key.hex(),
            "relayed_key": relay.relayed_key.hex(),
            "data": base64.b64encode(relay.data).decode("ascii"),
            "sender": None if relay.sender is None else format_address(relay.sender),
            "ts": relay.timestamp,
        }
    )


class _Output:
    """Relay and stats lines on their way to stdout, written from a worker thread."""

    def __init__(self, stdout_fd: int) -> None:
        self.fd = stdout_fd
        self.pending: collections.deque[str] = collections.deque()
        self.dropped = 0
        self.ready = trio.Event()
        self.stopped = trio.Event()
        self.failed = False
        self.bridge: Bridge | None = None

    def on_relay(self, relay: Relay) -> None:
        if len(self.pending) >= MAX_PENDING_LINES:
            self.dropped += 1
            return
        self.pending.append(format_relay(relay))
        self.ready.set()

    def stats_line(self) -> str:
        assert self.bridge is not None
        bridge = self.bridge
        stats = bridge.statistics()
        return json.dumps(
            {
                "event": "stats",
                "ts": time.time(),
                "relayed": stats.relayed,
                "skipped": stats.skipped,
                "lines_dropped": self.dropped,
                "native": node_stats(bridge.native),
                "go": node_stats(bridge.go),
            }
        )

    async def write(self, lines: list[str]) -> None:
        await write_lines(self.fd, lines)

    async def writer(self) -> None:
        try:
            while True:
                await self.ready.wait()
                self.ready = trio.Event()
                lines = list(self.pending)
                self.pending.clear()
                await self.write(lines)
        except OSError as err:
            self._failed(err)

    async def stats(self, interval: float) -> None:
        deadline = trio.current_time()
        try:
            while True:
                deadline += interval
                await trio.sleep_until(deadline)
                self.pending.append(self.stats_line())
                self.ready.set()
        except OSError as err:  # pragma: no cover - stats lines go through writer()
            self._failed(err)

    def _failed(self, err: OSError) -> None:
        if not isinstance(err, BrokenPipeError):
            _note(f"cannot write to stdout: {err.strerror or err}")
            self.failed = True
        self.stopped.set()


async def run_bridge_command(options: BridgeOptions, *, stdout_fd: int = 1) -> int:
    """``gossip bridge``: run a bridge, relay and stats lines on ``stdout_fd``, until SIGINT,
    SIGTERM or a closed stdout. Must run in the main thread (signal handlers).

    Returns:
        The exit status: 0 after a clean shutdown, 1 when an address cannot be bound or
        stdout fails (other than its reader closing it).
    """
    output = _Output(stdout_fd)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with open_bridge(options, on_relay=output.on_relay) as bridge:
                output.bridge = bridge
                mode_native = "encrypted" if options.keyring is not None else "plain text"
                mode_go = (
                    "legacy AES-256-CBC, no integrity"
                    if options.cipher is not None
                    else "plain text"
                )
                _note(
                    f"bridging native {format_address(bridge.native.local_address)} "
                    f"({len(options.native_peers)} peers, {mode_native}) <-> go-gossip "
                    f"{format_address(bridge.go.local_address)} "
                    f"({len(options.go_peers)} peers, {mode_go})"
                )

                async def watch_signals() -> None:
                    async for _ in signals:
                        output.stopped.set()
                        return

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(watch_signals)
                    nursery.start_soon(output.writer)
                    if options.stats_interval is not None:
                        nursery.start_soon(output.stats, options.stats_interval)
                    await output.stopped.wait()
                    nursery.cancel_scope.cancel()
                lines = list(output.pending)
                if options.stats_interval is not None:
                    lines.append(output.stats_line())
                with trio.move_on_after(DRAIN_TIMEOUT), contextlib.suppress(OSError):
                    await output.write(lines)
        except OSError as err:
            _note(str(err.strerror or err))
            return 1
    return 1 if output.failed else 0
