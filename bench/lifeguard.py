"""Lifeguard measured: the membership simulator over a grid, Lifeguard against plain SWIM.

Run::

    python -m bench.lifeguard [--nodes 50,200] [--loss 0.01,0.03,0.05] [--starved 0,0.1,0.2]
        [--seeds 200] [--seeds-at 200:20] [--workers 1] [--duration 60] [--settle 10]
        [--crashes 1] [--out docs/lifeguard-grid.json] [--resume]

Every cell (nodes x loss x starved) runs each seed twice, with the default configuration
(Lifeguard) and with ``MembershipConfig.plain_swim()`` (its three parts off), on the same
seed: the same network draws until the engines diverge, the same crashed and starved nodes.
Runs go seed by seed through every cell (per size), so a partial grid covers every cell.
Each run (:func:`gossip.sim.membership.simulate`): every node joins at 0 through 3 seeds,
``--settle`` seconds of warm-up, then the starved nodes read each datagram 0.5-2.5 s late and
``--crashes`` nodes are killed at once, for ``--duration`` seconds; 1-3 ms latency, the
cell's loss throughout; encryption off.

Reported per cell and in total: runs with any false death (a ``failed`` event anywhere about
a node that never crashed), Lifeguard vs plain and their ratio; the crashed nodes' detection
(first suspicion anywhere; every survivor holds it failed): p50 and max, and the ratio of the
p50s. The JSON (``--out``) is rewritten every 20 s (atomically), with every
run's record, so a partial grid is usable; ``--resume`` skips the runs already in it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from gossip.membership import MembershipConfig
from gossip.sim.membership import MembershipScenario, simulate

VARIANTS = ("lifeguard", "plain")
Task = tuple[int, float, float, int, str]  # nodes, loss, starved, seed, variant


def _floats(text: str) -> list[float]:
    return [float(x[:-1]) / 100 if x.endswith("%") else float(x) for x in text.split(",") if x]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _seeds_at(text: str) -> dict[int, int]:
    out: dict[int, int] = {}
    for part in text.split(","):
        if part:
            n, s = part.split(":")
            out[int(n)] = int(s)
    return out


def run_one(
    task: Task, settle: float, duration: float, crashes: int, profile: str = "default"
) -> dict[str, Any]:
    """One run's record. ``profile``: ``default`` (this project's settings) or
    ``memberlist`` (memberlist's LAN profile, :meth:`MembershipConfig.memberlist_lan`);
    plain SWIM is the same profile with the three Lifeguard parts off."""
    nodes, loss, starved, seed, variant = task
    base: dict[str, Any] = {}
    if profile == "memberlist":
        lan = MembershipConfig.memberlist_lan()
        base = {
            "suspicion_mult": lan.suspicion_mult,
            "suspicion_min": lan.suspicion_min,
            "suspicion_confirmations": lan.suspicion_confirmations,
            "probe_schedule": lan.probe_schedule,
            "digest_sync": lan.digest_sync,
        }
    config = (
        MembershipConfig(**base) if variant == "lifeguard" else MembershipConfig.plain_swim(**base)
    )
    r = simulate(
        MembershipScenario(
            nodes=nodes,
            seed=seed,
            config=config,
            loss=loss,
            starved=starved,
            crashes=crashes,
            settle=settle,
            duration=duration,
        ),
        trace=False,
    )
    return {
        "nodes": nodes,
        "loss": loss,
        "starved": starved,
        "seed": seed,
        "variant": variant,
        "false_death": r.any_false_death,
        "false_deaths": r.false_deaths,
        "false_dead_nodes": r.false_dead,
        "false_suspicions": r.false_suspicions,
        "first_suspicion": list(r.first_suspicion),
        "all_failed": list(r.all_failed),
        "join_time": r.join_time,
        "packets_per_node_second": round(r.packets_per_node_second, 3),
        "bytes_per_node_second": round(r.bytes_per_node_second, 1),
        "wall": round(r.wall_seconds, 3),
    }


def _key(rec: dict[str, Any]) -> Task:
    return (rec["nodes"], rec["loss"], rec["starved"], rec["seed"], rec["variant"])


def _p50(values: Sequence[float | None]) -> float | None:
    if not values:
        return None
    mid = statistics.median_low([math.inf if v is None else v for v in values])
    return None if mid == math.inf else round(mid, 3)


def _max(values: Sequence[float | None]) -> float | None:
    if not values:
        return None
    return (
        None
        if any(v is None for v in values)
        else round(max(v for v in values if v is not None), 3)
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per variant: runs, runs with a false death, false deaths by victim kind, detection."""
    out: dict[str, Any] = {}
    for variant in VARIANTS:
        rs = [r for r in runs if r["variant"] == variant]
        first = [t for r in rs for t in r["first_suspicion"]]
        agreed = [t for r in rs for t in r["all_failed"]]
        out[variant] = {
            "runs": len(rs),
            "false_death_runs": sum(r["false_death"] for r in rs),
            "false_deaths": {
                k: sum(r["false_deaths"][k] for r in rs) for k in ("starved", "healthy")
            },
            "false_dead_nodes": {
                k: sum(r["false_dead_nodes"][k] for r in rs) for k in ("starved", "healthy")
            },
            "first_suspicion_p50": _p50(first),
            "all_failed_p50": _p50(agreed),
            "all_failed_max": _max(agreed),
            "undetected": sum(t is None for t in agreed),
            "wall_seconds": round(sum(r["wall"] for r in rs), 1),
        }
    lg, pl = out["lifeguard"], out["plain"]
    # Compare on the seeds both variants have finished.
    out["false_death_ratio"] = _ratio(pl["false_death_runs"], lg["false_death_runs"])
    out["detection_p50_ratio"] = _ratio(lg["all_failed_p50"], pl["all_failed_p50"])
    return out


def build_report(
    meta: dict[str, Any], cells: Sequence[tuple[int, float, float]], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    by_cell: dict[tuple[int, float, float], list[dict[str, Any]]] = {c: [] for c in cells}
    for r in runs:
        by_cell.setdefault((r["nodes"], r["loss"], r["starved"]), []).append(r)
    cell_rows = []
    for (nodes, loss, starved), rs in by_cell.items():
        cell_rows.append(
            {"nodes": nodes, "loss": loss, "starved": starved, **summarize(_paired(rs))}
        )
    totals = {"all": summarize(_paired(runs))}
    for nodes in sorted({c[0] for c in cells}):
        totals[f"nodes={nodes}"] = summarize(_paired([r for r in runs if r["nodes"] == nodes]))
    return {"meta": meta, "cells": cell_rows, "totals": totals, "runs": runs}


def _paired(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Only runs whose seed has finished with both variants (a fair comparison mid-grid)."""
    have: dict[tuple[int, float, float, int], set[str]] = {}
    for r in runs:
        have.setdefault(_key(r)[:4], set()).add(r["variant"])
    return [r for r in runs if len(have[_key(r)[:4]]) == len(VARIANTS)]


def _cell(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(report: dict[str, Any]) -> str:
    """The grid's tables (docs/benchmarks.md): per cell, then totals."""
    meta = report["meta"]
    lines = [
        f"{meta['finished_runs']} of {meta['planned_runs']} runs "
        f"({'complete' if meta.get('complete') else 'partial'}; last written "
        f"{meta.get('updated_utc')}), commit {meta['commit'][:12]}, seeds per size "
        f"{meta['seeds']}, warm-up {meta['settle']:g} s, measured {meta['duration']:g} s, "
        f"{meta['crashes']} crash per run. Only seeds finished with both variants count.",
        "",
        "| nodes | loss | starved | runs | false-death runs: Lifeguard | plain SWIM | ratio "
        "| false deaths (starved/healthy victims): Lifeguard | plain | detection p50 / max (s): "
        "Lifeguard | plain | p50 ratio | first suspicion p50 (s): Lifeguard | plain |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|---:|---:|",
    ]

    def row(label: list[str], c: dict[str, Any]) -> str:
        lg, pl = c["lifeguard"], c["plain"]
        ratio = c["false_death_ratio"]
        ratio_text = (
            "-"
            if lg["runs"] == 0
            else ("inf" if ratio is None and pl["false_death_runs"] else _cell(ratio))
        )
        return (
            "| "
            + " | ".join(
                [
                    *label,
                    str(lg["runs"]),
                    str(lg["false_death_runs"]),
                    str(pl["false_death_runs"]),
                    ratio_text,
                    f"{lg['false_deaths']['starved']}/{lg['false_deaths']['healthy']}",
                    f"{pl['false_deaths']['starved']}/{pl['false_deaths']['healthy']}",
                    f"{_cell(lg['all_failed_p50'])} / {_cell(lg['all_failed_max'])}",
                    f"{_cell(pl['all_failed_p50'])} / {_cell(pl['all_failed_max'])}",
                    _cell(c["detection_p50_ratio"]),
                    _cell(lg["first_suspicion_p50"]),
                    _cell(pl["first_suspicion_p50"]),
                ]
            )
            + " |"
        )

    for c in report["cells"]:
        lines.append(row([str(c["nodes"]), f"{c['loss']:.0%}", f"{c['starved']:.0%}"], c))
    for name, c in report["totals"].items():
        lines.append(row([f"**{name}**", "", ""], c))
    return "\n".join(lines)


def _write(path: Path, report: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)


def _commit() -> str:
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("-dirty" if dirty else "")


def _utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _work(args: tuple[Task, float, float, int, str]) -> dict[str, Any]:
    return run_one(*args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.lifeguard", description=__doc__.split("\n")[0]
    )
    p.add_argument("--nodes", type=_ints, default=[50, 200])
    p.add_argument("--loss", type=_floats, default=[0.01, 0.03, 0.05])
    p.add_argument("--starved", type=_floats, default=[0.0, 0.1, 0.2])
    p.add_argument("--seeds", type=int, default=200, help="seeds 0..S-1 per cell")
    p.add_argument("--seeds-at", type=_seeds_at, default={}, help="N:S,...: fewer seeds at N")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="after the warm-up (s)")
    p.add_argument("--settle", type=float, default=10.0, help="warm-up (s)")
    p.add_argument("--crashes", type=int, default=1, help="nodes crashed per run")
    p.add_argument(
        "--profile",
        choices=("default", "memberlist"),
        default="default",
        help="the settings both variants start from: this project's defaults, or "
        "memberlist's LAN profile",
    )
    p.add_argument("--out", type=Path, default=Path("lifeguard-grid.json"))
    p.add_argument("--resume", action="store_true", help="skip runs already in --out")
    p.add_argument("--quiet", action="store_true")
    p.add_argument(
        "--markdown", type=Path, metavar="FILE", help="only print FILE's tables (Markdown)"
    )
    args = p.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0

    cells = [(n, loss, s) for n in args.nodes for loss in args.loss for s in args.starved]
    # Seed-major within each size: a partial grid covers every cell with fewer seeds.
    tasks: list[Task] = [
        (n, loss, s, seed, v)
        for n in args.nodes
        for seed in range(args.seeds_at.get(n, args.seeds))
        for _n, loss, s in [c for c in cells if c[0] == n]
        for v in VARIANTS
    ]
    runs: list[dict[str, Any]] = []
    if args.resume and args.out.exists():
        wanted = set(tasks)
        runs = [r for r in json.loads(args.out.read_text())["runs"] if _key(r) in wanted]
    done = {_key(r) for r in runs}
    todo = [t for t in tasks if t not in done]
    meta: dict[str, Any] = {
        "command": "python -m bench.lifeguard "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "commit": _commit(),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "loadavg_at_start": os.getloadavg(),
        "started_utc": _utc(),
        "settle": args.settle,
        "duration": args.duration,
        "crashes": args.crashes,
        "profile": args.profile,
        "seeds": {str(n): args.seeds_at.get(n, args.seeds) for n in args.nodes},
        "latency_ms": [1, 3],
        "starved_delay": [0.5, 2.5],
        "encryption": "off",
        "planned_runs": len(tasks),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_write = 0.0

    def flush(complete: bool) -> None:
        meta.update(
            updated_utc=_utc(),
            finished_runs=len(runs),
            complete=complete,
            loadavg_now=os.getloadavg(),
            elapsed_seconds=round(time.monotonic() - started, 1),
        )
        _write(args.out, build_report(meta, cells, runs))

    work = [(t, args.settle, args.duration, args.crashes, args.profile) for t in todo]
    results: Iterator[dict[str, Any]]
    pool = None
    if args.workers > 1:
        pool = multiprocessing.get_context("fork").Pool(args.workers)
        results = pool.imap(_work, work, chunksize=1)
    else:
        results = map(_work, work)
    try:
        for rec in results:
            runs.append(rec)
            now = time.monotonic()
            if now - last_write > 20:
                flush(False)
                last_write = now
            if not args.quiet:
                print(
                    f"{len(runs)}/{len(tasks)} n={rec['nodes']} loss={rec['loss']} "
                    f"starved={rec['starved']} seed={rec['seed']} {rec['variant']}: false death "
                    f"{rec['false_death']}, agreed {rec['all_failed']}, {rec['wall']} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if pool is not None:
            pool.terminate()
        flush(len(runs) == len(tasks))
    report = build_report(meta, cells, runs)
    for row in report["cells"]:
        lg, pl = row["lifeguard"], row["plain"]
        print(
            f"n={row['nodes']:4} loss={row['loss']:.2f} starved={row['starved']:.2f}: false-death "
            f"runs lifeguard {lg['false_death_runs']}/{lg['runs']} plain "
            f"{pl['false_death_runs']}/{pl['runs']}; detection p50 {lg['all_failed_p50']} vs "
            f"{pl['all_failed_p50']}"
        )
    print(json.dumps(report["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
