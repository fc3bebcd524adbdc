"""AMP: Sinkhorn top-k, asymmetric loss, named loss terms, the perturbed pass equal to an
in-place parameter shift, missing modalities. Tiny dimensions, one thread."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmerkit.data.batch import Batch
from mmerkit.data.store import DataSpec
from mmerkit.models.amp import AMP, asymmetric_loss, sinkhorn_topk
from mmerkit.models.base import create_model

SPEC = DataSpec(("happy", "sad", "anger"), {"text": 6, "visual": 4, "audio": 5}, True,
                {"text": 8, "visual": 8, "audio": 8})



def make_batch(b=5, t=8, seed=0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    inputs = {m: torch.randn(b, t, d, generator=g) for m, d in SPEC.modalities.items()}
    masks = {m: torch.ones(b, t, dtype=torch.bool) for m in SPEC.modalities}
    masks["audio"][:2, 5:] = False
    y = (torch.rand(b, SPEC.num_labels, generator=g) < 0.5).float()
    return Batch(inputs, masks, torch.ones(b, 3, dtype=torch.bool), y, torch.arange(b),
                 SPEC.modality_names)


def small(**kw) -> AMP:
    torch.manual_seed(0)
    return create_model("amp", SPEC, {**AMP.test_params, **kw})


def test_sinkhorn_topk_selects_the_top_steps():
    scores = torch.tensor([[0.1, 0.9, 0.2, 0.95, 0.05, 0.8]])
    mask = torch.ones_like(scores, dtype=torch.bool)
    soft = sinkhorn_topk(scores, mask, k=3, eps=0.01, iters=200)
    assert torch.allclose(soft.sum(), torch.tensor(3.0), atol=1e-3)
    assert soft[0, [1, 3, 5]].min() > 0.9 and soft[0, [0, 2, 4]].max() < 0.1


def test_sinkhorn_topk_respects_padding_and_missing():
    scores = torch.rand(3, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [0] * 6], dtype=torch.bool)
    soft = sinkhorn_topk(scores, mask, k=3, eps=0.1, iters=100)
    assert torch.isfinite(soft).all()
    assert (soft[~mask] == 0).all()
    torch.testing.assert_close(soft.sum(1), torch.tensor([3.0, 2.0, 0.0]), atol=1e-3, rtol=0)


def test_asl_reduces_to_bce_without_focusing_or_clipping():
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(4, 3, generator=g), (torch.rand(4, 3, generator=g) > 0.5).float()
    want = F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / 4
    torch.testing.assert_close(asymmetric_loss(logits, y, 0.0, 0.0, 0.0), want)
    assert asymmetric_loss(logits, y, 2.0, 1.0, 0.05) < want  # focusing down-weights easy terms


def test_loss_terms_named_and_finite():
    model = small().train()
    batch = make_batch()
    terms = model.loss(model(batch), batch)
    assert set(terms) == {"asl", "masked", "app", "total"}
    assert all(torch.isfinite(v) for v in terms.values())
    terms["total"].backward()
    assert all(p.grad is not None for p in model.scorers.parameters())
    model.eval()
    with torch.no_grad():
        assert set(model.loss(model(batch), batch)) == {"asl", "total"}


def test_perturbed_pass_equals_an_in_place_shift():
    model = small().train()
    batch = make_batch()
    out = model(batch)
    base = model._asl(out.logits, batch.labels) + model.config.mask_weight * model._asl(
        out.aux["masked_logits"], batch.labels)
    kl = model._app(out, base)
    params = list(model.tri.parameters())
    grads = torch.autograd.grad(base, params, retain_graph=True)
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p.add_(g / g.norm())
        noisy, _ = model._head(out.aux["hs"], out.aux["joint"])
    want = F.kl_div(F.log_softmax(noisy, -1), F.softmax(out.logits, -1), reduction="batchmean")
    torch.testing.assert_close(kl, want)


def test_scorer_gradient_is_reversed():
    """The masked loss trains the network to cope, and (through the GRL) the scorers to hurt."""
    batch = make_batch()
    grads = {}
    for lam in (0.1, -0.1):  # lambda = -0.1 is plain (unreversed) gradient of the same size
        model = small(grl_lambda=lam, app_weight=0.0).train()
        out = model(batch)
        model.loss(out, batch)["masked"].backward()
        grads[lam] = model.scorers["text"].weight.grad.clone()
    torch.testing.assert_close(grads[0.1], -grads[-0.1])
    assert grads[0.1].abs().sum() > 0


def test_missing_modality_is_finite_and_unmasked():
    model = small().train()
    batch = make_batch().without("visual")
    out = model(batch)
    assert (out.aux["soft_masks"]["visual"] == 0).all()
    assert all(torch.isfinite(v) for v in model.loss(out, batch).values())
