"""Training streams a store larger than its memory budget (DESIGN.md: "memory-mapped so a corpus
larger than RAM streams").

The test writes a 2.06 GiB store chunk by chunk (this process never holds it) and trains one
epoch of a small early_fusion model on it in a child process whose memory is capped with
RLIMIT_DATA at what torch + mmerkit take once imported (~0.45 GiB with CPU torch) plus 512 MiB
for everything the run allocates: ~1 GiB, half the store.

Why RLIMIT_DATA, and not RLIMIT_AS or peak RSS:
  * RLIMIT_AS caps the address space, which includes the read-only memory map of the whole
    store (and importing torch alone reserves a lot of it); it would fail however lazily the
    data is read.
  * Peak RSS (VmHWM, ru_maxrss) counts the pages of the mapped store the epoch has touched. Those
    are clean page-cache pages that the kernel drops under memory pressure, so RSS grows toward
    the store size on a machine with free memory even though nothing is copied.
  * RLIMIT_DATA (Linux >= 4.7) caps private writable memory: heap, malloc'd numpy arrays and
    torch tensors, but not a read-only file mapping. It is exactly "what the process has to hold
    in RAM": a loader that np.load()ed the features, or copied them anywhere, would fail with
    MemoryError. The child proves the cap binds by trying such a copy after training.
The child also samples its anonymous RSS (RssAnon) and reports it with VmHWM for the record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import LABELS

from mmerkit.data.batch import StoreDataset
from mmerkit.data.store import FORMAT, FeatureStore

SRC = Path(__file__).resolve().parents[1] / "src"

HEADROOM = 512 << 20  # what the run may allocate beyond the imports (one batch is 32 MiB)
T, D = 16, 16384  # 1 MiB per sample: few, wide samples keep the epoch cheap in compute
SPLITS = {"train": 2048, "valid": 32, "test": 32}  # 2.06 GiB of features in all

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"),
                                 reason="RLIMIT_DATA semantics and /proc/self/status are Linux's")]


def _write_features(path: Path, n: int, seed: int, chunk: int = 64) -> None:
    """(n, T, D) float32 .npy written chunk by chunk with plain file writes: nothing is mapped
    or kept in this process. Values are nonzero everywhere, so every page must really be read."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((chunk, T, D), dtype=np.float32)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (n, T, D)})
        for start in range(0, n, chunk):
            (base[: min(chunk, n - start)] + np.float32(start / n)).tofile(f)


def build_big_store(path: Path) -> int:
    """A FeatureStore with one wide modality 'x'; returns the bytes of its feature arrays."""
    rng = np.random.default_rng(0)
    path.mkdir()
    for i, (split, n) in enumerate(SPLITS.items()):
        (path / split).mkdir()
        _write_features(path / split / "x.npy", n, seed=i)
        np.save(path / split / "x_len.npy", np.full(n, T, np.int32))
        y = (rng.random((n, len(LABELS))) < 0.4).astype(np.uint8)
        y[y.sum(1) == 0, 0] = 1
        np.save(path / split / "labels.npy", y)
    meta = {"format": FORMAT, "name": "big", "labels": LABELS, "modalities": {"x": {"dim": D, "max_len": T}},
            "extras": {}, "aligned": True, "splits": SPLITS, "source": "test:memory-budget", "created_by": "test"}
    (path / "meta.json").write_text(json.dumps(meta))
    return sum(n * T * D * 4 for n in SPLITS.values())


@pytest.fixture
def big_store(tmp_path):
    need = sum(SPLITS.values()) * T * D * 4
    if shutil.disk_usage(tmp_path).free < 2 * need:
        pytest.skip(f"needs {2 * need / 1e9:.1f} GB free disk space in {tmp_path}")
    path = tmp_path / "big"
    try:
        size = build_big_store(path)
        yield path, size
    finally:
        shutil.rmtree(path, ignore_errors=True)  # do not leave 2 GB to pytest's kept tmp dirs


CHILD = r'''
import json, resource, sys, threading, time

store, out, headroom = sys.argv[1], sys.argv[2], int(sys.argv[3])

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

import numpy as np
import torch
torch.set_num_threads(1)
from mmerkit import api
import mmerkit.engine, mmerkit.models  # everything training imports, so the limit covers the run only

budget = status("VmData") + headroom
resource.setrlimit(resource.RLIMIT_DATA, (budget, budget))
peak = {"anon": 0, "data": 0}
def sample():
    while True:
        peak["anon"] = max(peak["anon"], status("RssAnon"))
        peak["data"] = max(peak["data"], status("VmData"))
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()

t0 = time.monotonic()
[res] = api.train("early_fusion", store, out=out, epochs=1, progress=False, accelerator="cpu", devices=1,
                  batch_size=32, eval_batch_size=32,
                  overrides=["model.hidden_size=16", "model.layers=1", "model.intermediate_size=32", "model.num_heads=2"])
train_s = time.monotonic() - t0
peak["anon"] = max(peak["anon"], status("RssAnon"))
try:  # the control: reading the train features eagerly must NOT fit the budget
    np.load(store + "/train/x.npy")
    control = "loaded"
except MemoryError:
    control = "MemoryError"
print(json.dumps({"budget": budget, "train_s": train_s, "peak_anon": peak["anon"], "peak_data": peak["data"], "vm_hwm": status("VmHWM"),
                  "control": control, "micro_f1": res.test_metrics["micro_f1"]}))
'''


def test_train_one_epoch_within_a_memory_budget_smaller_than_the_store(big_store, tmp_path):
    path, store_bytes = big_store
    # opening the store and its Dataset maps the features; a read copies only the rows asked for
    ds = StoreDataset(FeatureStore(path), "train")
    assert isinstance(ds.split.features["x"], np.memmap)
    rows = ds.__getitems__([5, 1])["x:x"]
    assert rows.shape == (2, T, D) and not isinstance(rows, np.memmap)
    del ds, rows

    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path), str(tmp_path / "runs"), str(HEADROOM)],
                          env=env, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    budget = report["budget"]
    print(f"\nstore {store_bytes / 2**30:.2f} GiB; child RLIMIT_DATA {budget / 2**20:.0f} MiB, peak VmData "
          f"{report['peak_data'] / 2**20:.0f} MiB, peak RssAnon {report['peak_anon'] / 2**20:.0f} MiB, "
          f"VmHWM {report['vm_hwm'] / 2**20:.0f} MiB (incl. mapped store pages); "
          f"train {report['train_s']:.1f} s, child wall {wall:.1f} s")
    assert budget < store_bytes / 1.5, "torch alone takes most of the budget: make the store bigger"
    assert report["control"] == "MemoryError", "the budget does not bind: an eager load of the store fit in it"
    assert report["peak_data"] <= budget and report["peak_anon"] < budget
    [run] = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    saved = json.loads((run / "test_metrics.json").read_text())  # the run finished and wrote its result
    assert saved["micro_f1"] == report["micro_f1"] and saved["best_epoch"] == 1
