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
import os
import platform
import socket
import struct
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import attrs
import trio

from gossip._trio import single_exception
from gossip.errors import LocalProtocolError
from gossip.transport import _bpfsys, _netns
from gossip.transport.base import Address, TransportStatistics
from gossip.transport.udp import (
    DEFAULT_RECV_BUFFER,
    DEFAULT_SEND_TIMEOUT,
    UDPTransport,
    open_udp_transport,
)

__all__ = [
    "DEFAULT_MARKER",
    "MAX_PEERS",
    "Cloner",
    "ClonerStatistics",
    "EBPFTransport",
    "ProbeResult",
    "default_object_path",
    "default_source_path",
    "open_ebpf_transport",
    "probe",
]

#: Peers per kernel fan-out (``CLONER_MAX_PEERS`` in ``bpf/cloner.c``).
MAX_PEERS = 64

#: Where fan-out datagrams are sent: an address from the benchmarking range 198.18.0.0/15
#: (RFC 2544, not routed on the internet) and the discard port. The transport routes it out of
#: its interface with a permanent neighbour entry and refuses a marker that is a gateway or a
#: live neighbour here; the program matches address and port.
DEFAULT_MARKER: Address = ("198.18.255.254", 9)

Loader = Literal["libbpf", "bcc"]
AttachMode = Literal["auto", "tcx", "clsact"]

_PROGRAM = "gossip_cloner"
_MAPS = ("groups", "config", "counters")
# struct cloner_group: u32 count, be16 owner_port, u16 pad, 64 x struct cloner_peer (12 bytes)
_PEER_SIZE = 12
_GROUP_HEADER = struct.Struct("=I2sH")
_GROUP_SIZE = _GROUP_HEADER.size + MAX_PEERS * _PEER_SIZE
# struct cloner_counters: 8 x 64-bit
_COUNTERS = struct.Struct("=QQQQqQQQ")
# IPv4 header (20, no options) + UDP header (8)
_HEADERS = 28

_T = TypeVar("_T")


@attrs.frozen
class ClonerStatistics:
    """The program's counters, summed over CPUs (a snapshot).

    ``copies`` should equal the sum of the group sizes the transport handed to the kernel;
    anything in ``clone_failed`` or ``rewrite_failed`` is a lost copy.
    """

    matched: int = 0
    copies: int = 0
    cloned: int = 0
    clone_failed: int = 0
    #: The errno of the last failed helper call (positive), 0 when none failed.
    last_error: int = 0
    no_group: int = 0
    bad_packet: int = 0
    rewrite_failed: int = 0


@attrs.frozen
class ProbeResult:
    """Whether the cloner can run here; ``reason`` says why not. True when it can."""

    ok: bool
    reason: str = ""
    loader: str = "libbpf"

    def __bool__(self) -> bool:
        return self.ok


def _repo_file(*parts: str) -> Path:
    return Path(__file__).resolve().parents[2].joinpath(*parts)


def default_object_path() -> str:
    """The compiled program: ``$GOSSIP_CLONER_OBJECT``, else ``bpf/cloner.o`` of the source
    tree (``make bpf-object``), else ``<prefix>/share/trio-gossip/cloner.o``."""
    env = os.environ.get("GOSSIP_CLONER_OBJECT")
    if env:
        return env
    built = _repo_file("bpf", "cloner.o")
    if built.is_file():
        return str(built)
    return os.path.join(sys.prefix, "share", "trio-gossip", "cloner.o")


def default_source_path() -> str:
    """The C source for the bcc loader: ``$GOSSIP_CLONER_SOURCE``, else ``bpf/cloner.c``."""
    env = os.environ.get("GOSSIP_CLONER_SOURCE")
    if env:
        return env
    src = _repo_file("bpf", "cloner.c")
    if src.is_file():
        return str(src)
    return os.path.join(sys.prefix, "share", "trio-gossip", "cloner.c")


def _static_reason(loader: Loader, object_path: str, source_path: str) -> str | None:
    """Why the cloner cannot run, from checks that load nothing; ``None`` when they pass."""
    if platform.system() != "Linux":
        return f"not Linux ({platform.system()})"
    if _bpfsys.syscall_number() is None:
        return f"no known bpf() system call number for {platform.machine()}"
    missing = _bpfsys.missing_capabilities()
    if missing:
        return "missing capabilities: " + ", ".join(missing) + " (run as root)"
    try:
        import pyroute2  # noqa: F401, PLC0415
    except ImportError:
        return "pyroute2 is not installed (pip install 'trio-gossip[ebpf]')"
    if loader == "libbpf":
        from gossip.transport import _libbpf  # noqa: PLC0415

        try:
            _libbpf.find_libbpf()
        except OSError as exc:
            return str(exc)
        if not os.path.isfile(object_path):
            return f"no cloner object at {object_path} (build it: make bpf-object)"
    elif loader == "bcc":
        from gossip.transport import _bcc_loader  # noqa: PLC0415

        err = _bcc_loader.bcc_import_error()
        if err:
            return err
        if not os.path.isfile(source_path):
            return f"no cloner source at {source_path}"
    else:
        return f"unknown loader {loader!r} (libbpf or bcc)"
    return None


class _Loaded(Protocol):
    prog_fd: int
    map_fds: dict[str, int]

    def close(self) -> None: ...


def _load(loader: Loader, object_path: str, source_path: str) -> _Loaded:
    if loader == "bcc":
        from gossip.transport import _bcc_loader  # noqa: PLC0415

        return _bcc_loader.load_source(source_path, _PROGRAM, _MAPS)
    from gossip.transport import _libbpf  # noqa: PLC0415

    return _libbpf.load_object(object_path, _PROGRAM, _MAPS)


async def probe(
    interface: str | None = None,
    *,
    loader: Loader = "libbpf",
    object_path: str | None = None,
    source_path: str | None = None,
    namespace: str | None = None,
) -> ProbeResult:
    """Check whether the cloner can run: platform, capabilities, libraries, the object (or
    the source and bcc), and a trial load of the program (the verifier's verdict); with
    ``interface``, also that the interface exists in this network namespace (``namespace``,
    a name from ``ip netns add``, or the calling thread's).

    The trial load runs in a worker thread (about 10 ms with libbpf, 1 s with bcc).

    Returns:
        A :class:`ProbeResult`; false with a ``reason`` when the cloner cannot run.
    """
    object_path = object_path or default_object_path()
    source_path = source_path or default_source_path()
    reason = _static_reason(loader, object_path, source_path)
    if reason is not None:
        return ProbeResult(False, reason, loader)
    netns = _netns_handle(namespace)

    def trial() -> str | None:
        try:
            if interface is not None:
                from gossip.transport import _netlink  # noqa: PLC0415

                _netlink.interface_info(interface)
            _load(loader, object_path, source_path).close()
        except Exception as exc:
            return _describe(exc)
        return None

    try:
        reason = await trio.to_thread.run_sync(functools.partial(_netns.run_in, netns, trial))
    finally:
        netns.close()
    return ProbeResult(reason is None, reason or "", loader)


def _netns_handle(namespace: str | None) -> _netns.NetnsHandle:
    """The namespace made by ``ip netns add namespace``, or the calling thread's."""
    if namespace is None:
        return _netns.NetnsHandle.current()
    return _netns.NetnsHandle.named(namespace)


def _describe(exc: BaseException) -> str:
    log = getattr(exc, "log", "")
    text = f"{type(exc).__name__}: {exc}"
    if log:
        tail = log.strip().splitlines()[-6:]
        text += " | " + " / ".join(tail)
    return text


def _check_marker_route(addr: str, ifindex: int, interface: str, ipr: object) -> None:
    from gossip.transport import _netlink  # noqa: PLC0415

    oif = _netlink.route_oif(addr, ipr)
    if oif != ifindex:
        raise OSError(22, f"the marker {addr} is routed via ifindex {oif}, not {interface}")


class Cloner:
    """The loaded program, attached to one interface's egress, with its maps.

    Made by :meth:`open` (blocking: call it from a worker thread in the right network
    namespace). :meth:`write_group` and :meth:`statistics` are quick system calls.
    """

    def __init__(
        self,
        loaded: _Loaded,
        *,
        loader: Loader,
        interface: str,
        ifindex: int,
        mtu: int,
        attach_kind: str,
        link_fd: int,
        filter_name: str,
        marker: Address,
        netns_key: object,
    ) -> None:
        self._loaded: _Loaded | None = loaded
        self.loader = loader
        self.interface = interface
        self.ifindex = ifindex
        self.mtu = mtu
        #: ``"tcx"`` (a link owned by this process) or ``"clsact"`` (a classic filter).
        self.attach_kind = attach_kind
        self._link_fd = link_fd
        self._filter_name = filter_name
        self.marker = marker
        self._netns_key = netns_key
        self.prog_id = _bpfsys.prog_id(loaded.prog_fd)
        self._counters = _bpfsys.MapSlot(
            loaded.map_fds["counters"], struct.pack("=I", 0), _bpfsys.possible_cpus() * 64
        )
        self._group = _bpfsys.MapSlot(loaded.map_fds["groups"], struct.pack("=I", 0), _GROUP_SIZE)

    @classmethod
    def open(
        cls,
        interface: str,
        *,
        loader: Loader = "libbpf",
        attach: AttachMode = "auto",
        object_path: str | None = None,
        source_path: str | None = None,
        marker: Address = DEFAULT_MARKER,
        netns_key: object = None,
    ) -> Cloner:
        """Load the program, write its configuration, attach it and route the marker.

        Raises:
            OSError, RuntimeError, ImportError: from the loader, the attach or netlink.
        """
        from gossip.transport import _netlink  # noqa: PLC0415

        with _netlink.session() as ipr:
            return cls._open(
                ipr,
                interface,
                loader=loader,
                attach=attach,
                object_path=object_path,
                source_path=source_path,
                marker=marker,
                netns_key=netns_key,
            )

    @classmethod
    def _open(
        cls,
        ipr: object,
        interface: str,
        *,
        loader: Loader,
        attach: AttachMode,
        object_path: str | None,
        source_path: str | None,
        marker: Address,
        netns_key: object,
    ) -> Cloner:
        from gossip.transport import _netlink  # noqa: PLC0415

        info = _netlink.interface_info(interface, ipr)
        loaded = _load(loader, object_path or default_object_path(), source_path or "")
        link_fd, filter_name, kind = -1, "", ""
        marker_installed = False
        try:
            config = socket.inet_aton(marker[0]) + struct.pack("!H", marker[1]) + b"\0\0"
            _bpfsys.map_update(loaded.map_fds["config"], struct.pack("=I", 0), config)
            _netlink.clsact_cleanup(info.index, ipr)
            if attach in ("auto", "tcx"):
                try:
                    link_fd = _bpfsys.link_create_tcx(loaded.prog_fd, info.index)
                    kind = "tcx"
                except OSError:
                    if attach == "tcx":
                        raise
            if not kind:
                filter_name = _netlink.clsact_attach(info.index, loaded.prog_fd, ipr)
                kind = "clsact"
            _netlink.install_marker(netns_key, info.index, marker[0], info.mac, ipr)
            marker_installed = True
            _check_marker_route(marker[0], info.index, interface, ipr)
            return cls(
                loaded,
                loader=loader,
                interface=interface,
                ifindex=info.index,
                mtu=info.mtu,
                attach_kind=kind,
                link_fd=link_fd,
                filter_name=filter_name,
                marker=marker,
                netns_key=netns_key,
            )
        except BaseException:
            if marker_installed:
                _netlink.remove_marker(netns_key, info.index, marker[0])
            if link_fd >= 0:
                os.close(link_fd)
            if filter_name:
                _netlink.clsact_detach(info.index, filter_name)
            loaded.close()
            raise

    @property
    def closed(self) -> bool:
        return self._loaded is None

    def write_group(self, port: int, joined: bytes, count: int) -> None:
        """Set the group for datagrams from the socket bound to ``port``: ``count`` packed
        peers (1 to 64, 12 bytes each: IPv4 address, UDP port, next-hop MAC; network byte
        order) in ``joined``. The program serves one socket: the last one written."""
        if not 1 <= count <= MAX_PEERS or len(joined) != count * _PEER_SIZE:
            raise LocalProtocolError(f"a group holds 1 to {MAX_PEERS} packed peers")
        if self._loaded is None:
            raise LocalProtocolError("the cloner is closed")
        view = self._group.view
        _GROUP_HEADER.pack_into(view, 0, count, port.to_bytes(2, "big"), 0)
        view[_GROUP_HEADER.size : _GROUP_HEADER.size + len(joined)] = joined
        self._group.write()

    def statistics(self) -> ClonerStatistics:
        """The program's counters summed over CPUs."""
        raw = self._counters.read()
        totals = [0] * 8
        last_error = 0
        for offset in range(0, len(raw), _COUNTERS.size):
            values = _COUNTERS.unpack_from(raw, offset)
            for i, v in enumerate(values):
                totals[i] += v
            if values[4]:
                last_error = -values[4]
        return ClonerStatistics(
            matched=totals[0],
            copies=totals[1],
            cloned=totals[2],
            clone_failed=totals[3],
            last_error=last_error,
            no_group=totals[5],
            bad_packet=totals[6],
            rewrite_failed=totals[7],
        )

    def close(self) -> None:
        """Detach, unroute the marker and release the program; idempotent, blocking."""
        from gossip.transport import _netlink  # noqa: PLC0415

        if self._loaded is None:
            return
        try:
            if self._link_fd >= 0:
                os.close(self._link_fd)
                self._link_fd = -1
            if self._filter_name:
                _netlink.clsact_detach(self.ifindex, self._filter_name)
            _netlink.remove_marker(self._netns_key, self.ifindex, self.marker[0])
        finally:
            self._loaded.close()
            self._loaded = None


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
        self._max_payload = (cloner.mtu - _HEADERS) if cloner else 0
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
            from gossip.transport import _netlink  # noqa: PLC0415

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
                    self.refresh_error = _describe(exc)
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

    async def _in_thread(self, fn: Callable[[], _T]) -> _T:
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
            reason = _static_reason(loader, obj, src)
        if reason is None:
            netns = _netns_handle(namespace)
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
                reason = _describe(exc)
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
