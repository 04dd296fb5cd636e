from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `ci`: more examples, no deadline (shared, noisy machines); `dev`: quick.
settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile("dev", max_examples=50, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

#: ``GOSSIP_TEST_ORDER=reversed`` (with ``-p no:randomly``): the test files in reverse order,
#: each file's tests in their own order. Random orders come from pytest-randomly.
ORDER_VARIABLE = "GOSSIP_TEST_ORDER"


def _randomly_active(config: pytest.Config) -> bool:
    return config.pluginmanager.hasplugin("randomly") and bool(
        config.getoption("randomly_reorganize", False)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = os.environ.get(ORDER_VARIABLE, "")
    if order == "":
        return
    if order != "reversed":
        raise pytest.UsageError(f"{ORDER_VARIABLE} must be 'reversed' or unset: {order!r}")
    if _randomly_active(config):
        raise pytest.UsageError(f"{ORDER_VARIABLE}=reversed needs -p no:randomly")
    by_file: dict[Path, list[pytest.Item]] = {}
    for item in items:
        by_file.setdefault(item.path, []).append(item)
    items[:] = [item for path in reversed(by_file) for item in by_file[path]]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # pytest-randomly names its seed in the header, which -q hides.
    config = terminalreporter.config
    if _randomly_active(config):
        seed = config.getoption("randomly_seed")
        order = f"random, --randomly-seed={seed} replays it (make test TEST_SEED={seed})"
    else:
        order = "reversed files" if os.environ.get(ORDER_VARIABLE) else "default"
    terminalreporter.write_line(f"test order: {order}")


def _netns_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # not Linux, or the thread has just ended
        return None
    return (st.st_dev, st.st_ino)


_HOME_NETNS = _netns_of("/proc/self/ns/net")


def _stray_threads() -> list[str]:
    """Threads of this process outside the network namespace the run started in."""
    if _HOME_NETNS is None:
        return []
    names = {t.native_id: t.name for t in threading.enumerate()}
    return [
        names.get(int(tid), tid)
        for tid in os.listdir("/proc/self/task")
        if _netns_of(f"/proc/self/task/{tid}/ns/net") not in (_HOME_NETNS, None)
    ]


def _children() -> list[str]:
    """This process's child processes (running or not yet reaped), from ``/proc``."""
    if not os.path.isdir("/proc/self/task"):
        return []
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:  # it has just ended
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        state, ppid = rest.split()[:2]
        if int(ppid) == me:
            found.append(f"{entry} {comm} ({state})")
    return found


@pytest.fixture(autouse=True)
def _leaves_nothing_behind() -> Iterator[None]:
    """After every test: every thread of the process is in the network namespace the run
    started in (a thread left in another one, say an idle trio worker thread started while
    the trio thread was in a namespace, would put whatever it runs later, processes
    included, in the wrong network), and no child process is left (it would hold ports and
    CPU into later tests)."""
    yield
    assert _stray_threads() == [], "threads left in another network namespace"
    assert _children() == [], "child processes left behind"
