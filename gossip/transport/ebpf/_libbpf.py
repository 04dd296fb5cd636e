"""Loader A: the precompiled ``bpf/cloner.o`` through the system ``libbpf.so.1`` (ctypes).

No compiler or kernel headers at run time. libbpf opens the ELF object, creates the maps
(BTF-defined), relocates and loads the program; everything after that (map updates, attach)
goes through :mod:`gossip.transport._bpfsys` with the fds it hands back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from collections.abc import Sequence

__all__ = ["LibbpfError", "LibbpfObject", "find_libbpf", "load_object"]

_LIBBPF_NAMES = ("libbpf.so.1", "libbpf.so")
# A callback type for libbpf_set_print: int (*)(enum libbpf_print_level, const char *, va_list)
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_print_lock = threading.Lock()


class LibbpfError(OSError):
    """libbpf could not open or load the object; ``log`` holds libbpf's messages (the
    verifier's log among them)."""

    def __init__(self, errno_: int, message: str, log: str = "") -> None:
        super().__init__(errno_, message)
        self.log = log


def find_libbpf() -> ctypes.CDLL:
    """Open the system libbpf; raises ``OSError`` when it is not installed."""
    errors = []
    for name in _LIBBPF_NAMES:
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError as exc:
            errors.append(str(exc))
    found = ctypes.util.find_library("bpf")
    if found:
        return ctypes.CDLL(found, use_errno=True)
    raise OSError(2, "libbpf not found (Debian: apt-get install libbpf1): " + "; ".join(errors))


def _declare(lib: ctypes.CDLL) -> None:
    vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    lib.bpf_object__open_file.argtypes = [cp, vp]
    lib.bpf_object__open_file.restype = vp
    lib.bpf_object__load.argtypes = [vp]
    lib.bpf_object__load.restype = i
    lib.bpf_object__close.argtypes = [vp]
    lib.bpf_object__close.restype = None
    lib.bpf_object__find_program_by_name.argtypes = [vp, cp]
    lib.bpf_object__find_program_by_name.restype = vp
    lib.bpf_program__fd.argtypes = [vp]
    lib.bpf_program__fd.restype = i
    lib.bpf_object__find_map_by_name.argtypes = [vp, cp]
    lib.bpf_object__find_map_by_name.restype = vp
    lib.bpf_map__fd.argtypes = [vp]
    lib.bpf_map__fd.restype = i
    lib.libbpf_set_print.argtypes = [vp]
    lib.libbpf_set_print.restype = vp


class LibbpfObject:
    """A loaded object: the program fd and map fds stay valid until :meth:`close`."""

    def __init__(self, lib: ctypes.CDLL, obj: int, prog_fd: int, map_fds: dict[str, int]):
        self._lib = lib
        self._obj: int | None = obj
        self.prog_fd = prog_fd
        self.map_fds = map_fds

    def close(self) -> None:
        """Close the object (its program and map fds); idempotent."""
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None
            self.prog_fd = -1
            self.map_fds = {}


def _make_printer(lines: list[str]) -> _PRINT_FN:  # type: ignore[valid-type]
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]
    # Only on x86_64 is a va_list passed as a plain pointer that can be handed on to vsnprintf.
    can_format = platform.machine() == "x86_64"

    def printer(_level: int, fmt: bytes | None, args: int | None) -> int:
        try:
            if can_format and fmt is not None:
                buf = ctypes.create_string_buffer(4096)
                libc.vsnprintf(buf, len(buf), fmt, args)
                lines.append(buf.value.decode("utf-8", "replace"))
            elif fmt is not None:
                lines.append(fmt.decode("utf-8", "replace"))
        except Exception:  # a callback from C must not raise
            pass
        return 0

    return _PRINT_FN(printer)


def load_object(path: str, program: str, maps: Sequence[str]) -> LibbpfObject:
    """Open and load ``path``; return the fds of ``program`` and of ``maps``.

    Raises:
        OSError: libbpf is missing.
        LibbpfError: the object does not open or load (missing file, verifier refusal, no
            permission); ``log`` has libbpf's explanation.
    """
    lib = find_libbpf()
    _declare(lib)
    lines: list[str] = []
    printer = _make_printer(lines)
    with _print_lock:
        # libbpf's print hook is process-wide: install ours only while loading.
        previous = lib.libbpf_set_print(ctypes.cast(printer, ctypes.c_void_p))
        try:
            obj = lib.bpf_object__open_file(os.fsencode(path), None)
            if not obj:
                err = ctypes.get_errno() or 22
                raise LibbpfError(err, f"cannot open {path}: {os.strerror(err)}", "".join(lines))
            ret = lib.bpf_object__load(obj)
            if ret != 0:
                lib.bpf_object__close(obj)
                err = -ret if ret < 0 else (ctypes.get_errno() or 22)
                raise LibbpfError(err, f"cannot load {path}: {os.strerror(err)}", "".join(lines))
        finally:
            lib.libbpf_set_print(previous)
    try:
        return _collect(lib, obj, path, program, maps)
    except BaseException:
        lib.bpf_object__close(obj)
        raise


def _collect(
    lib: ctypes.CDLL, obj: int, path: str, program: str, maps: Sequence[str]
) -> LibbpfObject:
    prog = lib.bpf_object__find_program_by_name(obj, program.encode())
    if not prog:
        raise LibbpfError(2, f"{path} has no program {program!r}")
    map_fds = {}
    for name in maps:
        m = lib.bpf_object__find_map_by_name(obj, name.encode())
        if not m:
            raise LibbpfError(2, f"{path} has no map {name!r}")
        map_fds[name] = int(lib.bpf_map__fd(m))
    return LibbpfObject(lib, obj, int(lib.bpf_program__fd(prog)), map_fds)
