"""Per-datagram CPU cost of the UDP and TCP transports on loopback, against the obvious trio
design.

Run: ``python -m bench.transport_cost [--runs 5] [--n 20000] [--size 512] [--burst 32]``.
CPU time (``time.process_time``) per datagram, median of ``runs`` repeats, cases interleaved
in each repeat so machine noise hits them alike. One process sends bursts of ``burst``
datagrams from one socket to another, then receives them: the "packets already queued" case
of a busy node. Send and receive phases are timed apart.

Cases:
    stdlib floor: non-blocking stdlib sockets, no event loop at all.
    UDPTransport: ``await transport.send`` / ``await transport.receive``.
    TCPTransport: the same calls on the TCP transport (one connection, frames of the same
        payload; the connection is made before the clock starts).
    trio.socket: ``await sock.sendto`` / ``await sock.recvfrom`` per datagram (the obvious
        design, a full scheduler trip per call).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import time
from collections.abc import Callable

import trio

from gossip.transport.tcp import open_tcp_transport
from gossip.transport.udp import open_udp_transport

#: (send seconds, receive seconds) for ``n`` datagrams.
Timing = tuple[float, float]


def stdlib_case(n: int, size: int, burst: int) -> Timing:
    """The floor: what the kernel and CPython's socket module cost."""
    payload = os.urandom(size)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
    ):
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)
        dst = rx.getsockname()
        send_time = receive_time = 0.0
        for _ in range(n // burst):
            t0 = time.process_time()
            for _ in range(burst):
                tx.sendto(payload, dst)
            t1 = time.process_time()
            for _ in range(burst):
                while True:
                    try:
                        rx.recvfrom(65535)
                        break
                    except BlockingIOError:  # the kernel lagged; rare on loopback
                        continue
            t2 = time.process_time()
            send_time += t1 - t0
            receive_time += t2 - t1
    return send_time, receive_time


async def _transport_case(n: int, size: int, burst: int) -> Timing:
    payload = os.urandom(size)
    async with (
        await open_udp_transport("127.0.0.1") as tx,
        await open_udp_transport("127.0.0.1") as rx,
    ):
        dst = rx.local_address
        send, receive = tx.send, rx.receive
        send_time = receive_time = 0.0
        for _ in range(n // burst):
            t0 = time.process_time()
            for _ in range(burst):
                await send(payload, dst)
            t1 = time.process_time()
            for _ in range(burst):
                await receive()
            t2 = time.process_time()
            send_time += t1 - t0
            receive_time += t2 - t1
        assert rx.statistics().datagrams_received == n // burst * burst
    return send_time, receive_time


async def _tcp_case(n: int, size: int, burst: int) -> Timing:
    payload = os.urandom(size)
    async with open_tcp_transport("127.0.0.1") as tx, open_tcp_transport("127.0.0.1") as rx:
        dst = rx.local_address
        await tx.send(payload, dst)  # dial outside the measurement
        await rx.receive()
        send, receive = tx.send, rx.receive
        send_time = receive_time = 0.0
        for _ in range(n // burst):
            t0 = time.process_time()
            for _ in range(burst):
                await send(payload, dst)
            t1 = time.process_time()
            for _ in range(burst):
                await receive()
            t2 = time.process_time()
            send_time += t1 - t0
            receive_time += t2 - t1
        assert rx.statistics().datagrams_received == n // burst * burst + 1
    return send_time, receive_time


async def _trio_socket_case(n: int, size: int, burst: int) -> Timing:
    payload = os.urandom(size)
    with (
        trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx,
    ):
        await rx.bind(("127.0.0.1", 0))
        dst = rx.getsockname()
        send_time = receive_time = 0.0
        for _ in range(n // burst):
            t0 = time.process_time()
            for _ in range(burst):
                await tx.sendto(payload, dst)
            t1 = time.process_time()
            for _ in range(burst):
                await rx.recvfrom(65535)
            t2 = time.process_time()
            send_time += t1 - t0
            receive_time += t2 - t1
    return send_time, receive_time


CASES: dict[str, Callable[[int, int, int], Timing]] = {
    "stdlib floor (no event loop)": stdlib_case,
    "UDPTransport send + receive": lambda *a: trio.run(_transport_case, *a),
    "TCPTransport send + receive": lambda *a: trio.run(_tcp_case, *a),
    "trio.socket await sendto + recvfrom": lambda *a: trio.run(_trio_socket_case, *a),
}


def measure(runs: int, n: int, size: int, burst: int) -> dict[str, tuple[float, float, float]]:
    """Median microseconds per datagram, (send, receive, both), of each case."""
    for case in CASES.values():  # warm-up: imports, socket buffers, CPU frequency
        case(n // 10, size, burst)
    samples: dict[str, list[Timing]] = {name: [] for name in CASES}
    for _ in range(runs):
        for name, case in CASES.items():
            samples[name].append(case(n, size, burst))
    per = 1e6 / (n // burst * burst)
    return {
        name: (
            statistics.median(s for s, _ in timings) * per,
            statistics.median(r for _, r in timings) * per,
            statistics.median(s + r for s, r in timings) * per,
        )
        for name, timings in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--burst", type=int, default=32)
    args = parser.parse_args()
    result = measure(args.runs, args.n, args.size, args.burst)
    floor = result["stdlib floor (no event loop)"][2]
    print(
        f"# {platform.node()} {platform.python_version()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, trio {trio.__version__}, payload {args.size} B, "
        f"bursts of {args.burst}, median of {args.runs} x {args.n}, CPU time"
    )
    print(f"| {'case':<38} | send us | recv us | total us | vs floor |")
    print(f"|{'-' * 40}|---------|---------|----------|----------|")
    for name, (send_us, recv_us, total) in result.items():
        print(
            f"| {name:<38} | {send_us:7.2f} | {recv_us:7.2f} | {total:8.2f} | "
            f"{total / floor:7.2f}x |"
        )


if __name__ == "__main__":
    main()
