"""The eBPF cloner transport: one ``sendto()``, the kernel fans the datagram out to up to 64 peers.

A UDP transport (:class:`~gossip.transport.udp.UDPTransport`) does all sending and receiving;
this class adds a cheaper ``send_many``. A TC egress program (``bpf/cloner.c``) attached to
the interface recognises datagrams sent to a *marker address* and, in one run, rewrites and
clones them once per peer of the sending port's *group*, a BPF map entry written with one
map update. So a fan-out to K peers costs one map update and one ``sendto()`` instead of K.

When the cloner cannot serve a fan-out it falls back to the UDP loop and counts the datagrams
in ``statistics().fallbacks`` by reason, never silently:

* ``cloner_unavailable``: the program could not be loaded or attached (see :func:`probe` and
  :attr:`EBPFTransport.unavailable_reason`);
* ``oversize``: the datagram does not fit unfragmented in the interface MTU;
* ``ipv6``: IPv6 peers (the cloner rewrites IPv4 only);
* ``unresolved_next_hop``: no neighbour entry yet for the peer (or its gateway); the plain
  send makes the kernel resolve it, and a later refresh picks it up;
* ``other_interface`` / ``unreachable``: the route to the peer does not leave through the
  cloner's interface;
* ``marker_send_failed``: the one ``sendto()`` failed; the copies go out one by one.

Groups of more than 64 peers are sent as several kernel fan-outs of at most 64.

Usage (as root, or with CAP_BPF and CAP_NET_ADMIN)::

    async with open_ebpf_transport("0.0.0.0", 7946, interface="eth0") as transport:
        await transport.send_many(packet, peers)

Docs: ``docs/ebpf.md``.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence

import attrs
import trio

from gossip._trio import single_exception
from gossip.errors import LocalProtocolError
from gossip.transport import _netns
from gossip.transport.base import Address, TransportStatistics
from gossip.transport.ebpf.cloner import (
    DEFAULT_MARKER,
    IP_UDP_HEADERS,
    MAX_PEERS,
    AttachMode,
    Cloner,
    ClonerStatistics,
    Loader,
    T,
    default_object_path,
    default_source_path,
    describe_error,
    netns_handle,
    static_reason,
)
from gossip.transport.udp import (
    DEFAULT_RECV_BUFFER,
    DEFAULT_SEND_TIMEOUT,
    UDPTransport,
    open_udp_transport,
)

__all__ = ["EBPFTransport", "open_ebpf_transport"]


@attrs.frozen
class _Plan:
    """How one fan-out (an address tuple) is sent."""

    #: The fan-out's addresses.
    key: tuple[Address, ...]
    #: Groups for the cloner: (addresses, packed entries), at most 64 each.
    chunks: list[tuple[tuple[Address, ...], bytes]]
    #: Addresses for the UDP loop.
    rest: list[Address]
    #: Fallback datagrams per reason, counted again on every use of the plan.
    reasons: dict[str, int]
    unresolved: bool


_PLAN_CACHE = 64


class EBPFTransport:
    """A :class:`~gossip.transport.base.Transport` whose ``send_many`` uses the cloner.

    Made by :func:`open_ebpf_transport`. ``send``, ``receive`` and the socket are those of
    the wrapped :class:`~gossip.transport.udp.UDPTransport`.
    """

    def __init__(
        self,
        udp: UDPTransport,
        cloner: Cloner | None,
        *,
        unavailable_reason: str | None = None,
        netns: _netns.NetnsHandle | None = None,
        refresh_interval: float = 5.0,
    ) -> None:
        self._udp = udp
        self._cloner = cloner
        self._unavailable_reason = unavailable_reason
        self._netns = netns
        self._refresh_interval = refresh_interval
        self._port = udp.local_address[1]
        self._max_payload = (cloner.mtu - IP_UDP_HEADERS) if cloner else 0
        self._closed = False
        # Guards the group map and the marker send (see _send_cloned).
        self._busy = False
        self._idle = trio.lowlevel.ParkingLot()
        self._fallbacks: dict[str, int] = {}
        self._extra_copies = 0
        self._extra_bytes = 0
        # Next hops by peer host, and the packed peer entries built from them.
        self._next_hops: dict[str, tuple[bytes | None, str]] = {}
        # Fan-out plans by address tuple (gossip repeats its fan-outs), and the group the
        # map holds now.
        self._plans: dict[tuple[Address, ...], _Plan] = {}
        self._last_plan: _Plan | None = None
        self._written: tuple[Address, ...] | None = None
        self._refresh_wanted = trio.Event()
        self._last_refresh = -1e9
        self._refresh_lock = trio.Lock()
        self._refresh_scope: trio.CancelScope | None = None
        #: Why the last background next-hop refresh failed (``None`` when it worked).
        self.refresh_error: str | None = None

    # -- Transport ------------------------------------------------------------------------

    @property
    def local_address(self) -> Address:
        """The UDP socket's bound ``(host, port)``."""
        return self._udp.local_address

    async def send(self, data: bytes, addr: Address) -> None:
        """One datagram, as :meth:`UDPTransport.send`."""
        await self._udp.send(data, addr)

    async def receive(self) -> tuple[bytes, Address]:
        """The next datagram, as :meth:`UDPTransport.receive`."""
        return await self._udp.receive()

    def receive_nowait(self) -> tuple[bytes, Address]:
        """A queued datagram, as :meth:`UDPTransport.receive_nowait`."""
        return self._udp.receive_nowait()

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        """Send ``data`` to every address: through the cloner (one map update and one
        ``sendto()`` per 64 peers) where it can serve them, else one ``sendto()`` each,
        counted in ``statistics().fallbacks``. Errors of the network are counted, not raised.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("send on a closed transport")
        if len(addrs) < 2:
            await self._udp.send_many(data, addrs)
            return
        cloner = self._cloner
        if cloner is None:
            self._count("cloner_unavailable", len(addrs))
            await self._udp.send_many(data, addrs)
            return
        if len(data) > self._max_payload:
            self._count("oversize", len(addrs))
            await self._udp.send_many(data, addrs)
            return
        key = addrs if isinstance(addrs, tuple) else tuple(addrs)
        # The last plan first: comparing addresses is cheaper than hashing them for the dict
        # (1.4 us at K = 64), and a steady fan-out repeats its group.
        plan = self._last_plan
        if plan is None or (key is not plan.key and key != plan.key):
            plan = self._plans.get(key)
        if plan is None:
            plan = self._make_plan(key)
        elif plan.reasons:  # (unresolved implies reasons)
            for reason, n in plan.reasons.items():
                self._count(reason, n)
            if plan.unresolved and trio.current_time() - self._last_refresh > 1.0:
                self._refresh_wanted.set()
        self._last_plan = plan
        for chunk, joined in plan.chunks:
            if not await self._send_cloned(cloner, data, chunk, joined):
                self._count("marker_send_failed", len(chunk))
                await self._udp.send_many(data, chunk)
        if plan.rest:
            await self._udp.send_many(data, plan.rest)

    def statistics(self) -> TransportStatistics:
        """The UDP counters, plus the kernel's copies in ``datagrams_sent``/``bytes_sent``
        (copies handed to the kernel; see :meth:`cloner_statistics` for lost ones), and the
        fallbacks by reason."""
        s = self._udp.statistics()
        return TransportStatistics(
            datagrams_sent=s.datagrams_sent + self._extra_copies,
            datagrams_received=s.datagrams_received,
            bytes_sent=s.bytes_sent + self._extra_bytes,
            bytes_received=s.bytes_received,
            send_errors=s.send_errors,
            fallbacks=dict(self._fallbacks),
            receive_buffer=s.receive_buffer,
            receive_drops=s.receive_drops,
        )

    async def aclose(self) -> None:
        """Detach the program, remove the marker route and close the socket; idempotent."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if self._refresh_scope is not None:
            self._refresh_scope.cancel()
        cloner, self._cloner = self._cloner, None
        with trio.CancelScope(shield=True):
            try:
                if cloner is not None:
                    await self._in_thread(cloner.close)
            finally:
                await self._udp.aclose()
                if self._netns is not None:
                    self._netns.close()

    async def __aenter__(self) -> EBPFTransport:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- eBPF specifics -------------------------------------------------------------------

    @property
    def cloner(self) -> Cloner | None:
        """The attached program, ``None`` when the transport runs as plain UDP."""
        return self._cloner

    @property
    def unavailable_reason(self) -> str | None:
        """Why the cloner is not in use (``None`` when it is)."""
        return self._unavailable_reason

    def cloner_statistics(self) -> ClonerStatistics | None:
        """The program's counters, ``None`` without a cloner."""
        cloner = self._cloner
        return cloner.statistics() if cloner is not None else None

    def next_hop(self, host: str) -> bytes | None:
        """The MAC copies to ``host`` are sent to, ``None`` while unknown (those peers go
        through the fallback loop)."""
        return self._next_hops.get(host, (None, ""))[0]

    async def refresh_next_hops(self) -> None:
        """Re-read the next-hop MACs of every peer seen so far from the routing and
        neighbour tables (done periodically and after misses by a background task)."""
        cloner = self._cloner
        if cloner is None:
            return
        async with self._refresh_lock:
            hosts = list(self._next_hops)
            if not hosts:
                return
            from gossip.transport.ebpf import _netlink  # noqa: PLC0415

            ifindex = cloner.ifindex
            found = await self._in_thread(lambda: _netlink.resolve_next_hops(ifindex, hosts))
            self._last_refresh = trio.current_time()
            for host, hop in found.items():
                self._next_hops[host] = (hop.mac, hop.reason)
            self._plans.clear()
            self._last_plan = None
            self._written = None

    async def _refresh_loop(self, task_status: trio.TaskStatus[None]) -> None:
        with trio.CancelScope() as scope:
            self._refresh_scope = scope
            task_status.started()
            while not self._closed:
                with trio.move_on_after(self._refresh_interval):
                    await self._refresh_wanted.wait()
                if self._refresh_wanted.is_set():
                    # The fallback sends that noticed the miss made the kernel resolve the
                    # peers: give the replies a moment.
                    await trio.sleep(0.05)
                    self._refresh_wanted = trio.Event()
                try:
                    await self.refresh_next_hops()
                except Exception as exc:  # netlink trouble: keep the old table, try again later
                    self.refresh_error = describe_error(exc)
                else:
                    self.refresh_error = None

    # -- internals ------------------------------------------------------------------------

    def _count(self, reason: str, n: int) -> None:
        self._fallbacks[reason] = self._fallbacks.get(reason, 0) + n

    def _pack(self, addr: Address) -> tuple[bytes | None, str]:
        """The cloner's entry for ``addr``, or ``None`` and the fallback reason."""
        host, port = addr
        hop = self._next_hops.get(host)
        if hop is None:
            if ":" in host:
                return None, "ipv6"
            try:
                socket.inet_aton(host)
            except OSError:
                return None, "unreachable"
            # First sight: resolve in the background; this time the loop sends it.
            self._next_hops[host] = (None, "unresolved_next_hop")
            self._refresh_wanted.set()
            return None, "unresolved_next_hop"
        mac, reason = hop
        if mac is None:
            return None, reason
        return socket.inet_aton(host) + struct.pack("!H", port) + mac, ""

    def _make_plan(self, addrs: tuple[Address, ...]) -> _Plan:
        """Split a fan-out into cloner chunks (packed) and the loop's rest (with reasons),
        count this fan-out's fallbacks, and remember the plan for the next identical one."""
        group: list[Address] = []
        entries: list[bytes] = []
        rest: list[Address] = []
        reasons: dict[str, int] = {}
        for addr in addrs:
            entry, reason = self._pack(addr)
            if entry is None:
                rest.append(addr)
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
            group.append(addr)
            entries.append(entry)
        chunks = []
        for start in range(0, len(group), MAX_PEERS):
            chunk = tuple(group[start : start + MAX_PEERS])
            if len(chunk) == 1:
                rest.extend(chunk)  # one copy: a plain send is cheaper, and not a fallback
            else:
                chunks.append((chunk, b"".join(entries[start : start + MAX_PEERS])))
        for reason, n in reasons.items():
            self._count(reason, n)
        plan = _Plan(addrs, chunks, rest, reasons, "unresolved_next_hop" in reasons)
        if len(self._plans) >= _PLAN_CACHE:
            self._plans.clear()
        self._plans[addrs] = plan
        return plan

    async def _send_cloned(
        self, cloner: Cloner, data: bytes, chunk: tuple[Address, ...], joined: bytes
    ) -> bool:
        """One map update (skipped when the map holds this group already) and one
        ``sendto()`` to the marker. The two must not interleave with another task's: the
        program reads the group while our ``sendto()`` runs. A flag and a parking lot guard
        them (a ``trio.Lock`` would cost a checkpoint per fan-out)."""
        while self._busy:
            await self._idle.park()
        self._busy = True
        try:
            if self._closed:
                raise trio.ClosedResourceError("send on a closed transport")
            # Plans are cached, so an unchanged group is usually the very same tuple.
            if chunk is not self._written and chunk != self._written:
                self._written = None
                try:
                    cloner.write_group(self._port, joined, len(chunk))
                except OSError:
                    return False
                self._written = chunk
            # Not statistics(): it builds a frozen snapshot (about 2 us) on the hot path.
            udp = self._udp
            errors = udp.send_errors
            await udp.send(data, cloner.marker)
            if udp.send_errors != errors:
                return False
        finally:
            self._busy = False
            if self._idle:  # ParkingLot.unpark() costs 0.7 us even with no task parked
                self._idle.unpark()
        self._extra_copies += len(chunk) - 1
        self._extra_bytes += len(data) * (len(chunk) - 1)
        return True

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        netns = self._netns
        return await trio.to_thread.run_sync(functools.partial(_netns.run_in, netns, fn))


def _refuse(reason: str) -> None:
    raise LocalProtocolError(f"the eBPF cloner cannot run: {reason}")


@contextlib.asynccontextmanager
async def open_ebpf_transport(
    host: str,
    port: int = 0,
    *,
    interface: str,
    loader: Loader = "libbpf",
    attach: AttachMode = "auto",
    object_path: str | None = None,
    source_path: str | None = None,
    marker: Address = DEFAULT_MARKER,
    require_cloner: bool = False,
    refresh_interval: float = 5.0,
    recv_buffer: int | None = DEFAULT_RECV_BUFFER,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    namespace: str | None = None,
) -> AsyncIterator[EBPFTransport]:
    """Open a UDP transport and attach the cloner to ``interface`` for its fan-outs.

    When the cloner cannot run (no privileges, no libbpf or object, the verifier refuses,
    IPv6 socket) the transport still works as plain UDP, ``unavailable_reason`` says why
    and every fan-out is counted under ``fallbacks["cloner_unavailable"]``, unless
    ``require_cloner`` asks for an error. The program, its tcx link (or clsact filter) and
    the marker route are removed on exit; a tcx link also goes when the process dies.

    A background task re-reads next-hop MACs every ``refresh_interval`` seconds and soon
    after a fan-out met an unknown peer.

    Args:
        host, port, recv_buffer, send_timeout: as :func:`open_udp_transport`.
        interface: the interface the peers are reached through, in ``namespace``.
        namespace: the network namespace (made by ``ip netns add NAME``) of the socket, the
            interface and the program; ``None``: the calling thread's. Worker threads enter
            it for every namespace-sensitive call; the calling thread never does.
        loader: ``"libbpf"`` (the precompiled object; default) or ``"bcc"`` (compiles the C
            at start: about 1 s, needs kernel headers).
        attach: ``"tcx"`` (kernel >= 6.6), ``"clsact"``, or ``"auto"``: tcx, else clsact.
        object_path, source_path: override :func:`default_object_path` /
            :func:`default_source_path`.
        marker: the ``(IPv4, port)`` fan-out datagrams are sent to; routed out of
            ``interface`` for as long as the transport is open. One per interface.
        require_cloner: raise instead of falling back when the cloner cannot run.
        refresh_interval: seconds between next-hop refreshes.

    Raises:
        LocalProtocolError: bad arguments, or ``require_cloner`` and the cloner cannot run
            (the message has the reason).
        OSError: the UDP bind failed.
    """
    if not (isinstance(refresh_interval, int | float) and refresh_interval > 0):
        raise LocalProtocolError(f"refresh_interval must be > 0: {refresh_interval!r}")
    try:
        socket.inet_aton(marker[0])
    except OSError:
        raise LocalProtocolError(f"the marker must be an IPv4 address: {marker!r}") from None
    udp = await open_udp_transport(
        host, port, recv_buffer=recv_buffer, send_timeout=send_timeout, namespace=namespace
    )
    netns: _netns.NetnsHandle | None = None
    try:
        reason: str | None = None
        cloner: Cloner | None = None
        obj = object_path or default_object_path()
        src = source_path or default_source_path()
        if udp.socket.family != socket.AF_INET:
            reason = "the cloner rewrites IPv4 only; this socket is IPv6"
        else:
            reason = static_reason(loader, obj, src)
        if reason is None:
            netns = netns_handle(namespace)
            open_cloner = functools.partial(
                Cloner.open,
                interface,
                loader=loader,
                attach=attach,
                object_path=obj,
                source_path=src,
                marker=marker,
                netns_key=netns.key,
            )
            try:
                cloner = await trio.to_thread.run_sync(
                    functools.partial(_netns.run_in, netns, open_cloner)
                )
            except (OSError, RuntimeError, ImportError) as exc:
                reason = describe_error(exc)
        if reason is not None and require_cloner:
            _refuse(reason)
        transport = EBPFTransport(
            udp,
            cloner,
            unavailable_reason=reason,
            netns=netns,
            refresh_interval=refresh_interval,
        )
        netns = None  # the transport owns it now
    except BaseException:
        with trio.CancelScope(shield=True):
            await udp.aclose()
        if netns is not None:
            netns.close()
        raise
    try:
        # The refresh task never raises, so a group holds the body's one exception.
        with single_exception():
            async with trio.open_nursery() as nursery:
                if cloner is not None:
                    await nursery.start(transport._refresh_loop)
                try:
                    yield transport
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        await transport.aclose()
