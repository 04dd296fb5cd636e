"""Netlink work of the eBPF transport through pyroute2 (private; blocking calls).

Everything here blocks for a few milliseconds and must run in a worker thread that is in the
transport's network namespace (see :mod:`gossip.transport._netns`). Each call opens its own
``IPRoute`` socket: pyroute2 binds a socket to the namespace of the thread that creates it,
and trio's worker threads change.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import attrs

from gossip.errors import LocalProtocolError

__all__ = [
    "FILTER_PREFIX",
    "session",
    "InterfaceInfo",
    "NextHop",
    "clsact_attach",
    "clsact_cleanup",
    "clsact_detach",
    "install_marker",
    "interface_info",
    "remove_marker",
    "resolve_next_hops",
    "route_oif",
]

#: Names of our clsact filters: ``gossip_cloner-<pid>`` (the pid tells stale from live).
FILTER_PREFIX = "gossip_cloner-"

_TC_EGRESS_PARENT = 0xFFFFFFF3  # ffff:fff3
_RT_SCOPE_LINK = 253
_NUD_PERMANENT = 0x80
# Neighbour states whose link-layer address we trust. INCOMPLETE and FAILED have none; a
# STALE entry still names the right MAC in practice, and the cloned copies bypass the
# neighbour code, so an entry we use never leaves STALE until it is garbage-collected, and
# then the peer falls back to a plain send, which resolves it again.
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | _NUD_PERMANENT  # REACHABLE STALE DELAY PROBE PERM.


@attrs.frozen
class InterfaceInfo:
    index: int
    mtu: int
    mac: bytes


@attrs.frozen
class NextHop:
    """Where a copy to one IPv4 peer must go: ``mac`` is the link-layer address of the peer
    (same segment) or of its gateway; ``None`` with a ``reason`` when it cannot be cloned."""

    mac: bytes | None
    reason: str = ""


@contextlib.contextmanager
def session() -> Iterator[Any]:
    """One netlink socket (``IPRoute``) for several calls in the same thread; pass it as
    ``given`` to the functions here (each opens its own otherwise, about 2 ms)."""
    from pyroute2 import IPRoute  # noqa: PLC0415 (optional dependency; a slow import)

    ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


@contextlib.contextmanager
def _ipr(given: Any = None) -> Iterator[Any]:
    if given is not None:
        yield given
    else:
        with session() as ipr:
            yield ipr


def _netlink_errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def interface_info(name: str, given: Any = None) -> InterfaceInfo:
    """Index, MTU and MAC of interface ``name``; raises ``OSError(ENODEV)`` when absent."""
    with _ipr(given) as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise OSError(19, f"no interface {name!r} in this network namespace")
        link = ipr.link("get", index=found[0])[0]
        address = link.get("IFLA_ADDRESS")
        if not address or len(_mac(address)) != 6:
            raise OSError(95, f"interface {name!r} is not an Ethernet device")
        return InterfaceInfo(index=int(found[0]), mtu=int(link.get("IFLA_MTU")), mac=_mac(address))


def route_oif(addr: str, given: Any = None) -> int | None:
    """The interface the kernel would send a datagram for ``addr`` through."""
    with _ipr(given) as ipr:
        try:
            routes = ipr.route("get", dst=addr)
        except Exception:
            return None
        oif = routes[0].get("RTA_OIF") if routes else None
        return int(oif) if oif is not None else None


# Marker routes shared by transports of this process: (netns, ifindex, addr) -> users.
_marker_users: dict[tuple[object, int, str], int] = {}
_marker_lock = threading.Lock()


def install_marker(netns_key: object, index: int, addr: str, mac: bytes, given: Any = None) -> None:
    """Route ``addr``/32 out of ``index`` with a permanent neighbour entry.

    The neighbour entry makes the kernel hand the marker datagram to the device at once (no
    ARP queue), so the cloner runs inside our ``sendto()``. Its MAC is the interface's own:
    should a marker datagram ever pass the cloner untouched, no other host accepts it.
    """
    with _marker_lock, _ipr(given) as ipr:
        _refuse_live_marker(ipr, addr, mac)
        ipr.route("replace", dst=addr, dst_len=32, oif=index, scope=_RT_SCOPE_LINK)
        ipr.neigh("replace", dst=addr, lladdr=mac.hex(":"), ifindex=index, state=_NUD_PERMANENT)
        key = (netns_key, index, addr)
        _marker_users[key] = _marker_users.get(key, 0) + 1


def _refuse_live_marker(ipr: Any, addr: str, mac: bytes) -> None:
    """Refuse a marker that is a real host here: a route's gateway, or a neighbour with a MAC
    that is not ours. Taking it over would blackhole that host (on some machines TEST-NET
    addresses are in use: one such machine's default gateway was 192.0.2.1)."""
    for route in ipr.get_routes(family=socket.AF_INET):
        if route.get_attr("RTA_GATEWAY") == addr:
            raise LocalProtocolError(
                f"marker {addr} is a gateway on this host; choose another marker address"
            )
    ours = mac.hex(":")
    for neigh in ipr.get_neighbours(family=socket.AF_INET, dst=addr):
        lladdr = neigh.get_attr("NDA_LLADDR")
        if lladdr and lladdr.lower() != ours:
            raise LocalProtocolError(
                f"marker {addr} is a live neighbour ({lladdr}); choose another marker address"
            )


def remove_marker(netns_key: object, index: int, addr: str) -> None:
    """Undo :func:`install_marker` once the last transport of this process using it left."""
    with _marker_lock:
        key = (netns_key, index, addr)
        users = _marker_users.get(key, 0) - 1
        if users > 0:
            _marker_users[key] = users
            return
        _marker_users.pop(key, None)
        with _ipr() as ipr:
            # Either may be gone already (the interface was removed).
            with contextlib.suppress(Exception):
                ipr.neigh("del", dst=addr, ifindex=index)
            with contextlib.suppress(Exception):
                ipr.route("del", dst=addr, dst_len=32, oif=index, scope=_RT_SCOPE_LINK)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_filters(ipr: Any, index: int) -> Iterable[tuple[str, Any]]:
    for msg in ipr.get_filters(index=index, parent=_TC_EGRESS_PARENT):
        if msg.get("TCA_KIND") != "bpf" or not msg.get("TCA_OPTIONS"):
            continue
        name = msg.get_nested("TCA_OPTIONS", "TCA_BPF_NAME") or ""
        if name.startswith(FILTER_PREFIX):
            yield name, msg


def clsact_cleanup(index: int, given: Any = None) -> int:
    """Delete our clsact egress filters whose owning process is gone (a classic filter
    outlives its process and would keep cloning with the last peer list). Returns how many."""
    removed = 0
    with _ipr(given) as ipr:
        try:
            found = list(_our_filters(ipr, index))
        except Exception as exc:
            if _netlink_errno(exc) in (2, 22):  # no clsact qdisc: nothing to clean
                return 0
            raise
        for name, msg in found:
            pid_text = name[len(FILTER_PREFIX) :]
            if pid_text.isdigit() and _pid_alive(int(pid_text)) and int(pid_text) != os.getpid():
                continue
            ipr.tc(
                "del-filter",
                "bpf",
                index,
                handle=msg["handle"],
                parent=_TC_EGRESS_PARENT,
                info=msg["info"],  # priority and protocol, as the kernel reported them
            )
            removed += 1
    return removed


def clsact_attach(index: int, prog_fd: int, given: Any = None) -> str:
    """Attach ``prog_fd`` as a direct-action filter on the clsact egress hook of ``index``
    (creating the clsact qdisc when needed). Returns the filter's name."""
    name = f"{FILTER_PREFIX}{os.getpid()}"
    with _ipr(given) as ipr:
        try:
            ipr.tc("add", "clsact", index)
        except Exception as exc:
            if _netlink_errno(exc) != 17:  # EEXIST: it is there already
                raise
        ipr.tc(
            "add-filter",
            "bpf",
            index,
            ":1",
            fd=prog_fd,
            name=name,
            parent="ffff:fff3",
            classid=1,
            direct_action=True,
        )
    return name


def clsact_detach(index: int, name: str) -> None:
    """Remove the filter :func:`clsact_attach` made (the clsact qdisc stays)."""
    with _ipr() as ipr:
        try:
            found = [msg for n, msg in _our_filters(ipr, index) if n == name]
        except Exception:
            return  # interface or qdisc gone
        for msg in found:
            with contextlib.suppress(Exception):
                ipr.tc(
                    "del-filter",
                    "bpf",
                    index,
                    handle=msg["handle"],
                    parent=_TC_EGRESS_PARENT,
                    info=msg["info"],
                )


def resolve_next_hops(index: int, hosts: Iterable[str]) -> dict[str, NextHop]:
    """For each IPv4 ``host``: the MAC a copy needs (the host's on this segment, else its
    gateway's), from the routing and neighbour tables. Hosts that leave through another
    interface, or whose next hop has no usable neighbour entry, get a reason instead."""
    result: dict[str, NextHop] = {}
    with _ipr() as ipr:
        neighbours: dict[str, bytes] = {}
        for msg in ipr.get_neighbours(ifindex=index, family=socket.AF_INET):
            dst, lladdr = msg.get("NDA_DST"), msg.get("NDA_LLADDR")
            if dst and lladdr and msg["state"] & _NUD_USABLE:
                lladdr_bytes = _mac(lladdr)
                if len(lladdr_bytes) == 6:
                    neighbours[dst] = lladdr_bytes
        for host in hosts:
            try:
                routes = ipr.route("get", dst=host)
            except Exception:
                result[host] = NextHop(None, "unreachable")
                continue
            if not routes or routes[0].get("RTA_OIF") != index or routes[0]["type"] != 1:
                # type 1: RTN_UNICAST (local, broadcast, ... are not for us)
                result[host] = NextHop(None, "other_interface")
                continue
            hop = routes[0].get("RTA_GATEWAY") or host
            mac = neighbours.get(hop)
            result[host] = NextHop(mac, "" if mac else "unresolved_next_hop")
    return result
