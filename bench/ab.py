"""Before/after: one benchmark run on two git revisions, interleaved, compared in one table.

Run: ``python -m bench.ab --base REV [--head REV|WORKTREE] [--runs K] --preset NAME
[-- EXTRA ARGS...]`` or ``python -m bench.ab --base REV [--head ...] [--runs K] -- MODULE
[ARGS...]``.

Each revision is checked out in its own detached git worktree (``git worktree add --detach``)
under one temporary directory; both worktrees are removed at the end, also on an error, Ctrl-C
or SIGTERM. ``--head WORKTREE`` runs the repository's own working tree instead (uncommitted
changes included); the default head is ``HEAD``.

The benchmark module runs ``K`` times in each tree, alternately: base, head on even runs and
head, base on odd ones (``--order abba``, the default, so that a machine drifting in one
direction favours neither side) or always base first (``--order ab``). Each run is a fresh
subprocess of the same interpreter (``--python``, default: this one) with the tree as its
working directory and as ``PYTHONPATH``, so the tree's ``gossip`` and ``bench`` packages win
over the editable install; the child checks that they were imported from the tree and reports
``gossip.__file__``. The child calls the module's ``main(argv)`` and writes what it returns as
JSON (no table parsing: ``main()`` returns its results in this project's benchmarks, old
revisions included); its own printed table is kept in the ``--json`` output.

Presets (extra arguments after ``--`` are appended to the preset's, so they override them):

* ``relay``: ``bench.relay_cost`` with its defaults; judged: the gossip runtime's CPU per fresh
  and per duplicate message (engine, naive and stdlib-floor rows are shown, not judged: the
  floor runs no project code, so its ratio shows the noise of the comparison).
* ``dissemination128`` / ``dissemination32``: ``bench.dissemination --nodes 128`` (``32``),
  the options of docs/benchmarks.md (its defaults); ``dissemination``: both sizes in one run.
  Judged: median time to full delivery; CPU per message, packets per node, p99 and timeouts
  are shown.

Without a preset every numeric leaf of ``main()``'s result is a metric (``--metric GLOB``
selects some), all judged. Every metric is taken as lower-is-better (times, CPU, packets).

Reported per metric: the median over the runs of each side, the ratio head / base of the
medians, the median (and range) of the per-run ratios of the pairs, every run's value, and a
verdict: within ``--tolerance`` (5 %), ``SLOWER`` or ``faster``. A judged metric passes when
the ratio of the medians is at most 1 + tolerance; ``--check`` makes the exit status 1 if one
does not.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import attrs

WORKTREE = "WORKTREE"

#: Run by each child: imports the tree's packages, runs ``main(argv)``, writes its result.
CHILD = r"""
import importlib, json, os, sys
tree = os.path.realpath(os.environ["AB_TREE"])
import gossip, bench
where = {"gossip": gossip.__file__, "bench": bench.__file__}
for name, path in where.items():
    if not os.path.realpath(path).startswith(tree + os.sep):
        sys.exit(f"bench.ab child: {name} was imported from {path}, not from {tree}")
print(f"bench.ab child: gossip from {gossip.__file__}", file=sys.stderr, flush=True)
module = importlib.import_module(sys.argv[1])
sys.argv = sys.argv[1:]
result = module.main(sys.argv[1:])

def plain(obj):
    import dataclasses
    import attrs
    if attrs.has(type(obj)):
        return attrs.asdict(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    return repr(obj)

with open(os.environ["AB_RESULT"], "w", encoding="utf-8") as out:
    json.dump({"where": where, "result": result}, out, default=plain)
"""


@attrs.frozen
class MetricSpec:
    """One row of the table: where the value is in the flattened result, its name, judged?"""

    path: str
    label: str
    judged: bool


@attrs.frozen
class Preset:
    module: str
    args: tuple[str, ...]
    #: Flattened result of the first run -> the rows to show.
    metrics: Callable[[dict[str, float]], list[MetricSpec]]


_RELAY_CASES = (
    ("gossip runtime (open_gossiper + UDPTransport)", "relay runtime", True),
    ("gossip engine only (no sockets)", "relay engine only", False),
    ("naive (await recvfrom/sendto, AES.new per packet)", "relay naive", False),
    ("stdlib floor", "relay stdlib floor", False),
)


def _relay_metrics(values: dict[str, float]) -> list[MetricSpec]:
    del values
    return [
        MetricSpec(f"{case}/{i}", f"{label} {kind} us", judged)
        for case, label, judged in _RELAY_CASES
        for i, kind in enumerate(("fresh", "dup"))
    ]


_DISSEMINATION_FIELDS = (
    ("p50_ms", "full delivery p50 ms", True),
    ("p99_ms", "full delivery p99 ms", False),
    ("cpu_ms", "CPU ms/message", False),
    ("total", "packets/node", False),
    ("timeouts", "timeouts", False),
)


def _dissemination_metrics(values: dict[str, float]) -> list[MetricSpec]:
    sizes = sorted({int(k.split("/")[0][2:]) for k in values if k.startswith("N=")})
    return [
        MetricSpec(f"N={n}/{field}", f"N={n} {label}", judged)
        for n in sizes
        for field, label, judged in _DISSEMINATION_FIELDS
    ]


PRESETS: dict[str, Preset] = {
    "relay": Preset("bench.relay_cost", (), _relay_metrics),
    "dissemination128": Preset("bench.dissemination", ("--nodes", "128"), _dissemination_metrics),
    "dissemination32": Preset("bench.dissemination", ("--nodes", "32"), _dissemination_metrics),
    "dissemination": Preset("bench.dissemination", (), _dissemination_metrics),
}


# --------------------------------------------------------------------------- git


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


@attrs.frozen
class Revision:
    """One side of the comparison."""

    side: str
    rev: str
    sha: str
    subject: str
    #: ``--head WORKTREE`` with uncommitted changes to tracked files.
    dirty: bool = False

    @property
    def short(self) -> str:
        return self.sha[:7] + ("+changes" if self.dirty else "")


def resolve(repo: Path, side: str, rev: str) -> Revision:
    if rev == WORKTREE:
        sha = git(repo, "rev-parse", "HEAD")
        dirty = bool(git(repo, "status", "--porcelain", "--untracked-files=no"))
        return Revision(side, rev, sha, "working tree of " + str(repo), dirty)
    try:
        sha = git(repo, "rev-parse", "--verify", "--quiet", rev + "^{commit}")
    except RuntimeError:
        raise RuntimeError(f"{side} revision {rev!r} is not a commit of {repo}") from None
    return Revision(side, rev, sha, git(repo, "log", "-1", "--format=%s", sha))


def _ours(repo: Path, tmp: Path) -> list[Path]:
    """The repository's worktrees that live under ``tmp``."""
    root = tmp.resolve()
    listing = git(repo, "worktree", "list", "--porcelain").splitlines()
    paths = [Path(line[len("worktree ") :]) for line in listing if line.startswith("worktree ")]
    return [p for p in paths if p.resolve().is_relative_to(root)]


def _remove(repo: Path, tmp: Path) -> None:
    """Remove every worktree under ``tmp``, then ``tmp``. Whatever ``git worktree remove``
    refuses is deleted by hand, its administrative directory in ``.git/worktrees`` included
    (and no other: no ``git worktree prune``)."""
    for tree in _ours(repo, tmp):
        try:
            git(repo, "worktree", "remove", "--force", str(tree))
        except RuntimeError as error:
            print(f"bench.ab: {error}; removing {tree} by hand", file=sys.stderr)
    shutil.rmtree(tmp, ignore_errors=True)
    admin = Path(git(repo, "rev-parse", "--path-format=absolute", "--git-common-dir"))
    root = tmp.resolve()
    for gitdir in (admin / "worktrees").glob("*/gitdir"):
        pointed = Path(gitdir.read_text(encoding="utf-8").strip())
        if pointed.resolve().is_relative_to(root):
            shutil.rmtree(gitdir.parent, ignore_errors=True)


@contextlib.contextmanager
def worktrees(repo: Path, revisions: Sequence[Revision]) -> Iterator[tuple[Path, list[Path]]]:
    """A detached worktree per revision (the repository itself for WORKTREE) under one temporary
    directory; yields (that directory, the trees). All is removed on the way out, whatever
    interrupted the run (a second Ctrl-C is ignored while removing)."""
    tmp = Path(tempfile.mkdtemp(prefix="trio-gossip-ab-"))
    try:
        trees = []
        for r in revisions:
            if r.rev == WORKTREE:
                trees.append(repo)
                continue
            tree = tmp / f"{r.side}-{r.sha[:7]}"
            git(repo, "worktree", "add", "--detach", "--quiet", str(tree), r.sha)
            trees.append(tree)
        yield tmp, trees
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            _remove(repo, tmp)
        finally:
            signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- runs


def flatten(obj: object, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a JSON value by path (``a/b/0``); list items that are dicts with a
    ``nodes`` field are named ``N=<nodes>`` (bench.dissemination's rows)."""
    if isinstance(obj, bool):
        return {}
    if isinstance(obj, int | float):
        return {prefix: float(obj)}
    items: list[tuple[str, object]] = []
    if isinstance(obj, dict):
        items = [(str(k), v) for k, v in obj.items()]
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            name = str(i)
            if isinstance(v, dict) and isinstance(v.get("nodes"), int | float):
                name = f"N={int(v['nodes'])}"
            items.append((name, v))
    out: dict[str, float] = {}
    for name, value in items:
        out.update(flatten(value, f"{prefix}/{name}" if prefix else name))
    return out


@attrs.frozen
class Run:
    index: int
    side: str
    seconds: float
    values: dict[str, float]
    where: dict[str, str]
    stdout: str


def run_once(
    index: int,
    side: str,
    tree: Path,
    *,
    tmp: Path,
    python: str,
    module: str,
    args: Sequence[str],
    timeout: float | None,
) -> Run:
    result_path = tmp / f"result-{index}-{side}.json"
    env = dict(os.environ)
    env.pop("PYTHONSAFEPATH", None)
    env.update(PYTHONPATH=str(tree), AB_TREE=str(tree), AB_RESULT=str(result_path))
    t0 = time.perf_counter()
    done = subprocess.run(
        [python, "-c", CHILD, module, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(
            f"run {index} ({side}) of {module} in {tree} exited with {done.returncode}:\n"
            + done.stderr[-3000:]
        )
    data = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    where = {str(k): str(v) for k, v in data["where"].items()}
    return Run(index, side, seconds, flatten(data["result"]), where, done.stdout)


# --------------------------------------------------------------------------- comparison


@attrs.frozen
class Row:
    spec: MetricSpec
    base: list[float]
    head: list[float]
    tolerance: float

    @property
    def base_median(self) -> float:
        return _median(self.base)

    @property
    def head_median(self) -> float:
        return _median(self.head)

    @property
    def ratio(self) -> float:
        return _ratio(self.head_median, self.base_median)

    @property
    def paired(self) -> list[float]:
        return [_ratio(h, b) for b, h in zip(self.base, self.head, strict=True)]

    @property
    def passed(self) -> bool:
        return math.isfinite(self.ratio) and self.ratio <= 1 + self.tolerance

    @property
    def verdict(self) -> str:
        r = self.ratio
        if not math.isfinite(r):
            return "-"
        change = f"{(r - 1) * 100:+.1f} %"
        if r > 1 + self.tolerance:
            return f"SLOWER ({change})"
        if r < 1 - self.tolerance:
            return f"faster ({change})"
        return f"within {self.tolerance * 100:g} % ({change})"


def _median(values: Sequence[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return statistics.median(present) if present else math.nan


def _ratio(head: float, base: float) -> float:
    if base == 0 or math.isnan(base) or math.isnan(head):
        return math.nan
    return head / base


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_ratio(value: float) -> str:
    return f"{value:.3f}" if math.isfinite(value) else "-"


def rows_of(specs: Sequence[MetricSpec], runs: Sequence[Run], tolerance: float) -> list[Row]:
    by_side: dict[str, list[Run]] = {"base": [], "head": []}
    for run in sorted(runs, key=lambda r: r.index):
        by_side[run.side].append(run)
    return [
        Row(
            spec,
            [r.values.get(spec.path, math.nan) for r in by_side["base"]],
            [r.values.get(spec.path, math.nan) for r in by_side["head"]],
            tolerance,
        )
        for spec in specs
    ]


def print_table(rows: Sequence[Row]) -> None:
    print(
        "| metric | base median | head median | head / base | pairs: median ratio (range) "
        "| base runs | head runs | verdict |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        paired = [p for p in row.paired if math.isfinite(p)]
        pairs = (
            f"{_fmt_ratio(statistics.median(paired))} "
            f"({_fmt_ratio(min(paired))}-{_fmt_ratio(max(paired))})"
            if paired
            else "-"
        )
        name = f"**{row.spec.label}**" if row.spec.judged else row.spec.label
        print(
            f"| {name} | {_fmt(row.base_median)} | {_fmt(row.head_median)} | "
            f"{_fmt_ratio(row.ratio)} | {pairs} | {' '.join(_fmt(v) for v in row.base)} | "
            f"{' '.join(_fmt(v) for v in row.head)} | {row.verdict} |"
        )


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    del frame
    raise SystemExit(128 + signum)


def parse(argv: Sequence[str]) -> tuple[argparse.Namespace, str, list[str]]:
    argv = list(argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--base", required=True, help="the older revision")
    parser.add_argument(
        "--head", default="HEAD", help=f"the newer revision, or {WORKTREE} (default: HEAD)"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--preset", choices=sorted(PRESETS))
    parser.add_argument("--order", choices=("abba", "ab"), default="abba")
    parser.add_argument("--tolerance", type=float, default=0.05, help="default 0.05 (5 %%)")
    parser.add_argument("--metric", action="append", help="path glob to show (no preset)")
    parser.add_argument("--python", default=sys.executable, help="interpreter of every run")
    parser.add_argument("--repo", type=Path, help="git repository (default: this checkout)")
    parser.add_argument("--timeout", type=float, help="seconds per run before giving up")
    parser.add_argument("--json", type=Path, help="write everything here as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a judged metric fails")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.preset:
        preset = PRESETS[args.preset]
        return args, preset.module, [*preset.args, *tail]
    if not tail:
        parser.error("give --preset NAME or -- MODULE [ARGS...]")
    return args, tail[0], tail[1:]


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    args, module, module_args = parse(sys.argv[1:] if argv is None else argv)
    repo = Path(args.repo or Path(__file__).resolve().parent.parent)
    repo = Path(git(repo, "rev-parse", "--show-toplevel"))
    revisions = [resolve(repo, "base", args.base), resolve(repo, "head", args.head)]
    load_before, wall0 = _load(), time.perf_counter()
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    runs: list[Run] = []
    try:
        with worktrees(repo, revisions) as (tmp, trees):
            for i in range(args.runs):
                order = [0, 1] if args.order == "ab" or i % 2 == 0 else [1, 0]
                for k in order:
                    side = revisions[k].side
                    run = run_once(
                        2 * i + order.index(k),
                        side,
                        trees[k],
                        tmp=tmp,
                        python=args.python,
                        module=module,
                        args=module_args,
                        timeout=args.timeout,
                    )
                    runs.append(run)
                    print(
                        f"bench.ab: run {i + 1}/{args.runs} {side} {revisions[k].short} "
                        f"{run.seconds:.1f} s, load {os.getloadavg()[0]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - wall0
    load_after = _load()

    first = runs[0].values
    patterns = args.metric or ["*"]
    if args.preset:
        specs = PRESETS[args.preset].metrics(first)
    else:
        specs = [
            MetricSpec(path, path, True)
            for path in first
            if any(fnmatch.fnmatchcase(path, p) for p in patterns)
        ]
    missing = [s.path for s in specs if all(s.path not in r.values for r in runs)]
    if missing or not specs:
        raise RuntimeError(f"metrics {missing or patterns} not in the results: {sorted(first)}")
    rows = rows_of(specs, runs, args.tolerance)

    where = {r.side: r.where["gossip"] for r in runs}
    command = " ".join([module, *module_args])
    print(
        f"# bench.ab: {command}; {args.runs} runs per side, order {args.order}; "
        f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()} "
        f"({args.python})"
    )
    for r in revisions:
        subject = r.subject if len(r.subject) <= 72 else r.subject[:69] + "..."
        print(f"# {r.side}: {r.rev} = {r.short} {subject}; gossip from {where[r.side]}")
    print(
        f"# load average (1/5/15 min) before {load_before}, after {load_after}; wall {wall:.0f} s"
    )
    print()
    print_table(rows)
    judged = [row for row in rows if row.spec.judged]
    failed = [row for row in judged if not row.passed]
    print()
    print(
        f"Judged (bold): {len(judged) - len(failed)} of {len(judged)} no slower than base "
        f"+ {args.tolerance * 100:g} % (ratio of the medians)"
        + (f"; not: {', '.join(row.spec.label for row in failed)}" if failed else "")
    )

    report: dict[str, object] = {
        "module": module,
        "args": module_args,
        "preset": args.preset,
        "runs_per_side": args.runs,
        "order": args.order,
        "tolerance": args.tolerance,
        "python": args.python,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "tmp": str(tmp),
        "revisions": [
            {**attrs.asdict(r), "short": r.short, "tree": str(t), "gossip": where[r.side]}
            for r, t in zip(revisions, trees, strict=True)
        ],
        "load_before": load_before,
        "load_after": load_after,
        "wall_s": wall,
        "metrics": [
            {
                "path": row.spec.path,
                "label": row.spec.label,
                "judged": row.spec.judged,
                "base": row.base,
                "head": row.head,
                "base_median": row.base_median,
                "head_median": row.head_median,
                "ratio": row.ratio,
                "paired_ratios": row.paired,
                "passed": row.passed,
                "verdict": row.verdict,
            }
            for row in rows
        ],
        "runs": [attrs.asdict(r) for r in runs],
        "passed": not failed,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    if args.check and failed:
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("bench.ab: interrupted (worktrees removed)", file=sys.stderr)
        raise SystemExit(130) from None
