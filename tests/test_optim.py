"""Behaviour of the optimisers, the learning-rate schedule and gradient accumulation."""

import math

import numpy as np
import pytest
import torch
from helpers import TINY, toy_store

from mmerkit import api
from mmerkit.checkpoint import load_training_state
from mmerkit.optim import BertAdam, lr_lambda


def test_bertadam_step_is_adam_without_bias_correction_plus_decoupled_decay():
    """One step from zero moments: m = (1-b1) g, v = (1-b2) g^2, p -= lr (m / (sqrt v + eps) + wd p)
    (no 1/(1-b^t) corrections, which AdamW would apply: its first step is lr * sign(g))."""
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    g = torch.tensor([0.3, -0.1, 0.0])
    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-6, 0.01
    opt = BertAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, max_grad_norm=None)
    p.grad = g.clone()
    before = p.detach().clone()
    opt.step()
    m, v = (1 - b1) * g, (1 - b2) * g * g
    want = before - lr * (m / (v.sqrt() + eps) + wd * before)
    torch.testing.assert_close(p.detach(), want)
    adamw_first_step = lr * torch.sign(g)  # what a bias-corrected Adam would move (wd aside)
    assert not torch.allclose(before - p.detach(), adamw_first_step, atol=1e-3)


def test_bertadam_clips_each_tensor_to_norm_one():
    big = torch.nn.Parameter(torch.zeros(2))
    small = torch.nn.Parameter(torch.zeros(2))
    opt = BertAdam([big, small], lr=1.0, weight_decay=0.0)
    big.grad, small.grad = torch.tensor([30.0, 40.0]), torch.tensor([0.3, 0.4])
    opt.step()
    # the big tensor's gradient was scaled to norm 1 before the moments; the small one was not
    torch.testing.assert_close(opt.state[big]["exp_avg"], 0.1 * torch.tensor([0.6, 0.8]))
    torch.testing.assert_close(opt.state[small]["exp_avg"], 0.1 * torch.tensor([0.3, 0.4]))


@pytest.mark.parametrize("schedule, expected", [
    # step: 0 warm-up start, 5 half-way up, 10 peak, 55 half-way down (linear) / cos, 100 end
    ("linear", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0}),
    ("cosine", {0: 0.0, 5: 0.5, 10: 1.0, 55: 0.5, 100: 0.0, 32.5: 0.5 * (1 + math.cos(math.pi / 4))}),
    ("constant", {0: 0.0, 5: 0.5, 10: 1.0, 55: 1.0, 100: 1.0}),
])
def test_learning_rate_schedule(schedule, expected):
    factor = lr_lambda(schedule, total_steps=100, warmup_proportion=0.1)
    for step, want in expected.items():
        assert factor(step) == pytest.approx(want, abs=1e-9), (schedule, step)


def test_schedule_without_warmup_starts_at_the_full_rate():
    assert lr_lambda("linear", 10, 0.0)(0) == 1.0
    assert lr_lambda("linear", 10, 0.0)(5) == pytest.approx(0.5)


def test_the_engine_steps_the_schedule_once_per_optimiser_step(tmp_path):
    """With accumulate=2, 64 train samples and batch 8 there are 4 optimiser steps an epoch: the
    last lr of the epoch is base * factor(4 of 8 steps)."""
    store = toy_store(tmp_path / "store")
    [res] = api.train("early_fusion", store.path, out=tmp_path / "r", epochs=2, progress=False, batch_size=8,
                      overrides=[*TINY, "optim.accumulate=2", "optim.lr=1e-3", "optim.warmup_proportion=0.25"])
    lrs = [r["lr"] for r in res.history if r["split"] == "train"]
    factor = lr_lambda("linear", 8, 0.25)
    assert lrs == pytest.approx([1e-3 * factor(4), 1e-3 * factor(8)])
    assert load_training_state(res.run_dir / "last.ckpt")["train_state"]["step"] == 8


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """Two micro-batches of 8 with accumulate=2 make the same update as one batch of 16: the
    mean loss over 16 samples is the mean of the two halves' means (no dropout, same order)."""
    store = toy_store(tmp_path / "store")
    common = [*TINY, "model.dropout=0.0", "optim.lr=1e-2", "optim.warmup_proportion=0.0"]
    kw = dict(epochs=1, progress=False, deterministic=True, threshold=0.5)
    [acc] = api.train("early_fusion", store.path, out=tmp_path / "a", batch_size=8,
                      overrides=[*common, "optim.accumulate=2"], **kw)
    [big] = api.train("early_fusion", store.path, out=tmp_path / "b", batch_size=16, overrides=common, **kw)
    [small] = api.train("early_fusion", store.path, out=tmp_path / "c", batch_size=8, overrides=common, **kw)
    weights = {name: load_training_state(r.run_dir / "last.ckpt")["model"] for name, r in
               (("acc", acc), ("big", big), ("small", small))}
    for k, w in weights["big"].items():
        # Adam divides by sqrt(v): float rounding of near-zero gradients shows at ~1e-5 of lr 1e-2
        torch.testing.assert_close(weights["acc"][k], w, atol=5e-5, rtol=1e-4)
    # the control: without accumulation the batch-8 run takes twice the steps and ends elsewhere
    assert any(not torch.allclose(weights["small"][k], w, atol=1e-3) for k, w in weights["big"].items())
    assert np.isclose(acc.history[0]["lr"], big.history[0]["lr"])


def test_timm_epoch_schedule_is_amp_releases_with_its_one_epoch_lag():
    """amp-authors: timm's per-epoch warm-up from 5e-6 over 10 epochs, stepped at each epoch's
    end with the epoch just finished, so epochs 0 and 1 share 5e-6 and epoch 9 peaks at 4.1e-5."""
    from mmerkit.config import load_config

    cfg = load_config(None, config="amp-authors").optim
    assert (cfg.schedule, cfg.eps, cfg.decay_all, cfg.warmup_init) == ("timm_epoch", 1e-8, True, 0.1)
    per_epoch = 7
    factor = lr_lambda(cfg.schedule, 10 * per_epoch, cfg.warmup_proportion, per_epoch, cfg.warmup_init)
    lrs = [cfg.lr * factor(e * per_epoch + s) for e in range(10) for s in (0, per_epoch - 1)]
    want = [5e-6, 5e-6] + [5e-6 + (e - 1) * 4.5e-6 for e in range(2, 10)]
    assert lrs == pytest.approx([w for w in want for _ in range(2)], abs=1e-12)
    assert max(lrs) == pytest.approx(4.1e-5)


def test_decay_all_puts_every_parameter_in_one_decayed_group():
    from mmerkit.config import OptimConfig
    from mmerkit.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = build_optimizer(model, OptimConfig(decay_all=True, weight_decay=0.01))
    assert len(opt.param_groups) == 1 and len(opt.param_groups[0]["params"]) == 4
    assert opt.param_groups[0]["weight_decay"] == 0.01
