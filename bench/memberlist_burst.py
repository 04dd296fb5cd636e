"""hashicorp/memberlist under a burst: how much of M user messages reaches every node, how fast.

Run: ``python -m bench.memberlist_burst --nodes 3 16 64 --messages 10000 --runs 3``
(``--interval-ms 5``, ``--timeout 60``; ``--json FILE`` keeps every run's raw result).

Needs Debian's Go and memberlist (no network, no module proxy)::

    apt-get install golang-go golang-github-hashicorp-memberlist-dev

The Go program in ``bench/memberlist_burst/`` is built once, in GOPATH mode
(``GO111MODULE=off GOPATH=/usr/share/gocode go build``), into a cache directory
(``$XDG_CACHE_HOME/trio-gossip/memberlist_burst`` or ``~/.cache/...``), keyed by the source,
the Go version and the package version.

What one run measures: N memberlists (memberlist 0.2.2, LAN profile but for the gossip interval,
unencrypted) in one Go process on 127.0.0.1, each on its own port. Every node's
``Delegate.GetBroadcasts`` returns its ``TransmitLimitedQueue.GetBroadcasts`` (RetransmitMult 4),
and every node re-queues each message the first time it receives it (as serf does). Once all
nodes see N members, node 0 calls ``QueueBroadcast`` M times as fast as it can (256-byte
messages, each with a unique sequence number). The run stops when nodes 1..N-1 hold all M
messages, after ``--timeout`` seconds, or once every queue is empty and nothing has arrived for
``--settle`` seconds (memberlist has no repair path for user messages, so nothing more can
arrive). Reported per N, median over the runs:

* **delivered**: distinct messages received, summed over nodes 1..N-1, over M * (N - 1);
* **min node**: the fewest messages any one node got;
* **held by all**: messages that every receiving node holds;
* **to all, msg/s**: held-by-all count over the time from the first ``QueueBroadcast`` to the
  last delivery of any of those messages (the sustained rate at which messages reach every node);
* **per node, msg/s**: one node's distinct messages over the time of its last new one;
* **complete**: time until every node held all M (``never`` when a run did not get there);
* **CPU s**: the Go process's user + system CPU time (getrusage) over the burst.

``run_memberlist(n, m, interval_ms, timeout)`` runs one burst and returns the Go program's JSON
object, for benchmarks that interleave memberlist runs with runs of this library.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The Go program's source directory.
SOURCE_DIR = Path(__file__).resolve().parent / "memberlist_burst"

#: Debian installs Go packages' sources here; GOPATH mode builds against it.
GOPATH = "/usr/share/gocode"

#: The Debian package that ships memberlist's source.
DEB_PACKAGE = "golang-github-hashicorp-memberlist-dev"

INSTALL_HINT = f"apt-get install golang-go {DEB_PACKAGE}"


class MemberlistUnavailableError(RuntimeError):
    """Go or Debian's memberlist package is missing, or the Go program did not build."""


def _go_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GO111MODULE="off",
        GOPATH=GOPATH,
        GOPROXY="off",
        GOFLAGS="",
        GOCACHE=str(cache / "gocache"),
    )
    return env


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trio-gossip" / "memberlist_burst"


def _package_version() -> str:
    """The Debian package's version (memberlist's source carries no version constant)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", DEB_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError:
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@functools.cache
def build_binary() -> Path:
    """Build the Go program (once per source, Go and package version) and return its path."""
    go = shutil.which("go")
    if go is None:
        raise MemberlistUnavailableError(f"Go is not installed; run: {INSTALL_HINT}")
    if not (Path(GOPATH) / "src/github.com/hashicorp/memberlist/memberlist.go").is_file():
        raise MemberlistUnavailableError(
            f"memberlist's source is not under {GOPATH}; run: {INSTALL_HINT}"
        )
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    go_version = subprocess.run(
        [go, "version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    package_version = _package_version()
    digest = hashlib.sha256()
    for source in sorted(SOURCE_DIR.glob("*.go")):
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    digest.update(go_version.encode() + b"\0" + package_version.encode())
    binary = cache / f"memberlist_burst-{digest.hexdigest()[:16]}"
    if binary.is_file():
        return binary
    version = f"{DEB_PACKAGE} {package_version}"
    tmp = binary.with_suffix(f".tmp{os.getpid()}")
    proc = subprocess.run(
        [go, "build", "-ldflags", f"-X 'main.memberlistVersion={version}'", "-o", str(tmp), "."],
        cwd=SOURCE_DIR,
        env=_go_env(cache),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise MemberlistUnavailableError(
            f"go build failed (is {DEB_PACKAGE} installed? {INSTALL_HINT}):\n{proc.stderr}"
        )
    tmp.replace(binary)
    return binary


def run_memberlist(
    n: int, m: int, interval_ms: float, timeout: float, *, settle: float = 2.0
) -> dict[str, Any]:
    """One burst of ``m`` messages from node 0 of an ``n``-node memberlist cluster.

    Returns the Go program's JSON object (keys such as ``delivered_fraction``,
    ``sustained_rate_msgs``, ``time_to_complete_s``, ``cpu_s``; see ``bench/memberlist_burst``).
    Raises ``MemberlistUnavailableError`` when Go or the package is missing.
    """
    binary = build_binary()
    args = [
        str(binary),
        "-json",
        f"-n={n}",
        f"-m={m}",
        f"-interval={interval_ms}ms",
        f"-timeout={timeout}",
        f"-settle={settle}",
    ]
    # The join (up to 60 s) and the settle time come on top of the burst's timeout.
    proc = subprocess.run(
        args, capture_output=True, text=True, check=False, timeout=timeout + settle + 120
    )
    if proc.returncode != 0:
        msg = f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}"
        raise RuntimeError(msg)
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(n: int, runs: Sequence[dict[str, Any]]) -> str:
    """One markdown table row: medians over ``runs`` of one N."""
    m = runs[0]["m"]
    complete = [r["time_to_complete_s"] for r in runs if r["time_to_complete_s"] is not None]
    if len(complete) == len(runs):
        complete_cell = f"{_median(complete):.1f} s"
    elif complete:
        complete_cell = f"{_median(complete):.1f} s ({len(complete)}/{len(runs)} runs)"
    else:
        complete_cell = "never"
    stops = ",".join(sorted({r["stop_reason"] for r in runs}))
    drops = [r["udp_kernel_drops"] or 0 for r in runs]
    cells = [
        str(n),
        str(m),
        f"{runs[0]['interval_ms']:g}",
        str(len(runs)),
        f"{100 * _median([r['delivered_fraction'] for r in runs]):.2f} %",
        f"{_median([r['delivered_min'] for r in runs]):.0f}",
        f"{_median([r['held_by_all'] for r in runs]):.0f}",
        f"{_median([r['sustained_rate_msgs'] for r in runs]):.0f}",
        f"{_median([r['node_rate_median_msgs'] for r in runs]):.0f}",
        complete_cell,
        f"{_median([r['cpu_s'] for r in runs]):.1f}",
        f"{_median(drops):.0f} / {_median([r['log_handler_queue_full'] for r in runs]):.0f}",
        stops,
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| N | M | interval ms | runs | delivered | min node | held by all | to all, msg/s "
    "| per node, msg/s | complete | CPU s | UDP drops / handler full | stop |\n"
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 16, 64])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per burst")
    parser.add_argument("--settle", type=float, default=2.0, help="quiet seconds to stop early")
    parser.add_argument("--json", type=Path, help="write every run's raw result here")
    args = parser.parse_args(argv)

    try:
        binary = build_binary()
    except MemberlistUnavailableError as exc:
        sys.exit(f"bench.memberlist_burst: {exc}")
    print(
        f"# memberlist burst, {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, "
        f"{os.cpu_count()} CPUs ({_cpu_model()})"
    )
    print(f"# binary {binary}")

    results: dict[int, list[dict[str, Any]]] = {n: [] for n in args.nodes}
    for run in range(args.runs):
        for n in args.nodes:  # interleaved: run 1 of every N, then run 2, ...
            r = run_memberlist(n, args.messages, args.interval_ms, args.timeout, settle=args.settle)
            results[n].append(r)
            print(
                f"# run {run + 1} N={n}: delivered {100 * r['delivered_fraction']:.2f} %, "
                f"{r['sustained_rate_msgs']:.0f} msg/s to all, complete "
                f"{r['time_to_complete_s']}, stop {r['stop_reason']} after {r['elapsed_s']} s",
                flush=True,
            )
    first = results[args.nodes[0]][0]
    print(f"\n{first['memberlist_version']}, {first['go_version']}, medians of {args.runs} runs\n")
    print(HEADER)
    for n in args.nodes:
        print(summarize(n, results[n]))
    if args.json is not None:
        args.json.write_text(json.dumps({str(n): rs for n, rs in results.items()}, indent=1))


if __name__ == "__main__":
    main()
