from __future__ import annotations

import os
import threading
from collections.abc import Iterator

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


def _netns_of(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:  # not Linux, or the thread has just ended
        return None
    return (st.st_dev, st.st_ino)


_HOME_NETNS = _netns_of("/proc/self/ns/net")


@pytest.fixture(autouse=True)
def _threads_stay_in_the_home_namespace() -> Iterator[None]:
    """After every test, every thread of the process is in the network namespace the run
    started in: a thread left in another one (say, trio's idle worker threads, started while
    the trio thread was in a namespace) would put whatever it runs later, processes
    included, in the wrong network."""
    yield
    if _HOME_NETNS is None:
        return
    names = {t.native_id: t.name for t in threading.enumerate()}
    strays = [
        names.get(int(tid), tid)
        for tid in os.listdir("/proc/self/task")
        if _netns_of(f"/proc/self/task/{tid}/ns/net") not in (_HOME_NETNS, None)
    ]
    assert strays == [], f"threads left in another network namespace: {strays}"
