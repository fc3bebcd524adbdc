"""Real multi-process runs on CPU (gloo): `mmer train --devices 2`, a torchrun launch without
--devices, and sharded evaluation of an odd-sized split. Queue/prototype identity across ranks is
tested in test_carat_ddp.py and not repeated here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import TINY, toy_store

from mmerkit.models.carat import CARAT

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
SRC = Path(__file__).resolve().parents[1] / "src"


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        [str(SRC), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    env.pop("LOCAL_WORLD_SIZE", None)
    env.pop("WORLD_SIZE", None)
    return env


def _run(cmd: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    """Run in its own process group, so a hung rank is killed with its launcher on timeout."""
    with subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            pytest.fail(f"timed out after {timeout}s: {cmd}\n{err[-3000:]}")
    proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
    assert proc.returncode == 0, f"{cmd}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def _mmer_train(store: Path, out: Path, model: str, sets: list[str], *extra: str) -> Path:
    cmd = [sys.executable, "-m", "mmerkit", "train", "-m", model, "-d", str(store), "--out", str(out),
           "--accelerator", "cpu", "--deterministic", *extra]
    for s in [*sets, "train.progress=false"]:
        cmd += ["--set", s]
    _run(cmd)
    [run] = [p for p in out.iterdir() if p.is_dir()]
    return run


def _carat_sets() -> list[str]:
    names = {"hidden_size", "num_heads", "intermediate_size", "proj_size", "layers", "moco_queue", "dropout"}
    return [f"model.{k}={json.dumps(v)}" for k, v in CARAT.test_params.items() if k in names]


def test_carat_two_ranks_match_one_rank(tiny_store, tmp_path):
    """Two gloo ranks with batch 16 each vs one process with batch 32.

    The engine does NOT divide train.batch_size by the world size: each rank takes `batch_size`
    rows, so the same GLOBAL batch needs batch_size=16 on 2 ranks vs 32 on 1. The ShardSampler
    permutation depends on (seed, epoch) only and rank r takes rows r, r+2, ... of each global
    batch, so both runs see the same samples per optimiser step; dropout is 0 (CARAT.test_params)
    and the initial weights come from the same seed. What still differs, and why the tolerance:
      * CARAT's in-batch terms (sample/modality shuffle augmentation, supervised contrast against
        the batch) see 16 rows per rank instead of 32, and the sum-reduced MSE terms give a
        gradient half as large per rank (DDP averages), which Adam mostly but not exactly
        normalises away;
      * the momentum queue is filled in rank order (rank 0's rows, then rank 1's), not in batch
        order.
    So the runs are close, not bit-identical: validation micro-F1 and macro-F1 within 0.1 and
    hamming loss within 0.05 (32 valid samples x 6 labels: one flipped decision moves micro-F1
    by ~0.005). Both runs must also have trained (same best epoch is not required)."""
    sets = [*_carat_sets(), "train.epochs=2", "train.eval_batch_size=7"]
    one = _mmer_train(tiny_store, tmp_path / "one", "carat", [*sets, "train.batch_size=32"], "--devices", "1")
    two = _mmer_train(tiny_store, tmp_path / "two", "carat", [*sets, "train.batch_size=16"], "--devices", "2",
                      "--strategy", "ddp")
    assert json.loads((two / "env.json").read_text())["world_size"] == 2
    assert json.loads((one / "env.json").read_text())["world_size"] == 1
    v1, v2 = (json.loads((d / "valid_metrics.json").read_text()) for d in (one, two))
    for key, tol in (("micro_f1", 0.1), ("macro_f1", 0.1), ("hamming_loss", 0.05)):
        assert abs(v1[key] - v2[key]) <= tol, (key, v1[key], v2[key])
    # metrics at threshold 0.5 are coarse on 32 samples; the weights are the sharper check: after
    # 6 Adam steps (each moves a weight by <= ~lr) the runs differ by ~0.002 at most, measured
    from safetensors.numpy import load_file

    w1, w2 = (load_file(d / "export" / "model.safetensors") for d in (one, two))
    trained = [k for k in w1 if w1[k].dtype.kind == "f" and "queue" not in k and "proto" not in k]
    assert max(float(np.abs(w1[k] - w2[k]).max()) for k in trained) <= 0.01
    # the per-epoch validation rows too: same number of epochs, each close
    rows = [[r for r in (d / "metrics.csv").read_text().splitlines()[1:] if ",valid," in r] for d in (one, two)]
    assert len(rows[0]) == len(rows[1]) == 2


def test_torchrun_without_devices_uses_all_processes(tmp_path):
    """`torchrun --nproc_per_node 2 -m mmerkit train` without --devices: one run directory
    trained by 2 ranks (it used to start two independent single-process runs that raced)."""
    store = toy_store(tmp_path / "store")
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mmerkit", "train",
           "-m", "early_fusion", "-d", str(store.path), "--accelerator", "cpu", "--epochs", "1",
           "--out", str(tmp_path / "runs")]
    for s in [*TINY, "train.progress=false"]:
        cmd += ["--set", s]
    _run(cmd)
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    assert json.loads((runs[0] / "env.json").read_text())["world_size"] == 2
    assert (runs[0] / "test_metrics.json").exists()


WORKER = textwrap.dedent('''
    import json, sys
    import numpy as np
    import torch
    from lightning_fabric import Fabric
    from mmerkit.config import load_config
    from mmerkit.data.store import FeatureStore
    from mmerkit.engine import Engine
    from mmerkit.models.base import create_model
    from mmerkit.predict import collect_rows

    store_path, out, world = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)
    cfg = load_config("early_fusion", None, None, [*json.loads(sys.argv[4]), "train.eval_batch_size=4",
                                                   "train.progress=false"])
    fabric = Fabric(accelerator="cpu", devices=world, strategy="ddp" if world > 1 else "auto")
    if world > 1:
        fabric.launch()
    engine = Engine(cfg, fabric)
    store = FeatureStore(store_path)
    torch.manual_seed(0)
    model = create_model("early_fusion", store.spec(), cfg.model)
    for split in ("valid", "test", "one"):
        # the rows this rank evaluates, gathered in rank order: each row must appear once overall
        rows = collect_rows(lambda b: {"index": b.index}, engine.loader(store, split, train=False),
                            engine.gather if world > 1 else None)["index"]
        res = engine.predict_split(model, store, split)
        if fabric.global_rank == 0:
            np.save(f"{out}/{split}_rows_{world}.npy", rows)
            np.save(f"{out}/{split}_probs_{world}.npy", res.probs)
    fabric.barrier()
''')


def test_sharded_eval_covers_every_sample_once(tmp_path):
    """Odd split sizes (25 valid, 31 test, and a 1-sample split that leaves rank 1 without a
    row) over 2 ranks with eval batch 4: the gathered rows are a permutation of the split (no
    padding duplicates, none missing), their ids are the split's ids, and the probabilities
    equal a 1-process evaluation of the same weights (atol 1e-6: only the batch composition
    differs, which may change float summation order)."""
    from helpers import LABELS, random_split

    from mmerkit.data.store import write_store

    sizes = {"train": 64, "valid": 25, "test": 31, "one": 1}
    store = write_store(tmp_path / "store", {s: random_split(n, seed) for seed, (s, n) in enumerate(sizes.items())},
                        LABELS, name="toy")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    for world in (1, 2):
        _run([sys.executable, str(script), str(store.path), str(tmp_path), str(world), json.dumps(TINY)])
    for split, n in (("valid", 25), ("test", 31), ("one", 1)):
        rows = np.load(tmp_path / f"{split}_rows_2.npy")
        assert len(rows) == n and sorted(rows.tolist()) == list(range(n))
        ids = list(store.split(split).ids)
        assert len(set(ids)) == n and sorted(ids[r] for r in rows) == sorted(ids)
        p1, p2 = np.load(tmp_path / f"{split}_probs_1.npy"), np.load(tmp_path / f"{split}_probs_2.npy")
        assert p1.shape == p2.shape == (n, 3)
        np.testing.assert_allclose(p2, p1, atol=1e-6)
