"""Per-packet CPU cost of the wire format and the crypto suite (issue 2's budget).

Run: ``python -m bench.crypto_cost [--runs 7] [--n 20000]``. CPU time (``time.process_time``)
per packet, median of ``runs`` repeats, all variants interleaved in each repeat so machine noise
hits them alike. 512-byte payload.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import struct
import time
from collections.abc import Callable

from Crypto.Cipher import AES
from Crypto.Hash import HMAC, SHA256

from gossip.crypto import ClusterKey, Keyring, available_backends, generate_key
from gossip.wire import Codec, PushMessage, new_message_key

PAYLOAD = 512


def naive_case() -> Callable[[], None]:
    """The obvious construction: a new pycryptodome cipher per packet, pycryptodome's HMAC."""
    enc_key, mac_key = os.urandom(32), os.urandom(32)
    label = os.urandom(15)
    body = os.urandom(16 + PAYLOAD)

    def run() -> None:
        iv = os.urandom(16)
        pad = 16 - len(body) % 16
        ct = AES.new(enc_key, AES.MODE_CBC, iv).encrypt(body + bytes([pad]) * pad)
        h = HMAC.new(mac_key, digestmod=SHA256)
        h.update(label + iv + ct)
        dg = label + iv + ct + h.digest()[:16]
        h = HMAC.new(mac_key, digestmod=SHA256)
        h.update(dg[:-16])
        h.hexverify(h.hexdigest())
        plain = AES.new(enc_key, AES.MODE_CBC, dg[15:31]).decrypt(dg[31:-16])
        assert plain[: -plain[-1]] == body

    return run


def suite_case(backend: str) -> Callable[[], None]:
    """Our suite alone: seal (encrypt + MAC) and open (verify + decrypt)."""
    key = ClusterKey(generate_key(), backend=backend)  # type: ignore[arg-type]
    label = os.urandom(15)
    body = os.urandom(16 + PAYLOAD)

    def run() -> None:
        assert key.open_untrusted(key.seal(label, body), 15) == body

    return run


def codec_case(backend: str | None) -> Callable[[int], None]:
    """A whole packet: encode + decode through the codec (label, body, seal/open, replay)."""
    key = generate_key()
    tx = Codec(Keyring(key, backend=backend) if backend else None)  # type: ignore[arg-type]
    rx = Codec(Keyring(key, backend=backend) if backend else None)  # type: ignore[arg-type]
    packet = PushMessage(new_message_key(), os.urandom(PAYLOAD))
    encode, decode = tx.encode, rx.decode_untrusted
    assert decode(encode(packet, 1.0e9), 1.0e9) == packet  # checked once, outside the timing

    start = [1.0e9]

    def run(n: int) -> None:
        # The loop is here, not in measure(): no closure call per packet in the figure.
        # A clock 1 ms per packet: the replay table sees a steady stream, as in real traffic.
        now = start[0]
        for _ in range(n):
            now += 1e-3
            decode(encode(packet, now), now)
        start[0] = now

    return run


def calibration_cases() -> dict[str, Callable[[int], None]]:
    """Operations whose cost performance.md recorded on this kind of machine (0.4 us and
    0.5 us): their ratio tells how fast the machine is during this run."""
    header = struct.Struct(">QQQ")
    packed = header.pack(1, 2, 3)

    def struct_round_trip(n: int) -> None:
        for _ in range(n):
            header.unpack(header.pack(*header.unpack(packed)))

    def urandom(n: int) -> None:
        for _ in range(n):
            os.urandom(16)

    return {
        "calibration: struct 24-byte pack+unpack (ref 0.4)": struct_round_trip,
        "calibration: os.urandom(16) (ref 0.5)": urandom,
    }


def looped(fn: Callable[[], None]) -> Callable[[int], None]:
    """Run ``fn`` n times (for cases whose per-packet cost dwarfs a call)."""

    def run(n: int) -> None:
        for _ in range(n):
            fn()

    return run


def measure(cases: dict[str, Callable[[int], None]], runs: int, n: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(runs):
        for name, fn in cases.items():  # interleaved: noise hits every case alike
            t0 = time.process_time()
            fn(n)
            samples[name].append((time.process_time() - t0) / n * 1e6)
    return {name: statistics.median(v) for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument(
        "--case",
        default="",
        help="only the cases whose name contains this text (alone, a case is not slowed by "
        "the others evicting its caches; the naive row is kept for the ratio)",
    )
    args = parser.parse_args()
    cases: dict[str, Callable[[int], None]] = {
        "naive (new AES object + pycryptodome HMAC)": looped(naive_case())
    }
    for backend in available_backends():
        cases[f"suite seal+open, {backend}"] = looped(suite_case(backend))
    for backend in available_backends():
        cases[f"codec encode+decode sealed, {backend}"] = codec_case(backend)
    cases["codec encode+decode plain (label + packet)"] = codec_case(None)
    cases.update(calibration_cases())
    if args.case:
        cases = {k: v for k, v in cases.items() if args.case in k or k.startswith("naive")}
    result = measure(cases, args.runs, args.n)
    naive = result["naive (new AES object + pycryptodome HMAC)"]
    print(
        f"# {platform.node()} {platform.python_version()} {platform.machine()}, "
        f"{os.cpu_count()} CPUs, payload {PAYLOAD} B, median of {args.runs} x {args.n}, CPU time"
    )
    print(f"| {'case':<46} | us/packet | vs naive |")
    print(f"|{'-' * 48}|-----------|----------|")
    for name, us in result.items():
        print(f"| {name:<46} | {us:9.2f} | {us / naive:7.2f}x |")


if __name__ == "__main__":
    main()
