"""A hand-driven network of sans-IO engines: tests decide which datagram moves when."""

from __future__ import annotations

import random

from gossip.broadcast import GossipConfig, GossipEngine
from gossip.crypto import Keyring
from gossip.discovery import StaticDiscovery
from gossip.events import MessageDelivered
from gossip.transport.base import Address

KEY = bytes(range(32))
#: Unix time the harness clock starts at (labels and keys carry wall-clock time).
EPOCH = 1_800_000_000.0


def addr(i: int) -> Address:
    return (f"10.0.0.{i}", 7946)


class Harness:
    """``n`` engines; datagrams wait in ``in_flight`` until a test delivers or drops them."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        config: GossipConfig | None = None,
        encrypted: bool = True,
    ) -> None:
        self.addrs = [addr(i) for i in range(n)]
        self.discovery = StaticDiscovery(self.addrs)
        self.now = 0.0
        self.engines = [
            GossipEngine(
                self.discovery,
                a,
                config or GossipConfig(),
                keyring=Keyring(KEY) if encrypted else None,
                rng=random.Random(seed * 1000 + i),
                clock_offset=EPOCH,
            )
            for i, a in enumerate(self.addrs)
        ]
        for e in self.engines:
            e.start(self.now)
        self.in_flight: list[tuple[Address, Address, bytes]] = []  # (src, dst, datagram)
        self.delivered: list[dict[bytes, bytes]] = [{} for _ in range(n)]
        self.duplicate_deliveries = 0
        self.pushed: dict[bytes, bytes] = {}
        self.sent_kinds: list[tuple[str, int]] = []  # (Outgoing.kind, the label's type byte)

    def index(self, a: Address) -> int:
        return self.addrs.index(a)

    def collect(self, i: int) -> None:
        engine = self.engines[i]
        for out in engine.datagrams_to_send():
            self.sent_kinds.append((out.kind, out.data[1]))
            for dst in out.addrs:
                self.in_flight.append((self.addrs[i], dst, out.data))
        for event in engine.pop_events():
            if isinstance(event, MessageDelivered):
                if event.key in self.delivered[i]:
                    self.duplicate_deliveries += 1
                self.delivered[i][event.key] = event.data

    def push(self, i: int, data: bytes) -> bytes:
        key = self.engines[i].push(data, self.now)
        self.pushed[key] = data
        self.delivered[i][key] = data  # the origin has it (it is not delivered to itself)
        self.collect(i)
        return key

    def deliver(self, k: int = 0) -> tuple[Address, Address, bytes]:
        src, dst, data = self.in_flight.pop(k)
        j = self.index(dst)
        self.engines[j].receive(data, src, self.now)
        self.collect(j)
        return src, dst, data

    def deliver_all(self, limit: int = 1_000_000) -> int:
        n = 0
        while self.in_flight and n < limit:
            self.deliver()
            n += 1
        return n

    def advance(self, dt: float) -> None:
        """Move the clock, firing timers in order, delivering nothing."""
        target = self.now + dt
        while True:
            due = [(t, i) for i, e in enumerate(self.engines) if (t := e.get_timer()) is not None]
            due = [d for d in due if d[0] <= target]
            if not due:
                break
            t, i = min(due)
            self.now = max(self.now, t)
            self.engines[i].handle_timer(self.now)
            self.collect(i)
        self.now = target

    def run(self, seconds: float, step: float = 0.01) -> None:
        """Deliver everything in flight, then advance; repeat for ``seconds``."""
        end = self.now + seconds
        while self.now < end:
            self.deliver_all()
            self.advance(step)
        self.deliver_all()

    def everyone_has_everything(self) -> bool:
        return all(set(self.pushed) <= set(d) for d in self.delivered)
