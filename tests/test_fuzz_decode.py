"""A seeded slice of bench.fuzz_decode runs in the suite; the full 10**6 is in the benchmarks."""

from __future__ import annotations

from bench.fuzz_decode import run


def test_hostile_datagrams_raise_only_our_errors() -> None:
    outcomes, bugs = run(40_000, seed=7)
    assert bugs == []
    # Mutations of plain-text packets may still parse; sealed ones never do.
    assert sum(outcomes.values()) == 40_000
    assert outcomes["DecryptError/mac"] > 1000
    assert outcomes["MalformedPacket/truncated"] > 100
