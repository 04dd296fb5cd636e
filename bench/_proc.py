"""Helpers shared by the benchmarks that watch another process: its memory, its UDP socket."""

from __future__ import annotations

import attrs


def read_status_kib(pid: int | str = "self") -> dict[str, int]:
    """The ``Vm*`` lines of ``/proc/PID/status``, in KiB (``VmRSS``, ``VmHWM``, ...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("Vm"):
                name, value = line.split(":", 1)
                out[name] = int(value.split()[0])
    return out


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size of ``pid`` in KiB."""
    return read_status_kib(pid)["VmRSS"]


@attrs.frozen
class UdpSocketInfo:
    """One IPv4 UDP socket's line of ``/proc/net/udp``."""

    rx_queue: int
    drops: int


def udp_socket_info(port: int, host_hex: str = "0100007F") -> UdpSocketInfo | None:
    """Receive-queue bytes and kernel drop count of the IPv4 UDP socket bound to
    ``127.0.0.1:port`` (``host_hex`` is the address as ``/proc/net/udp`` prints it)."""
    wanted = f"{host_hex}:{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted:
                rx_queue = int(fields[4].split(":")[1], 16)
                return UdpSocketInfo(rx_queue=rx_queue, drops=int(fields[12]))
    return None
