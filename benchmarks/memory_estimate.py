"""Check mmerkit.memory against reality: the estimate vs the measured peak RSS increase of two real
training steps on CPU. Usage: python benchmarks/memory_estimate.py MODEL PRESET|- T BATCH
(e.g. `carat carat-small 300 16`); prints one JSON line."""

from __future__ import annotations

import gc
import json
import os
import resource
import sys

import torch

from mmerkit.config import load_config
from mmerkit.data.batch import StoreDataset, collate
from mmerkit.data.store import FeatureStore
from mmerkit.data.synthetic import SynthConfig, write_synthetic
from mmerkit.memory import estimate_training_memory
from mmerkit.models.base import create_model
from mmerkit.optim import build_optimizer


def main(model_name: str, preset: str, t: int, b: int) -> dict:
    torch.set_num_threads(1)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"mmerkit-memcal-T{t}")
    if not os.path.exists(path):
        write_synthetic(path, SynthConfig(samples=max(3 * b, 60), seq_len=t, short_rate=0.0))
    store = FeatureStore(path)
    cfg = load_config(model_name, None, None if preset == "-" else preset, [f"train.batch_size={b}"])
    model = create_model(cfg.model_name, store.spec(), cfg.model)
    est = estimate_training_memory(model, store, cfg)
    opt = build_optimizer(model, cfg.optim)
    batch = collate(StoreDataset(store, "train").__getitems__(list(range(b))))
    gc.collect()
    base = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # RSS now
    model.train()
    for _ in range(2):
        out = model(batch)
        model.loss(out, batch)["total"].backward()
        opt.step()
        opt.zero_grad()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"model": model_name, "T": t, "B": b, "estimate": est.total, "measured_increase": peak - base,
            "ratio": round(est.total / max(peak - base, 1), 3)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
