"""Loader B: compile ``bpf/cloner.c`` at start-up with bcc (Debian's ``python3-bpfcc``).

bcc needs kernel headers even for TC programs; ``scripts/setup-bcc.sh`` prepares a tree from
Debian's ``linux-headers-*`` packages when the running kernel has none, and makes the ``bcc``
package importable from the virtualenv. A compile costs about 0.5-1.5 s and 130 MiB, so the
transport runs it once, in a worker thread. bcc has no TC attach call; the transport attaches
the program fd itself (tcx link, else clsact through pyroute2).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["BccObject", "bcc_import_error", "kernel_source", "load_source"]


def kernel_source() -> str | None:
    """The header tree bcc should use: ``BCC_KERNEL_SOURCE`` when set, nothing when the
    running kernel has its own headers, else the tree ``scripts/setup-bcc.sh`` made in the
    virtualenv. ``None`` when there is none of these."""
    env = os.environ.get("BCC_KERNEL_SOURCE")
    if env:
        return env
    if os.path.isdir(f"/lib/modules/{os.uname().release}/build/include"):
        return None
    tree = os.path.join(sys.prefix, "share", "bcc-kernel-source")
    return tree if os.path.isdir(os.path.join(tree, "include")) else None


def bcc_import_error() -> str | None:
    """Why ``import bcc`` fails, or ``None`` when it works."""
    try:
        import bcc  # noqa: F401, PLC0415
    except Exception as exc:
        return f"bcc is not importable ({exc}); install python3-bpfcc and run scripts/setup-bcc.sh"
    return None


class BccObject:
    """A program compiled and loaded by bcc; fds stay valid until :meth:`close`."""

    def __init__(self, bpf: Any, prog_fd: int, map_fds: dict[str, int]) -> None:
        self._bpf: Any = bpf
        self.prog_fd = prog_fd
        self.map_fds = map_fds

    def close(self) -> None:
        """Release the program and maps; idempotent."""
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
            self.prog_fd = -1
            self.map_fds = {}


def load_source(path: str, program: str, maps: Sequence[str]) -> BccObject:
    """Compile ``path`` with ``-DGOSSIP_BCC`` and load ``program`` as a TC classifier.

    Raises:
        ImportError: bcc is not importable.
        OSError: the source is missing, or there are no kernel headers.
        RuntimeError: bcc could not compile or load the program (its message says why).
    """
    from bcc import BPF  # noqa: PLC0415 (optional dependency, imported on use)

    if not os.path.isfile(path):
        raise OSError(2, f"cloner source not found: {path}")
    src = kernel_source()
    if src is None and not os.path.isdir(f"/lib/modules/{os.uname().release}/build/include"):
        raise OSError(
            2,
            "no kernel headers for bcc: install linux-headers-amd64 and run scripts/setup-bcc.sh,"
            " or set BCC_KERNEL_SOURCE",
        )
    if src is not None and os.environ.get("BCC_KERNEL_SOURCE") != src:
        # libbcc reads the variable from the C environment at compile time.
        os.environ["BCC_KERNEL_SOURCE"] = src
    try:
        bpf = BPF(src_file=os.fsencode(path), cflags=["-DGOSSIP_BCC"])
    except Exception as exc:  # bcc raises bare Exception
        raise RuntimeError(f"bcc could not compile {path}: {exc}") from exc
    try:
        fn = bpf.load_func(program.encode(), BPF.SCHED_CLS)
        map_fds = {name: int(bpf[name.encode()].map_fd) for name in maps}
    except Exception as exc:
        bpf.cleanup()
        raise RuntimeError(f"bcc could not load {program}: {exc}") from exc
    return BccObject(bpf, int(fn.fd), map_fds)
