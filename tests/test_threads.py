"""Issue 20 item 8: OpenMP spin-waiting on shared cores, and an honest demo estimate."""

from __future__ import annotations

import os
import subprocess
import sys

from mmerkit import api


def _omp_policy_after_import(env: dict[str, str]) -> str:
    code = "import mmerkit, os; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {**env, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_import_makes_openmp_threads_wait_passively():
    """Spinning OpenMP threads made a demo epoch 294 s instead of 76 s at load 12 on 2 cores
    (benchmarks/threads.md); `import mmerkit` happens before torch loads OpenMP."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert _omp_policy_after_import(env) == "PASSIVE"
    assert _omp_policy_after_import({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"  # the user's choice wins


def test_demo_estimate_follows_the_load():
    idle = api.demo_time_estimate(load=0.0, cores=2)
    assert idle.startswith("the demo takes about 2-3 minutes here") and "load" not in idle
    busy = api.demo_time_estimate(load=13.0, cores=2)
    assert "about 14-21 minutes here" in busy and "load of 13.0 on 2 CPU core(s)" in busy
    assert "about 4-6 minutes" in api.demo_time_estimate(load=0.0, cores=1)
