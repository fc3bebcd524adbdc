"""A real crash: `mmer train` is SIGKILLed mid-epoch, then `--resume` must finish with exactly the
metrics of an uninterrupted run. (In-process resume after a clean epoch, and the fallback of
`load_training_state` to last.ckpt.prev, are unit-tested in test_engine.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, toy_store

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "src"


def _cmd(store: Path, out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "mmerkit", "train", "-m", "early_fusion", "-d", str(store), "--out", str(out),
           "--accelerator", "cpu", "--devices", "1", "--deterministic", "--epochs", "2", *extra]
    for s in [*TINY, "train.batch_size=4", "train.checkpoint_every_n_steps=3", "train.progress=false"]:
        cmd += ["--set", s]
    return cmd


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))


def _finish(cmd: list[str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _only_run(out: Path) -> Path:
    [run] = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    store = toy_store(tmp_path / "store", n_train=600).path
    full = _only_run(_finish_and_out(_cmd(store, tmp_path / "full"), tmp_path / "full"))

    out = tmp_path / "crash"
    p = subprocess.Popen(_cmd(store, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        # wait for two mid-run saves, so both last.ckpt and last.ckpt.prev exist
        while not list(out.glob("*/last.ckpt.prev")):
            assert p.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait()
    run = _only_run(out)
    assert not (run / "test_metrics.json").exists(), "killed too late: the run had finished"
    state = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["train_state"]
    assert state["epoch"] < 2

    # the kill may also have hit a write: no temporary file may sit under a checkpoint's name
    # (writes are atomic); a truncated last.ckpt must fall back to last.ckpt.prev with a warning
    data = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(data[: len(data) // 3])
    resumed = _finish(_cmd(store, out, "--resume"))
    assert "truncated" in resumed.stderr and "last.ckpt.prev" in resumed.stderr, resumed.stderr[-2000:]
    assert _only_run(out) == run

    a, b = (json.loads((d / "test_metrics.json").read_text()) for d in (full, run))
    assert a == b
    # validation rows are identical; the TRAIN row of the interrupted epoch averages only the
    # batches run after the resume (the engine does not checkpoint partial epoch sums), so skip it
    ha, hb = ([r for r in (d / "metrics.csv").read_text().splitlines() if ",valid," in r] for d in (full, run))
    assert len(ha) == 2 and ha == hb


def _finish_and_out(cmd: list[str], out: Path) -> Path:
    _finish(cmd)
    return out
