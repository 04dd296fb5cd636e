"""``gossip demo`` in-process, small: 100 % delivery before and after the stop."""

from __future__ import annotations

import io

import pytest
import trio

from gossip import cli
from gossip.cli.demo import DemoOptions, percentile, run_demo


@pytest.mark.parametrize("static", [False, True])
async def test_small_demo_reports_full_delivery_before_and_after_the_stop(static: bool) -> None:
    out = io.StringIO()
    with trio.fail_after(45):
        report = await run_demo(
            DemoOptions(nodes=8, messages=10, rate=100, seed=1, static=static), out=out
        )
    assert report.ok
    assert len(report.stopped) == 2
    before, after = report.phases
    assert (before.live_nodes, after.live_nodes) == (8, 6)
    for phase in report.phases:
        assert phase.delivery_ratio == 1.0
        assert phase.deliveries == phase.expected_deliveries == 10 * (phase.live_nodes - 1)
        assert phase.complete == 10
        assert phase.duplicates == 0
        assert len(phase.latency_all) == 10
        assert phase.packets >= phase.packets_by_type["push"] >= 10 * (phase.live_nodes - 1)
    text = out.getvalue()
    assert "\x1b[" not in text  # not a terminal: plain progress lines
    assert text.count("100.00 %") == 2
    assert "every message reached every live node exactly once" in text
    if static:
        assert report.converged_in is None and report.detection == ()
    else:
        # Membership converged, and every survivor reported both stopped nodes failed.
        assert report.converged_in is not None and report.converged_in < 10
        assert len(report.detection) == 6 * 2
        assert "failure reports" in text


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 1) == 3.0


@pytest.mark.parametrize(
    "args", [["--nodes", "3"], ["--messages", "0"], ["--rate", "0"], ["--size", "2"]]
)
def test_bad_demo_arguments_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        cli.main(["demo", *args])
    assert exc_info.value.code == 2
    assert "gossip demo: error" in capsys.readouterr().err
