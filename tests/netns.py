"""Network-namespace topologies for the eBPF tests and benchmark (root only).

``build_star(k)`` makes a sender, a switch (a bridge) and ``k`` peers, each in its own
namespace, joined by veth pairs, on a private /24 that exists only inside them. IPv6 is off
in every namespace, and TX checksum offload is off on the sender's veth: with offload on, veth
hands the receiver a packet marked "checksum to be computed" and a wrong UDP checksum is never
noticed. ``build_sink(k)`` is the benchmark's variant: the sender's veth leads to a namespace
that drops every copy, and the ``k`` peers exist only as permanent neighbour entries (see
:func:`build_sink` for where the copies die, and why there).

Interface and namespace names are unusual (``gzx*``, ``gsp<pid>*``) so that code wrongly running
in the root namespace finds nothing, and concurrent runs do not collide.

No thread of the tests enters a namespace itself, the trio thread least of all: ``setns()``
moves the calling thread, and every thread started from it meanwhile (trio's worker threads,
and the processes ``trio.run_process`` starts from them) is born in the namespace too. Code that
must run inside one goes through :func:`call_in` (a thread of its own), and transports take the
namespace's name (``open_ebpf_transport(..., namespace=...)``).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from typing import Literal, TypeVar

import attrs
import trio

from gossip.transport import _netns

SUBNET = "10.251.71"  # /24, used only inside the namespaces made here
SENDER_IP = f"{SUBNET}.1"
SENDER_IF = "gzxs0"
SINK_IF = "gzxk0"  # the sink's end of the sender's veth (build_sink)
# build_sink's twin: a second, identical veth from the sender to the same sink, on its own
# private /24, for traffic that must not pass the program attached to SENDER_IF.
TWIN_SUBNET = "10.251.72"
TWIN_IP = f"{TWIN_SUBNET}.1"
TWIN_IF = "gzxs1"
TWIN_SINK_IF = "gzxk1"

#: Where :func:`build_sink` drops the copies: ``"wire"`` in the sender's veth transmit
#: function, ``"stack"`` in the sink namespace's IPv4 receive path.
SinkKind = Literal["wire", "stack"]
SINK_KINDS: tuple[SinkKind, ...] = ("wire", "stack")


def peer_ip(i: int) -> str:
    return f"{SUBNET}.{10 + i}"


def twin_ip(i: int) -> str:
    """Peer ``i``'s address behind :data:`TWIN_IF` (``build_sink`` only)."""
    return f"{TWIN_SUBNET}.{10 + i}"


def _ip(args: list[str], batch: list[str] | None = None) -> None:
    cmd = ["ip", *args] + (["-batch", "-"] if batch is not None else [])
    text = "\n".join(batch) + "\n" if batch is not None else None
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")


def skip_reason() -> str | None:
    """Why namespace tests cannot run here, or ``None``."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, BPF)"
    for tool in ("ip", "ethtool"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (scripts/bootstrap-system.sh installs it as root)"
    name = f"gsp{os.getpid()}probe"
    try:
        _ip(["netns", "add", name])
    except RuntimeError as exc:
        return f"ip netns does not work here: {exc}"
    _ip(["netns", "del", name])
    return None


def namespaces_with_prefix(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in out.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


_T = TypeVar("_T")


def call_in(name: str, fn: Callable[[], _T]) -> _T:
    """``fn()`` in namespace ``name``, run by a thread started for this call alone (it enters
    the namespace, calls ``fn`` and ends). Blocks the caller: quick calls only from a trio
    task, or :func:`acall_in`."""
    outcome: list[_T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            handle = _netns.NetnsHandle.named(name)
            try:
                with _netns.entered(handle):
                    outcome.append(fn())
            finally:
                handle.close()
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    thread = threading.Thread(target=run, name=f"netns {name}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return outcome[0]


async def acall_in(name: str, fn: Callable[[], _T]) -> _T:
    """:func:`call_in` without blocking the trio thread."""
    return await trio.to_thread.run_sync(call_in, name, fn)


def _disable_ipv6(name: str) -> None:
    def write() -> None:
        # /proc/sys/net follows the namespace of the thread that opens the file.
        for conf in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{conf}/disable_ipv6", "w") as f:
                f.write("1")

    call_in(name, write)


@attrs.define
class Topology:
    prefix: str
    sender: str
    switch: str | None
    peers: list[str]
    peer_ips: list[str]
    closed: bool = False
    #: build_sink: the peers' addresses behind the twin interface (TWIN_IF).
    twin_ips: list[str] = attrs.field(factory=list)

    @property
    def namespaces(self) -> list[str]:
        return [self.sender, *([self.switch] if self.switch else []), *self.peers]

    def close(self) -> None:
        """Delete every namespace (their interfaces go with them); idempotent."""
        if self.closed:
            return
        self.closed = True
        existing = set(namespaces_with_prefix(self.prefix))
        batch = [f"netns del {n}" for n in self.namespaces if n in existing]
        if batch:
            _ip(["-force"], batch)

    def link_counters(self, ns: str, dev: str) -> dict[str, int]:
        """The 64-bit counters of ``dev`` in namespace ``ns`` (``ip -s link``): ``tx_packets``,
        ``tx_dropped``, ``rx_packets``, ``rx_dropped`` and the others, prefixed by direction."""
        proc = subprocess.run(
            ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"ip -s link show {dev} failed: {proc.stderr.strip()}")
        stats = json.loads(proc.stdout)[0]["stats64"]
        return {
            f"{way}_{name}": int(value)
            for way in ("rx", "tx")
            for name, value in stats[way].items()
        }

    def udp_counters(self, ns: str) -> dict[str, int]:
        """The ``Udp:`` line of ``/proc/net/snmp`` in namespace ``ns``."""

        def read() -> list[list[str]]:
            with open("/proc/thread-self/net/snmp", encoding="ascii") as f:
                return [line.split() for line in f if line.startswith("Udp:")]

        lines = call_in(ns, read)
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))

    def open_receivers(self, port: int, count: int | None = None) -> list[socket.socket]:
        """One non-blocking UDP socket per peer (the first ``count``), bound to
        ``(peer ip, port)`` inside the peer's namespace."""
        socks: list[socket.socket] = []

        def bind(ip: str) -> None:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind((ip, port))
            s.setblocking(False)

        try:
            for ns, ip in list(zip(self.peers, self.peer_ips, strict=True))[:count]:
                call_in(ns, functools.partial(bind, ip))
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks


def _prefix(tag: str) -> str:
    return f"gsp{os.getpid()}{tag}"


def build_star(k: int, tag: str = "t", *, peers_tx_offload: bool = True) -> Topology:
    """Sender + bridge + ``k`` peers (``k`` <= 200). TX checksum offload is off on the
    sender's veth, and on every peer's too unless ``peers_tx_offload`` (peers that send)."""
    prefix = _prefix(tag)
    topo = Topology(
        prefix=prefix,
        sender=f"{prefix}s",
        switch=f"{prefix}w",
        peers=[f"{prefix}p{i}" for i in range(k)],
        peer_ips=[peer_ip(i) for i in range(k)],
    )
    try:
        _ip([], [f"netns add {n}" for n in topo.namespaces])
        for ns in topo.namespaces:
            _disable_ipv6(ns)
        sw = ["link add gzxbr type bridge", "link set gzxbr up"]
        sw.append(f"link add gzxbs type veth peer name {SENDER_IF} netns {topo.sender}")
        sw.append("link set gzxbs master gzxbr up")
        for i, ns in enumerate(topo.peers):
            sw.append(f"link add gzxb{i} type veth peer name gzxp{i} netns {ns}")
            sw.append(f"link set gzxb{i} master gzxbr up")
        _ip(["-n", topo.switch or ""], sw)
        _ip(
            ["-n", topo.sender],
            [
                "link set lo up",
                f"addr add {SENDER_IP}/24 dev {SENDER_IF}",
                f"link set {SENDER_IF} up",
            ],
        )
        for i, (ns, ip) in enumerate(zip(topo.peers, topo.peer_ips, strict=True)):
            _ip(
                ["-n", ns],
                ["link set lo up", f"addr add {ip}/24 dev gzxp{i}", f"link set gzxp{i} up"],
            )
        _tx_offload_off(topo.sender, SENDER_IF)
        if not peers_tx_offload:
            for i, ns in enumerate(topo.peers):
                _tx_offload_off(ns, f"gzxp{i}")
    except BaseException:
        topo.close()
        raise
    return topo


def build_sink(
    k: int, tag: str = "b", *, tx_offload: bool = True, sink: SinkKind = "wire"
) -> Topology:
    """Sender whose veth leads to a namespace that drops everything; ``k`` peer addresses
    with permanent neighbour entries (made-up MACs) so every copy leaves the sender. TX
    checksum offload stays on unless ``tx_offload`` is false (as on real NICs).

    The sender has two identical veths into the sink: :data:`SENDER_IF` (``10.251.71.0/24``,
    ``peer_ips``) and its twin :data:`TWIN_IF` (``10.251.72.0/24``, ``twin_ips``, the same
    made-up MACs), so that traffic measured without a TC program can use an interface that
    has none.

    veth has no wire: its transmit function hands each frame straight to the peer device's
    receive path, and that path runs in the *sender's* context (the NET_RX softirq runs when
    the sending system call re-enables bottom halves), so the sender's CPU time includes
    whatever the sink does per frame. A real NIC's transmit ends at the driver (a descriptor,
    and freeing the buffer on completion); the receiver's work happens on another machine.
    Hence ``sink``:

    * ``"wire"`` (the benchmark's default): the sink's veth ends have MTU 68, so each frame
      (larger than 68 + 18 bytes) is not forwardable and the sender's veth transmit function
      frees it and counts it in ``tx_dropped``: the sender pays its whole transmit path,
      driver call and buffer free included, and none of a receive path.
    * ``"stack"``: frames enter the sink's receive path: the per-CPU backlog, the NET_RX
      softirq, ``__netif_receive_skb``, and ``ip_rcv``, which drops them at its first check
      (addressed to another host's MAC: ``PACKET_OTHERHOST``), before netfilter, routing,
      conntrack or ICMP (the sink has no address either). That path costs more per datagram
      for one ``sendto()`` per peer (one softirq run per datagram) than for kernel clones
      (one softirq run per fan-out).

    Dropping earlier in the sink does not help: an XDP program on the sink's veth end makes
    veth copy each frame into a page for XDP (the frames from a local socket lack XDP's
    headroom, and clones share their data), which costs more than the receive path it
    skips, and a tc ingress drop runs after the backlog and the softirq.
    """
    if sink not in SINK_KINDS:
        raise ValueError(f"sink must be one of {SINK_KINDS}: {sink!r}")
    prefix = _prefix(tag)
    topo = Topology(
        prefix=prefix,
        sender=f"{prefix}s",
        switch=None,
        peers=[f"{prefix}k"],
        peer_ips=[peer_ip(i) for i in range(k)],
        twin_ips=[twin_ip(i) for i in range(k)],
    )
    sink_ns = topo.peers[0]
    try:
        _ip([], [f"netns add {n}" for n in topo.namespaces])
        for ns in topo.namespaces:
            _disable_ipv6(ns)
        sender = ["link set lo up"]
        sink_cmds = []
        for dev, peer_dev, ip, ips in (
            (SENDER_IF, SINK_IF, SENDER_IP, topo.peer_ips),
            (TWIN_IF, TWIN_SINK_IF, TWIN_IP, topo.twin_ips),
        ):
            sender.append(f"link add {dev} type veth peer name {peer_dev} netns {sink_ns}")
            sender.append(f"addr add {ip}/24 dev {dev}")
            sender.append(f"link set {dev} up")
            for i, peer in enumerate(ips):
                mac = f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}"
                sender.append(f"neigh add {peer} lladdr {mac} dev {dev} nud permanent")
            # No address in the sink: the copies (for other MACs) would die in ip_rcv.
            if sink == "wire":
                sink_cmds.append(f"link set {peer_dev} mtu 68")
            sink_cmds.append(f"link set {peer_dev} up")
        _ip(["-n", topo.sender], sender)
        _ip(["-n", sink_ns], sink_cmds)
        if not tx_offload:
            _tx_offload_off(topo.sender, SENDER_IF)
            _tx_offload_off(topo.sender, TWIN_IF)
    except BaseException:
        topo.close()
        raise
    return topo


def _tx_offload_off(ns: str, dev: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, "ethtool", "-K", dev, "tx", "off"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"ethtool -K {dev} tx off failed: {proc.stderr.strip()}")
