"""The dissemination benchmark suite: sweeps of the simulator (``gossip.sim``) and their plots.

Run: ``python -m bench.sweep [--only scale,loss,fanout,timers,warm] [--jobs 1] [--plot-only]``.

Every point is one ``gossip.sim`` run of one message (default ``GossipConfig`` but for the swept
parameter; LAN latency 0.2-1 ms per hop; plain text: encryption changes bytes, not behaviour),
in its own forked process so that its peak RSS is its own. Points are the median over seeds
(``SEEDS``). The grid (a subset of the full product, chosen to finish in minutes on 2 cores):

* ``scale``: N in {100, 1,000, 10,000, 100,000}; loss 0; crashed 0; fanout 3. Seeds 1-5
  (100, 1k), 1-3 (10k), 1 (100k). Feeds the headline delivery-curve plot.
* ``loss``: N = 1,000, loss in {0, 10, 30, 50 %} x crashed in {0, 10, 20 %}, seeds 1-5; and
  N = 10,000, loss in {0, 10, 30, 50 %}, crashed 0, seed 1.
* ``fanout``: fanout in {2, 3, 4, 5, 6} at N = 1,000 (loss 0 and 30 %, seeds 1-5) and at
  N = 10,000 (loss 0, seed 1).
* ``timers``: N = 1,000, loss 10 %, ack_timeout in {0.05, 0.1, 0.3, 1.0} s x sync_interval in
  {0.25, 0.5, 1, 2} s, seeds 1-5.
* ``warm``: a running cluster: 5 messages 2 s apart, the first 2 unmeasured (the adaptive ACK
  timers have learnt the round trip), N in {1,000, 10,000}, loss 0 and 10 %, seed 1.

Writes ``docs/img/sim-sweep.json`` (every point's ``gossip sim --json`` record plus its delivery
curve) and the plots ``docs/img/sim-delivery.png`` (headline: delivery curves against push,
push-pull and serf's models), ``sim-loss.png`` and ``sim-tradeoff.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gossip.broadcast import GossipConfig
from gossip.sim import Scenario, Simulation
from gossip.sim.report import to_dict
from gossip.sim.theory import SERF_ROUND, push_pull_rounds, push_rounds, serf_fraction

OUT = Path(__file__).resolve().parent.parent / "docs" / "img"
SECTIONS = ("scale", "loss", "fanout", "timers", "warm")
LOSSES = (0.0, 0.1, 0.3, 0.5)
CRASHED = (0.0, 0.1, 0.2)
FANOUTS = (2, 3, 4, 5, 6)
ACK_TIMEOUTS = (0.05, 0.1, 0.3, 1.0)
SYNC_INTERVALS = (0.25, 0.5, 1.0, 2.0)


def _point(section: str, nodes: int, seed: int, **kw: Any) -> dict[str, Any]:
    return {"section": section, "nodes": nodes, "seed": seed, **kw}


def grid(sections: Iterable[str]) -> list[dict[str, Any]]:
    """The points to run, in a fixed order."""
    points: list[dict[str, Any]] = []
    wanted = set(sections)
    if "scale" in wanted:
        for n, seeds in ((100, 5), (1000, 5), (10_000, 3), (100_000, 1)):
            points += [_point("scale", n, s) for s in range(1, seeds + 1)]
    if "loss" in wanted:
        for loss in LOSSES:
            for crashed in CRASHED:
                points += [_point("loss", 1000, s, loss=loss, crashed=crashed) for s in range(1, 6)]
            points.append(_point("loss", 10_000, 1, loss=loss))
    if "fanout" in wanted:
        for f in FANOUTS:
            for loss in (0.0, 0.3):
                points += [_point("fanout", 1000, s, fanout=f, loss=loss) for s in range(1, 6)]
            points.append(_point("fanout", 10_000, 1, fanout=f))
    if "timers" in wanted:
        for ack in ACK_TIMEOUTS:
            for sync in SYNC_INTERVALS:
                points += [
                    _point("timers", 1000, s, loss=0.1, ack_timeout=ack, sync_interval=sync)
                    for s in range(1, 6)
                ]
    if "warm" in wanted:
        for n in (1000, 10_000):
            for loss in (0.0, 0.1):
                points.append(_point("warm", n, 1, loss=loss, messages=5, warmup=2, interval=2.0))
    return points


def scenario(point: dict[str, Any]) -> Scenario:
    cfg: dict[str, Any] = {}
    if "fanout" in point:
        cfg["fanout"] = point["fanout"]
    if "ack_timeout" in point:
        cfg["ack_timeout"] = point["ack_timeout"]
        cfg["min_ack_timeout"] = min(0.005, point["ack_timeout"])
    if "sync_interval" in point:
        cfg["sync_interval"] = point["sync_interval"]
    return Scenario(
        nodes=point["nodes"],
        seed=point["seed"],
        config=GossipConfig(**cfg),
        loss=point.get("loss", 0.0),
        crashed=point.get("crashed", 0.0),
        messages=point.get("messages", 1),
        warmup=point.get("warmup", 0),
        interval=point.get("interval", 1.0),
    )


def _curve(times: list[float], expected: int, points: int = 240) -> list[list[float]]:
    """(seconds, fraction still missing) at about ``points`` log-spaced missing fractions."""
    if not times:
        return []
    out: list[list[float]] = []
    last = -1
    for j in range(points + 1):
        missing = 10 ** (-6 * j / points)  # 1 .. 1e-6
        k = min(len(times), max(1, math.ceil((1 - missing) * expected)))
        if k != last:
            out.append([times[k - 1], 1 - k / expected])
            last = k
    return out


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """One simulation; its JSON record, the point, and its delivery curve (first message)."""
    sim = Simulation(scenario(point))
    result = sim.run()
    record = to_dict(result)
    record["point"] = point
    m = result.scenario.warmup
    # Only the headline plot draws curves: keep the committed JSON small.
    if point["section"] == "scale":
        record["curve"] = _curve(sim.delivery_times(m), result.live_nodes)
    return record


def run_all(points: list[dict[str, Any]], jobs: int, path: Path) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    started = time.perf_counter()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=jobs, maxtasksperchild=1) as pool:
        for i, record in enumerate(pool.imap(run_point, points, chunksize=1)):
            records.append(record)
            p = record["point"]
            print(
                f"[{i + 1}/{len(points)}] {p} -> 100 %: {record['time_to']['100']} s, "
                f"{record['packets_per_node_message']['total']:.2f} pkt/node, "
                f"{record['wall_seconds']:.1f} s wall, {record['peak_rss_mib']:.0f} MiB "
                f"(total {time.perf_counter() - started:.0f} s, load {os.getloadavg()[0]:.1f})",
                file=sys.stderr,
            )
    old = json.loads(path.read_text()) if path.exists() else []
    sections = {r["point"]["section"] for r in records}
    kept = [r for r in old if r["point"]["section"] not in sections]
    path.write_text(json.dumps(kept + records, indent=None, separators=(",", ":")) + "\n")
    return kept + records


# ------------------------------------------------------------------ aggregation


def _select(records: list[dict[str, Any]], section: str, **kw: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in records
        if r["point"]["section"] == section
        and all(r["point"].get(k, _DEFAULTS.get(k)) == v for k, v in kw.items())
    ]


_DEFAULTS: dict[str, Any] = {
    "loss": 0.0,
    "crashed": 0.0,
    "fanout": 3,
    "ack_timeout": 0.3,
    "sync_interval": 1.0,
}


def _med(values: list[float | None]) -> float:
    finite = [math.inf if v is None else v for v in values]
    return statistics.median(finite) if finite else math.nan


def summary_rows(records: list[dict[str, Any]], section: str) -> list[dict[str, Any]]:
    """Median over seeds of each distinct point of ``section`` (for the docs' tables)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["point"]["section"] != section:
            continue
        key = json.dumps({k: v for k, v in r["point"].items() if k != "seed"}, sort_keys=True)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, group in groups.items():
        row: dict[str, Any] = {**_DEFAULTS, **json.loads(key)}
        row["seeds"] = len(group)
        for label in ("50", "90", "99", "99.99", "100"):
            row["t" + label] = _med([g["time_to"][label] for g in group])
            row["h" + label] = _med([g["hops_to"][label] for g in group])
        row["ratio"] = min(g["delivery_ratio"] for g in group)
        for name in ("push", "ack", "sync", "request", "response", "total", "digest"):
            row[name] = _med([g["packets_per_node_message"][name] for g in group])
        row["bytes"] = _med([g["bytes_per_node_message"]["total"] for g in group])
        row["pulled"] = _med([g["pulled_ratio"] for g in group])
        row["wall"] = _med([g["wall_seconds"] for g in group])
        row["rss"] = max(g["peak_rss_mib"] for g in group)
        row["serf"] = group[0]["theory"]["serf_seconds_99_99"]
        rows.append(row)
    return rows


def print_tables(records: list[dict[str, Any]]) -> None:
    """Markdown tables of every section (medians over seeds), for docs/sim-results.md."""

    def ms(v: float) -> str:
        return "never" if math.isinf(v) else f"{v * 1000:,.1f}"

    for section in SECTIONS:
        rows = summary_rows(records, section)
        if not rows:
            continue
        print(f"\n### {section}\n")
        print(
            "| N | loss | crashed | fanout | ack s | sync s | seeds | 50 % ms | 99 % ms "
            "| 99.99 % ms | 100 % ms | hops 50/99/100 | live delivered | push | ack | sync "
            "| req | resp | total pkt | digest | bytes | pulled | serf 99.99 % s | wall s "
            "| RSS MiB |"
        )
        print("|" + "---|" * 26)
        for r in rows:
            print(
                f"| {r['nodes']:,} | {r['loss'] * 100:g} % | {r['crashed'] * 100:g} %"
                f" | {r['fanout']} | {r['ack_timeout']:g} "
                f"| {r['sync_interval']:g} | {r['seeds']} | {ms(r['t50'])} "
                f"| {ms(r['t99'])} | {ms(r['t99.99'])} | {ms(r['t100'])} "
                f"| {r['h50']:g}/{r['h99']:g}/{r['h100']:g} | {r['ratio'] * 100:.2f} % "
                f"| {r['push']:.2f} | {r['ack']:.2f} | {r['sync']:.2f} | {r['request']:.2f} "
                f"| {r['response']:.2f} | **{r['total']:.2f}** | {r['digest']:.2f} "
                f"| {r['bytes']:,.0f} | {r['pulled'] * 100:.1f} % | {r['serf']:.2f} "
                f"| {r['wall']:.1f} | {r['rss']:,.0f} |"
            )


# ------------------------------------------------------------------ plots


def plot(records: list[dict[str, Any]], out: Path) -> list[Path]:
    import matplotlib  # noqa: PLC0415 (only the plots need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import NullFormatter  # noqa: PLC0415

    written: list[Path] = []
    colors = {100: "tab:gray", 1000: "tab:blue", 10_000: "tab:orange", 100_000: "tab:red"}

    # 1. Headline: delivery curves (seed 1) against the models.
    scale = [r for r in _select(records, "scale") if r["point"]["seed"] == 1]
    if scale:
        fig, (ax_h, ax_t) = plt.subplots(1, 2, figsize=(13, 5))
        for r in sorted(scale, key=lambda r: r["nodes"]):
            n = r["nodes"]
            c = colors.get(n, "black")
            hist = r["hop_histogram"]
            total = r["live_nodes"]
            got = 0
            xs, ys = [], []
            for h, count in enumerate(hist):
                got += count
                xs.append(h)
                ys.append(1 - got / total if got < total else 1e-6)  # all: off the bottom
            ax_h.step(xs, ys, where="post", color=c, lw=2, label=f"simulated, N={n:,}")
            rounds = [x / 10 for x in range(0, 400)]
            ax_h.plot(
                rounds,
                [1 - serf_fraction(x, n, 3) for x in rounds],
                color=c,
                ls="--",
                lw=1,
                label="serf's model" if n == 100 else None,
            )
            ax_h.axvline(push_rounds(n), color=c, ls=":", lw=1)
            ax_h.axvline(push_pull_rounds(n), color=c, ls="-.", lw=1)
            curve = r["curve"]
            ax_t.step(
                [max(t * 1000, 1e-2) for t, _ in curve],
                [m if m > 0 else 1e-6 for _, m in curve],
                where="post",
                color=c,
                lw=2,
                label=f"simulated, N={n:,}",
            )
            secs = [x * SERF_ROUND for x in rounds]
            ax_t.plot(
                [s * 1000 for s in secs[1:]],
                [1 - serf_fraction(x, n, 3) for x in rounds[1:]],
                color=c,
                ls="--",
                lw=1,
                label="serf's model (200 ms rounds)" if n == 100 else None,
            )
        ax_h.plot([], [], color="black", ls=":", label="push theory log2 n + ln n")
        ax_h.plot([], [], color="black", ls="-.", label="push-pull theory log3 n + ln ln n")
        for ax in (ax_h, ax_t):
            ax.set_yscale("log")
            ax.set_ylim(5e-6, 1.2)
            ax.set_ylabel("fraction of live nodes still missing the message")
            ax.grid(True, which="both", alpha=0.3)
        ax_h.set_xlim(0, 30)
        ax_h.set_xlabel("hop-rounds (hops of each node's first copy; the origin is 0)")
        ax_h.set_title("Delivery by hop-round: fanout 3, 0 % loss, one message")
        ax_h.legend(fontsize=8, loc="lower left")
        ax_t.set_xscale("log")
        ax_t.set_xlabel("time since the push (ms, LAN hops of 0.2-1 ms)")
        ax_t.set_title("Delivery by time (first message: ACK timers not yet adapted)")
        ax_t.legend(fontsize=8, loc="lower left")
        fig.tight_layout()
        written.append(out / "sim-delivery.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    # 2. Loss x crashed at N = 1,000.
    rows = [r for r in summary_rows(records, "loss") if r["nodes"] == 1000]
    if rows:
        fig, (ax_t, ax_p) = plt.subplots(1, 2, figsize=(13, 5))
        for crashed, c in zip(CRASHED, ("tab:blue", "tab:orange", "tab:red"), strict=True):
            sel = sorted((r for r in rows if r["crashed"] == crashed), key=lambda r: r["loss"])
            if not sel:
                continue
            losses = [r["loss"] * 100 for r in sel]
            ax_t.plot(
                losses,
                [r["t100"] for r in sel],
                "o-",
                color=c,
                label=f"simulated 100 %, {crashed * 100:g} % crashed",
            )
            ax_t.plot(losses, [r["t99"] for r in sel], "^:", color=c, alpha=0.7)
            ax_t.plot(losses, [r["serf"] for r in sel], "--", color=c, alpha=0.6)
            ax_p.plot(
                losses, [r["total"] for r in sel], "o-", color=c, label=f"{crashed:.0%} crashed"
            )
        ax_t.plot([], [], "k^:", label="simulated 99 %")
        ax_t.plot([], [], "k--", label="serf's model, 99.99 %")
        ax_t.set_yscale("log")
        ax_t.set_xlabel("packet loss (%)")
        ax_t.set_ylabel("seconds after the push")
        ax_t.set_title("N = 1,000, fanout 3: time to deliver every live node")
        ax_t.grid(True, which="both", alpha=0.3)
        ax_t.legend(fontsize=8)
        ax_p.set_xlabel("packet loss (%)")
        ax_p.set_ylabel("packets sent per live node per message (without digests)")
        ax_p.set_title("Cost of the same runs")
        ax_p.grid(True, alpha=0.3)
        ax_p.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "sim-loss.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    # 3. Latency / packets trade-off: fanout, and ACK timeout x sync interval.
    frows = summary_rows(records, "fanout")
    trows = summary_rows(records, "timers")
    if frows or trows:
        fig, (ax_f, ax_s) = plt.subplots(1, 2, figsize=(13, 5))
        series = (
            (1000, 0.0, "tab:blue"),
            (1000, 0.3, "tab:red"),
            (10_000, 0.0, "tab:orange"),
        )
        for n, loss, c in series:
            sel = sorted(
                (r for r in frows if r["nodes"] == n and r["loss"] == loss),
                key=lambda r: r["fanout"],
            )
            if not sel:
                continue
            label = f"N={n:,}, loss {loss:.0%}"
            ax_f.plot(
                [r["total"] for r in sel],
                [r["t99"] for r in sel],
                "o-",
                color=c,
                label=label + ", 99 %",
            )
            ax_f.plot(
                [r["total"] for r in sel],
                [r["t100"] for r in sel],
                "s--",
                color=c,
                alpha=0.6,
                label=label + ", 100 %",
            )
            for r in sel:
                ax_f.annotate(
                    f"f={r['fanout']}",
                    (r["total"], r["t99"]),
                    fontsize=8,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
        ax_f.set_yscale("log")
        ax_f.set_xlabel("packets per live node per message (without anti-entropy digests)")
        ax_f.set_ylabel("seconds to 99 % (solid) / 100 % (dashed)")
        ax_f.set_title("Fanout 2..6: latency against packets")
        ax_f.grid(True, which="both", alpha=0.3)
        ax_f.legend(fontsize=7)
        for ack, c in zip(
            ACK_TIMEOUTS, ("tab:green", "tab:blue", "tab:orange", "tab:red"), strict=True
        ):
            sel = sorted(
                (r for r in trows if r["ack_timeout"] == ack), key=lambda r: r["sync_interval"]
            )
            if not sel:
                continue
            x = [r["sync_interval"] for r in sel]
            label = f"ack timeout {ack * 1000:g} ms"
            ax_s.plot(x, [r["t100"] for r in sel], "o-", color=c, label=label + ": 100 %")
            ax_s.plot(x, [r["t99"] for r in sel], "^:", color=c, alpha=0.7)
        ax_s.plot([], [], "k^:", label="99 % (dotted)")
        ax_s.set_xscale("log")
        ax_s.set_xticks(list(SYNC_INTERVALS), [f"{v:g}" for v in SYNC_INTERVALS])
        ax_s.xaxis.set_minor_formatter(NullFormatter())
        ax_s.set_yscale("log")
        ax_s.set_xlabel("sync interval (s); idle cost = 1 / interval digests per node per second")
        ax_s.set_ylabel("seconds after the push (median of 5 seeds)")
        ax_s.set_title("N = 1,000, loss 10 %, one message: ACK timeout x sync interval")
        ax_s.grid(True, which="both", alpha=0.3)
        ax_s.legend(fontsize=8)
        fig.tight_layout()
        written.append(out / "sim-tradeoff.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__)
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--jobs", type=int, default=1, help="parallel simulations (default 1)")
    parser.add_argument("--out", type=Path, default=OUT, help="directory of JSON and plots")
    parser.add_argument("--plot-only", action="store_true", help="re-plot the saved results")
    parser.add_argument("--tables", action="store_true", help="print markdown tables")
    parser.add_argument("--max-nodes", type=int, default=None, help="skip larger points")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sim-sweep.json"
    if args.plot_only:
        records = json.loads(path.read_text())
    else:
        sections = [s for s in args.only.split(",") if s]
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            parser.error(f"unknown sections: {sorted(unknown)}")
        points = [p for p in grid(sections) if not args.max_nodes or p["nodes"] <= args.max_nodes]
        records = run_all(points, args.jobs, path)
    for written in plot(records, args.out):
        print(f"wrote {written}", file=sys.stderr)
    if args.tables or args.plot_only:
        print_tables(records)


if __name__ == "__main__":
    main()
