"""Turn a :class:`~gossip.sim.core.SimResult` into JSON (machines) or a table (people)."""

from __future__ import annotations

import hashlib
import math
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gossip.broadcast
from gossip.sim.core import FRACTIONS, PACKET_TYPES, MessageOutcome, SimResult
from gossip.sim.theory import push_pull_rounds, push_rounds, serf_rounds, serf_seconds

__all__ = ["engine_fingerprint", "format_table", "to_dict"]

ENCRYPTION_NOTE = (
    "encryption off: the simulator measures behaviour, and sealing changes bytes, not behaviour"
)


# Read once, at import (next to the engine's own import), so that an edit of the file during
# a long sweep cannot mislabel results of the engine already loaded.
_FINGERPRINT = hashlib.sha256(
    b"".join(p.read_bytes() for p in sorted(Path(gossip.broadcast.__file__).parent.glob("*.py")))
).hexdigest()[:12]


def engine_fingerprint() -> str:
    """First 12 hex digits of the SHA-256 of the files of gossip/broadcast/ as imported: which
    engine produced a result."""
    return _FINGERPRINT


def _median(values: Sequence[float | None]) -> float | None:
    """Median, with ``None`` (never reached) counted as +infinity."""
    if not values:
        return None
    finite = sorted(math.inf if v is None else v for v in values)
    mid = statistics.median_low(finite)
    return None if mid == math.inf else mid


def _worst(values: Sequence[float | None]) -> float | None:
    """Maximum; ``None`` if any message never got there."""
    finite = [v for v in values if v is not None]
    return None if not values or len(finite) < len(values) else max(finite)


def _summary(messages: list[MessageOutcome]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field in ("time_to", "hops_to"):
        med: dict[str, Any] = {}
        worst: dict[str, Any] = {}
        for label, _ in FRACTIONS:
            values = [getattr(m, field)[label] for m in messages]
            med[label] = _median(values)
            worst[label] = _worst(values)
        out[field] = med
        out[field + "_worst"] = worst
    return out


def _round(value: Any, digits: int = 6) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def to_dict(result: SimResult) -> dict[str, Any]:
    """Everything a run measured, JSON-ready (seconds, counts; times relative to each push)."""
    sc = result.scenario
    cfg = sc.config
    measured = result.measured
    n = sc.nodes
    histogram: list[int] = []
    for m in measured:
        for h, count in enumerate(m.hop_histogram):
            if h == len(histogram):
                histogram.append(0)
            histogram[h] += count
    summary = _summary(measured)
    full = [m.time_to["100"] for m in measured]
    data: dict[str, Any] = {
        "nodes": n,
        "seed": sc.seed,
        "encrypted": sc.encrypted,
        "engine": engine_fingerprint(),
        "config": {
            "fanout": cfg.fanout,
            "ack_timeout": cfg.ack_timeout,
            "adaptive_ack": cfg.adaptive_ack,
            "min_ack_timeout": cfg.min_ack_timeout,
            "sync_interval": cfg.sync_interval,
        },
        "network": {
            "latency": [sc.latency.low, sc.latency.high],
            "loss": sc.loss,
            "duplicate": sc.duplicate,
            "crashed": sc.crashed,
            "late_joiners": sc.late_joiners,
            "partition": sc.partition,
            "heal_at": sc.heal_at if sc.partition else None,
        },
        "messages": len(measured),
        "warmup": sc.warmup,
        "payload": sc.payload,
        "live_nodes": result.live_nodes,
        "complete": result.complete,
        "delivery_ratio": result.delivery_ratio(),
        "time_to": summary["time_to"],
        "time_to_worst": summary["time_to_worst"],
        "hops_to": summary["hops_to"],
        "hops_to_worst": summary["hops_to_worst"],
        "fully_delivered": sum(v is not None for v in full),
        "pulled": sum(m.pulled for m in measured),
        "pulled_ratio": sum(m.pulled for m in measured) / (result.live_nodes * len(measured)),
        "packets_per_node_message": result.per_node_message(result.sent),
        "bytes_per_node_message": result.per_node_message(result.bytes_sent),
        "digests_per_node_second": result.digest_rate,
        "window": result.window,
        "hop_histogram": histogram,
        "engine_totals": result.engine,
        "engine_dropped": result.engine_dropped,
        "network_dropped": result.network_dropped,
        "theory": {
            "push_rounds": push_rounds(n),
            "push_pull_rounds": push_pull_rounds(n),
            "serf_rounds_99_99": serf_rounds(0.9999, n, cfg.fanout, sc.loss, sc.crashed),
            "serf_seconds_99_99": serf_seconds(0.9999, n, cfg.fanout, sc.loss, sc.crashed),
        },
        "virtual_time": result.virtual_time,
        "events": result.events,
        "trace": result.trace,
        "wall_seconds": result.wall_seconds,
        "setup_seconds": result.setup_seconds,
        "peak_rss_mib": result.peak_rss_mib,
        "python": platform.python_version(),
    }
    rounded: dict[str, Any] = _round(data)
    return rounded


def _ms(value: float | None) -> str:
    return "never" if value is None else f"{value * 1000:,.1f}"


def _pct(value: float) -> str:
    return f"{value * 100:g} %"


def format_table(result: SimResult) -> str:
    """A report for people (the same numbers as :func:`to_dict`)."""
    d = to_dict(result)
    sc = result.scenario
    cfg = sc.config
    lines: list[str] = []
    lat = sc.latency
    lines.append(
        f"gossip sim: {sc.nodes:,} nodes, seed {sc.seed}, fanout {cfg.fanout}, "
        f"latency {lat.low * 1000:g}-{lat.high * 1000:g} ms/hop, loss {_pct(sc.loss)}, "
        f"duplication {_pct(sc.duplicate)}, crashed {_pct(sc.crashed)}"
    )
    extra = []
    if sc.late_joiners:
        extra.append(f"late joiners {_pct(sc.late_joiners)} within {sc.join_window:g} s")
    if sc.partition:
        extra.append(f"partition {_pct(sc.partition)} healed after {sc.heal_at:g} s")
    if extra:
        lines.append("  " + ", ".join(extra))
    ack = f"adaptive ({cfg.min_ack_timeout * 1000:g} ms..)" if cfg.adaptive_ack else "fixed"
    lines.append(
        f"engine {d['engine']}: ack timeout {cfg.ack_timeout * 1000:g} ms {ack}, "
        f"sync interval {cfg.sync_interval:g} s, echo suppression {cfg.echo_suppression}, "
        f"ring {'on' if cfg.ring_forward else 'off'}, payload {sc.payload} B"
    )
    lines.append("encryption on (AES-256-CBC + HMAC-SHA256)" if sc.encrypted else ENCRYPTION_NOTE)
    n_msg = d["messages"]
    what = "1 message" if n_msg == 1 else f"{n_msg} messages (median; worst)"
    if sc.warmup:
        what += f" after {sc.warmup} warm-up"
    lines.append("")
    lines.append(
        f"delivery of {what} to {d['live_nodes']:,} live nodes: "
        f"{d['delivery_ratio'] * 100:.4f} % "
        + ("(complete)" if d["complete"] else "(INCOMPLETE at max time)")
    )
    lines.append(f"  {'delivered':<10} {'time (ms)':>12} {'hop-rounds':>11}")
    for label, _ in FRACTIONS:
        t = _ms(d["time_to"][label])
        h = d["hops_to"][label]
        row = f"  {label + ' %':<10} {t:>12} {'never' if h is None else h:>11}"
        if n_msg > 1:
            tw = _ms(d["time_to_worst"][label])
            hw = d["hops_to_worst"][label]
            row += f"   (worst {tw} ms, {'never' if hw is None else hw} hops)"
        lines.append(row)
    th = d["theory"]
    lines.append(
        f"  theory: push log2 n + ln n = {th['push_rounds']:.1f} rounds; "
        f"push-pull log3 n + ln ln n = {th['push_pull_rounds']:.1f} rounds"
    )
    lines.append(
        f"  serf's model: 99.99 % after {th['serf_rounds_99_99']:.1f} rounds = "
        f"{th['serf_seconds_99_99']:.2f} s (200 ms rounds)"
    )
    lines.append(
        f"  pull path: {d['pulled']:,} deliveries by PullResponse "
        f"({d['pulled_ratio'] * 100:.2f} % of live nodes per message)"
    )
    lines.append("")
    lines.append(f"  {'per node per message':<28} {'packets':>9} {'bytes':>10}")
    names = {
        "push": "PushMessage",
        "ack": "PushAck",
        "sync": "PullSync (ACK fallback)",
        "request": "PullRequest",
        "response": "PullResponse",
        "total": "total",
        "digest": "PullSync (anti-entropy)",
    }
    pk = d["packets_per_node_message"]
    by = d["bytes_per_node_message"]
    for name in (*PACKET_TYPES[:5], "total", "digest"):
        lines.append(f"  {names[name]:<28} {pk[name]:>9.3f} {by[name]:>10.1f}")
    lines.append(
        f"  (anti-entropy is a per-second cost, not a per-message one: "
        f"{d['digests_per_node_second']:.2f} digests per node per second of the "
        f"{d['window']:.2f} s window)"
    )
    nd = {k: v for k, v in d["network_dropped"].items() if v}
    if nd:
        lines.append(f"  network drops: {nd}")
    lines.append("")
    lines.append(
        f"run: {d['virtual_time']:.3f} s virtual, {d['events']:,} events, "
        f"{d['wall_seconds']:.2f} s wall (+{d['setup_seconds']:.2f} s set-up), "
        f"peak RSS {d['peak_rss_mib']:,.0f} MiB"
    )
    return "\n".join(lines)
