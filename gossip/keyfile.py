"""Key files: one 32-byte cluster key per line, hex; the first line is the primary key.

Several lines make rotation an edit: add the new key as a second line everywhere (install), move
it first (use), delete the old line (remove). ``#`` starts a comment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from gossip.crypto import KEY_SIZE, Backend, Keyring, generate_key
from gossip.errors import LocalProtocolError

__all__ = ["read_key_file", "write_key_file"]


def write_key_file(path: str | os.PathLike[str], *, force: bool = False) -> bytes:
    """Write a new random key to ``path`` with mode 0600 and return it.

    Raises:
        LocalProtocolError: the file exists and ``force`` is false.
    """
    key = generate_key()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise LocalProtocolError(f"{path} exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)  # O_TRUNC keeps an old file's mode
        f.write("# trio-gossip cluster key (first line: the key this node sends with)\n")
        f.write(key.hex() + "\n")
    return key


def read_key_file(path: str | os.PathLike[str], *, backend: Backend = "auto") -> Keyring:
    """Read a key file into a :class:`Keyring`.

    Raises:
        LocalProtocolError: unreadable, empty, malformed, or readable by others.
    """
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text()
    except OSError as err:
        raise LocalProtocolError(f"cannot read key file {path}: {err.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise LocalProtocolError(f"key file {path} is readable by others; chmod 600 it")
    keys = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            key = bytes.fromhex(line)
        except ValueError:
            key = b""
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"{path}:{n}: expected {KEY_SIZE * 2} hex digits")
        keys.append(key)
    if not keys:
        raise LocalProtocolError(f"key file {path} holds no key")
    return Keyring(keys[0], *keys[1:], backend=backend)
