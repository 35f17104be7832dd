"""The load test, run small through a real cluster: its JSON line keeps its contract, and
every message sent is answered and stored (none lost), with users speaking Streamlit's
protocol and with Chromium pages. Its figures are not checked here:
they are the benchmark's (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from parley.bench.load import _ms
from tests.e2e.test_cluster import _missing


def test_quantiles_are_nearest_rank_in_milliseconds() -> None:
    assert _ms([], 0.5) is None
    assert _ms([0.1, 0.2, 0.3, 0.4], 0.5) == 200
    assert _ms([0.1, 0.2, 0.3, 0.4], 0.95) == 400
    assert _ms([1.0], 0.95) == 1000


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("driver", ["protocol", "browser"])
def test_a_short_load_through_the_cluster_loses_no_message(driver: str) -> None:
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"the load test needs {missing} (make system-deps installs them)")
        pytest.skip(f"needs {missing}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "parley.bench.load",
            "--users",
            "2",
            "--processes",
            "1",
            "--seconds",
            "4",
            "--think-s",
            "0.5",
            "--words",
            "20",
            "--word-delay-ms",
            "10",
            "--driver",
            driver,
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("users", "processes", "completed", "errors", "lost", "ttft_p95_ms"):
        assert key in last
    assert last["users"] == 2 and last["processes"] == 1
    assert last["completed"] >= 2 and last["errors"] == 0 and last["lost"] == 0
    assert last["rss_mb_per_session"] is not None and last["cpu_s_per_answer"] > 0
    assert "| processes | users |" in done.stdout  # the table, for the README
