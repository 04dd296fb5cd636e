"""UDP transport: a plain non-blocking stdlib socket driven by trio's low-level I/O waits.

Why not ``trio.socket``: its ``await sock.sendto`` / ``await sock.recvfrom`` cost 7-15 us of
scheduler work per datagram, several times the kernel's own 1-3 us (measured with
``bench/transport_cost.py``). Here every call first tries the stdlib call directly and only
parks in ``trio.lowlevel.wait_readable`` / ``wait_writable`` when the kernel says it would
block. To stay fair to other tasks without paying a checkpoint per datagram, ``receive`` and
``send`` each yield to the scheduler once every :data:`CHECKPOINT_EVERY` consecutive calls
that did not have to wait.

Usage::

    async with await open_udp_transport("127.0.0.1", 7946) as transport:
        await transport.send(b"hello", ("127.0.0.1", 7947))
        data, source = await transport.receive()
"""

from __future__ import annotations

import errno
import functools
import math
import socket
import struct
import sys
from collections.abc import Sequence

import trio

from gossip._trio import Opening
from gossip.errors import LocalProtocolError
from gossip.transport import _netns
from gossip.transport.base import Address, AsyncClosing, TransportStatistics

__all__ = [
    "CHECKPOINT_EVERY",
    "DEFAULT_RECV_BUFFER",
    "DEFAULT_SEND_TIMEOUT",
    "UDPTransport",
    "open_udp_transport",
]

#: ``receive``/``send`` checkpoint once per this many consecutive calls that did not wait.
CHECKPOINT_EVERY = 64

#: Seconds ``send`` waits for room in a full socket buffer before counting a send error.
DEFAULT_SEND_TIMEOUT = 0.1

#: Receive buffer asked for by :func:`open_udp_transport`: 4 MiB, which Linux doubles for its
#: bookkeeping. A small datagram takes ~768 bytes of it on loopback, so 8 MiB queues ~10,000:
#: a burst of a few thousand messages (5 datagrams each per node) while the node is busy.
#: Memory is charged only while datagrams wait.
DEFAULT_RECV_BUFFER = 4 << 20

# The largest UDP payload; a bigger buffer would only cost memory.
_MAX_DATAGRAM = 65535

# Linux socket options the socket module does not name. SO_RCVBUFFORCE passes
# net.core.rmem_max (needs CAP_NET_ADMIN); SO_MEMINFO reads the socket's memory counters,
# of which the 9th is the datagrams the kernel dropped for a full receive buffer.
_SO_RCVBUFFORCE = 33
_SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")

# Errors recvfrom reports for an earlier datagram of ours (ICMP unreachable and friends, on
# connected sockets or with IP_RECVERR on Linux, always on Windows). They say nothing about
# the next datagram in the queue, so receive counts them and reads on.
_TRANSIENT_RECV_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.EHOSTDOWN,
        errno.ENETDOWN,
        errno.EMSGSIZE,
        errno.ETIMEDOUT,
        errno.EPROTO,
    }
)


def _normalise(addr: tuple[str, int] | tuple[str, int, int, int]) -> Address:
    """``(host, port)`` from an IPv4 2-tuple or an IPv6 4-tuple sockaddr."""
    return (addr[0], addr[1])


class UDPTransport(AsyncClosing):
    """A :class:`~gossip.transport.base.Transport` over one bound UDP socket.

    Usually made by :func:`open_udp_transport`. The constructor wraps a socket you already
    bound (for socket activation or unusual options) and takes ownership of it: ``aclose``
    closes it. The object is an async context manager that closes itself on exit.

    ``receive`` is meant for one task at a time (trio raises ``trio.BusyResourceError`` if two
    tasks wait on the same socket); ``send`` may be called from any number of tasks.
    Destination addresses must be numeric: a host name would make the stdlib resolve it,
    blocking the event loop.
    """

    def __init__(self, sock: socket.socket, *, send_timeout: float = DEFAULT_SEND_TIMEOUT) -> None:
        """Wrap a bound ``SOCK_DGRAM`` socket of family ``AF_INET`` or ``AF_INET6``.

        Args:
            sock: the socket; it is switched to non-blocking mode.
            send_timeout: seconds ``send`` waits for room in a full send buffer before it
                gives up and counts a send error.

        Raises:
            LocalProtocolError: the socket is not a UDP/IPv4 or UDP/IPv6 socket, or
                ``send_timeout`` is not a finite number >= 0.
        """
        if sock.type != socket.SOCK_DGRAM or sock.family not in (
            socket.AF_INET,
            socket.AF_INET6,
        ):
            raise LocalProtocolError(f"not a UDP/IP socket: {sock!r}")
        if not (isinstance(send_timeout, int | float) and 0 <= send_timeout < math.inf):
            raise LocalProtocolError(f"send_timeout must be a finite number >= 0: {send_timeout!r}")
        sock.setblocking(False)
        self._sock = sock
        self._send_timeout = float(send_timeout)
        self._ipv6 = sock.family == socket.AF_INET6
        self._local_address = _normalise(sock.getsockname())
        self._closed = False
        # Only a send that found the buffer full takes this lock: trio lets one task at a
        # time wait for writability of a socket.
        self._write_wait_lock = trio.Lock()
        self._recv_streak = 0
        # Set by a receive_nowait that found the queue empty: the next receive waits for
        # readability first instead of asking the kernel again (a failed recvfrom raises).
        self._drained = False
        self._send_streak = 0
        self._datagrams_sent = 0
        self._datagrams_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._send_errors = 0
        self._receive_errors = 0
        self._drops_at_close = 0

    @property
    def send_errors(self) -> int:
        """Datagrams not sent so far (``statistics().send_errors`` without building a
        snapshot: a caller on the per-packet path compares it before and after a send)."""
        return self._send_errors

    @property
    def local_address(self) -> Address:
        """The bound ``(numeric host, port)``; the port is the real one when 0 was asked."""
        return self._local_address

    @property
    def socket(self) -> socket.socket:
        """The underlying socket, for socket options (do not read, write or close it)."""
        return self._sock

    @property
    def receive_buffer(self) -> int:
        """The receive buffer the kernel granted (``SO_RCVBUF``; Linux reports twice what was
        asked, capped by ``net.core.rmem_max`` unless the process may pass it)."""
        return int(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    @property
    def receive_drops(self) -> int:
        """Datagrams the kernel dropped because this socket's receive buffer was full (Linux:
        ``SO_MEMINFO``; 0 where the system does not tell). Gossip repairs them, but a rising
        count says the node cannot keep up: raise ``recv_buffer`` or lower the load."""
        if self._closed:
            return self._drops_at_close
        if not sys.platform.startswith("linux"):
            return 0
        try:
            raw = self._sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO.size)
        except OSError:
            return 0
        return int(_MEMINFO.unpack(raw)[8])

    @property
    def receive_errors(self) -> int:
        """Errors ``receive`` skipped (ICMP reports about earlier datagrams we sent).

        Not part of :class:`TransportStatistics`, which has no field for them.
        """
        return self._receive_errors

    async def receive(self) -> tuple[bytes, Address]:
        """Wait for the next datagram.

        Returns:
            ``(data, (host, port))`` of the sender; IPv6 flow info and scope id are dropped.

        Raises:
            trio.ClosedResourceError: the transport is closed, before or during the wait.
        """
        sock = self._sock
        if self._drained:
            # A receive loop drained the queue with receive_nowait and comes back: the queue
            # was empty a moment ago, so wait first (one failed recvfrom and its exception
            # fewer per wake-up). If a datagram came meanwhile the wait returns at once.
            self._drained = False
            if self._closed:
                raise trio.ClosedResourceError("the transport is closed")
            self._recv_streak = 0
            await trio.lowlevel.wait_readable(sock)
        while True:
            if self._recv_streak >= CHECKPOINT_EVERY:
                # Before taking a datagram, so a cancellation here loses nothing.
                self._recv_streak = 0
                await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("the transport is closed")
            try:
                data, addr = sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                self._recv_streak = 0
                # wait_readable is a full checkpoint, and raises ClosedResourceError when
                # aclose (through notify_closing) interrupts it.
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    raise
                self._receive_errors += 1
                continue
            self._recv_streak += 1
            self._datagrams_received += 1
            self._bytes_received += len(data)
            if self._ipv6:
                addr = (addr[0], addr[1])
            return data, addr

    def receive_nowait(self) -> tuple[bytes, Address]:
        """The next datagram if one is already queued, else raise ``trio.WouldBlock``: lets
        a receive loop drain a burst without a trip through the scheduler per datagram.

        Raises:
            trio.WouldBlock: nothing is queued.
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        while True:
            try:
                data, addr = self._sock.recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                self._drained = True
                raise trio.WouldBlock from None
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    raise
                self._receive_errors += 1
                continue
            self._drained = False
            self._datagrams_received += 1
            self._bytes_received += len(data)
            if self._ipv6:
                addr = (addr[0], addr[1])
            return data, addr

    def receive_batch(self, limit: int) -> list[tuple[bytes, Address]]:
        """Up to ``limit`` datagrams that are already queued, without waiting (``[]``: none):
        what :meth:`receive_nowait` returns one call at a time, for a receive loop that
        drains a burst in one call and without an exception at its end (``trio.WouldBlock``
        raised and caught once per wake-up). An empty queue is noted as by
        :meth:`receive_nowait`: the next :meth:`receive` waits first.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("the transport is closed")
        recvfrom = self._sock.recvfrom
        got: list[tuple[bytes, Address]] = []
        while len(got) < limit:
            try:
                data, addr = recvfrom(_MAX_DATAGRAM)
            except BlockingIOError:
                self._drained = True
                break
            except OSError as exc:
                if exc.errno not in _TRANSIENT_RECV_ERRNOS:
                    raise
                self._receive_errors += 1
                continue
            self._datagrams_received += 1
            self._bytes_received += len(data)
            got.append((data, (addr[0], addr[1]) if self._ipv6 else addr))
        return got

    async def send(self, data: bytes, addr: Address) -> None:
        """Send one datagram to ``addr`` (numeric host).

        Network errors (unreachable, oversized, buffer still full after ``send_timeout``)
        are counted in ``send_errors`` and not raised.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._send_streak >= CHECKPOINT_EVERY:
            self._send_streak = 0
            await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("send on a closed transport")
        try:
            self._sock.sendto(data, addr)
        except BlockingIOError:
            await self._send_after_wait(data, addr)
            return
        except OSError:
            self._send_errors += 1
        else:
            self._datagrams_sent += 1
            self._bytes_sent += len(data)
        self._send_streak += 1

    def send_many_nowait(self, data: bytes, addrs: Sequence[Address]) -> int:
        """Send ``data`` to ``addrs`` in order for as long as no wait is needed: stops at a
        full send buffer, or where :meth:`send` would checkpoint (every
        :data:`CHECKPOINT_EVERY` sends). Returns how many addresses it handled (sent, or
        counted in ``send_errors`` as :meth:`send` counts them); the caller hands the rest to
        :meth:`send_many`, which waits and checkpoints. A runtime flushing a few datagrams
        per input then needs no coroutine per datagram.

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("send on a closed transport")
        sendto = self._sock.sendto
        size = len(data)
        done = 0
        for addr in addrs:
            if self._send_streak >= CHECKPOINT_EVERY:
                break
            try:
                sendto(data, addr)
            except BlockingIOError:
                break
            except OSError:
                self._send_errors += 1
            else:
                self._datagrams_sent += 1
                self._bytes_sent += size
            self._send_streak += 1
            done += 1
        return done

    async def send_many(self, data: bytes, addrs: Sequence[Address]) -> None:
        """Send ``data`` to every address in ``addrs``: one ``sendto`` each, same rules as
        :meth:`send` (CPython has no ``sendmmsg``).

        Raises:
            trio.ClosedResourceError: the transport is closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("send on a closed transport")
        sock = self._sock
        size = len(data)
        for addr in addrs:
            if self._send_streak >= CHECKPOINT_EVERY:
                self._send_streak = 0
                await trio.lowlevel.checkpoint()
                if self._closed:
                    raise trio.ClosedResourceError("send on a closed transport")
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                await self._send_after_wait(data, addr)
                continue
            except OSError:
                self._send_errors += 1
            else:
                self._datagrams_sent += 1
                self._bytes_sent += size
            self._send_streak += 1

    async def _send_after_wait(self, data: bytes, addr: Address) -> None:
        """The slow path: the send buffer is full. Wait for room, at most ``send_timeout``."""
        self._send_streak = 0
        with trio.move_on_after(self._send_timeout):
            async with self._write_wait_lock:
                while True:
                    # Checked before every wait: the socket may have closed while this task
                    # queued for the lock or was woken.
                    if self._closed:
                        raise trio.ClosedResourceError("transport closed during send")
                    try:
                        await trio.lowlevel.wait_writable(self._sock)
                    except trio.ClosedResourceError:
                        raise trio.ClosedResourceError("transport closed during send") from None
                    if self._closed:
                        raise trio.ClosedResourceError("transport closed during send")
                    try:
                        self._sock.sendto(data, addr)
                    except BlockingIOError:
                        continue
                    except OSError:
                        self._send_errors += 1
                        return
                    self._datagrams_sent += 1
                    self._bytes_sent += len(data)
                    return
        # Gossip tolerates loss: a buffer that stays full is a dropped datagram, not an error
        # for the caller.
        self._send_errors += 1

    def statistics(self) -> TransportStatistics:
        """A snapshot of the counters."""
        return TransportStatistics(
            datagrams_sent=self._datagrams_sent,
            datagrams_received=self._datagrams_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            send_errors=self._send_errors,
            receive_buffer=0 if self._closed else self.receive_buffer,
            receive_drops=self.receive_drops,
        )

    async def aclose(self) -> None:
        """Close the socket and wake any task waiting in ``receive`` or ``send``; idempotent.

        Like every trio ``aclose``, it closes even when cancelled.
        """
        if not self._closed:
            self._drops_at_close = self.receive_drops
            self._closed = True
            # Wakes tasks parked in wait_readable/wait_writable with ClosedResourceError;
            # closing the fd under them would leave them waiting forever.
            trio.lowlevel.notify_closing(self._sock)
            self._sock.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<UDPTransport {self._local_address[0]!r}:{self._local_address[1]} {state}>"


def open_udp_transport(
    host: str,
    port: int = 0,
    *,
    recv_buffer: int | None = DEFAULT_RECV_BUFFER,
    send_timeout: float = DEFAULT_SEND_TIMEOUT,
    namespace: str | None = None,
) -> Opening[UDPTransport]:
    """Bind a UDP socket and wrap it in a :class:`UDPTransport`:
    ``async with open_udp_transport(...) as t`` (closed at the end of the block), or
    ``t = await open_udp_transport(...)`` (the caller closes it).

    The socket is bound when the block is entered, so ``local_address`` holds the real port.

    Args:
        host: the address to bind; its family (IPv4 or IPv6) is the transport's. A name is
            resolved through ``trio.socket.getaddrinfo`` (numeric hosts need no lookup).
        port: the port to bind; 0 picks a free one.
        recv_buffer: the receive buffer to ask for, in bytes (default
            :data:`DEFAULT_RECV_BUFFER`). With CAP_NET_ADMIN it is forced past
            ``net.core.rmem_max``; otherwise Linux caps it there. Linux doubles it. The value
            granted is :attr:`UDPTransport.receive_buffer` and in ``statistics()``. ``None``
            keeps the system default.
        send_timeout: see :class:`UDPTransport`.
        namespace: a network namespace made by ``ip netns add NAME`` to create the socket
            in (Linux, root); ``None``: the calling thread's. The socket is made in a worker
            thread that enters the namespace and leaves it again; the calling thread never
            does (threads it started meanwhile would inherit it).

    Returns:
        The bound transport.

    Raises:
        LocalProtocolError: a bad port, buffer size or timeout, or a host that does not resolve.
        OSError: the bind failed (address in use, address not local), or no such namespace.
    """
    return Opening(functools.partial(_open_udp, host, port, recv_buffer, send_timeout, namespace))


async def _open_udp(
    host: str,
    port: int,
    recv_buffer: int | None,
    send_timeout: float,
    namespace: str | None,
) -> UDPTransport:
    if not (isinstance(port, int) and 0 <= port <= 65535):
        raise LocalProtocolError(f"port must be in 0..65535: {port!r}")
    if recv_buffer is not None and not (isinstance(recv_buffer, int) and recv_buffer > 0):
        raise LocalProtocolError(f"recv_buffer must be a positive int: {recv_buffer!r}")
    try:
        infos = await trio.socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise LocalProtocolError(f"cannot resolve bind host {host!r}: {exc}") from exc
    family, _type, proto, _canonname, sockaddr = infos[0]

    def bind() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM, proto)
        try:
            if recv_buffer is not None:
                _set_receive_buffer(sock, recv_buffer)
            sock.bind(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    if namespace is None:
        sock = bind()
    else:
        # A socket belongs to the namespace it was created in, whichever thread uses it.
        handle = _netns.NetnsHandle.named(namespace)
        try:
            sock = await trio.to_thread.run_sync(functools.partial(_netns.run_in, handle, bind))
        finally:
            handle.close()
    try:
        return UDPTransport(sock, send_timeout=send_timeout)
    except BaseException:
        sock.close()
        raise


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for ``size`` bytes of receive buffer: forced past ``rmem_max`` where the process
    may (Linux, CAP_NET_ADMIN), else as much as the system allows."""
    if sys.platform.startswith("linux"):
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
            return
        except OSError:
            pass  # not privileged: the plain option, capped by net.core.rmem_max
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
