"""``gossip agent``: one gossip node on UDP that speaks JSON lines (stdin in, stdout out).

Usage (flags and output are a stable interface: scripts depend on them)::

    gossip agent --bind HOST:PORT --peers HOST:PORT[,HOST:PORT...] [--peers ...]
                 [--profile native|go-gossip] [--key-file PATH | --passphrase-file PATH]
    gossip agent --bind HOST:PORT [--join HOST:PORT[,HOST:PORT...]] [--name NAME]
                 [--meta KEY=VALUE ...] [--key-file PATH]
                 [--fanout N] [--transport udp|ebpf|tcp [--interface IF]] [--stream]
                 [--stats-interval SECONDS] [--delivery wait|drop]
                 [--push-window N] [--recv-buffer BYTES]

``--bind``
    The UDP address to listen on. IPv6 hosts go in brackets: ``[::1]:7946``. Port 0 picks a
    free port (printed on stderr).
``--peers``
    Comma-separated peer addresses, same syntax; the flag may be repeated. The list may hold
    the agent's own address (it is skipped), so all agents of a cluster can share one list.
    Host names are resolved once at start-up, in the address family of ``--bind`` (IPv4
    peers of an IPv6 agent are reached as IPv4-mapped addresses). A static cluster: the
    list never changes, and a dead peer is never noticed.
``--join``, ``--name``, ``--meta``
    Instead of ``--peers``: a node with membership (SWIM + Lifeguard, ``gossip.cluster``).
    ``--join`` lists seeds (same syntax as ``--peers``; the agent's own address is skipped,
    so every agent may get the same list; none for the first node); the node exchanges full
    state with them and then knows every member. Messages go to the live members.
    ``--name`` is the member's unique name (default: the ``--bind`` address as given);
    ``--meta KEY=VALUE`` (repeatable) are string tags spread with it (512 bytes in all).
    Every membership change is a ``member`` line (below), this node's own ``joined`` first.
    SIGTERM, SIGINT or the end of stdin leave gracefully: the others report ``left``, not
    ``failed``; SIGKILL is a crash that they detect and report as ``failed``. Native
    profile, ``udp``/``ebpf`` transports.
``--profile``
    ``native`` (the default): trio-gossip's push-pull protocol. ``go-gossip``: the go-gossip
    (HEAD) compatibility profile, which joins a cluster of Go nodes (``docs/interop.md``):
    pull-only, a PullRequest to ``--fanout`` peers every 200 ms, messages of at most 4,086
    bytes, 8-byte message keys.
``--key-file``
    Native profile only. A key file written by ``gossip keygen`` (mode 0600): packets are
    sealed with AES-256-CBC + HMAC-SHA256. Without it the cluster runs in plain text.
``--passphrase-file``
    go-gossip profile only. A file holding go-gossip's passphrase (UTF-8, one trailing newline
    removed): packets use go-gossip's legacy AES-256-CBC, which has **no integrity** (see
    ``docs/interop.md``). Without it the node speaks plaintext go-gossip.
``--fanout``
    Native: peers per push round (default 3). go-gossip: peers per PullRequest round, Go's
    ``GossipNumber`` (default 2).
``--transport``
    ``udp`` (the default) or ``ebpf``: the eBPF cloner (``docs/ebpf.md``) on ``--interface``
    sends each fan-out with one ``sendto()``. Native profile only. When the cloner cannot
    run there (no privileges, no object, no such interface...), the agent says why on stderr
    and falls back to plain UDP; it does not fail. Fan-outs the cloner cannot serve at run
    time are counted in the stats line's ``transport.fallbacks``. ``tcp``: the same sealed
    packets on TCP streams (``gossip/transport/tcp.py``, default limits), listening on the
    ``--bind`` address; the peers must run ``--transport tcp`` too. Native profile only.
``--stream``
    Beside a ``udp`` or ``ebpf`` transport, also listen for TCP streams on the ``--bind``
    port (one address per node): messages up to 65,439 bytes (a line of stdin up to that,
    encrypted; 65,476 plain) can then be published, and every packet longer than 1,400
    bytes goes on a stream instead of a datagram. All nodes of the cluster need ``--stream``
    (one without it neither accepts the streams nor reads the longer datagrams). The
    stream's counters are the stats line's ``stream``. Native profile only.
``--stats-interval``
    Print a ``stats`` line every this many seconds, and a last one at shutdown.
``--delivery``
    What a slow stdout reader does. ``wait`` (the default): back-pressure. When 1024 delivered
    messages wait for stdout, the node stops taking new ones (it still answers ACKs and pulls,
    so it never goes deaf); they are counted in ``engine.deferred`` and pulled again by
    anti-entropy once stdout drains, so none is lost as long as the reader catches up within
    the message TTL (60 s). ``drop``: the node takes, relays and acknowledges everything, and
    the messages stdout cannot take are not printed, counted in ``delivery_overflow``.
``--push-window``
    Native profile: how many of this agent's messages may be in their push round (not yet
    acknowledged by a majority of its targets) at once; default 64. Stdin is read only as
    fast as the cluster takes the messages (``push_waits`` in the stats line counts the waits).
``--recv-buffer``
    The UDP receive buffer to ask for, in bytes (default 4 MiB; Linux doubles it). As root
    it may pass ``net.core.rmem_max``. The stats line shows what the kernel granted
    (``transport.receive_buffer``) and the datagrams it dropped for a full buffer
    (``transport.receive_drops``).

Input: every line read from stdin is published as one message: its bytes (UTF-8 text as
typed) without the trailing ``\\n``. A last line without a newline is published at EOF. A line
too large for one datagram is not published; a note goes to stderr.

Output, stdout, one JSON object per line, written as soon as it is known::

    {"event": "message", "key": "<hex>", "data": "<base64>", "sender": "<host:port>", "ts": <float>}
    {"event": "member", "change": "joined|updated|suspect|alive|failed|left", "name": "<name>",
     "address": "<host:port>", "incarnation": <int>, "meta": {"<key>": "<value>", ...},
     "ts": <float>}
    {"event": "conflict", "kind": "name|address", "name": "<name>", "address": "<host:port>",
     "known": {"name": ..., "address": ..., "incarnation": <int>}, "ts": <float>}
    {"event": "stats", "ts": <float>, "address": "<host:port>", "engine": {...},
     "transport": {...}, "delivery_queued": <int>, "delivery_overflow": <int>,
     "push_waits": <int>, "dropped": {...}, "stream": {...} | null}

A ``message`` line is written once per message delivered to this node, never for the agent's
own messages. ``key`` is the message id (16 bytes; 8 bytes, go-gossip's key, with
``--profile go-gossip``), ``data`` the payload, ``sender`` the peer the
message arrived from, the previous hop (the publisher's address is not on the wire: a
message carries no origin; IPv6 as ``[addr]:port``)
and ``ts`` the Unix time of arrival. In a ``stats`` line, ``engine`` and ``transport`` hold
every counter of :class:`~gossip.broadcast.EngineStatistics` (with ``--profile go-gossip``:
:class:`~gossip.compat.GoGossipStatistics`) and
:class:`~gossip.transport.base.TransportStatistics`; ``delivery_overflow`` counts messages
not printed because the delivery queue was full (see below); ``dropped`` counts datagrams of a
type no engine of the node owns; ``stream`` holds the TCP transport's counters with
``--stream`` (``null`` without); with membership, ``membership`` holds every counter of
:class:`~gossip.membership.MembershipStatistics` and ``events_overflow`` the member lines
lost because stdout fell too far behind.

A ``member`` line's ``meta`` is the member's tags; metadata that is not a tag list (another
application's) is ``{"_base64": "<base64>"}``. A ``conflict`` line reports news refused
because it would merge two members: another member claims a known live ``name`` at another
address, or a known live ``address`` under another name.

Stderr carries human-readable notes (not a stable format): ``listening on HOST:PORT`` once
the node runs (with ``--transport ebpf``, after a line saying whether the cloner is in use).

Shutdown: SIGINT, SIGTERM, end of stdin, or stdout closed by its reader; the agent then prints
what was already delivered and exits 0. After end of stdin it keeps serving for
``2 x ack_timeout`` (0.6 s) past its last publication, so that the last messages' ACK round
and pull fallback can complete (go-gossip profile: 5 pull intervals, 1 s, so that peers
can pull the last messages). Exit status: 0 clean shutdown, 1 runtime failure (cannot
bind, cannot write stdout), 2 bad arguments (conflicting options included), key file or
passphrase file.

A stalled stdout never makes the node deaf: lines are written from a worker thread, and
what the delivery queue (1024) cannot hold is deferred (``--delivery wait``) or dropped from
stdout (``--delivery drop``), as said above.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Final, Literal

import attrs
import trio

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.cli.common import format_address, node_stats, write_lines
from gossip.cluster import Cluster, ClusterEvent, open_cluster
from gossip.compat.gogossip.cipher import LegacyGoGossipCipher
from gossip.compat.gogossip.engine import GoGossipEngine
from gossip.compat.gogossip.runtime import open_go_gossiper
from gossip.compat.gogossip.wire import PULL_INTERVAL
from gossip.crypto import Keyring
from gossip.discovery import StaticDiscovery
from gossip.errors import LocalProtocolError, MalformedPacket
from gossip.membership import MemberConflict, MemberInfo, decode_tags_untrusted, encode_tags
from gossip.node import Delivery, Gossiper, Message, open_gossiper
from gossip.transport.base import Address, Transport
from gossip.transport.tcp import open_tcp_transport
from gossip.transport.udp import DEFAULT_RECV_BUFFER, open_udp_transport
from gossip.wire import DEFAULT_MAX_DATAGRAM, MAX_DATAGRAM_LIMIT

__all__ = [
    "AgentOptions",
    "Profile",
    "TransportKind",
    "format_message",
    "resolve_addresses",
    "run_agent",
]

#: Bytes asked of stdin per read.
READ_CHUNK: Final = 65536
#: A line longer than this is skipped without buffering it all (no payload is this large).
MAX_LINE: Final = 65536
#: Delivered messages written per thread hop when stdout falls behind.
WRITE_BATCH: Final = 256
#: Seconds a shutdown waits to print what was already delivered.
DRAIN_TIMEOUT: Final = 1.0
#: go-gossip profile: pull rounds the agent keeps serving after its last publication (at end
#: of stdin), so that peers pull the last messages.
GO_GOSSIP_GRACE_ROUNDS: Final = 5

#: ``--profile``: the native push-pull protocol or the go-gossip compatibility profile.
Profile = Literal["native", "go-gossip"]
#: ``--transport``: plain UDP, the eBPF cloner, or TCP streams.
TransportKind = Literal["udp", "ebpf", "tcp"]
#: The node of either profile: its statistics are typed per profile, down to the stats line.
AgentNode = Gossiper[GossipEngine] | Gossiper[GoGossipEngine]


@attrs.frozen
class AgentOptions:
    """What ``gossip agent`` runs with; addresses already resolved to numeric hosts.

    Attributes:
        bind: the local UDP address.
        peers: the static peer list.
        keyring: cluster keys (native profile); ``None`` for a plain-text cluster.
        fanout: peers per push round; with the go-gossip profile, peers per PullRequest
            round (go-gossip's ``GossipNumber``).
        stats_interval: seconds between ``stats`` lines; ``None`` for none.
        delivery_queue: messages buffered for stdout.
        delivery: ``"wait"`` (back-pressure) or ``"drop"`` when stdout falls behind.
        push_window: own messages in their push round at most (native profile).
        recv_buffer: UDP receive buffer to ask for, in bytes.
        profile: ``"native"`` or ``"go-gossip"``.
        cipher: go-gossip's legacy cipher (go-gossip profile); ``None`` for plaintext.
        transport: ``"udp"``, ``"ebpf"`` (needs ``interface``) or ``"tcp"``; the last two
            for the native profile only.
        interface: the network interface of the eBPF cloner.
        stream: also a TCP transport on the ``bind`` port, for messages larger than a
            datagram (up to 64 KiB); native profile, ``udp`` or ``ebpf``.
        name: this member's name: a node with membership (with ``join``), not a static
            peer list. ``None`` with ``join``: the bind address as given.
        join: seeds of a node with membership (``peers`` must then be empty).
        meta: string tags of a node with membership, as ``(key, value)`` pairs.

    Raises:
        LocalProtocolError: options that do not go together (a keyring with the go-gossip
            profile, a cipher with the native one, ``ebpf`` without an interface or with
            the go-gossip profile, an interface without ``ebpf``).
    """

    bind: Address
    peers: tuple[Address, ...]
    keyring: Keyring | None = None
    fanout: int = 3
    stats_interval: float | None = None
    delivery_queue: int = 1024
    delivery: Delivery = "wait"
    push_window: int = 64
    recv_buffer: int = DEFAULT_RECV_BUFFER
    profile: Profile = "native"
    cipher: LegacyGoGossipCipher | None = None
    transport: TransportKind = "udp"
    interface: str | None = None
    stream: bool = False
    name: str | None = None
    join: tuple[Address, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()

    @property
    def membership(self) -> bool:
        """A node with membership (``--join`` / ``--name``) rather than a static list."""
        return self.name is not None or bool(self.join)

    def __attrs_post_init__(self) -> None:
        if self.profile not in ("native", "go-gossip"):
            raise LocalProtocolError(f"unknown profile {self.profile!r}")
        if self.transport not in ("udp", "ebpf", "tcp"):
            raise LocalProtocolError(f"unknown transport {self.transport!r}")
        if self.profile == "go-gossip" and self.keyring is not None:
            raise LocalProtocolError(
                "--key-file is for the native profile; a go-gossip cluster uses --passphrase-file"
            )
        if self.profile == "native" and self.cipher is not None:
            raise LocalProtocolError(
                "--passphrase-file is for --profile go-gossip; a native cluster uses --key-file"
            )
        if self.transport != "udp" and self.profile != "native":
            raise LocalProtocolError(f"--transport {self.transport} is for the native profile only")
        if self.transport == "ebpf" and not self.interface:
            raise LocalProtocolError("--transport ebpf needs --interface IF")
        if self.transport != "ebpf" and self.interface is not None:
            raise LocalProtocolError("--interface is only used with --transport ebpf")
        if self.delivery not in ("wait", "drop"):
            raise LocalProtocolError(f"unknown delivery mode {self.delivery!r}")
        if self.stream and (self.profile != "native" or self.transport == "tcp"):
            raise LocalProtocolError(
                "--stream goes with the native profile on --transport udp or ebpf"
            )
        if self.membership:
            if self.peers:
                raise LocalProtocolError(
                    "--peers is a static cluster; --join/--name a cluster with membership: not both"
                )
            if self.profile != "native" or self.transport == "tcp":
                raise LocalProtocolError(
                    "--join/--name need the native profile on --transport udp or ebpf"
                )
            encode_tags(dict(self.meta))  # too large or bad tags: refused now
        elif self.meta:
            raise LocalProtocolError("--meta needs a node with membership (--join or --name)")
        elif not self.peers:
            raise LocalProtocolError(
                "give --peers (a static cluster) or --join/--name (a cluster with membership)"
            )


def resolve_addresses(
    bind: tuple[str, int], peers: Iterable[tuple[str, int]]
) -> tuple[Address, tuple[Address, ...]]:
    """Resolve the bind address and the peers to numeric hosts of the bind address's family.

    Blocking (``getaddrinfo``): call it before the event loop starts.

    Raises:
        LocalProtocolError: a host that does not resolve, or a peer with no address in the
            bind address's family, or a peer with port 0.
    """
    infos = _getaddrinfo(bind[0], bind[1], socket.AI_PASSIVE)
    family = infos[0][0]
    local: Address = (infos[0][1], bind[1])
    resolved: list[Address] = []
    for host, port in peers:
        if port == 0:
            raise LocalProtocolError(f"peer {format_address((host, port))} has port 0")
        infos = _getaddrinfo(host, port, 0)
        same = [numeric for fam, numeric in infos if fam == family]
        if same:
            resolved.append((same[0], port))
        elif family == socket.AF_INET6:
            # An IPv6 socket reaches IPv4 peers through mapped addresses (dual stack).
            resolved.append((f"::ffff:{infos[0][1]}", port))
        else:
            raise LocalProtocolError(
                f"peer {format_address((host, port))} has no IPv4 address, and --bind is IPv4"
            )
    return local, tuple(dict.fromkeys(resolved))


def _getaddrinfo(host: str, port: int, flags: int) -> list[tuple[int, str]]:
    """``(family, numeric host)`` of every IPv4/IPv6 address of ``host``, in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, flags)
    except (socket.gaierror, UnicodeError) as err:
        raise LocalProtocolError(f"cannot resolve {host!r}: {err}") from None
    usable = [
        (int(family), str(sockaddr[0]))
        for family, _, _, _, sockaddr in infos
        if family in (socket.AF_INET, socket.AF_INET6)
    ]
    if not usable:
        raise LocalProtocolError(f"{host!r} has no IPv4 or IPv6 address")
    return usable


def format_message(message: Message) -> str:
    """The stdout line of a delivered message (without the newline)."""
    return json.dumps(
        {
            "event": "message",
            "key": message.key.hex(),
            "data": base64.b64encode(message.data).decode("ascii"),
            "sender": None if message.sender is None else format_address(message.sender),
            "ts": message.timestamp,
        }
    )


def format_member_event(event: ClusterEvent) -> str:
    """The stdout line of a membership change or conflict (without the newline)."""
    if isinstance(event, MemberConflict):
        return json.dumps(
            {
                "event": "conflict",
                "kind": event.kind,
                "name": event.name,
                "address": format_address(event.address),
                "known": {
                    "name": event.known.name,
                    "address": format_address(event.known.address),
                    "incarnation": event.known.incarnation,
                },
                "ts": time.time(),
            }
        )
    member = event.member
    return json.dumps(
        {
            "event": "member",
            "change": event.change,
            "name": member.name,
            "address": format_address(member.address),
            "incarnation": member.incarnation,
            "meta": _tags(member),
            "ts": time.time(),
        }
    )


def _tags(member: MemberInfo) -> dict[str, str]:
    try:
        return decode_tags_untrusted(member.meta)
    except MalformedPacket:
        return {"_base64": base64.b64encode(member.meta).decode("ascii")}


def _note(text: str) -> None:
    print(f"gossip agent: {text}", file=sys.stderr, flush=True)


def _read_chunk(fd: int) -> bytes:
    try:
        return os.read(fd, READ_CHUNK)
    except BlockingIOError:
        # Someone set O_NONBLOCK on a shared description (a terminal): wait, then read.
        select.select([fd], [], [])
        return _read_chunk(fd)
    except OSError as err:
        if err.errno in (errno.EBADF, errno.EIO, errno.EINVAL):
            return b""  # stdin closed or a hung-up terminal: the same as end of input
        raise


class _Agent:
    """The tasks of one agent around a running :class:`~gossip.node.Gossiper`."""

    def __init__(
        self,
        node: AgentNode,
        options: AgentOptions,
        stdout_fd: int,
        grace: float,
        cluster: Cluster | None = None,
    ) -> None:
        self.node = node
        self.cluster = cluster
        #: A member line is on its way to stdout.
        self.writing_members = False
        self.options = options
        self.stopped = trio.Event()
        self.failed = False
        self._stdout_fd = stdout_fd
        self._write_lock = trio.Lock()
        self._unwritten: list[Message] = []
        self._last_push: float | None = None
        self._grace = grace

    async def write_lines(self, lines: Sequence[str]) -> None:
        """Write lines to stdout from a worker thread: a stalled reader never stalls the node.

        Raises:
            OSError: stdout is gone (``BrokenPipeError``: the reader closed it).
        """
        async with self._write_lock:
            await write_lines(self._stdout_fd, lines)

    async def print_messages(self) -> None:
        """Write every delivered message to stdout; stop the agent if stdout goes away."""
        node = self.node
        try:
            while True:
                self._unwritten.append(await node.receive())
                # Batch what is already queued into one thread hop.
                with contextlib.suppress(trio.WouldBlock):
                    while len(self._unwritten) < WRITE_BATCH:
                        self._unwritten.append(node.receive_nowait())
                # The worker thread owns the batch from here (it writes even if we are cancelled).
                batch, self._unwritten = self._unwritten, []
                await self.write_lines([format_message(m) for m in batch])
        except OSError as err:
            self._stdout_failed(err)

    async def print_members(self, cluster: Cluster) -> None:
        """Write every membership change to stdout as a ``member`` line."""
        try:
            async for event in cluster.events():
                self.writing_members = True
                await self.write_lines([format_member_event(event)])
                self.writing_members = False
        except OSError as err:
            self._stdout_failed(err)

    async def print_stats(self, interval: float) -> None:
        """Write a ``stats`` line every ``interval`` seconds."""
        deadline = trio.current_time()
        try:
            while True:
                deadline += interval
                await trio.sleep_until(deadline)
                await self.write_lines([self.stats_line()])
        except OSError as err:
            self._stdout_failed(err)

    def _stdout_failed(self, err: OSError) -> None:
        # The reader went away (EPIPE): a normal way to stop. Anything else is a failure.
        if not isinstance(err, BrokenPipeError):
            _note(f"cannot write to stdout: {err.strerror or err}")
            self.failed = True
        self.stopped.set()

    def stats_line(self) -> str:
        """The ``stats`` line for the current counters."""
        fields = node_stats(self.node)
        if self.cluster is not None:
            stats = self.cluster.statistics()
            fields["membership"] = attrs.asdict(stats.membership)
            fields["events_overflow"] = stats.events_overflow
        return json.dumps({"event": "stats", "ts": time.time(), **fields})

    async def publish_stdin(self, fd: int) -> None:
        """Publish every line of ``fd``; at its end, linger for the last ACK round, then stop."""
        buffer = b""
        skipping = False
        while True:
            # A thread, not an FdStream: no O_NONBLOCK on a description shared with the
            # terminal, and /dev/null or a regular file work as they are.
            chunk = await trio.to_thread.run_sync(_read_chunk, fd, abandon_on_cancel=True)
            if not chunk:
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                if skipping:
                    skipping = False  # the tail of an over-long line
                else:
                    await self._publish(line)
            if len(buffer) > MAX_LINE:
                if not skipping:
                    _note(f"a line longer than {MAX_LINE} bytes was not published")
                buffer, skipping = b"", True
        if buffer and not skipping:
            await self._publish(buffer)
        if self._last_push is not None:
            # Our last messages' push rounds first (bounded: each ends by its deadline).
            engine = self.node.engine
            while isinstance(engine, GossipEngine) and engine.in_flight:  # go-gossip: no rounds
                await trio.sleep(0.01)
            await trio.sleep_until(max(self._last_push, trio.current_time()) + self._grace)
        self.stopped.set()

    async def _publish(self, line: bytes) -> None:
        try:
            await self.node.push(line)
        except LocalProtocolError as err:
            _note(f"line not published: {err}")
            return
        self._last_push = trio.current_time()

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        """Stop the agent at the first SIGINT or SIGTERM."""
        async for _ in signals:
            self.stopped.set()
            return

    async def drain(self) -> None:
        """Print what was delivered but not yet written; bounded by :data:`DRAIN_TIMEOUT`."""
        node = self.node
        messages, self._unwritten = self._unwritten, []
        # receive() returns at once for queued messages.
        for _ in range(node.statistics().delivery_queued):
            messages.append(await node.receive())
        lines = [format_message(m) for m in messages]
        if self.options.stats_interval is not None:
            lines.append(self.stats_line())
        with trio.move_on_after(DRAIN_TIMEOUT):
            with contextlib.suppress(OSError):
                await self.write_lines(lines)


async def _open_transport(options: AgentOptions, stack: contextlib.AsyncExitStack) -> Transport:
    """Open the agent's transport on ``stack``: UDP, or the eBPF cloner (plain UDP when it
    cannot run, with a note saying why).

    Raises:
        OSError: the address cannot be bound.
    """
    host, port = options.bind
    if options.transport == "tcp":
        return await stack.enter_async_context(open_tcp_transport(host, port))
    if options.transport == "ebpf":
        # Imported here: the eBPF module pulls in ctypes loaders nobody else needs.
        from gossip.transport.ebpf import open_ebpf_transport, probe  # noqa: PLC0415

        interface = options.interface or ""
        verdict = await probe(interface)
        if verdict.ok:
            ebpf = await stack.enter_async_context(
                open_ebpf_transport(
                    host, port, interface=interface, recv_buffer=options.recv_buffer
                )
            )
            if ebpf.unavailable_reason is not None:
                _note(
                    f"eBPF cloner unavailable on {interface!r} ({ebpf.unavailable_reason}); "
                    "fan-outs use plain UDP, counted in transport.fallbacks"
                )
            else:
                _note(f"eBPF cloner attached to {interface!r}: one sendto() per fan-out")
            return ebpf
        _note(
            f"eBPF cloner cannot run on {interface!r} ({verdict.reason}); falling back to plain UDP"
        )
    udp = await open_udp_transport(host, port, recv_buffer=options.recv_buffer)
    return await stack.enter_async_context(udp)


async def _start_node(
    options: AgentOptions,
    transport: Transport,
    stack: contextlib.AsyncExitStack,
    stream: Transport | None = None,
) -> tuple[AgentNode | Cluster, float, str]:
    """Start the node of ``options.profile`` on ``transport`` (and ``stream``, with
    ``--stream``): a static node, or a :class:`~gossip.cluster.Cluster` with membership.

    Returns:
        The node, the grace period after the last publication, and a description for the
        start-up note.
    """
    discovery = StaticDiscovery(options.peers)
    n_peers = f"{len(options.peers)} peer{'' if len(options.peers) == 1 else 's'}"
    if options.profile == "go-gossip":
        go_node = await stack.enter_async_context(
            open_go_gossiper(
                discovery,
                transport,
                cipher=options.cipher,
                gossip_number=options.fanout,
                delivery_queue=options.delivery_queue,
            )
        )
        mode = "legacy AES-256-CBC, no integrity" if options.cipher is not None else "plain text"
        return (
            go_node,
            GO_GOSSIP_GRACE_ROUNDS * PULL_INTERVAL,
            f"go-gossip profile, {n_peers}, {mode}, gossip number {options.fanout}",
        )
    config = GossipConfig(
        fanout=options.fanout,
        push_window=options.push_window,
        # With a stream, a message may be as large as a UDP datagram can be; what is longer
        # than DEFAULT_MAX_DATAGRAM goes on the stream.
        max_datagram=MAX_DATAGRAM_LIMIT if stream is not None else DEFAULT_MAX_DATAGRAM,
    )
    mode = "encrypted" if options.keyring is not None else "plain text"
    if options.membership:
        name = options.name or format_address(options.bind)
        cluster = await stack.enter_async_context(
            open_cluster(
                transport,
                name=name,
                seeds=options.join,
                metadata=dict(options.meta),
                keyring=options.keyring,
                config=config,
                stream=stream,
                delivery_queue=options.delivery_queue,
                delivery=options.delivery,
            )
        )
        n_seeds = f"{len(options.join)} seed{'' if len(options.join) == 1 else 's'}"
        return (
            cluster,
            2 * config.ack_timeout,
            f"member {name!r}, {n_seeds}, {mode}, fanout {options.fanout}",
        )
    node = await stack.enter_async_context(
        open_gossiper(
            discovery,
            transport,
            config,
            keyring=options.keyring,
            delivery_queue=options.delivery_queue,
            delivery=options.delivery,
            stream=stream,
        )
    )
    if stream is not None:
        mode += ", TCP streams for packets over 1400 bytes"
    return (
        node,
        2 * node.engine.config.ack_timeout,
        f"{n_peers}, {mode}, fanout {options.fanout}",
    )


async def run_agent(options: AgentOptions, *, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Run one agent until a signal, the end of stdin, or a closed stdout.

    Must run in the main thread (it installs signal handlers).

    Args:
        options: what to run.
        stdin_fd: the descriptor lines to publish are read from.
        stdout_fd: the descriptor JSON lines are written to.

    Returns:
        The exit status: 0 after a clean shutdown, 1 when the address cannot be bound or
        stdout fails (other than its reader closing it).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with contextlib.AsyncExitStack() as stack:
            try:
                transport = await _open_transport(options, stack)
                stream = None
                if options.stream:
                    # On the datagram transport's port (it may have been 0: chosen by the
                    # kernel), so that a peer has one address for both.
                    port = transport.local_address[1]
                    stream = await stack.enter_async_context(
                        open_tcp_transport(options.bind[0], port)
                    )
            except OSError as err:
                _note(f"cannot bind {format_address(options.bind)}: {err.strerror or err}")
                return 1
            started, grace, description = await _start_node(options, transport, stack, stream)
            cluster = started if isinstance(started, Cluster) else None
            node = started.node if isinstance(started, Cluster) else started
            agent = _Agent(node, options, stdout_fd, grace, cluster)
            _note(f"listening on {format_address(node.local_address)} ({description})")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(agent.watch_signals, signals)
                nursery.start_soon(agent.publish_stdin, stdin_fd)
                nursery.start_soon(agent.print_messages)
                if cluster is not None:
                    nursery.start_soon(agent.print_members, cluster)
                if options.stats_interval is not None:
                    nursery.start_soon(agent.print_stats, options.stats_interval)
                await agent.stopped.wait()
                if cluster is not None:
                    # A graceful leave (bounded), while the member lines are still printed,
                    # the node's own "left" included.
                    await cluster.leave()
                    with trio.move_on_after(DRAIN_TIMEOUT):
                        while cluster.events_waiting or agent.writing_members:
                            await trio.sleep(0.01)
                nursery.cancel_scope.cancel()
            await agent.drain()
    return 1 if agent.failed else 0
