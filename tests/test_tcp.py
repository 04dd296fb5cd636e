"""The TCP transport: framing, limits, timeouts and hostile streams.

The conformance suite (tests/test_transport_conformance.py) covers what every transport does;
this file covers what only streams have. Tests with timeouts run on trio's MockClock with
autojump: every peer here is a socket in this process whose bytes are in the kernel queue when
the sending call returns, so the clock only jumps when nothing can happen but a timer. Tests
without timeouts use the real clock under ``trio.fail_after``. A fixture checks that no test
leaves a socket (file descriptor) or thread behind.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import socket
import struct
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from gossip.errors import LocalProtocolError
from gossip.transport.tcp import (
    CLOSE_REASONS,
    FRAME_COST,
    HELLO_SIZE,
    MAGIC,
    SEND_DROP_REASONS,
    FrameReader,
    TCPTransport,
    encode_frame,
    encode_hello,
    open_tcp_transport,
)

TIMEOUT = 10  # seconds of real time for real-clock tests; virtual for MockClock ones
HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param(
        "::1",
        id="ipv6",
        marks=pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this host"),
    ),
]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    # New ones only: earlier tests' leftovers (trio's idle worker threads) may go meanwhile.
    fds, threads = _open_fds(), set(threading.enumerate())
    yield
    assert not _open_fds() - fds, "a socket was left open"
    assert not set(threading.enumerate()) - threads, "a thread was left running"


async def _until(predicate: object, step: float = 0.001) -> None:
    """Poll ``predicate()`` until it holds (callers bound the wait with fail_after)."""
    while not predicate():  # type: ignore[operator]
        await trio.sleep(step)


async def _raw(addr: tuple[str, int]) -> trio.SocketStream:
    """A hand-driven client stream (a peer that does not follow the protocol)."""
    return await trio.open_tcp_stream(*addr)


async def _send_and_end(stream: trio.SocketStream, data: bytes, chunk: int = 1 << 20) -> None:
    """Write ``data`` and end the stream, unless the transport closed it first."""
    try:
        for pos in range(0, len(data), chunk):
            await stream.send_all(data[pos : pos + chunk])
        await stream.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the transport closed a bad stream before we were done


async def _wait_closed_by_peer(stream: trio.SocketStream) -> None:
    """Until the transport closed ``stream`` (end of stream or reset)."""
    try:
        while await stream.receive_some(1024):
            pass
    except trio.BrokenResourceError:
        pass  # closed with our bytes unread: a reset


def _closed(t: TCPTransport, reason: str) -> int:
    return t.statistics().closed[reason]


# -- frames ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", HOSTS)
async def test_frames_up_to_1_mib_round_trip_in_order(host: str) -> None:
    sizes = [0, 1, 4096, 65_536, 1 << 20, (1 << 20) - 1, 1 << 20, 17]
    payloads = [random.Random(i).randbytes(n) for i, n in enumerate(sizes)]
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport(host) as a, open_tcp_transport(host) as b:
            for payload in payloads:
                await a.send(payload, b.local_address)
            got = [await b.receive() for _ in payloads]
            assert [d for d, _ in got] == payloads
            assert {src for _, src in got} == {a.local_address}
            stats = b.statistics()
            assert stats.datagrams_received == len(sizes)
            assert stats.bytes_received == sum(sizes)
            assert a.statistics().send_errors == 0


async def test_send_above_max_frame_is_refused_without_allocation() -> None:
    max_frame = 1 << 20
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as a, open_tcp_transport("127.0.0.1") as b:
            await a.send(b"warm-up", b.local_address)  # the connection exists already
            assert await b.receive() == (b"warm-up", a.local_address)
            payload = bytes(max_frame + 1)
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                await a.send(payload, b.local_address)
                await a.send_many(payload, [b.local_address] * 3)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak - before < 64 << 10  # no copy of the 1 MiB payload, nor a frame of it
            stats = a.statistics()
            assert stats.send_drops["oversized"] == stats.send_errors == 4
            await a.send(b"after", b.local_address)
            assert await b.receive() == (b"after", a.local_address)  # nothing else came


@pytest.mark.parametrize("length", [(1 << 20) + 1, 0xFFFFFFFF])
async def test_length_above_max_frame_closes_the_stream_without_allocation(length: int) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as t:
            raw = await _raw(t.local_address)
            await raw.send_all(encode_hello(4242) + encode_frame(b"fine"))
            assert await t.receive() == (b"fine", ("127.0.0.1", 4242))
            tracemalloc.start()
            try:
                before, _ = tracemalloc.get_traced_memory()
                await raw.send_all(struct.pack("!I", length) + b"x" * 100)
                await _wait_closed_by_peer(raw)
                await _until(lambda: _closed(t, "oversized"))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            await raw.aclose()
            assert peak - before < 256 << 10
            assert _closed(t, "oversized") == 1
            assert sum(t.statistics().closed.values()) == 1
            assert t.statistics().datagrams_received == 1


@pytest.mark.parametrize(
    ("stream", "reason"),
    [
        pytest.param(b"", "truncated", id="nothing"),
        pytest.param(encode_hello(4242)[:5], "truncated", id="part-of-the-hello"),
        pytest.param(encode_hello(4242) + b"\x00\x00", "truncated", id="part-of-a-length"),
        pytest.param(
            encode_hello(4242) + encode_frame(b"ok") + struct.pack("!I", 100) + bytes(50),
            "truncated",
            id="part-of-a-payload",
        ),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", "bad_hello", id="garbage"),
        pytest.param(b"TGSP\x02\x00\x10\x92", "bad_hello", id="version-2"),
        pytest.param(b"TGSP\x01\x01\x10\x92", "bad_hello", id="flags"),
        pytest.param(b"TGSP\x01\x00\x00\x00", "bad_hello", id="port-0"),
        pytest.param(encode_hello(4242) + encode_frame(b"ok"), "peer_closed", id="clean-end"),
    ],
)
async def test_a_bad_stream_is_counted_by_reason_and_closed(stream: bytes, reason: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as t:
            raw = await _raw(t.local_address)
            await _send_and_end(raw, stream)
            await _wait_closed_by_peer(raw)
            await raw.aclose()
            await _until(lambda: _closed(t, reason))
            stats = t.statistics()
            assert stats.closed == {r: int(r == reason) for r in CLOSE_REASONS}
            assert stats.inbound_open == 0
            expected = [b"ok"] if b"ok" in stream else []
            got = []
            while True:
                try:
                    got.append(t.receive_nowait()[0])
                except trio.WouldBlock:
                    break
            assert got == expected
            # The transport is still fine.
            async with open_tcp_transport("127.0.0.1") as peer:
                await peer.send(b"still here", t.local_address)
                assert await t.receive() == (b"still here", peer.local_address)


async def test_reply_address_is_the_announced_listening_port() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as t:
            raw = await _raw(t.local_address)
            ephemeral = raw.socket.getsockname()[1]
            await raw.send_all(encode_hello(4242) + encode_frame(b"hi"))
            assert await t.receive() == (b"hi", ("127.0.0.1", 4242))
            assert ephemeral != 4242
            await raw.aclose()


# -- timeouts (MockClock) -------------------------------------------------------------------


async def test_silent_slowloris_is_closed_after_the_header_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with open_tcp_transport("127.0.0.1", header_timeout=5) as t:
            start = trio.current_time()
            raw = await _raw(t.local_address)
            await _wait_closed_by_peer(raw)
            assert 5 <= trio.current_time() - start < 5.1
            await raw.aclose()
            await _until(lambda: _closed(t, "hello_timeout"))
            assert t.statistics().inbound_open == 0


@pytest.mark.parametrize(
    ("prefix", "trickle", "reason", "after"),
    [
        pytest.param(b"", encode_hello(4242), "hello_timeout", 5, id="hello"),
        pytest.param(
            encode_hello(4242) + encode_frame(b"ok"),
            encode_frame(bytes(20)),
            "frame_timeout",
            10,
            id="frame",
        ),
    ],
)
async def test_a_byte_a_second_slowloris_is_closed_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
    prefix: bytes,
    trickle: bytes,
    reason: str,
    after: float,
) -> None:
    with trio.fail_after(60):
        async with open_tcp_transport("127.0.0.1", header_timeout=5, frame_timeout=10) as t:
            raw = await _raw(t.local_address)
            await raw.send_all(prefix)
            start = trio.current_time()
            sent = 0

            async def trickle_bytes() -> None:
                nonlocal sent
                try:
                    for byte in trickle:
                        await raw.send_all(bytes([byte]))
                        sent += 1
                        await trio.sleep(1)
                except trio.BrokenResourceError:
                    pass  # closed under us: what we wait for

            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle_bytes)
                await _wait_closed_by_peer(raw)
                closed_at = trio.current_time() - start
                nursery.cancel_scope.cancel()
            await raw.aclose()
            assert after <= closed_at < after + 0.1
            assert sent < len(trickle)
            await _until(lambda: _closed(t, reason))
            assert sum(t.statistics().closed.values()) == 1


async def test_idle_connections_close_and_the_next_send_dials_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with (
            open_tcp_transport("127.0.0.1", idle_timeout=60) as a,
            open_tcp_transport("127.0.0.1", idle_timeout=60) as b,
        ):
            await a.send(b"one", b.local_address)
            assert await b.receive() == (b"one", a.local_address)
            await trio.sleep(59)
            assert a.statistics().outbound_open == 1
            await trio.sleep(2)
            stats = a.statistics()
            assert (stats.outbound_open, stats.closed["idle"]) == (0, 1)
            await _until(lambda: b.statistics().inbound_open == 0)
            assert _closed(b, "peer_closed") == 1  # the dialer closed first
            await a.send(b"two", b.local_address)
            assert await b.receive() == (b"two", a.local_address)
            assert a.statistics().dialed == 2
            assert b.statistics().accepted == 2


async def test_an_inbound_stream_without_frames_closes_after_twice_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(600):
        async with open_tcp_transport("127.0.0.1", idle_timeout=60) as t:
            raw = await _raw(t.local_address)
            start = trio.current_time()
            await raw.send_all(encode_hello(4242) + encode_frame(b"x"))
            await _wait_closed_by_peer(raw)
            assert 120 <= trio.current_time() - start < 120.1
            await raw.aclose()
            await _until(lambda: _closed(t, "idle"))


async def test_dial_that_gets_no_answer_times_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A listener whose accept queue is full: Linux drops further SYNs, so a dial hangs.
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler.connect(full.getsockname())
        with trio.fail_after(60):
            async with open_tcp_transport("127.0.0.1", connect_timeout=5) as t:
                start = trio.current_time()
                for _ in range(3):
                    await t.send(b"into the void", full.getsockname())
                assert trio.current_time() - start < 0.01  # queued, not waited for
                await _until(lambda: _closed(t, "connect_timeout"))
                assert 5 <= trio.current_time() - start < 5.1
                stats = t.statistics()
                assert stats.send_drops["connect_timeout"] == stats.send_errors == 3
                assert stats.outbound_open == 0


async def test_a_peer_that_reads_nothing_costs_at_most_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The peer's kernel takes bytes until its buffers are full, then nothing: a stuck peer.
    frame = bytes(60_000)
    with socket.socket() as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(8)
        with trio.fail_after(600):
            async with open_tcp_transport(
                "127.0.0.1", max_frame=64_000, send_buffer=128_000, send_timeout=1
            ) as t:
                given = 0
                while t.statistics().closed["send_timeout"] < 2:
                    start = trio.current_time()
                    await t.send(frame, stuck.getsockname())
                    given += 1
                    assert trio.current_time() - start <= 1.0001
                    assert given < 1000
                await trio.sleep(10)  # the last connection gives up too
                stats = t.statistics()
                assert stats.datagrams_sent + stats.send_errors == given
                assert stats.send_drops["send_timeout"] > 0
                # Once the peer's backlog (never accepted) is full, dials hang too and what
                # is given meanwhile is dropped at once.
                assert stats.send_errors == sum(
                    stats.send_drops[r] for r in ("send_timeout", "queue_full", "connect_timeout")
                )
                assert stats.outbound_open == 0


# -- connections ----------------------------------------------------------------------------


async def test_inbound_connections_above_the_limit_are_refused_and_counted() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1", max_inbound=2) as t:
            first, second = await _raw(t.local_address), await _raw(t.local_address)
            await _until(lambda: t.statistics().inbound_open == 2)
            third = await _raw(t.local_address)
            await _wait_closed_by_peer(third)
            await third.aclose()
            stats = t.statistics()
            assert (stats.accepted, stats.refused, stats.inbound_open) == (2, 1, 2)
            await first.send_all(encode_hello(4242) + encode_frame(b"kept"))
            assert await t.receive() == (b"kept", ("127.0.0.1", 4242))
            await first.aclose()
            await _until(lambda: t.statistics().inbound_open == 1)
            fourth = await _raw(t.local_address)
            await fourth.send_all(encode_hello(4343) + encode_frame(b"room again"))
            assert await t.receive() == (b"room again", ("127.0.0.1", 4343))
            assert t.statistics().accepted == 3
            await second.aclose()
            await fourth.aclose()


async def test_a_restarted_peer_is_dialed_again() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as a:
            async with open_tcp_transport("127.0.0.1") as b:
                port = b.local_address[1]
                await a.send(b"before", b.local_address)
                assert await b.receive() == (b"before", a.local_address)
            # b is gone: a notices its connection ended, without sending anything.
            await _until(lambda: a.statistics().outbound_open == 0)
            assert _closed(a, "peer_closed") == 1
            async with open_tcp_transport("127.0.0.1", port) as b2:
                await a.send(b"after", b2.local_address)
                assert await b2.receive() == (b"after", a.local_address)
                assert a.statistics().dialed == 2
                assert a.statistics().send_errors == 0


async def test_send_to_a_closed_port_is_counted_not_raised_and_does_not_wait() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as a, open_tcp_transport("127.0.0.1") as b:
            start = trio.current_time()
            for _ in range(5):
                await a.send(b"nobody", dead)
            await a.send_many(b"mixed", [dead, b.local_address])
            assert trio.current_time() - start < 0.5
            assert await b.receive() == (b"mixed", a.local_address)
            await _until(lambda: a.statistics().send_errors == 6)
            stats = a.statistics()
            assert stats.send_drops["connect_failed"] == 6
            assert stats.closed["connect_failed"] == 1  # one dial for the six frames
            await a.send(b"x", ("not an address", 1))
            await a.send(b"x", ("::1", 1))  # another family
            await a.send(b"x", ("127.0.0.1", 0))
            assert a.statistics().send_drops["bad_address"] == 3


async def test_closing_before_a_dial_started_leaves_no_socket() -> None:
    # The first send only schedules the dial; closing before it runs must not let it open a
    # socket afterwards (the fixture counts file descriptors).
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as a, open_tcp_transport("127.0.0.1") as b:
            await a.send(b"x", b.local_address)
            await a.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert a.statistics().outbound_open == 0


async def test_a_listener_that_writes_back_is_dropped() -> None:
    with trio.socket.socket() as server:
        await server.bind(("127.0.0.1", 0))
        server.listen(1)
        with trio.fail_after(TIMEOUT):
            async with open_tcp_transport("127.0.0.1") as t:
                await t.send(b"hello", server.getsockname())
                conn, _ = await server.accept()
                with conn:
                    await conn.send(b"unexpected")
                    await _until(lambda: _closed(t, "unexpected_data"))
                assert t.statistics().outbound_open == 0


async def test_frames_beyond_the_receive_buffer_are_dropped_and_the_stream_stays_in_step() -> None:
    max_frame = 1000
    with trio.fail_after(TIMEOUT):
        async with (
            open_tcp_transport("127.0.0.1", max_frame=max_frame, receive_buffer=4000) as b,
            open_tcp_transport("127.0.0.1") as a,
        ):
            for n in range(20):
                await a.send(bytes([n]) * max_frame, b.local_address)
            await _until(lambda: b.statistics().receive_drops > 0)
            await trio.testing.wait_all_tasks_blocked()
            kept = []
            while True:
                try:
                    kept.append(b.receive_nowait()[0])
                except trio.WouldBlock:
                    break
            assert 0 < len(kept) < 20
            assert len(kept) + b.statistics().receive_drops == 20
            assert all(k == bytes([k[0]]) * max_frame for k in kept)
            assert len(kept) * (max_frame + FRAME_COST) <= 4000
            await a.send(b"in step", b.local_address)
            assert await b.receive() == (b"in step", a.local_address)
            assert sum(b.statistics().closed.values()) == 0


# -- the trio contract ----------------------------------------------------------------------


async def test_a_failed_listener_breaks_the_transport() -> None:
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as t:
            t.listener.shutdown(socket.SHUT_RDWR)  # accept() now fails with EINVAL
            with pytest.raises(trio.BrokenResourceError) as caught:
                await t.receive()
            assert isinstance(caught.value.__cause__, OSError)
            with pytest.raises(trio.BrokenResourceError):
                await t.send(b"x", ("127.0.0.1", 9))
            with pytest.raises(trio.BrokenResourceError):
                t.receive_nowait()
            assert "broken" in repr(t)
        with pytest.raises(trio.ClosedResourceError):
            await t.receive()  # closed wins over broken


async def test_the_body_exception_comes_out_as_itself() -> None:
    with pytest.raises(KeyError):
        async with open_tcp_transport("127.0.0.1"):
            raise KeyError("mine")


async def test_aclose_in_the_body_does_not_cancel_the_body() -> None:
    reached = False
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1") as t:
            await t.aclose()
            await trio.sleep(0.001)
            with pytest.raises(trio.ClosedResourceError):
                await t.send(b"x", ("127.0.0.1", 9))
            reached = True
    assert reached


async def test_open_tcp_transport_validates_arguments() -> None:
    bad: list[dict[str, object]] = [
        {"port": 70000},
        {"port": -1},
        {"max_frame": 0},
        {"max_frame": 1 << 33, "send_buffer": 1 << 34, "receive_buffer": 1 << 34},
        {"max_inbound": 0},
        {"max_inbound": 1.5},
        {"connect_timeout": 0},
        {"connect_timeout": math.nan},
        {"send_timeout": -1},
        {"idle_timeout": "60"},
        {"header_timeout": True},
        {"frame_timeout": -2},
        {"send_buffer": 100, "max_frame": 1000},
        {"receive_buffer": 1000, "max_frame": 1000},
    ]
    for kwargs in bad:
        with pytest.raises(LocalProtocolError):
            async with open_tcp_transport("127.0.0.1", **kwargs):  # type: ignore[arg-type]
                pass
    async with open_tcp_transport("127.0.0.1", send_timeout=0, idle_timeout=math.inf) as t:
        with pytest.raises(OSError):  # the port is taken
            async with open_tcp_transport("127.0.0.1", t.local_address[1]):
                pass


# -- hostile bytes (hypothesis) -------------------------------------------------------------


def _reference(stream: bytes, max_frame: int) -> tuple[list[bytes], str]:
    """What a stream means, parsed the obvious way: its frames and how it ends."""
    if len(stream) < HELLO_SIZE:
        return [], "truncated"
    magic, version, flags, port = struct.unpack("!4sBBH", stream[:HELLO_SIZE])
    if (magic, version, flags) != (MAGIC, 1, 0) or port == 0:
        return [], "bad_hello"
    frames: list[bytes] = []
    pos = HELLO_SIZE
    while pos < len(stream):
        if len(stream) - pos < 4:
            return frames, "truncated"
        (length,) = struct.unpack_from("!I", stream, pos)
        if length > max_frame:
            return frames, "oversized"
        if len(stream) - pos - 4 < length:
            return frames, "truncated"
        frames.append(stream[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return frames, "peer_closed"


_MAX_FRAME = 64

# Streams worth trying: arbitrary bytes, and framings of arbitrary payloads with a good or bad
# hello, arbitrary lengths and arbitrary cuts.
_frames = st.lists(st.binary(max_size=_MAX_FRAME + 8), max_size=6)
_streams = st.one_of(
    st.binary(max_size=300),
    st.builds(
        lambda hello, frames, tail, cut: (hello + b"".join(map(encode_frame, frames)) + tail)[
            : len(hello) + sum(len(f) + 4 for f in frames) + len(tail) - cut
        ],
        st.one_of(
            st.builds(encode_hello, st.integers(1, 65535)),
            st.binary(min_size=HELLO_SIZE, max_size=HELLO_SIZE),
        ),
        _frames,
        st.binary(max_size=8),
        st.integers(0, 6),
    ),
)


def _ends(stream: bytes) -> str:
    return "peer_closed" if _reference(stream, _MAX_FRAME)[1] == "peer_closed" else "bad"


@given(stream=_streams, cuts=st.lists(st.integers(0, 400), max_size=8), room=st.integers(0, 500))
def test_frame_reader_agrees_with_the_reference_whatever_the_cuts(
    stream: bytes, cuts: list[int], room: int
) -> None:
    expected, end = _reference(stream, _MAX_FRAME)
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    reader = FrameReader(_MAX_FRAME)
    frames: list[bytes] = []
    dropped = held = 0
    for lo, hi in itertools.pairwise(bounds):
        got, lost, used = reader.feed(memoryview(stream)[lo:hi], room - held)
        held += used
        cost = sum(len(f) + FRAME_COST for f in got)
        # What it reports holding is what it holds, and never more than it was allowed.
        assert held == reader.buffered + cost
        assert held <= room
        held -= cost  # the application takes the frames at once
        frames += got
        dropped += lost
        if reader.error is not None:
            break
    if reader.error is not None:
        assert reader.error == end
    else:
        assert end in ("peer_closed", "truncated")
        assert (end == "peer_closed") == reader.at_boundary
    # With room for everything, the reader sees exactly the reference frames; with less,
    # it drops some, never alters one, and never holds more than it was allowed.
    assert len(frames) + dropped <= len(expected)
    if room >= sum(len(e) + FRAME_COST for e in expected) + _MAX_FRAME + FRAME_COST:
        assert frames == expected[: len(frames)]
        assert dropped == 0
        assert len(frames) == len(expected)
    else:
        remaining = iter(expected)
        assert all(any(f == e for e in remaining) for f in frames)  # a subsequence


@given(stream=_streams, chunk=st.integers(1, 50))
async def test_arbitrary_byte_streams_are_counted_never_raised(stream: bytes, chunk: int) -> None:
    expected, reason = _reference(stream, _MAX_FRAME)
    with trio.fail_after(TIMEOUT):
        async with open_tcp_transport("127.0.0.1", max_frame=_MAX_FRAME) as t:
            raw = await _raw(t.local_address)
            await _send_and_end(raw, stream, chunk)
            await _wait_closed_by_peer(raw)
            await raw.aclose()
            await _until(lambda: sum(t.statistics().closed.values()) == 1)
            stats = t.statistics()
            assert stats.closed[reason] == 1
            got = []
            while True:
                try:
                    got.append(t.receive_nowait())
                except trio.WouldBlock:
                    break
            assert [d for d, _ in got] == expected
            port = struct.unpack("!H", stream[6:8])[0] if expected else None
            assert all(src == ("127.0.0.1", port) for _, src in got)
            assert stats.send_drops == dict.fromkeys(SEND_DROP_REASONS, 0)
