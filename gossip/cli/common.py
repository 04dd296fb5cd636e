"""What the JSON-lines commands (``gossip agent``, ``gossip bridge``) share: addresses as text,
a node's ``stats`` fields, and lines written to a descriptor from a worker thread, so that a
stalled reader of stdout never stalls a node.
"""

from __future__ import annotations

import os
import select
from collections.abc import Sequence
from typing import TypeVar

import attrs
import trio

from gossip.engine import Publisher
from gossip.node import Gossiper
from gossip.transport.base import Address

__all__ = ["format_address", "node_stats", "parse_hostport", "write_all", "write_lines"]

S = TypeVar("S")


def parse_hostport(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` or ``[IPV6]:PORT`` into ``(host, port)``; nothing is resolved.

    Raises:
        ValueError: with a message fit for the user.
    """
    text = text.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected [IPV6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{text!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{text!r}: write IPv6 addresses in brackets, as [::1]:7946")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number in 0..65535")
    return host, int(port_text)


def format_address(addr: Address) -> str:
    """``host:port``, or ``[host]:port`` for IPv6: the syntax :func:`parse_hostport` reads."""
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def node_stats(node: Gossiper[Publisher[S]]) -> dict[str, object]:
    """A node's fields of a ``stats`` line: its address, then every counter of
    :meth:`Gossiper.statistics <gossip.node.Gossiper.statistics>` (engine, transport,
    delivery queue), as JSON-ready values."""
    return {"address": format_address(node.local_address), **attrs.asdict(node.statistics())}


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd``; blocking (call it from a worker thread). A descriptor
    someone made non-blocking (a shared terminal) is waited on rather than failed.

    Raises:
        OSError: the descriptor is gone (``BrokenPipeError``: the reader closed it).
    """
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])


async def write_lines(fd: int, lines: Sequence[str]) -> None:
    """Write ``lines`` (each without its newline) to ``fd`` from a worker thread. Once
    started, the write completes even if the caller is cancelled (the thread owns the data).
    Callers that write from several tasks serialise the calls themselves.

    Raises:
        OSError: as :func:`write_all`.
    """
    if not lines:
        return
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    await trio.to_thread.run_sync(write_all, fd, data, abandon_on_cancel=True)
