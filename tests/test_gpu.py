"""The CUDA path (skipped without a GPU; `pytest -m gpu` on a GPU machine runs only these).

Nothing else in the suite assumes a GPU; these check that training, bf16 autocast, evaluation,
export and prediction work on CUDA and agree with the CPU, and that 2 GPUs (NCCL) train.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from mmerkit import api
from mmerkit.predict import Predictor

pytestmark = pytest.mark.gpu

CARAT_TINY = ["model.hidden_size=32", "model.num_heads=4", "model.intermediate_size=32",
              "model.proj_size=8", "model.moco_queue=256", "model.layers={text: 1, visual: 1, audio: 1}",
              "train.progress=false"]


def pred_labels(store):
    from mmerkit.data.store import FeatureStore

    return np.asarray(FeatureStore(store).split("test").labels)


def _train(store, out, *extra, accelerator="cuda", devices=1, precision="32-true"):
    return api.train("carat", store, out=out, epochs=2, batch_size=16,
                     overrides=[*CARAT_TINY, f"train.accelerator={accelerator}",
                                f"train.devices={devices}", f"train.precision={precision}", *extra])[0]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_carat_trains_on_cuda(tiny_store, tmp_path, precision):
    res = _train(tiny_store, tmp_path / "runs", precision=precision)
    pred = Predictor.from_pretrained(res.run_dir / "export", device="cuda").predict(tiny_store, split="test")
    # the export on CUDA reproduces the run's test metrics (bf16 training, fp32 inference: close)
    from mmerkit.metrics import binarize, compute_metrics

    again = compute_metrics(pred_labels(tiny_store), binarize(pred.probs, res.threshold))
    assert again["micro_f1"] == pytest.approx(res.test_metrics["micro_f1"], abs=0.02)
    cpu = Predictor.from_pretrained(res.run_dir / "export").predict(tiny_store, split="test")
    np.testing.assert_allclose(pred.probs, cpu.probs, atol=1e-4)  # the same weights on both devices


def test_cuda_matches_cpu_in_deterministic_mode(tiny_store, tmp_path):
    cpu = _train(tiny_store, tmp_path / "cpu", "train.deterministic=true", accelerator="cpu")
    gpu = _train(tiny_store, tmp_path / "gpu", "train.deterministic=true")
    # same seed and data order; kernels differ, so agreement is close, not bitwise
    assert gpu.valid_metrics["micro_f1"] == pytest.approx(cpu.valid_metrics["micro_f1"], abs=0.05)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_gpus_ddp(tiny_store, tmp_path):
    """`mmer train --devices 2` on 2 GPUs (NCCL), in a subprocess as a user launches it."""
    import json

    from test_ddp import _run

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "mmerkit", "train", "-m", "carat", "-d", str(tiny_store), "--out", str(out),
           "--accelerator", "cuda", "--devices", "2", "--precision", "bf16-mixed", "--epochs", "2"]
    for item in CARAT_TINY:
        cmd += ["--set", item]
    _run(cmd)
    [run] = [p for p in out.iterdir() if p.is_dir()]
    saved = json.loads((run / "test_metrics.json").read_text())
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    assert api.evaluate(run)["micro_f1"] == pytest.approx(saved["micro_f1"], abs=0.02)
