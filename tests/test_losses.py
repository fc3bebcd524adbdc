"""The chunked, mask-free SupCon loss equals a dense implementation that follows the spec
(§3.4 of specs/carat.md) literally, in value and gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmerkit.models.losses import IGNORE, masked_mse_sum, supcon_loss
from mmerkit.models.losses import supcon_loss_dense as dense_supcon


def _case(seed, n=24, q=40, p=8, classes=7, queue_kind="mixed"):
    g = torch.Generator().manual_seed(seed)
    feats = F.normalize(torch.randn(n, p, generator=g, dtype=torch.float64), dim=1)
    # class 6 is never used (an absent class); class 5 appears once (anchor without positive)
    labels = torch.randint(0, 5, (n,), generator=g)
    labels[0] = 5
    labels[3] = IGNORE
    queue = F.normalize(torch.randn(q, p, generator=g, dtype=torch.float64), dim=1)
    qlab = torch.randint(0, 5, (q,), generator=g)
    if queue_kind == "mixed":
        qlab[:10] = IGNORE  # empty slots
        qlab[10:15] = -torch.arange(2, 7)  # the reference's never-matching initial labels
    return feats.requires_grad_(), labels, queue, qlab


@pytest.mark.parametrize("anchors", ["pool", "batch"])
@pytest.mark.parametrize("chunk", [1, 5, 1024])
@pytest.mark.parametrize("with_queue", [True, False])
def test_supcon_matches_dense(anchors, chunk, with_queue):
    feats, labels, queue, qlab = _case(0)
    if not with_queue:
        queue = qlab = None
    ours = supcon_loss(feats, labels, queue, qlab, anchors=anchors, chunk=chunk)
    (g_ours,) = torch.autograd.grad(ours, feats)
    ref = dense_supcon(feats, labels, queue, qlab, anchors=anchors)
    (g_ref,) = torch.autograd.grad(ref, feats)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours, ref)
    assert torch.allclose(g_ours, g_ref, atol=1e-5, rtol=1e-5)


def test_supcon_float32_and_unnormalised_queue():
    """The reference's column-normalised initial queue (tiny rows) and float32 inputs."""
    feats, labels, _, _ = _case(1)
    feats = feats.detach().float().requires_grad_()
    queue = F.normalize(torch.randn(40, 8), dim=0)
    qlab = -torch.arange(2, 42)
    for anchors in ("pool", "batch"):
        ours = supcon_loss(feats, labels, queue, qlab, anchors=anchors, chunk=7)
        (g1,) = torch.autograd.grad(ours, feats)
        ref = dense_supcon(feats, labels, queue, qlab, anchors=anchors)
        (g2,) = torch.autograd.grad(ref, feats)
        assert torch.allclose(ours, ref, atol=1e-5)
        assert torch.allclose(g1, g2, atol=1e-5)


def test_supcon_no_positive_anywhere_is_zero_and_differentiable():
    feats = F.normalize(torch.randn(4, 3), dim=1).requires_grad_()
    labels = torch.arange(4)
    loss = supcon_loss(feats, labels, anchors="batch")
    loss.backward()
    assert float(loss.detach()) == 0.0 and feats.grad is not None


def test_masked_mse_sum_equals_plain_sum_when_present():
    a, b = torch.randn(4, 3, 2, 5), torch.randn(4, 3, 2, 5)
    plain = sum(F.mse_loss(a[:, m], b[:, m]) for m in range(3))
    assert torch.allclose(masked_mse_sum(a, b, torch.ones(4, 3, dtype=torch.bool)), plain)
    present = torch.ones(4, 3, dtype=torch.bool)
    present[0, 1] = False
    a2 = a.clone()
    a2[0, 1] += 100.0
    assert torch.allclose(masked_mse_sum(a2, b, present), masked_mse_sum(a, b, present))
