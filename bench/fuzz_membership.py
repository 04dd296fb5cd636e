"""A million hostile membership packets: only our errors, and no packet without the key changes
anyone's view of anyone (issue 11's acceptance).

Run: ``python -m bench.fuzz_membership [--count 1000000] [--sealed 200000] [--seed 1]``.

Part 1, plain text (the parser is reached by every datagram): ``--count`` datagrams, a third
mutations (bit flips, truncations, extensions, byte sets, insertions: ``bench.fuzz_decode``'s
``mutate``) of valid packets of every membership type with piggybacked updates, a third
random bodies under a valid label, a third random bytes. Each goes to ``parse_untrusted``
(any exception but ``MalformedPacket`` is a bug) and to a running engine's ``receive``
(which must never raise).

Part 2, encrypted: an engine of a sealed cluster that knows three members gets ``--sealed``
datagrams that do not carry the key: valid packets sealed with another key, in plain text,
tampered copies of packets sealed with the right key, and replays of captured ones. Its view
(every member's state and incarnation) must be what it was, every datagram dropped and
counted.

Prints the counts; exits 1 on a bug.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.fuzz_decode import mutate
from gossip.crypto import Keyring, ReplayGuard
from gossip.discovery import StaticDiscovery
from gossip.engine import EngineContext
from gossip.errors import MalformedPacket
from gossip.membership import Membership
from gossip.membership.wire import (
    TYPES,
    Ack,
    Alive,
    Dead,
    Gossip,
    Leave,
    MembershipPacket,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPull,
    State,
    Suspect,
    encode_packet,
    parse_untrusted,
)
from gossip.transport.base import Address
from gossip.wire import LABEL_SIZE, Codec

EPOCH = 1_800_000_000.0
ME: Address = ("10.0.0.1", 7946)
PEERS: list[Address] = [("10.0.0.2", 7946), ("10.0.0.3", 7946), ("10.0.0.4", 7946)]


def samples(rng: random.Random) -> list[MembershipPacket]:
    """One valid packet of every type, with updates of every kind."""
    updates = (
        Alive(3, "n2", PEERS[0], b"\x04role\x03web"),
        Suspect(1, "n3", "n2"),
        Dead(2, "n4", "n3"),
        Leave(5, "n5"),
    )
    return [
        Ping(rng.getrandbits(32), "n1", "n2", updates),
        Ack(rng.getrandbits(32), updates[:2]),
        PingReq(rng.getrandbits(32), "n3", PEERS[1], updates[2:]),
        Nack(rng.getrandbits(32), ()),
        Gossip(updates),
        PushPull(
            True,
            False,
            tuple(
                MemberState(State.ALIVE, i, f"n{i + 2}", peer, b"") for i, peer in enumerate(PEERS)
            ),
        ),
    ]


def engine(codec: Codec, rng: random.Random) -> Membership:
    context = EngineContext(codec, ME, StaticDiscovery(), rng, 0.0)
    return Membership(context, name="n1")


def view(e: Membership) -> list[tuple[str, Address, State, int]]:
    return sorted((m.name, m.address, m.state, m.incarnation) for m in e.members())


def plain(count: int, rng: random.Random) -> tuple[Counter[str], list[str]]:
    codec = Codec(clock_offset=EPOCH)
    target = engine(codec, rng)
    valid = []
    for p in samples(rng):
        ptype, body = encode_packet(p)
        valid.append(codec.seal(ptype, body, 1.0))
    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    types = list(TYPES)
    for i in range(count):
        kind = i % 3
        if kind == 0:
            datagram = mutate(rng, rng.choice(valid))
        elif kind == 1:
            body = rng.randbytes(rng.randint(0, 600))
            datagram = codec.seal(rng.choice(types), body, 1.0)
        else:
            datagram = rng.randbytes(rng.randint(0, 1400))
        if len(datagram) >= LABEL_SIZE and datagram[1] in TYPES:
            try:
                parse_untrusted(datagram[1], datagram[LABEL_SIZE:])
                outcomes["parsed"] += 1
            except MalformedPacket:
                outcomes["MalformedPacket"] += 1
            except Exception as exc:
                bugs.append(f"parse_untrusted: {type(exc).__name__}: {exc} ({datagram.hex()})")
        else:
            outcomes["not a membership label"] += 1
        try:
            target.receive(datagram, PEERS[i % 3], 1.0 + i * 1e-6)
        except Exception as exc:
            bugs.append(f"receive: {type(exc).__name__}: {exc} ({datagram.hex()})")
        target.datagrams_to_send()
        target.pop_events()
    for reason, n in target.statistics().dropped.items():
        outcomes[f"engine dropped: {reason}"] = n
    return outcomes, bugs


def sealed(count: int, rng: random.Random) -> tuple[Counter[str], list[str], bool]:
    key, other = rng.randbytes(32), rng.randbytes(32)
    codec = Codec(Keyring(key), replay=ReplayGuard(), clock_offset=EPOCH)
    target = engine(codec, rng)
    # The members it knows, from a genuine PushPull of the cluster.
    peer = Codec(Keyring(key), clock_offset=EPOCH)
    join = samples(rng)[-1]
    target.receive(peer.seal(*encode_packet(join), 0.5), PEERS[0], 0.5)
    target.datagrams_to_send()
    target.pop_events()
    before = view(target)
    strangers = [Codec(Keyring(other), clock_offset=EPOCH), Codec(clock_offset=EPOCH)]
    # Captured genuine packets (delivered once, below) for replays and tampering.
    hostile_updates: Sequence[MembershipPacket] = [
        Gossip((Dead(99, "n2", "x"), Leave(99, "n3"), Alive(99, "n4", ("6.6.6.6", 1)))),
        PushPull(False, True, (MemberState(State.DEAD, 99, "n2", PEERS[0], b""),)),
        Ping(1, "n1", "evil", (Suspect(99, "n3", "evil"),)),
    ]
    captured = [peer.seal(*encode_packet(Gossip(())), 0.6 + i * 0.01) for i in range(8)]
    for i, datagram in enumerate(captured):
        target.receive(datagram, PEERS[1], 0.6 + i * 0.01)
    target.datagrams_to_send()
    target.pop_events()
    outcomes: Counter[str] = Counter()
    bugs: list[str] = []
    for i in range(count):
        now = 1.0 + i * 1e-5
        kind = i % 4
        if kind in (0, 1):
            packet = rng.choice(hostile_updates)
            datagram = strangers[kind].seal(*encode_packet(packet), now)
        elif kind == 2:
            genuine = peer.seal(*encode_packet(rng.choice(hostile_updates)), now)
            datagram = mutate(rng, genuine)
            while datagram == genuine:  # unchanged would be genuine: a cluster member's
                datagram = mutate(rng, genuine)
        else:
            datagram = rng.choice(captured)
        try:
            target.receive(datagram, PEERS[i % 3], now)
        except Exception as exc:
            bugs.append(f"receive: {type(exc).__name__}: {exc}")
        target.datagrams_to_send()
        events = target.pop_events()
        if view(target) != before and not outcomes["changed"]:
            outcomes["changed"] += 1
            bugs.append(f"view changed by kind {kind} {datagram.hex()}: {events}")
        outcomes["sent"] += 1
    stats = target.statistics()
    for reason, n in stats.dropped.items():
        outcomes[f"dropped: {reason}"] = n
    return outcomes, bugs, view(target) == before


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--sealed", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    outcomes, bugs = plain(args.count, rng)
    t1 = time.perf_counter()
    sealed_outcomes, sealed_bugs, unchanged = sealed(args.sealed, rng)
    t2 = time.perf_counter()
    print(f"plain text: {args.count} datagrams in {t1 - t0:.1f} s")
    for name, n in sorted(outcomes.items()):
        print(f"  {name:40} {n}")
    print(f"encrypted: {args.sealed} datagrams without the key in {t2 - t1:.1f} s")
    for name, n in sorted(sealed_outcomes.items()):
        print(f"  {name:40} {n}")
    print(f"  view unchanged: {unchanged}")
    bugs += sealed_bugs
    for bug in bugs[:20]:
        print("BUG:", bug)
    print(f"{len(bugs)} bugs")
    result = {
        "plain": dict(outcomes),
        "sealed": dict(sealed_outcomes),
        "view_unchanged": unchanged,
        "bugs": len(bugs),
    }
    if bugs or not unchanged:
        sys.exit(1)
    return result


if __name__ == "__main__":
    main()
