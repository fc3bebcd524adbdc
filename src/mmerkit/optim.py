"""Optimisers and learning-rate schedules used by the engine.

`adamw` (default) is torch's AdamW. `bertadam` reproduces the optimiser of the CARAT/TAILOR
authors' code (pytorch-pretrained-bert's BertAdam): Adam *without* bias correction, decoupled
weight decay added to the update before the lr, and a gradient-norm clip of 1.0 applied to
each parameter tensor separately. Both use the same schedule function (`lr_lambda`).
"""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer


class BertAdam(Optimizer):
    """Adam without bias correction, decoupled weight decay, per-tensor grad clipping."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 max_grad_norm: float | None = 1.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            params = [p for p in group["params"] if p.grad is not None]
            if group["max_grad_norm"]:
                for p in params:  # the authors clip every tensor on its own, on top of the global clip
                    torch.nn.utils.clip_grad_norm_(p, group["max_grad_norm"])
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(b1).add_(p.grad, alpha=1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                update = m / (v.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
        return loss


def lr_lambda(schedule: str, total_steps: int, warmup_proportion: float, steps_per_epoch: int = 1,
              warmup_init: float = 0.0):
    """Multiplier of the base lr at optimiser step `s` (0-based), as LambdaLR expects.

    linear: warm up linearly over the first `warmup_proportion` of the steps, then decay linearly
    to 0 (the authors' `warmup_linear`; like theirs the first update uses lr 0 when warm-up > 0).
    cosine: the same warm-up, then a half cosine from 1 to 0 over the remaining steps.
    warmup_cosine: pytorch-pretrained-bert's (LDDU's release): the same warm-up, then
    0.5 (1 + cos(pi x)) of the progress x = step / total itself, not re-based at the warm-up's
    end (so the multiplier drops from 1 to 0.9755 at x = 0.1 with a 10% warm-up).
    timm_epoch: timm's CosineLRScheduler stepped once per epoch as AMP's release calls it
    (`scheduler.step(epoch)` at the end of epoch `epoch`, so epoch e trains at the value of
    t = max(e - 1, 0): a one-epoch lag). warm-up t < W = warmup_proportion x epochs epochs:
    warmup_init + t (1 - warmup_init) / W, then 0.5 (1 + cos(pi t / epochs)). Constant within
    an epoch.
    """
    total = max(int(total_steps), 1)
    warm = warmup_proportion

    if schedule == "timm_epoch":
        return _timm_epoch(total, max(int(steps_per_epoch), 1), warm, warmup_init)

    def factor(step: int) -> float:
        x = step / total
        if warm > 0 and x < warm:
            return x / warm
        if schedule == "constant":
            return 1.0
        if schedule == "warmup_cosine":
            return 0.5 * (1 + math.cos(math.pi * min(x, 1.0)))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min((x - warm) / max(1 - warm, 1e-8), 1.0)))
        return max((x - 1.0) / (warm - 1.0), 0.0) if warm < 1 else 0.0

    return factor


def _timm_epoch(total: int, per_epoch: int, warm: float, init: float):
    epochs = max(total // per_epoch, 1)
    warm_epochs = round(warm * epochs)

    def factor(step: int) -> float:
        t = max(step // per_epoch - 1, 0)  # the release's one-epoch lag
        if t < warm_epochs:
            return init + t * (1.0 - init) / warm_epochs
        return 0.5 * (1 + math.cos(math.pi * t / epochs))

    return factor


def build_optimizer(model: torch.nn.Module, optim_cfg) -> Optimizer:
    if optim_cfg.decay_all:  # AMP's release: one group, every parameter decayed
        groups = [{"params": [p for p in model.parameters() if p.requires_grad],
                   "weight_decay": optim_cfg.weight_decay}]
    else:
        groups = model.param_groups(optim_cfg.weight_decay)
    if optim_cfg.optimizer == "bertadam":
        return BertAdam(groups, lr=optim_cfg.lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                        weight_decay=optim_cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=optim_cfg.lr, betas=optim_cfg.betas, eps=optim_cfg.eps,
                             weight_decay=optim_cfg.weight_decay)
