"""The cloner: the TC egress program ``bpf/cloner.c`` loaded, attached to one interface, and
its maps (the fan-out groups, the config, the counters); :func:`probe` says whether it can run
here and why not. :class:`~gossip.transport.ebpf.transport.EBPFTransport` sends through it.
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import struct
import sys
from pathlib import Path
from typing import Literal, Protocol, TypeVar

import attrs
import trio

from gossip.errors import LocalProtocolError
from gossip.transport import _netns
from gossip.transport.base import Address
from gossip.transport.ebpf import _bpfsys

__all__ = [
    "DEFAULT_MARKER",
    "AttachMode",
    "IP_UDP_HEADERS",
    "MAX_PEERS",
    "Cloner",
    "ClonerStatistics",
    "Loader",
    "ProbeResult",
    "default_object_path",
    "default_source_path",
    "describe_error",
    "netns_handle",
    "probe",
    "static_reason",
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
IP_UDP_HEADERS = 28

T = TypeVar("T")  # the result of a call run in a worker thread


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
    return Path(__file__).resolve().parents[3].joinpath(*parts)


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


def static_reason(loader: Loader, object_path: str, source_path: str) -> str | None:
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
        from gossip.transport.ebpf import _libbpf  # noqa: PLC0415

        try:
            _libbpf.find_libbpf()
        except OSError as exc:
            return str(exc)
        if not os.path.isfile(object_path):
            return f"no cloner object at {object_path} (build it: make bpf-object)"
    elif loader == "bcc":
        from gossip.transport.ebpf import _bcc_loader  # noqa: PLC0415

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
        from gossip.transport.ebpf import _bcc_loader  # noqa: PLC0415

        return _bcc_loader.load_source(source_path, _PROGRAM, _MAPS)
    from gossip.transport.ebpf import _libbpf  # noqa: PLC0415

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
    reason = static_reason(loader, object_path, source_path)
    if reason is not None:
        return ProbeResult(False, reason, loader)
    netns = netns_handle(namespace)

    def trial() -> str | None:
        try:
            if interface is not None:
                from gossip.transport.ebpf import _netlink  # noqa: PLC0415

                _netlink.interface_info(interface)
            _load(loader, object_path, source_path).close()
        except Exception as exc:
            return describe_error(exc)
        return None

    try:
        reason = await trio.to_thread.run_sync(functools.partial(_netns.run_in, netns, trial))
    finally:
        netns.close()
    return ProbeResult(reason is None, reason or "", loader)


def netns_handle(namespace: str | None) -> _netns.NetnsHandle:
    """The namespace made by ``ip netns add namespace``, or the calling thread's."""
    if namespace is None:
        return _netns.NetnsHandle.current()
    return _netns.NetnsHandle.named(namespace)


def describe_error(exc: BaseException) -> str:
    log = getattr(exc, "log", "")
    text = f"{type(exc).__name__}: {exc}"
    if log:
        tail = log.strip().splitlines()[-6:]
        text += " | " + " / ".join(tail)
    return text


def _check_marker_route(addr: str, ifindex: int, interface: str, ipr: object) -> None:
    from gossip.transport.ebpf import _netlink  # noqa: PLC0415

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
        from gossip.transport.ebpf import _netlink  # noqa: PLC0415

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
        from gossip.transport.ebpf import _netlink  # noqa: PLC0415

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
        from gossip.transport.ebpf import _netlink  # noqa: PLC0415

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
