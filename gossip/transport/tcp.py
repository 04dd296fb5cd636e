"""TCP transport: the same sealed packets as on UDP, framed on streams, up to ``max_frame``.

Why a stream transport: a datagram caps a packet at ~64 KiB and loses it silently; full-state
sync and large messages need a path that carries up to :data:`DEFAULT_MAX_FRAME` (1 MiB) and
says when it could not. The transport still never parses what it carries: a frame's payload is
one opaque sealed packet, authenticated (or refused) by the layer above.

Usage::

    async with open_tcp_transport("127.0.0.1", 7946) as transport:
        await transport.send(b"hello", ("127.0.0.1", 7947))
        data, source = await transport.receive()

Wire format. A dialer opens a stream with a hello, then writes frames until it closes it::

    hello, 8 bytes, once per stream (dialer -> listener)
      0     1     2     3     4       5       6     7
    +-----+-----+-----+-----+-------+-------+-----------+
    | 'T' | 'G' | 'S' | 'P' | ver 1 | 0     | port      |  port: the dialer's listening
    +-----+-----+-----+-----+-------+-------+-----------+  port, big-endian, not 0

    frame, repeated
      0     1     2     3     4 ...
    +-----+-----+-----+-----+-------------------------------+
    | length N, big-endian  | N bytes: one sealed packet    |  0 <= N <= max_frame, checked
    +-----+-----+-----+-----+-------------------------------+  before anything is allocated

Streams are one-way. The listener never writes to a stream it accepted; the dialer reads its
own stream only to notice that the peer closed it. Replies travel on the replier's own
outbound stream to the address ``receive`` returned: the peer's IP as the kernel reports the
connection, and the port the hello announced, i.e. the peer's listening address, not its
ephemeral port. Only the port is taken from the stream: the IP comes from the TCP handshake,
so an unauthenticated stream can at most claim another port on its own host, never another
host. What the hello says is not authenticated and need not be: every packet is sealed, and
the layer above drops what does not open with the cluster key, wherever it came from.

Why an inbound stream is not used to reply: its announced port is unauthenticated, so a
process on the peer's host could announce another node's port and capture (or black-hole)
that node's replies; the seal keeps them secret, not delivered. Dialing the listening address
reaches whoever really listens there. Read-only inbound streams also need no tie-break
between two peers dialing each other at once. The cost: an active pair of nodes holds two
connections, one each way.

Behaviour. Defaults in brackets; every limit is an argument of :func:`open_tcp_transport`;
counters are fields of :class:`TCPTransportStatistics` (``closed`` and ``send_drops`` by reason).

==================================  ================================  ============================
when                                then                              counted in
==================================  ================================  ============================
**sending**
a frame above ``max_frame`` [1 MiB] dropped, nothing copied           ``send_drops["oversized"]``
an address that is not a numeric    dropped                           ``send_drops["bad_address"]``
host of the listener's family
the first frame to an address       dialed in the background; frames  ``dialed`` once connected
                                    queue meanwhile
the dial fails, or takes            the connection and its queue are  ``closed``, ``send_drops``:
``connect_timeout`` [5 s]           dropped; the next frame dials     ``["connect_failed"]``,
                                    again                             ``["connect_timeout"]``
a peer's queue is full              ``send`` waits ``send_timeout``   ``send_drops`` and
(``send_buffer`` [4 MiB])           [1 s] for room, then drops the    ``closed``:
                                    frame and the connection          ``["send_timeout"]``
... while still dialing             the frame is dropped at once      ``send_drops["queue_full"]``
the kernel takes no byte for        the connection and its queue are  ``closed``, ``send_drops``:
``send_timeout``                    dropped                           ``["send_timeout"]``
nothing sent for ``idle_timeout``   the connection is closed          ``closed["idle"]``
[60 s]
the peer closes or resets it        dropped; the next frame dials     ``closed["peer_closed"]``,
(a restart)                         again                             ``closed["reset"]``
the peer writes to it               dropped (listeners never write)   ``closed["unexpected_data"]``
**receiving**
``max_inbound`` [256] inbound       a new one is accepted and closed  ``refused``
connections open                    at once
no complete hello                   closed (slowloris: silent, or a   ``closed["hello_timeout"]``
``header_timeout`` [5 s] after      byte at a time)
accept
a hello with a wrong magic,         closed                            ``closed["bad_hello"]``
version or flags, or port 0
a length above ``max_frame``        closed, nothing allocated         ``closed["oversized"]``
a frame incomplete                  closed (slowloris)                ``closed["frame_timeout"]``
``frame_timeout`` [10 s] after its
first byte
the stream ends inside the hello    closed                            ``closed["truncated"]``
or a frame
no frame for 2 x ``idle_timeout``   closed (twice the dialer's        ``closed["idle"]``
                                    timeout: the dialer, which knows
                                    if it has more, closes first)
the stream is reset                 closed                            ``closed["reset"]``
``receive_buffer`` [8 MiB] full:    the frame is read and discarded;  ``receive_drops``
frames not yet taken by             the stream stays in step
``receive`` plus partial frames
``accept`` fails for lack of        accepting pauses 0.1 s            ``accept_errors``
descriptors or memory
==================================  ================================  ============================

Memory is bounded whatever peers send: ``receive_buffer`` for all frames received but not yet
taken plus partial frames (charged by the bytes that really arrived, so announcing a large
length costs an attacker the bytes, not us), ``send_buffer`` per peer, and a fixed 64 KiB
read buffer shared by every stream. Frames still queued when the transport closes are
discarded. Outbound connections exist only to addresses the application sends to.
"""

from __future__ import annotations

import errno
import math
import socket
import struct
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from gossip.errors import LocalProtocolError
from gossip.transport.base import Address, AsyncClosing, TransportStatistics
from gossip.transport.udp import CHECKPOINT_EVERY
from gossip.wire import MAX_STREAM_PACKET

__all__ = [
    "CLOSE_REASONS",
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_FRAME_TIMEOUT",
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_INBOUND",
    "DEFAULT_RECEIVE_BUFFER",
    "DEFAULT_SEND_BUFFER",
    "DEFAULT_SEND_TIMEOUT",
    "FRAME_COST",
    "HELLO_SIZE",
    "MAGIC",
    "SEND_DROP_REASONS",
    "VERSION",
    "FrameReader",
    "TCPTransport",
    "TCPTransportStatistics",
    "encode_frame",
    "encode_hello",
    "open_tcp_transport",
]

#: Largest frame payload by default: room for full-state sync and large messages.
DEFAULT_MAX_FRAME = MAX_STREAM_PACKET  # the codec's largest stream packet: 1 MiB
#: Inbound connections open at once; more are accepted and closed at once.
DEFAULT_MAX_INBOUND = 256
#: Seconds a dial may take.
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds ``send`` waits for room in a full per-peer queue, and a writer waits for the
#: kernel to take any byte, before the connection counts as stuck.
DEFAULT_SEND_TIMEOUT = 1.0
#: Seconds without a frame sent before an outbound connection closes (inbound: twice this).
DEFAULT_IDLE_TIMEOUT = 60.0
#: Seconds from accept to a complete hello.
DEFAULT_HEADER_TIMEOUT = 5.0
#: Seconds from a frame's first byte to its last (1 MiB in 10 s: at least ~100 KiB/s).
DEFAULT_FRAME_TIMEOUT = 10.0
#: Bytes queued per peer, at most.
DEFAULT_SEND_BUFFER = 4 << 20
#: Bytes held for all inbound streams: frames not yet taken by ``receive`` and partial frames.
DEFAULT_RECEIVE_BUFFER = 8 << 20

MAGIC = b"TGSP"
VERSION = 1
_HELLO = struct.Struct("!4sBBH")
_LENGTH = struct.Struct("!I")
HELLO_SIZE = _HELLO.size
_HEADER_SIZE = _LENGTH.size

#: Charged against ``receive_buffer`` per frame on top of its payload (the objects that hold
#: it), so that a flood of empty frames is bounded too.
FRAME_COST = 64

#: Keys of ``TCPTransportStatistics.closed``: why connections ended.
CLOSE_REASONS = (
    # inbound streams: the peer's fault
    "bad_hello",
    "oversized",
    "truncated",
    "hello_timeout",
    "frame_timeout",
    # either direction
    "idle",
    "peer_closed",
    "reset",
    # outbound connections
    "connect_failed",
    "connect_timeout",
    "send_timeout",
    "unexpected_data",
)
#: Keys of ``TCPTransportStatistics.send_drops``: why frames given to ``send`` were lost.
SEND_DROP_REASONS = (
    "oversized",
    "bad_address",
    "queue_full",
    "connect_failed",
    "connect_timeout",
    "send_timeout",
    "peer_closed",
    "reset",
    "unexpected_data",
)

# The read buffer shared by every stream: a stream copies what it keeps before it yields.
_READ_SIZE = 64 << 10
# Frames per sendmsg (IOV_MAX is 1024 buffers on Linux; two per frame).
_FRAMES_PER_WRITE = 64
# accept() errors that mean "not now" (out of descriptors or memory): pause, then go on.
_ACCEPT_PAUSE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# accept() errors about one connection that died in the backlog: skip it.
_ACCEPT_SKIP_ERRNOS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EWOULDBLOCK})


def encode_hello(port: int) -> bytes:
    """The 8-byte hello announcing listening ``port``."""
    return _HELLO.pack(MAGIC, VERSION, 0, port)


def encode_frame(payload: bytes) -> bytes:
    """One frame: the 4-byte length and ``payload`` (for tests and tools; the transport
    writes the two parts without joining them)."""
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """The inbound half of the framing without I/O: bytes in, frames out.

    ``feed`` takes whatever the stream delivered, in pieces of any size, and returns the
    frames it completed. It never raises: at a violation of the framing it stops, sets
    :attr:`error`, and still returns the frames completed before it. The length of a frame
    is checked against ``max_frame`` before anything is stored for it, and a partial frame is
    held as the chunks that really arrived, never as a buffer of the announced size.
    """

    __slots__ = (
        "_chunks",
        "_discard",
        "_got",
        "_head",
        "_length",
        "buffered",
        "error",
        "frames",
        "max_frame",
        "port",
    )

    def __init__(self, max_frame: int) -> None:
        self._length = -1  # payload length of the frame being read; -1 outside a payload
        self._head = bytearray()  # a partial hello or length
        self._got = 0  # payload bytes of the current frame read so far
        self._chunks: list[bytes] = []
        self._discard = False  # the current frame did not fit: skip its bytes
        self.max_frame = max_frame
        #: The port the hello announced; 0 until the hello is complete.
        self.port = 0
        #: Frames begun so far (a frame begins with the first byte of its length).
        self.frames = 0
        #: Bytes of ``receive_buffer`` this reader holds (a partial frame and its cost).
        self.buffered = 0
        #: Why the stream is bad (``"bad_hello"``, ``"oversized"``); ``None`` while it is not.
        self.error: str | None = None

    @property
    def in_frame(self) -> bool:
        """Between the first and the last byte of a frame."""
        return self.port != 0 and (self._length >= 0 or bool(self._head))

    @property
    def at_boundary(self) -> bool:
        """The stream may end here: the hello is complete and no frame is begun."""
        return self.port != 0 and not self.in_frame

    def feed(self, data: memoryview | bytes, room: int) -> tuple[list[bytes], int, int]:
        """Consume ``data``.

        Args:
            data: the next bytes of the stream.
            room: bytes this reader may newly hold (the free part of ``receive_buffer``).

        Returns:
            ``(frames, dropped, used)``: the frames completed, the frames skipped for lack of
            room, and the change of the bytes held (frames returned are charged their length
            plus :data:`FRAME_COST`; negative when a skipped frame freed what it held). After
            a violation (:attr:`error` set) it consumes nothing more.
        """
        start_room = room
        frames: list[bytes] = []
        dropped = 0
        pos = 0
        end = 0 if self.error else len(data)
        head = self._head
        while pos < end:
            if not self.port:
                take = min(HELLO_SIZE - len(head), end - pos)
                head += data[pos : pos + take]
                pos += take
                if len(head) < HELLO_SIZE:
                    break
                magic, version, flags, port = _HELLO.unpack(head)
                head.clear()
                if magic != MAGIC or version != VERSION or flags or not port:
                    self.error = "bad_hello"
                    break
                self.port = port
            elif self._length < 0:
                if not head:
                    self.frames += 1
                    if end - pos >= _HEADER_SIZE:
                        (length,) = _LENGTH.unpack_from(data, pos)
                        pos += _HEADER_SIZE
                    else:
                        head += data[pos:end]
                        break
                else:
                    take = min(_HEADER_SIZE - len(head), end - pos)
                    head += data[pos : pos + take]
                    pos += take
                    if len(head) < _HEADER_SIZE:
                        break
                    (length,) = _LENGTH.unpack(head)
                    head.clear()
                if length > self.max_frame:
                    self.error = "oversized"
                    break
                cost = length + FRAME_COST
                if end - pos >= length:  # the whole payload is here: one copy, no state
                    if cost <= room:
                        frames.append(bytes(data[pos : pos + length]))
                        room -= cost
                    else:
                        dropped += 1
                    pos += length
                    continue
                self._length = length
                self._got = 0
                # The frame's cost up front; its payload is charged as it arrives.
                self._discard = room < FRAME_COST
                if not self._discard:
                    room -= FRAME_COST
                    self.buffered = FRAME_COST
            else:
                take = min(self._length - self._got, end - pos)
                if not self._discard:
                    if take > room:
                        # Out of room: give back what this frame held and skip the rest of it.
                        self._discard = True
                        room += self.buffered
                        self.buffered = 0
                        self._chunks = []
                    else:
                        self._chunks.append(bytes(data[pos : pos + take]))
                        self.buffered += take
                        room -= take
                self._got += take
                pos += take
                if self._got == self._length:
                    if self._discard:
                        dropped += 1
                    else:
                        chunks = self._chunks
                        frames.append(chunks[0] if len(chunks) == 1 else b"".join(chunks))
                        self.buffered = 0  # now charged to the frame returned
                    self._chunks = []
                    self._length = -1
        return frames, dropped, start_room - room


@attrs.frozen
class TCPTransportStatistics(TransportStatistics):
    """:class:`TransportStatistics` of a TCP transport, plus its connections.

    ``datagrams_sent``/``datagrams_received`` count frames (sent: handed whole to the kernel;
    received: returned by ``receive``), ``bytes_*`` their payload bytes (without the 4-byte
    lengths and hellos). ``send_errors`` is the sum of ``send_drops``. ``receive_drops``
    counts frames read and discarded because ``receive_buffer`` was full.
    ``receive_buffer`` is the configured ``receive_buffer``.
    """

    #: Inbound connections open now.
    inbound_open: int = 0
    #: Outbound connections open now, dialing ones included.
    outbound_open: int = 0
    #: Inbound connections accepted (refused ones not included).
    accepted: int = 0
    #: Inbound connections closed at once because ``max_inbound`` were open.
    refused: int = 0
    #: Outbound connections established.
    dialed: int = 0
    #: ``accept`` failures for lack of descriptors or memory.
    accept_errors: int = 0
    #: Connections closed, by reason (every key of :data:`CLOSE_REASONS` is present).
    closed: dict[str, int] = attrs.field(factory=dict)
    #: Frames given to ``send`` and lost, by reason (every key of :data:`SEND_DROP_REASONS`).
    send_drops: dict[str, int] = attrs.field(factory=dict)


def _close_socket(sock: socket.socket) -> None:
    if sock.fileno() != -1:
        # Wakes a task parked in wait_readable/wait_writable with ClosedResourceError;
        # closing the fd under it would leave it waiting forever.
        trio.lowlevel.notify_closing(sock)
        sock.close()


class _Outbound:
    """One outbound connection and its queue."""

    __slots__ = (
        "addr",
        "closed",
        "head_offset",
        "last_used",
        "queue",
        "queued",
        "ready",
        "room",
        "sock",
        "sockaddr",
        "wait_scope",
    )

    def __init__(self, addr: Address, sockaddr: tuple[object, ...], now: float) -> None:
        self.addr = addr
        self.sockaddr = sockaddr  # what connect() takes (an IPv6 scope id resolved)
        self.sock: socket.socket | None = None
        self.ready = False  # connected and hello written
        self.closed = False
        self.queue: deque[bytes] = deque()
        self.queued = 0  # payload bytes in queue
        self.head_offset = 0  # bytes of the first queued frame (length included) written
        self.last_used = now
        # The writer's idle wait; cancelled to wake it when a frame is queued.
        self.wait_scope: trio.CancelScope | None = None
        self.room = trio.lowlevel.ParkingLot()  # senders waiting for queue room

    def wake(self) -> None:
        if self.wait_scope is not None:
            self.wait_scope.cancel()


class TCPTransport(AsyncClosing):
    """A :class:`~gossip.transport.base.Transport` over TCP; made by :func:`open_tcp_transport`.

    ``send`` and ``send_many`` never wait for the network in the common case: a frame to a
    connected peer with nothing queued is written at once, anything else is queued for the
    connection's writer task (bounded, see the module's table). ``receive`` returns frames
    the reader tasks have parsed. Like the UDP transport, each call yields to the scheduler
    once per :data:`~gossip.transport.udp.CHECKPOINT_EVERY` calls that did not wait.
    Destination addresses must be numeric hosts of the listening socket's family.
    """

    def __init__(
        self,
        listener: socket.socket,
        *,
        max_frame: int,
        max_inbound: int,
        connect_timeout: float,
        send_timeout: float,
        idle_timeout: float,
        header_timeout: float,
        frame_timeout: float,
        send_buffer: int,
        receive_buffer: int,
    ) -> None:
        """Internal: use :func:`open_tcp_transport`, which validates the arguments and runs
        the background tasks."""
        self._listener = listener
        self._family = listener.family
        addr = listener.getsockname()
        self._local_address: Address = (addr[0], addr[1])
        self._hello = encode_hello(addr[1])
        self.max_frame = max_frame
        self._max_inbound = max_inbound
        self._connect_timeout = connect_timeout
        self._send_timeout = send_timeout
        self._idle_timeout = idle_timeout
        self._header_timeout = header_timeout
        self._frame_timeout = frame_timeout
        self._send_buffer = send_buffer
        self._receive_buffer = receive_buffer
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._broken: BaseException | None = None
        self._scratch = memoryview(bytearray(_READ_SIZE))
        self._out: dict[Address, _Outbound] = {}
        self._inbound: set[socket.socket] = set()
        self._inbox: deque[tuple[bytes, Address]] = deque()
        self._held = 0  # bytes of receive_buffer in use
        self._arrivals = trio.lowlevel.ParkingLot()  # tasks in receive()
        self._recv_streak = 0
        self._send_streak = 0
        self._datagrams_sent = 0
        self._datagrams_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._receive_drops = 0
        self._accepted = 0
        self._refused = 0
        self._dialed = 0
        self._accept_errors = 0
        self._closed_by = dict.fromkeys(CLOSE_REASONS, 0)
        self._send_drops = dict.fromkeys(SEND_DROP_REASONS, 0)

    max_frame: int

    @property
    def local_address(self) -> Address:
        """The listening ``(numeric host, port)``; the real port when 0 was asked."""
        return self._local_address

    @property
    def listener(self) -> socket.socket:
        """The listening socket, for socket options (do not accept on it or close it)."""
        return self._listener

    # -- receiving -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError("the transport failed") from self._broken

    def _take(self) -> tuple[bytes, Address]:
        item = self._inbox.popleft()
        size = len(item[0])
        self._held -= size + FRAME_COST
        self._datagrams_received += 1
        self._bytes_received += size
        return item

    async def receive(self) -> tuple[bytes, Address]:
        """Wait for the next frame.

        Returns:
            ``(payload, (peer IP, port announced in its hello))``: the peer's listening
            address, where a reply should go.

        Raises:
            trio.ClosedResourceError: the transport is closed, before or during the wait.
            trio.BrokenResourceError: the transport failed (its listening socket broke).
        """
        if self._recv_streak >= CHECKPOINT_EVERY:
            # Before taking a frame, so a cancellation here loses nothing.
            self._recv_streak = 0
            await trio.lowlevel.checkpoint()
        while True:
            self._check_open()
            if self._inbox:
                self._recv_streak += 1
                return self._take()
            self._recv_streak = 0
            await self._arrivals.park()

    def receive_nowait(self) -> tuple[bytes, Address]:
        """The next frame if one is already parsed, else raise ``trio.WouldBlock``.

        Raises:
            trio.WouldBlock: nothing is queued.
            trio.ClosedResourceError: the transport is closed.
            trio.BrokenResourceError: the transport failed.
        """
        self._check_open()
        if self._inbox:
            return self._take()
        raise trio.WouldBlock

    # -- sending -------------------------------------------------------------------------

    async def send(self, data: bytes, addr: Address) -> None:
        """Send one frame to the transport listening at ``addr`` (numeric host).

        Network trouble is counted in ``send_drops`` (and ``send_errors``), never raised; the
        call waits at most ``send_timeout``, and only when the peer's queue is full.

        Raises:
            trio.ClosedResourceError: the transport is closed.
            trio.BrokenResourceError: the transport failed.
        """
        if self._send_streak >= CHECKPOINT_EVERY:
            self._send_streak = 0
            await trio.lowlevel.checkpoint()
        self._check_open()
        self._send_streak += 1
        if not self._send_nowait(data, addr):
            await self._send_when_room(data, addr)

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        """Send ``data`` to every address in ``addrs``: :meth:`send` for each.

        Raises:
            trio.ClosedResourceError: the transport is closed.
            trio.BrokenResourceError: the transport failed.
        """
        self._check_open()
        for addr in addrs:
            if self._send_streak >= CHECKPOINT_EVERY:
                self._send_streak = 0
                await trio.lowlevel.checkpoint()
                self._check_open()
            self._send_streak += 1
            if not self._send_nowait(data, addr):
                await self._send_when_room(data, addr)

    def _drop_frames(self, reason: str, count: int = 1) -> None:
        self._send_drops[reason] += count

    def _send_nowait(self, data: bytes, addr: Address) -> bool:
        """Write or queue one frame; False when the connected peer's queue has no room."""
        size = len(data)
        if size > self.max_frame:
            self._drop_frames("oversized")
            return True
        conn = self._out.get(addr)
        if conn is None:
            conn = self._open_outbound(addr)
            if conn is None:
                return True
        now = trio.current_time()
        if conn.ready and not conn.queue:
            assert conn.sock is not None
            try:
                written = conn.sock.sendmsg((_LENGTH.pack(size), data))
            except BlockingIOError:
                written = 0
            except OSError:
                # The connection died (the peer restarted); no byte of this frame went out,
                # so it goes on a new connection.
                self._drop_outbound(conn, "reset")
                return self._send_nowait(data, addr)
            conn.last_used = now
            if written == size + _HEADER_SIZE:
                self._datagrams_sent += 1
                self._bytes_sent += size
                return True
            conn.queue.append(data)
            conn.queued = size
            conn.head_offset = written
            conn.wake()
            return True
        if conn.queued + size <= self._send_buffer:
            conn.queue.append(data)
            conn.queued += size
            conn.last_used = now
            conn.wake()
            return True
        if not conn.ready:
            self._drop_frames("queue_full")  # still dialing: no writer to wait for yet
            return True
        return False

    async def _send_when_room(self, data: bytes, addr: Address) -> None:
        """The slow path: wait up to ``send_timeout`` for room in the peer's queue."""
        with trio.move_on_after(self._send_timeout):
            while True:
                conn = self._out.get(addr)
                if conn is None or conn.queued + len(data) <= self._send_buffer:
                    self._send_nowait(data, addr)
                    return
                await conn.room.park()
                self._check_open()
        # The peer took nothing for send_timeout while we had more to give: it is stuck.
        self._drop_frames("send_timeout")
        conn = self._out.get(addr)
        if conn is not None:
            self._drop_outbound(conn, "send_timeout")

    def _open_outbound(self, addr: Address) -> _Outbound | None:
        sockaddr = self._sockaddr(addr)
        if sockaddr is None:
            self._drop_frames("bad_address")
            return None
        conn = _Outbound(addr, sockaddr, trio.current_time())
        self._out[addr] = conn
        assert self._nursery is not None
        self._nursery.start_soon(self._run_outbound, conn)
        return conn

    def _sockaddr(self, addr: Address) -> tuple[object, ...] | None:
        """What connect() takes for ``addr``; None unless a numeric host of our family."""
        try:
            host, port = addr
            if isinstance(port, int) and 0 < port <= 65535:
                # Numeric only: a name would make the resolver block the event loop.
                info = socket.getaddrinfo(
                    host, port, self._family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST
                )
                return info[0][4]
        except (TypeError, ValueError, OSError):
            pass
        return None

    def _drop_outbound(self, conn: _Outbound, reason: str | None) -> None:
        """Close ``conn``; its queued frames are lost under ``reason`` (not counted when
        ``None``: the transport is closing)."""
        if conn.closed:
            return
        conn.closed = True
        if self._out.get(conn.addr) is conn:
            del self._out[conn.addr]
        if reason is not None and not self._closed:
            self._closed_by[reason] += 1
            if conn.queue:
                self._drop_frames(reason, len(conn.queue))
        conn.queue.clear()
        conn.queued = 0
        if conn.sock is not None:
            _close_socket(conn.sock)
        conn.wake()
        conn.room.unpark_all()

    async def _run_outbound(self, conn: _Outbound) -> None:
        reason: str | None = None
        try:
            if not conn.closed:  # the transport may have closed before this task started
                reason = await self._dial(conn)
            if reason is None and not conn.closed:
                reason = await self._pump(conn)
        except trio.ClosedResourceError:
            pass  # closed under us (transport closing, or a sender gave up): already counted
        except OSError:
            reason = "reset"
        except Exception as exc:  # a bug: fail loudly through receive/send
            self._fail(exc)
        finally:
            self._drop_outbound(conn, reason)
            if conn.sock is not None:
                _close_socket(conn.sock)  # made after the conn was dropped

    async def _dial(self, conn: _Outbound) -> str | None:
        sock = conn.sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Whole frames are written at once; Nagle would hold small ones for an ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            err = sock.connect_ex(conn.sockaddr)
        except OSError:
            return "connect_failed"
        if err in _IN_PROGRESS:
            with trio.move_on_after(self._connect_timeout) as timer:
                await trio.lowlevel.wait_writable(sock)
            if timer.cancelled_caught:
                return "connect_timeout"
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return "connect_failed"
        # A new socket's send buffer always has room for 8 bytes.
        if sock.send(self._hello) != HELLO_SIZE:
            return "reset"
        conn.ready = True
        self._dialed += 1
        return None

    async def _pump(self, conn: _Outbound) -> str | None:
        """Write what ``send`` queued; between writes, wait for the idle deadline or for
        the peer to close (it never writes to us)."""
        sock = conn.sock
        assert sock is not None
        while not conn.closed:
            if conn.queue:
                reason = await self._flush(conn, sock)
                if reason is not None:
                    return reason
                continue
            deadline = conn.last_used + self._idle_timeout
            if trio.current_time() >= deadline:
                return "idle"
            with trio.CancelScope(deadline=deadline) as scope:
                conn.wait_scope = scope
                try:
                    await trio.lowlevel.wait_readable(sock)
                finally:
                    conn.wait_scope = None
            if scope.cancelled_caught:
                continue  # woken by send, or the deadline: look again
            try:
                byte = sock.recv(1)
            except BlockingIOError:
                continue
            return "unexpected_data" if byte else "peer_closed"
        return None

    async def _flush(self, conn: _Outbound, sock: socket.socket) -> str | None:
        while conn.queue and not conn.closed:
            try:
                written = sock.sendmsg(self._pending(conn))
            except BlockingIOError:
                with trio.move_on_after(self._send_timeout) as timer:
                    await trio.lowlevel.wait_writable(sock)
                if timer.cancelled_caught:
                    return "send_timeout"
                continue
            self._advance(conn, written)
            await trio.lowlevel.checkpoint()
        return None

    @staticmethod
    def _pending(conn: _Outbound) -> list[bytes | memoryview]:
        """Buffers for one sendmsg: the queued frames, less what was already written."""
        buffers: list[bytes | memoryview] = []
        offset = conn.head_offset
        for n, data in enumerate(conn.queue):
            if n == _FRAMES_PER_WRITE:
                break
            header = _LENGTH.pack(len(data))
            if offset:
                if offset < _HEADER_SIZE:
                    buffers += (header[offset:], data)
                else:
                    buffers.append(memoryview(data)[offset - _HEADER_SIZE :])
                offset = 0
            else:
                buffers += (header, data)
        return buffers

    def _advance(self, conn: _Outbound, written: int) -> None:
        offset = conn.head_offset + written
        queue = conn.queue
        while queue and offset >= len(queue[0]) + _HEADER_SIZE:
            data = queue.popleft()
            offset -= len(data) + _HEADER_SIZE
            conn.queued -= len(data)
            self._datagrams_sent += 1
            self._bytes_sent += len(data)
        conn.head_offset = offset
        conn.last_used = trio.current_time()
        conn.room.unpark_all()

    # -- accepting and reading -----------------------------------------------------------

    async def _run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Background tasks live in this inner nursery, so that closing the transport cancels
        # them and never the body of the caller's ``async with``.
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._accept_loop)
            task_status.started()

    async def _accept_loop(self) -> None:
        listener = self._listener
        streak = 0
        try:
            while True:
                try:
                    sock, addr = listener.accept()
                except BlockingIOError:
                    streak = 0
                    await trio.lowlevel.wait_readable(listener)
                    continue
                except OSError as exc:
                    if exc.errno in _ACCEPT_PAUSE_ERRNOS:
                        self._accept_errors += 1
                        await trio.sleep(0.1)
                        continue
                    if exc.errno in _ACCEPT_SKIP_ERRNOS:
                        continue
                    raise
                if len(self._inbound) >= self._max_inbound:
                    self._refused += 1
                    sock.close()
                else:
                    sock.setblocking(False)
                    self._accepted += 1
                    self._inbound.add(sock)
                    assert self._nursery is not None
                    self._nursery.start_soon(self._serve_inbound, sock, addr[0])
                streak += 1
                if streak >= CHECKPOINT_EVERY:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        except trio.ClosedResourceError:
            pass  # the transport closed the listener
        except Exception as exc:
            self._fail(exc)

    async def _serve_inbound(self, sock: socket.socket, host: str) -> None:
        reader = FrameReader(self.max_frame)
        reason: str | None = None
        try:
            reason = await self._read_stream(sock, host, reader)
        except trio.ClosedResourceError:
            pass  # the transport is closing
        except OSError:
            reason = "reset"
        except Exception as exc:
            self._fail(exc)
        finally:
            self._inbound.discard(sock)
            _close_socket(sock)
            if not self._closed:
                self._held -= reader.buffered
                if reason is not None:
                    self._closed_by[reason] += 1

    async def _read_stream(self, sock: socket.socket, host: str, reader: FrameReader) -> str:
        """Read frames until the stream ends; the reason it ended."""
        scratch = self._scratch
        inbox = self._inbox
        current_time = trio.current_time
        addr: Address | None = None
        seen = 0  # reader.frames when the frame timer was last set
        streak = 0
        with trio.CancelScope(deadline=current_time() + self._header_timeout) as timer:
            while True:
                try:
                    n = sock.recv_into(scratch)
                except BlockingIOError:
                    streak = 0
                    await trio.lowlevel.wait_readable(sock)
                    continue
                if not n:
                    return "peer_closed" if reader.at_boundary else "truncated"
                room = max(0, self._receive_buffer - self._held)
                frames, dropped, used = reader.feed(scratch[:n], room)
                self._held += used
                self._receive_drops += dropped
                if frames:
                    if addr is None:
                        addr = (host, reader.port)
                    for frame in frames:
                        inbox.append((frame, addr))
                    if self._arrivals:
                        self._arrivals.unpark_all()
                if reader.error is not None:
                    return reader.error
                if reader.port:
                    if not reader.in_frame:
                        timer.deadline = current_time() + 2 * self._idle_timeout
                    elif reader.frames != seen:  # a frame began in this read
                        timer.deadline = current_time() + self._frame_timeout
                    seen = reader.frames
                streak += 1
                if streak >= CHECKPOINT_EVERY:
                    streak = 0
                    await trio.lowlevel.checkpoint()
        if not reader.port:
            return "hello_timeout"
        return "frame_timeout" if reader.in_frame else "idle"

    # -- the rest ------------------------------------------------------------------------

    def statistics(self) -> TCPTransportStatistics:
        """A snapshot of the counters."""
        return TCPTransportStatistics(
            datagrams_sent=self._datagrams_sent,
            datagrams_received=self._datagrams_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            send_errors=sum(self._send_drops.values()),
            receive_buffer=self._receive_buffer,
            receive_drops=self._receive_drops,
            inbound_open=len(self._inbound),
            outbound_open=len(self._out),
            accepted=self._accepted,
            refused=self._refused,
            dialed=self._dialed,
            accept_errors=self._accept_errors,
            closed=dict(self._closed_by),
            send_drops=dict(self._send_drops),
        )

    def _shutdown(self) -> None:
        """Cancel the background tasks and close every socket (no await: safe in finally)."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()
        _close_socket(self._listener)
        for conn in list(self._out.values()):
            self._drop_outbound(conn, None)
        for sock in list(self._inbound):
            _close_socket(sock)
        self._inbound.clear()
        self._inbox.clear()
        self._held = 0
        self._arrivals.unpark_all()

    def _fail(self, exc: BaseException) -> None:
        if self._broken is None and not self._closed:
            self._broken = exc
            self._shutdown()

    async def aclose(self) -> None:
        """Close every connection and the listener; queued frames are discarded. Idempotent."""
        if not self._closed:
            self._closed = True
            self._shutdown()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "broken" if self._broken else "open"
        host, port = self._local_address
        return f"<TCPTransport {host!r}:{port} {state}>"


def _check_limit(name: str, value: object, *, integer: bool = False, zero: bool = False) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
        or math.isnan(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "an int" if integer else "a number"
        raise LocalProtocolError(f"{name} must be {kind} {'>= 0' if zero else '> 0'}: {value!r}")


@asynccontextmanager
async def open_tcp_transport(
    host: str,
    port: int = 0,
    *,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_inbound: int = DEFAULT_MAX_INBOUND,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT,
    send_buffer: int = DEFAULT_SEND_BUFFER,
    receive_buffer: int = DEFAULT_RECEIVE_BUFFER,
) -> AsyncIterator[TCPTransport]:
    """Listen on ``host:port`` and run a :class:`TCPTransport` for the ``async with`` body.

    ``async with open_tcp_transport("127.0.0.1") as t:``. The socket listens before the body
    runs, so ``local_address`` holds the real port. The transport closes at the end of the
    body; an exception raised in the body comes out as itself.

    Args:
        host: the address to listen on; its family (IPv4 or IPv6) is the transport's, and
            peers are dialed in it. A name is resolved through ``trio.socket.getaddrinfo``.
        port: the port; 0 picks a free one.
        max_frame: largest payload sent or accepted, in bytes.
        max_inbound: inbound connections open at once; more are accepted and closed.
        connect_timeout: seconds a dial may take.
        send_timeout: seconds ``send`` waits for room in a peer's full queue, and a writer
            waits for the kernel to take any byte; then the connection counts as stuck.
        idle_timeout: seconds without a frame before an outbound connection closes; an
            inbound one closes after twice this. ``math.inf``: never.
        header_timeout: seconds from accept to a complete hello.
        frame_timeout: seconds from a frame's first byte to its last.
        send_buffer: payload bytes queued per peer (at least ``max_frame``).
        receive_buffer: bytes held for all inbound streams: frames not yet taken by
            ``receive`` plus partial frames (at least ``max_frame + FRAME_COST``).

    Raises:
        LocalProtocolError: a bad port or limit, or a host that does not resolve.
        OSError: listening failed (address in use, address not local).
    """
    if not (isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535):
        raise LocalProtocolError(f"port must be in 0..65535: {port!r}")
    for name, value in (
        ("max_frame", max_frame),
        ("max_inbound", max_inbound),
        ("send_buffer", send_buffer),
        ("receive_buffer", receive_buffer),
    ):
        _check_limit(name, value, integer=True)
    for timeout_name, timeout in (
        ("connect_timeout", connect_timeout),
        ("idle_timeout", idle_timeout),
        ("header_timeout", header_timeout),
        ("frame_timeout", frame_timeout),
    ):
        _check_limit(timeout_name, timeout)
    _check_limit("send_timeout", send_timeout, zero=True)
    if max_frame > 0xFFFFFFFF:
        raise LocalProtocolError(f"max_frame must fit in 32 bits: {max_frame!r}")
    if send_buffer < max_frame:
        raise LocalProtocolError(f"send_buffer must be >= max_frame: {send_buffer!r}")
    if receive_buffer < max_frame + FRAME_COST:
        raise LocalProtocolError(
            f"receive_buffer must be >= max_frame + {FRAME_COST}: {receive_buffer!r}"
        )
    listener = await _listen(host, port)
    try:
        transport = TCPTransport(
            listener,
            max_frame=max_frame,
            max_inbound=max_inbound,
            connect_timeout=float(connect_timeout),
            send_timeout=float(send_timeout),
            idle_timeout=float(idle_timeout),
            header_timeout=float(header_timeout),
            frame_timeout=float(frame_timeout),
            send_buffer=send_buffer,
            receive_buffer=receive_buffer,
        )
    except BaseException:
        listener.close()
        raise
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(transport._run)
            try:
                yield transport
            finally:
                transport._closed = True
                transport._shutdown()
    except BaseExceptionGroup as group:
        # The background tasks never raise (they count, or mark the transport broken), so a
        # group holds the body's one exception: hand it on as it was raised.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _listen(host: str, port: int) -> socket.socket:
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise LocalProtocolError(f"cannot resolve listen host {host!r}: {exc}") from exc
    family, _type, proto, _canonname, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        # A restarted node binds its port again while old connections sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
