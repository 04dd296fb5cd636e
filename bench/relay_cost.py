"""CPU per message on the relay path of one node, against the obvious design, in one run.

Run: ``python -m bench.relay_cost [--runs 5] [--n 8192] [--burst 64] [--size 512]``.

The relay path: a sealed ``PushMessage`` arrives on the node's UDP socket; the node verifies
and decrypts it, deduplicates it, delivers it to the application (its delivery queue), sends a
``PushAck`` and forwards it to 3 peers with one shared encryption. A *duplicate* is the same
message key sealed again (a new IV and tag, so a replay guard would let it through): whatever
the node does with it until it is dropped is measured (the engine spots the clear-text key of
a known message before any crypto). Payload ``--size`` bytes (512), encrypted with the
default backend.

A peer codec holding the cluster key pre-encodes ``n`` datagrams (distinct keys: fresh; one
key sealed ``n`` times: duplicates). A plain stdlib socket writes a burst of ``--burst``
datagrams into the node's socket (the "packets already queued" case of a busy node), then the
clock starts: ``time.process_time`` until the node has handled the whole burst. Sending the
burst is outside the measured time; the node's own sends (ACK, forwards) are inside. The 3
forward targets and the pusher are stdlib sockets with a small receive buffer that nobody
reads (the kernel drops what overflows). After each burst, outside the measured time, the
application takes the delivered messages from the node. Reported: CPU microseconds per
message, median of ``--runs`` repeats, every case run once per repeat, interleaved.

Cases:
    gossip runtime: ``open_gossiper`` over ``open_udp_transport`` (the real thing). Its config
        sets ``ack_timeout`` and ``sync_interval`` to 60 s so that no timer work (ACK rounds
        that never get their ACKs here, anti-entropy) falls inside the measured windows.
    gossip engine only: ``GossipEngine.receive`` + ``datagrams_to_send`` + ``pop_events``,
        no sockets: what the sans-IO engine and the crypto suite cost.
    naive: the obvious design of ``shared/reference/performance.md``: a trio socket,
        ``await recvfrom`` per datagram, stdlib HMAC check, a new pycryptodome AES-CBC object
        per decryption and per encryption, a ``cachetools.LRUCache`` for dedupe, one
        encryption shared by ``await sendto`` x 3 (no ACK: it does less than the real path).
        Its datagrams have the same sizes in its own format (label | IV | AES-CBC(key | data)
        | tag), so it does not depend on ``gossip.wire``.
    stdlib floor: non-blocking stdlib socket, no event loop, no crypto, no logic:
        ``recvfrom`` + 4 ``sendto`` (fresh) or ``recvfrom`` alone (duplicate). Its
        performance.md figure (8 us) is for 3 ``sendto``: compare ratios with care.
"""

from __future__ import annotations

import argparse
import hmac
import os
import platform
import socket
import statistics
import struct
import time
from collections.abc import Callable, Sequence

import trio
import trio.testing
from cachetools import LRUCache
from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.KDF import HKDF

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import SALT, TAG_SIZE, Keyring, generate_key
from gossip.discovery.base import StaticDiscovery
from gossip.node import open_gossiper
from gossip.transport.udp import open_udp_transport
from gossip.wire import Codec, PushMessage, new_message_key

#: Acceptance targets (issue 3), microseconds per message.
TARGET_FRESH_US = 25.0
TARGET_DUP_US = 6.0

#: shared/reference/performance.md, same definitions: (fresh us, dup us).
REFERENCE: dict[str, tuple[float, float]] = {
    "stdlib floor": (8.0, 1.0),
    "naive (await recvfrom/sendto, AES.new per packet)": (128.0, 30.0),
}

#: Timer-free protocol settings: measured windows hold only the relay path.
QUIET = GossipConfig(ack_timeout=60.0, sync_interval=60.0)

_NODE_RCVBUF = 4 << 20
_SINK_RCVBUF = 4096

#: One case: (key, datagrams, burst, fresh) -> CPU seconds for all the datagrams but the first.
Case = Callable[[bytes, list[bytes], int, bool], float]


def make_datagrams(key: bytes, n: int, size: int, *, fresh: bool) -> list[bytes]:
    """``n + 1`` sealed PushMessages; the first one primes the node (not measured).

    ``fresh``: each with its own key. Otherwise the same key sealed ``n + 1`` times (distinct
    IVs and tags, so they pass the replay guard and reach the duplicate check).
    """
    codec = Codec(Keyring(key))
    now = time.time() - 1.0
    payload = os.urandom(size)
    msg_key = new_message_key(int(now * 1000))
    out = []
    for i in range(n + 1):
        if fresh:
            msg_key = new_message_key(int(now * 1000))
        # Label timestamps 0.1 ms apart keep them inside the replay window for any n used here.
        out.append(codec.encode(PushMessage(msg_key, payload), now + i * 1e-4))
    return out


def _sink() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SINK_RCVBUF)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def _chunks(datagrams: list[bytes], burst: int) -> list[list[bytes]]:
    return [datagrams[i : i + burst] for i in range(0, len(datagrams), burst)]


# --------------------------------------------------------------------------- gossip runtime


async def _runtime_case(
    key: bytes, datagrams: list[bytes], burst: int, fresh: bool, check: bool = True
) -> float:
    blaster, *sinks = (_sink() for _ in range(4))
    with blaster, sinks[0], sinks[1], sinks[2]:
        peers = [s.getsockname() for s in (blaster, *sinks)]
        async with (
            await open_udp_transport("127.0.0.1", 0, recv_buffer=_NODE_RCVBUF) as transport,
            open_gossiper(
                StaticDiscovery(peers),
                transport,
                QUIET,
                keyring=Keyring(key),
                delivery_queue=max(1024, 2 * burst),
            ) as node,
        ):
            engine, dst = node.engine, transport.local_address

            async def handle(chunk: list[bytes]) -> float:
                target = engine.statistics().datagrams_received + len(chunk)
                for dg in chunk:
                    blaster.sendto(dg, dst)
                t0 = time.process_time()
                with trio.fail_after(10):  # a lost datagram would hang the run: fail instead
                    while engine.statistics().datagrams_received < target:
                        await trio.lowlevel.checkpoint()
                    await trio.testing.wait_all_tasks_blocked()  # the last pump finished
                elapsed = time.process_time() - t0
                # The application's share, not measured: it takes what was delivered.
                for _ in range(node.statistics().delivery_queued):
                    await node.receive()
                return elapsed

            await handle(datagrams[:1])
            total = 0.0
            for chunk in _chunks(datagrams[1:], burst):
                total += await handle(chunk)
            stats = engine.statistics()
            expected_new = len(datagrams) if fresh else 1
            overflow = node.statistics().delivery_overflow
            if check and (stats.delivered != expected_new or stats.dropped or overflow):
                raise RuntimeError(f"unexpected outcome: {stats}")
            return total


def runtime_case(key: bytes, datagrams: list[bytes], burst: int, fresh: bool) -> float:
    return trio.run(_runtime_case, key, datagrams, burst, fresh)


# --------------------------------------------------------------------------- engine only


def engine_case(key: bytes, datagrams: list[bytes], burst: int, fresh: bool) -> float:
    peers = [("127.0.0.1", 9), ("127.0.0.1", 10), ("127.0.0.1", 11), ("127.0.0.1", 12)]
    base = time.monotonic()
    engine = GossipEngine(
        StaticDiscovery(peers),
        ("127.0.0.1", 13),
        QUIET,
        keyring=Keyring(key),
        clock_offset=time.time() - base,
    )
    engine.start(base)
    src = peers[0]

    def handle(chunk: list[bytes]) -> float:
        now = time.monotonic()
        t0 = time.process_time()
        for dg in chunk:
            engine.receive(dg, src, now)
            engine.datagrams_to_send()
            engine.pop_events()
        return time.process_time() - t0

    handle(datagrams[:1])
    return sum(handle(chunk) for chunk in _chunks(datagrams[1:], burst))


# --------------------------------------------------------------------------- naive design


def _derive(key: bytes) -> tuple[bytes, bytes]:
    enc = HKDF(key, 32, SALT, SHA256, 1, b"trio-gossip v1 aes-256-cbc")
    mac = HKDF(key, 32, SALT, SHA256, 1, b"trio-gossip v1 hmac-sha256")
    assert isinstance(enc, bytes)
    assert isinstance(mac, bytes)
    return enc, mac


_NAIVE_LABEL = struct.Struct(">BBBIQ")
_NAIVE_HEAD = _NAIVE_LABEL.size + 16  # label | IV


def _naive_seal(enc_key: bytes, mac_key: bytes, key_id: int, ts: int, plain: bytes) -> bytes:
    """label | IV | AES-256-CBC(body | PKCS#7 padding) | HMAC-SHA256[:16], one AES object."""
    iv = os.urandom(16)
    out = _NAIVE_LABEL.pack(0xA1, 1, 1, key_id, ts) + iv
    out += AES.new(enc_key, AES.MODE_CBC, iv).encrypt(plain)
    return out + hmac.digest(mac_key, out, "sha256")[:TAG_SIZE]


def make_naive_datagrams(key: bytes, n: int, size: int, *, fresh: bool) -> list[bytes]:
    """As :func:`make_datagrams`, in the naive design's own format: the message key is the
    first 16 bytes of the encrypted body (the naive node does not depend on gossip.wire)."""
    enc_key, mac_key = _derive(key)
    key_id = Keyring(key).primary.key_id
    ts = int(time.time() * 1000)
    payload = os.urandom(size)
    msg_key = new_message_key(ts)
    out = []
    for _ in range(n + 1):
        if fresh:
            msg_key = new_message_key(ts)
        body = msg_key + payload
        pad = 16 - len(body) % 16
        out.append(_naive_seal(enc_key, mac_key, key_id, ts, body + bytes([pad]) * pad))
    return out


async def _naive_case(key: bytes, datagrams: list[bytes], burst: int, fresh: bool) -> float:
    enc_key, mac_key = _derive(key)
    key_id = Keyring(key).primary.key_id
    blaster, *sinks = (_sink() for _ in range(4))
    with blaster, sinks[0], sinks[1], sinks[2], trio.socket.socket(type=socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _NODE_RCVBUF)
        await sock.bind(("127.0.0.1", 0))
        dst = sock.getsockname()
        peers = [s.getsockname() for s in sinks]
        cache: LRUCache[bytes, bytes] = LRUCache(512)
        delivered: list[tuple[bytes, bytes]] = []
        handled = 0
        target = 0
        done = trio.Event()

        async def node() -> None:
            nonlocal handled, done
            while True:
                data, _addr = await sock.recvfrom(65535)
                head = data[:-TAG_SIZE]
                ok = hmac.compare_digest(
                    hmac.digest(mac_key, head, "sha256")[:TAG_SIZE], data[-TAG_SIZE:]
                )
                if ok:
                    iv = data[_NAIVE_HEAD - 16 : _NAIVE_HEAD]
                    plain = AES.new(enc_key, AES.MODE_CBC, iv).decrypt(data[_NAIVE_HEAD:-16])
                    body = plain[: -plain[-1]]
                    msg_key = body[:16]
                    if msg_key not in cache:
                        cache[msg_key] = body[16:]
                        delivered.append((msg_key, body[16:]))
                        ts = int(time.time() * 1000)
                        out = _naive_seal(enc_key, mac_key, key_id, ts, plain)
                        for peer in peers:
                            await sock.sendto(out, peer)
                handled += 1
                if handled == target:
                    done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(node)

            async def handle(chunk: list[bytes]) -> float:
                nonlocal target, done
                target += len(chunk)
                done = trio.Event()
                for dg in chunk:
                    blaster.sendto(dg, dst)
                t0 = time.process_time()
                with trio.fail_after(10):
                    await done.wait()
                    await trio.testing.wait_all_tasks_blocked()
                return time.process_time() - t0

            await handle(datagrams[:1])
            total = 0.0
            for chunk in _chunks(datagrams[1:], burst):
                total += await handle(chunk)
            nursery.cancel_scope.cancel()
        expected_new = len(datagrams) if fresh else 1
        if len(delivered) != expected_new:
            raise RuntimeError(f"naive node delivered {len(delivered)}, not {expected_new}")
        return total


def naive_case(key: bytes, datagrams: list[bytes], burst: int, fresh: bool) -> float:
    return trio.run(_naive_case, key, datagrams, burst, fresh)


# --------------------------------------------------------------------------- stdlib floor


def floor_case(key: bytes, datagrams: list[bytes], burst: int, fresh: bool) -> float:
    blaster, *sinks = (_sink() for _ in range(4))
    with blaster, sinks[0], sinks[1], sinks[2], socket.socket(type=socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _NODE_RCVBUF)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        dst = sock.getsockname()
        back = blaster.getsockname()
        peers = [s.getsockname() for s in sinks]
        total = 0.0
        for chunk in _chunks(datagrams[1:], burst):
            for dg in chunk:
                blaster.sendto(dg, dst)
            t0 = time.process_time()
            for _ in chunk:
                while True:
                    try:
                        data, _ = sock.recvfrom(65535)
                        break
                    except BlockingIOError:
                        continue
                if fresh:
                    sock.sendto(data[:32], back)
                    for peer in peers:
                        sock.sendto(data, peer)
            total += time.process_time() - t0
        return total


#: Builds a case's input: (key, n, size, fresh) -> n + 1 datagrams.
Builder = Callable[..., list[bytes]]

CASES: dict[str, tuple[Case, Builder]] = {
    "gossip runtime (open_gossiper + UDPTransport)": (runtime_case, make_datagrams),
    "gossip engine only (no sockets)": (engine_case, make_datagrams),
    "naive (await recvfrom/sendto, AES.new per packet)": (naive_case, make_naive_datagrams),
    "stdlib floor": (floor_case, make_datagrams),
}


def measure(
    runs: int, n: int, burst: int, size: int, cases: Sequence[str] | None = None
) -> dict[str, tuple[float, float]]:
    """Median CPU microseconds per message, (fresh, duplicate), of each case."""
    names = list(cases or CASES)
    key = generate_key()
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for run in range(runs + 1):  # run 0 warms up (imports, caches, CPU frequency)
        count = max(1, n // 8) if run == 0 else n
        for name in names:
            case, build = CASES[name]
            fresh = case(key, build(key, count, size, fresh=True), burst, True) / count
            dup = case(key, build(key, count, size, fresh=False), burst, False) / count
            if run:
                samples[name].append((fresh, dup))
    return {
        name: (
            statistics.median(f for f, _ in s) * 1e6,
            statistics.median(d for _, d in s) * 1e6,
        )
        for name, s in samples.items()
    }


def main(argv: Sequence[str] | None = None) -> dict[str, tuple[float, float]]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--n", type=int, default=8192, help="messages per case and repeat")
    parser.add_argument("--burst", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args(argv)
    result = measure(args.runs, args.n, args.burst, args.size)
    backend = Keyring(generate_key()).backend
    print(
        f"# {platform.node()} Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"trio {trio.__version__}, backend {backend}; {args.size}-byte payload, bursts of "
        f"{args.burst}; median of {args.runs} x {args.n} messages; CPU time; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    print()
    print("| case | fresh us | dup us | performance.md fresh / dup |")
    print("|---|---|---|---|")
    for name, (fresh, dup) in result.items():
        ref = REFERENCE.get(name)
        ref_text = f"{ref[0]:.0f} / {ref[1]:.0f}" if ref else "-"
        print(f"| {name} | {fresh:.1f} | {dup:.1f} | {ref_text} |")
    fresh, dup = result["gossip runtime (open_gossiper + UDPTransport)"]
    naive = result.get("naive (await recvfrom/sendto, AES.new per packet)")
    print()
    print(
        f"Targets: fresh {fresh:.1f} us (<= {TARGET_FRESH_US:.0f}: "
        f"{'met' if fresh <= TARGET_FRESH_US else 'MISSED'}), duplicate {dup:.1f} us "
        f"(<= {TARGET_DUP_US:.0f}: {'met' if dup <= TARGET_DUP_US else 'MISSED'})"
        + (
            f"; naive / runtime: {naive[0] / fresh:.1f}x fresh, {naive[1] / dup:.1f}x dup"
            if naive
            else ""
        )
    )
    for name, (ref_fresh, ref_dup) in REFERENCE.items():
        if name in result:
            got_fresh, got_dup = result[name]
            print(
                f"Machine state: {name} measured {got_fresh / ref_fresh:.2f}x (fresh) and "
                f"{got_dup / ref_dup:.2f}x (dup) its performance.md figure."
            )
    return result


if __name__ == "__main__":
    main()
