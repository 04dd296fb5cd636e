"""Network namespaces per thread (private to the transports).

``setns()`` changes the namespace of the calling *thread* only, and netlink sockets (pyroute2's
``IPRoute``), ioctls and ``bpf(BPF_LINK_CREATE)`` resolve interface indexes in the namespace of
the thread that calls them. The eBPF transport therefore remembers its namespace (the opening
thread's, or one named by ``ip netns add``) and enters it in every worker thread it uses (trio
reuses worker threads, so each call restores the thread's own namespace afterwards). The trio
thread itself never enters one: threads started from it meanwhile would inherit it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Callable, Iterator
from typing import TypeVar

__all__ = ["CLONE_NEWNET", "NetnsHandle", "entered", "run_in"]

CLONE_NEWNET = 0x40000000

_T = TypeVar("_T")
_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(CLONE_NEWNET): {os.strerror(err)}")


def _thread_netns_path() -> str:
    # /proc/self/ns/net would name the namespace of the thread group leader.
    return "/proc/thread-self/ns/net"


class NetnsHandle:
    """An open reference to one network namespace (an fd on its nsfs inode)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        st = os.fstat(fd)
        self.key = (st.st_dev, st.st_ino)

    @classmethod
    def current(cls) -> NetnsHandle:
        """The namespace of the calling thread."""
        return cls(os.open(_thread_netns_path(), os.O_RDONLY | os.O_CLOEXEC))

    @classmethod
    def named(cls, name: str) -> NetnsHandle:
        """A namespace made by ``ip netns add NAME``."""
        return cls(os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC))

    def is_current(self) -> bool:
        """True when the calling thread is in this namespace."""
        st = os.stat(_thread_netns_path())
        return (st.st_dev, st.st_ino) == self.key

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextlib.contextmanager
def entered(target: NetnsHandle) -> Iterator[None]:
    """Run the body with the calling thread in ``target``; restore the thread's namespace."""
    if target.is_current():
        yield
        return
    home = NetnsHandle.current()
    try:
        _setns(target.fd)
        try:
            yield
        finally:
            _setns(home.fd)
    finally:
        home.close()


def run_in(target: NetnsHandle | None, fn: Callable[[], _T]) -> _T:
    """``fn()`` inside ``target`` (the calling thread's own namespace when ``None``)."""
    if target is None:
        return fn()
    with entered(target):
        return fn()
