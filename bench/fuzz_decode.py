"""Decode a million hostile datagrams; count what each raised (issue 2's acceptance).

Run: ``python -m bench.fuzz_decode [--count 1000000] [--seed 1]``. Half the datagrams are random
bytes of random length, half are mutations (bit flips, truncations, extensions, byte sets,
splices) of valid packets, fed to a plain-text and to an encrypted codec. Any exception other
than ``MalformedPacket``/``DecryptError`` is a bug: the script exits 1 and prints it.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter

from gossip.crypto import Keyring
from gossip.errors import DecryptError, MalformedPacket
from gossip.wire import Codec, Packet, PullRequest, PullResponse, PullSync, PushAck, PushMessage


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(5)
        if op == 0 and buf:
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            del buf[rng.randrange(len(buf) + 1) :]
        elif op == 2:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 3 and buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 4:
            i = rng.randrange(len(buf) + 1)
            buf[i:i] = rng.randbytes(rng.randint(1, 32))
    return bytes(buf)


def run(count: int, seed: int) -> tuple[Counter[str], list[str]]:
    rng = random.Random(seed)
    key = rng.randbytes(32)
    codecs = [Codec(), Codec(Keyring(key, random_bytes=rng.randbytes))]
    samples: list[Packet] = [
        PushMessage(rng.randbytes(16), rng.randbytes(512)),
        PushAck(rng.randbytes(16)),
        PullSync(tuple(rng.randbytes(16) for _ in range(20))),
        PullRequest((rng.randbytes(16),)),
        PullResponse(rng.randbytes(16), b""),
    ]
    valid = [c.encode(p, 1000.0) for c in codecs for p in samples]
    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    for i in range(count):
        if i % 2:
            dg = rng.randbytes(rng.randrange(1500))
            if rng.random() < 0.5 and len(dg) >= 3:  # give random bytes a valid-looking head
                dg = bytes([0xA1, rng.randint(1, 5), rng.randint(0, 1)]) + dg[3:]
        else:
            dg = mutate(rng, rng.choice(valid))
        sealed = i % 4 >= 2
        try:
            codecs[sealed].decode_untrusted(dg, 1000.0)
            if sealed and dg not in valid:
                # Only an untouched original (a no-op mutation, first sight) may pass the MAC.
                outcomes["BUG forged sealed packet accepted"] += 1
                bugs.append(dg.hex())
            outcomes["accepted sealed" if sealed else "accepted plain"] += 1
        except (MalformedPacket, DecryptError) as err:
            outcomes[f"{type(err).__name__}/{err.reason}"] += 1
        except Exception as err:
            outcomes[f"BUG {type(err).__name__}"] += 1
            if len(bugs) < 10:
                bugs.append(f"{dg.hex()}: {err!r}")
    return outcomes, bugs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    t0 = time.perf_counter()
    outcomes, bugs = run(args.count, args.seed)
    elapsed = time.perf_counter() - t0
    print(f"decoded {args.count} hostile datagrams in {elapsed:.1f} s (seed {args.seed})")
    for name, n in sorted(outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<28} {n:>9}")
    others = sum(n for k, n in outcomes.items() if k.startswith("BUG"))
    print(f"exceptions other than MalformedPacket/DecryptError: {others}")
    for bug in bugs:
        print("  ", bug)
    sys.exit(1 if others else 0)


if __name__ == "__main__":
    main()
