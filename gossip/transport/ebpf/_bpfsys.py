"""The raw ``bpf()`` system call through ctypes (private to the eBPF transport).

Only what both loaders share: map updates and lookups by fd, tcx links (Debian 12's libbpf 1.1
has no tcx API), program queries, and the capability check. No library beyond libc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import struct

__all__ = [
    "BPF_TCX_EGRESS",
    "BPF_TCX_INGRESS",
    "MapSlot",
    "link_create_tcx",
    "map_lookup",
    "map_update",
    "missing_capabilities",
    "possible_cpus",
    "prog_id",
    "prog_query",
    "syscall_number",
]

# enum bpf_cmd
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_PROG_QUERY = 16
_BPF_LINK_CREATE = 28

# enum bpf_attach_type (kernel >= 6.6)
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47

# union bpf_attr is larger; the kernel accepts any size up to its own as long as the bytes
# it does not know are zero.
_ATTR_SIZE = 64

_SYSCALL_NUMBERS = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

_CAP_NET_ADMIN = 12
_CAP_SYS_ADMIN = 21
_CAP_BPF = 39

_libc: ctypes.CDLL | None = None


def syscall_number() -> int | None:
    """The number of ``bpf()`` on this machine, or ``None`` when not Linux or unknown."""
    if platform.system() != "Linux":
        return None
    return _SYSCALL_NUMBERS.get(platform.machine())


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], size: int = _ATTR_SIZE) -> int:
    global _libc
    nr = syscall_number()
    if nr is None:
        raise OSError(38, "bpf() is not available on this platform")  # ENOSYS
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    ret = int(_libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(size)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _attr(*fields: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    fmt = "=" + "".join(f for f, _ in fields)
    struct.pack_into(fmt, buf, 0, *(v for _, v in fields))
    return buf


class MapSlot:
    """One key of one map with preallocated key, value and attribute buffers, so that the hot
    path (one update per broadcast group) is one ``pack_into`` and one system call."""

    def __init__(self, map_fd: int, key: bytes, value_size: int) -> None:
        self.key = ctypes.create_string_buffer(key, len(key))
        self.value = ctypes.create_string_buffer(value_size)
        #: A writable byte view of the value buffer.
        self.view = memoryview(self.value).cast("B")
        key_ptr = ctypes.addressof(self.key)
        value_ptr = ctypes.addressof(self.value)
        # struct { u32 map_fd; (pad); u64 key; u64 value; u64 flags; }
        self._update = _attr(("I", map_fd), ("I", 0), ("Q", key_ptr), ("Q", value_ptr), ("Q", 0))
        self._lookup = _attr(("I", map_fd), ("I", 0), ("Q", key_ptr), ("Q", value_ptr), ("Q", 0))

    def write(self) -> None:
        """Store the value buffer under the key (BPF_ANY)."""
        _bpf(_BPF_MAP_UPDATE_ELEM, self._update)

    def read(self) -> bytes:
        """Fetch the value (for per-CPU maps: all CPUs, each rounded up to 8 bytes)."""
        _bpf(_BPF_MAP_LOOKUP_ELEM, self._lookup)
        return self.value.raw


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    """``bpf_map_update_elem(fd, key, value, BPF_ANY)``."""
    slot = MapSlot(map_fd, key, len(value))
    ctypes.memmove(slot.value, value, len(value))
    slot.write()


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    """``bpf_map_lookup_elem``; raises ``OSError(ENOENT)`` when the key is absent."""
    return MapSlot(map_fd, key, value_size).read()


def link_create_tcx(prog_fd: int, ifindex: int, attach_type: int = BPF_TCX_EGRESS) -> int:
    """Attach a ``sched_cls`` program with a tcx link (kernel >= 6.6); returns the link fd.

    The link lives as long as its fd: when the owning process dies the program detaches.
    """
    # link_create: u32 prog_fd; u32 target_ifindex; u32 attach_type; u32 flags; then the
    # tcx union member {u32 relative_fd; u64 expected_revision}, all zero: append at the end.
    return _bpf(_BPF_LINK_CREATE, _attr(("I", prog_fd), ("I", ifindex), ("I", attach_type)))


def prog_query(ifindex: int, attach_type: int = BPF_TCX_EGRESS, max_progs: int = 64) -> list[int]:
    """The ids of the programs attached at a tcx hook of ``ifindex``, in order."""
    ids = (ctypes.c_uint32 * max_progs)()
    # query: u32 target_fd; u32 attach_type; u32 query_flags; u32 attach_flags;
    #        u64 prog_ids; u32 prog_cnt; ...
    attr = _attr(
        ("I", ifindex),
        ("I", attach_type),
        ("I", 0),
        ("I", 0),
        ("Q", ctypes.addressof(ids)),
        ("I", max_progs),
    )
    _bpf(_BPF_PROG_QUERY, attr)
    (count,) = struct.unpack_from("=I", attr, 24)
    return [int(ids[i]) for i in range(min(count, max_progs))]


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program."""
    info = ctypes.create_string_buffer(8)  # struct bpf_prog_info { u32 type; u32 id; ... }
    attr = _attr(("I", prog_fd), ("I", len(info)), ("Q", ctypes.addressof(info)))
    _bpf(_BPF_OBJ_GET_INFO_BY_FD, attr)
    (ident,) = struct.unpack_from("=I", info, 4)
    return int(ident)


def possible_cpus() -> int:
    """How many CPUs per-CPU maps have values for (``/sys/devices/system/cpu/possible``)."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
        text = f.read().strip()
    highest = 0
    for part in text.split(","):
        highest = max(highest, int(part.split("-")[-1]))
    return highest + 1


def missing_capabilities() -> list[str]:
    """The capabilities the cloner needs that this process lacks (empty when it has all)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            line = next(x for x in f if x.startswith("CapEff:"))
    except (OSError, StopIteration):
        return ["CAP_BPF", "CAP_NET_ADMIN"]
    caps = int(line.split()[1], 16)

    def has(cap: int) -> bool:
        return bool(caps >> cap & 1)

    missing = []
    if not (has(_CAP_BPF) or has(_CAP_SYS_ADMIN)):
        missing.append("CAP_BPF")
    if not has(_CAP_NET_ADMIN):
        missing.append("CAP_NET_ADMIN")
    return missing
