"""The ``gossip`` command line: ``keygen`` and ``demo`` (``agent`` comes with the engine)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from gossip.crypto import Keyring, generate_key
from gossip.errors import GossipError, RemoteProtocolError
from gossip.keyfile import write_key_file
from gossip.wire import Codec, PullSync, PushAck, PushMessage, new_message_key


def _keygen(args: argparse.Namespace) -> int:
    write_key_file(args.path, force=args.force)
    print(f"wrote a new cluster key to {args.path} (mode 0600)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Encode, seal, tamper with and decode packets, and time the suite."""
    key = generate_key()
    keyring = Keyring(key)
    tx, rx = Codec(keyring), Codec(Keyring(key))
    msg = PushMessage(new_message_key(), b"hello, cluster " * 34)
    now = time.time()
    dg = tx.encode(msg, now)
    print(f"backend: {keyring.backend}; key id 0x{keyring.primary.key_id:08x}")
    print(f"PushMessage with {len(msg.data)}-byte payload -> {len(dg)}-byte datagram")
    print(f"  label {dg[:15].hex()}\n  IV    {dg[15:31].hex()}\n  tag   {dg[-16:].hex()}")
    print(f"  decoded ok: {rx.decode_untrusted(dg, now) == msg}")
    for what, bad in (
        ("replayed", dg),
        ("bit-flipped", dg[:40] + bytes([dg[40] ^ 1]) + dg[41:]),
        ("truncated", dg[:2]),
        ("plaintext", Codec().encode(PushAck(msg.key), now)),
        ("wrong key", Codec(Keyring(generate_key())).encode(PullSync((msg.key,)), now)),
    ):
        try:
            rx.decode_untrusted(bad, now)
            print(f"  {what:<12} ACCEPTED (bug)")
        except RemoteProtocolError as err:
            print(f"  {what:<12} dropped: {err.reason}: {err}")
    n = 20000
    t0 = time.process_time()
    for i in range(n):
        rx.decode_untrusted(tx.encode(msg, now + i * 1e-3), now + i * 1e-3)
    us = (time.process_time() - t0) / n * 1e6
    print(f"encode+seal+open+decode of a 512-byte message: {us:.1f} us CPU per packet")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gossip", description="trio-gossip command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("keygen", help="write a new cluster key file (mode 0600)")
    p.add_argument("path")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=_keygen)
    p = sub.add_parser("demo", help="show the packet format and its protection")
    p.set_defaults(func=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except GossipError as err:
        print(f"gossip: {err}", file=sys.stderr)
        sys.exit(2)
