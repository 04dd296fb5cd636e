"""go-gossip's AES-256-CBC "encryption", for talking to go-gossip nodes only.

**This is not a secure channel.** It exists so a node can join an existing encrypted
go-gossip cluster; the native suite never uses it. Its weaknesses are those of the Go library
(``shared/reference/go-gossip.md`` section 3) and cannot be fixed without breaking
compatibility:

- **No integrity.** There is no MAC: anyone can flip bits in a ciphertext, and a wrong key or
  a forged datagram is only noticed if the padding and then the JSON happen not to parse.
- **Fixed IV.** The IV is the first 16 bytes of the key, so equal plaintexts give equal
  ciphertexts; every PullRequest of a cluster is the same 18 bytes, and replaying one
  captured PullRequest pulls the whole (encrypted) cache.
- **No key derivation.** The key is one unsalted SHA-256 of the passphrase: a passphrase
  can be brute-forced offline at hash speed from any captured datagram.
- **No replay protection**, no key rotation, no sender identity.

What we do better without breaking compatibility: the PKCS#7 padding is checked in full (Go
checks only ``pad <= len``, so a wrong key passes about 6.6 % of one-block datagrams; here
about 0.4 %, and the JSON check after it catches nearly all of those), and every failure is
a :class:`~gossip.errors.DecryptError` instead of a crash (Go panics on an empty or
non-block-aligned ciphertext).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Final

from Crypto.Cipher import AES

from gossip.errors import DecryptError, LocalProtocolError

__all__ = ["LegacyGoGossipCipher", "read_passphrase_file"]

_BLOCK: Final = 16


class LegacyGoGossipCipher:
    """go-gossip's AES-256-CBC with key = SHA-256(passphrase), IV = key[:16], PKCS#7.

    Opt-in, and only for the go-gossip compatibility profile: it provides no integrity and
    no semantic security (see the module docstring).

    Args:
        passphrase: the cluster's passphrase; a ``str`` is encoded as UTF-8 (what Go's
            ``[]byte(passphrase)`` does with a Go string).

    Raises:
        LocalProtocolError: for an empty passphrase (a misconfiguration, refused).
    """

    #: The ``enc`` byte of the datagram label that this cipher produces and accepts.
    enc_type: Final = 0x01

    __slots__ = ("_iv", "_key")

    def __init__(self, passphrase: str | bytes) -> None:
        secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
        if not secret:
            raise LocalProtocolError("the go-gossip passphrase must not be empty")
        self._key = hashlib.sha256(secret).digest()
        # Go uses the first block of the key as the IV, for every packet.
        self._iv = self._key[:_BLOCK]

    def __repr__(self) -> str:
        return "LegacyGoGossipCipher(<passphrase hidden>)"

    def encrypt(self, plaintext: bytes) -> bytes:
        """Pad (PKCS#7) and encrypt. Deterministic: the same plaintext always gives the
        same ciphertext (fixed IV)."""
        pad = _BLOCK - len(plaintext) % _BLOCK
        padded = plaintext + bytes([pad]) * pad
        return bytes(AES.new(self._key, AES.MODE_CBC, iv=self._iv).encrypt(padded))

    def decrypt_untrusted(self, ciphertext: bytes) -> bytes:
        """Decrypt and strictly unpad a ciphertext from the network.

        Args:
            ciphertext: untrusted bytes (the datagram after its 2-byte label).

        Returns:
            The plaintext. Not authenticated: a forged or corrupted ciphertext that happens
            to unpad is returned as garbage, which the JSON parser then rejects.

        Raises:
            DecryptError: empty or not a whole number of blocks, or bad PKCS#7 padding.
        """
        if not ciphertext or len(ciphertext) % _BLOCK:
            raise DecryptError(
                f"go-gossip ciphertext of {len(ciphertext)} bytes is not a positive "
                "multiple of the AES block"
            )
        padded = AES.new(self._key, AES.MODE_CBC, iv=self._iv).decrypt(ciphertext)
        pad = padded[-1]
        # Full PKCS#7 check, compared without an early exit (no timing hint on which byte
        # was wrong; the lack of a MAC is the real weakness, see the module docstring).
        if not 1 <= pad <= _BLOCK or not hmac.compare_digest(padded[-pad:], bytes([pad]) * pad):
            raise DecryptError("bad PKCS#7 padding (wrong passphrase or corrupted datagram)")
        return bytes(padded[:-pad])


def read_passphrase_file(path: str | Path) -> str:
    """Read a passphrase file for ``--passphrase-file``: its UTF-8 text with one trailing
    newline (``\\n`` or ``\\r\\n``) removed, so ``echo secret > F`` works. Other whitespace
    is kept: it is part of the passphrase, as in Go.

    Raises:
        LocalProtocolError: the file is not UTF-8 or the passphrase is empty.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LocalProtocolError(f"passphrase file {path} is not UTF-8") from exc
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise LocalProtocolError(f"passphrase file {path} is empty")
    return text
